//! `rcptsync why ADDRESS`: explains the decision for one address, in the words
//! an operator needs: which source and object produced it, or which rule dropped it.

use std::fmt::Write as _;

use crate::config::Config;
use crate::connector::Note;
use crate::policy::address::{Entry, parse_catchall};
use crate::policy::digest::digest_entry;
use crate::policy::{Drop, Locator, RecipientList};
use crate::run::Gathered;

/// The answer: accepted or not, and the explanation lines.
#[derive(Debug)]
pub struct Answer {
    pub accepted: bool,
    pub text: String,
}

pub fn explain(
    cfg: &Config,
    input: &str,
    gathered: &[Gathered],
    list: &RecipientList,
    published: Option<bool>,
) -> Answer {
    let parsed = Entry::parse(input);
    let entry = match parsed {
        Ok(e) => e,
        Err(e) => {
            return Answer {
                accepted: false,
                text: format!("REJECTED {input:?}: it {e}, so rcptsync would never publish it\n"),
            };
        }
    };
    let policy = &cfg.policy;
    let mut t = String::new();
    // On an edge of a hashed bundle the list holds digests: every lookup is
    // of the address's digest with the hub's salt.
    let salt = match cfg.read_digest_salt() {
        Ok(s) => s,
        Err(e) => {
            return Answer { accepted: false, text: format!("cannot look {entry} up in the hashed list: {e}\n") };
        }
    };
    let key = |e: &Entry| match &salt {
        Some(s) => digest_entry(e, s.expose()).unwrap_or_else(|| e.clone()),
        None => e.clone(),
    };
    let find = |e: &Entry| -> Option<(usize, bool)> {
        let k = key(e);
        if k.is_catchall() {
            list.catchalls().binary_search(&k).ok().map(|i| (i, true))
        } else {
            list.addresses().binary_search(k.as_str()).ok().map(|i| (i, false))
        }
    };
    let origins = |(i, catchall): (usize, bool)| {
        if catchall { list.catchall_origins(i) } else { list.address_origins(i) }
    };
    let hashed_note = |e: &Entry| match &salt {
        Some(_) => format!(" (as its salted SHA-256 digest {})", key(e).local_part()),
        None => String::new(),
    };
    let names = list.source_names();
    let describe = |o: &crate::policy::Origin| -> String {
        let name = names.get(o.source as usize).map(String::as_str).unwrap_or("?");
        let g = gathered.iter().find(|g| g.name == name);
        let kind = g.map(|g| g.kind).unwrap_or("config");
        match g.and_then(|g| g.note.as_ref()) {
            Some(note) => {
                format!("source {name} ({kind}), {}, {}{}", note.text, o.locator, hub_sources(&o.locator, note))
            }
            None => format!("source {name} ({kind}), {}", o.locator),
        }
    };

    let accepted;
    let catchall = catchall_of(&entry);
    if let Some(at) = find(&entry) {
        accepted = true;
        let _ = writeln!(t, "ACCEPTED {entry}{}", hashed_note(&entry));
        for o in origins(at) {
            let _ = writeln!(t, "  from {}", describe(&o));
        }
    } else if let Some(at) = find(&catchall) {
        accepted = true;
        let _ = writeln!(t, "ACCEPTED {entry} by the catch-all @{}{}", entry.domain(), hashed_note(&catchall));
        for o in origins(at) {
            let _ = writeln!(t, "  from {}", describe(&o));
        }
    } else if let Some((base, at)) =
        entry.without_extension(policy.recipient_delimiter()).and_then(|b| find(&b).map(|at| (b, at)))
    {
        accepted = true;
        let _ = writeln!(
            t,
            "ACCEPTED {entry} as {base}: with recipient_delimiter {:?} the MTA strips the extension and finds {base}{}",
            policy.recipient_delimiter(),
            hashed_note(&base)
        );
        for o in origins(at) {
            let _ = writeln!(t, "  from {}", describe(&o));
        }
    } else {
        accepted = false;
        let _ = writeln!(t, "REJECTED {entry}: it is not in the final list{}", hashed_note(&entry));
        if let Some(base) = entry.without_extension(policy.recipient_delimiter()) {
            let _ = writeln!(t, "  nor is {base}, the address without its extension");
        }
    }
    if input != entry.as_str() {
        let _ = writeln!(t, "  (normalised from {input:?})");
    }

    // What each source said about it, including what the policy dropped.
    let mut seen = false;
    let (entry_key, catchall_key) = (key(&entry), key(&catchall));
    for g in gathered {
        for (e, loc) in &g.entries {
            if *e != entry_key && *e != catchall_key {
                continue;
            }
            seen = true;
            match policy.check(e) {
                Ok(()) if !accepted => {
                    let _ = writeln!(t, "  source {} ({}), {loc} has {e}", g.name, g.kind);
                }
                Ok(()) => {}
                Err(Drop::Domain) => {
                    let _ = writeln!(
                        t,
                        "  source {} ({}), {loc}: {e} dropped: {} is not in policy.domains",
                        g.name,
                        g.kind,
                        e.domain()
                    );
                }
                Err(Drop::Exclude(i)) => {
                    let _ = writeln!(
                        t,
                        "  source {} ({}), {loc}: {e} dropped by policy.exclude[{i}] = {:?}",
                        g.name,
                        g.kind,
                        policy.exclude_pattern(i)
                    );
                }
            }
        }
        for r in &g.left_out {
            if r.value.to_lowercase() == entry.as_str() {
                seen = true;
                let _ =
                    writeln!(t, "  source {} ({}), {}: {} left out: {}", g.name, g.kind, r.locator, r.value, r.reason);
            }
        }
        for r in &g.rejected {
            if r.value.to_lowercase().contains(entry.as_str()) {
                seen = true;
                let _ = writeln!(
                    t,
                    "  source {} ({}), {}: value {:?} refused: it {}",
                    g.name, g.kind, r.locator, r.value, r.reason
                );
            }
        }
        if let Some(err) = &g.error {
            let _ = writeln!(t, "  note: {err} (status {:?})", g.status);
        }
    }
    if !accepted && !seen {
        let _ = writeln!(t, "  no source lists it, and no catch-all covers {}", entry.domain());
    }
    match published {
        Some(true) => {
            let _ = writeln!(t, "  the last published list contains it");
        }
        Some(false) => {
            let _ = writeln!(t, "  the last published list does not contain it");
        }
        None => {}
    }
    if let (false, Some(true), Some(pct)) = (accepted, published, cfg.guard.max_removed_percent_per_domain) {
        let _ = writeln!(
            t,
            "  the next run would remove it; that run is refused if domain {} loses more than {pct}% of its entries \
             (guard.max_removed_percent_per_domain), and then the published list keeps it",
            entry.domain()
        );
    }
    if cfg.guard.canaries.iter().any(|c| c == entry.as_str()) {
        let _ = writeln!(
            t,
            "  it is a guard canary: a new list without it is refused (guard.canaries), and nothing is written"
        );
    }
    Answer { accepted, text: t }
}

/// ", from the hub's source ad" for a bundle line that names its hub sources.
fn hub_sources(locator: &Locator, note: &Note) -> String {
    let Locator::Hub { sources, .. } = locator else { return String::new() };
    let named: Vec<&str> = note
        .hub_sources
        .iter()
        .take(64)
        .enumerate()
        .filter(|(i, _)| sources & (1 << i) != 0)
        .map(|(_, n)| n.as_str())
        .collect();
    match named.len() {
        0 => format!(", from the hub's sources ({})", note.hub_sources.join(", ")),
        1 => format!(", from the hub's source {}", named[0]),
        _ => format!(", from the hub's sources {}", named.join(", ")),
    }
}

fn catchall_of(e: &Entry) -> Entry {
    // The domain of a valid entry is a valid catch-all domain.
    parse_catchall(e.domain()).unwrap_or_else(|_| e.clone())
}
