//! The guard: the last check before anything is written.
//!
//! It compares the new list with the last applied one and refuses lists that are
//! empty, below `min_recipients`, or that remove more than `max_removed_percent` of
//! what was published. A refusal leaves every output as it was. `--force` overrides
//! these checks (never the address validation, which happens long before).

use crate::policy::GuardConfig;
use crate::policy::RecipientList;

/// How the new list differs from the last applied one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: usize,
    pub removed: usize,
}

/// Counts entries only in `new` (added) and only in `old` (removed). Both inputs
/// must be sorted and free of duplicates.
pub fn delta<'a>(old: impl IntoIterator<Item = &'a str>, new: impl IntoIterator<Item = &'a str>) -> Delta {
    let mut d = Delta::default();
    let mut old = old.into_iter().peekable();
    let mut new = new.into_iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return d,
            (Some(_), None) => {
                d.removed += 1;
                old.next();
            }
            (None, Some(_)) => {
                d.added += 1;
                new.next();
            }
            (Some(o), Some(n)) => match o.cmp(n) {
                std::cmp::Ordering::Less => {
                    d.removed += 1;
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    d.added += 1;
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    old.next();
                    new.next();
                }
            },
        }
    }
}

/// Canaries missing from the new list. A canary counts as present when it is
/// listed or its domain is a catch-all (the MTA accepts it either way). With
/// `digest_salt` (an edge of a hashed bundle) the list holds digests, and so
/// are the canaries looked up.
pub fn missing_canaries<'a>(canaries: &'a [String], list: &RecipientList, digest_salt: Option<&str>) -> Vec<&'a str> {
    let has = |entry: &str| match digest_salt {
        None => list.contains(entry),
        Some(salt) => super::address::Entry::parse(entry)
            .ok()
            .and_then(|e| super::digest::digest_entry(&e, salt))
            .is_some_and(|d| list.contains(d.as_str())),
    };
    canaries
        .iter()
        .map(String::as_str)
        .filter(|c| {
            let catchall = c.rfind('@').map(|at| &c[at..]).unwrap_or("");
            !has(c) && !has(catchall)
        })
        .collect()
}

/// Domains that lose more than `max_pct` of their entries, or all of them,
/// between `old` and `new` (both sorted, without duplicates). One line each.
pub fn domain_shrinks<'a>(
    old: impl IntoIterator<Item = &'a str>,
    new: impl IntoIterator<Item = &'a str>,
    max_pct: f64,
) -> Vec<String> {
    use std::collections::BTreeMap;
    fn domain(e: &str) -> &str {
        e.rfind('@').map(|at| &e[at + 1..]).unwrap_or(e)
    }
    // domain -> (entries before, removed, entries after)
    let mut per: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let new: std::collections::HashSet<&str> =
        new.into_iter().inspect(|e| per.entry(domain(e)).or_default().2 += 1).collect();
    for e in old {
        let f = per.entry(domain(e)).or_default();
        f.0 += 1;
        if !new.contains(e) {
            f.1 += 1;
        }
    }
    per.into_iter()
        .filter(|(_, (before, removed, _))| *before > 0 && *removed > 0)
        .filter_map(|(d, (before, removed, after))| {
            let pct = removed as f64 * 100.0 / before as f64;
            if after == 0 {
                Some(format!("domain {d} would lose all {before} of its entries"))
            } else if pct > max_pct {
                Some(format!("domain {d} would lose {removed} of {before} entries ({pct:.1}%)"))
            } else {
                None
            }
        })
        .collect()
}

/// What the guard knows about the previous run.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// No list was ever applied (first run).
    None,
    /// The last applied list had this many entries; the largest applied within
    /// the shrink window, `largest` (at least `count`).
    Applied { count: usize, largest: usize },
    /// The state file exists but cannot be trusted.
    Unreadable(String),
}

/// The guard's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// Why the list was refused (or, when forced, why it would have been).
    pub reason: Option<String>,
    pub forced: bool,
}

/// Decides whether a list of `count` entries, differing from the baseline by
/// `delta`, may be published.
pub fn evaluate(cfg: &GuardConfig, count: usize, baseline: &Baseline, delta: Delta, force: bool) -> Verdict {
    evaluate_with(cfg, count, baseline, delta, Vec::new(), force)
}

/// The list size the guard insists on: `min_recipients`, else 1 for a first
/// list and half the largest recent list (`largest`) after that.
pub fn min_recipients(cfg: &GuardConfig, largest: Option<usize>) -> u64 {
    cfg.min_recipients.unwrap_or_else(|| largest.map_or(1, |l| (l as u64 / 2).max(1)))
}

/// The slow baseline: a list more than `max_removed_percent` smaller than the
/// largest list applied within the window is refused, however small each
/// step towards it was.
pub fn slow_shrink(cfg: &GuardConfig, count: usize, largest: Option<(u64, usize)>) -> Option<String> {
    let (at, big) = largest?;
    if big == 0 || count >= big {
        return None;
    }
    let pct = (big - count) as f64 * 100.0 / big as f64;
    (pct > cfg.max_removed_percent).then(|| {
        let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at));
        format!(
            "the new list has {count} entries, {pct:.1}% fewer than the {big} applied at {when}, more than \
             guard.max_removed_percent = {} within guard.shrink_window = {} (small cuts add up)",
            cfg.max_removed_percent,
            humantime::format_duration(cfg.shrink_window)
        )
    })
}

/// Sources whose share of the list shrinks by more than the per-source limit
/// against their own last good copy: (name, old count, new count).
pub fn source_shrinks(cfg: &GuardConfig, sources: &[(String, usize, usize)]) -> Vec<String> {
    let max = cfg.max_removed_percent_per_source.unwrap_or(cfg.max_removed_percent);
    sources
        .iter()
        .filter(|(_, old, new)| *old > 0 && new < old)
        .filter_map(|(name, old, new)| {
            let pct = (old - new) as f64 * 100.0 / *old as f64;
            (pct > max).then(|| {
                format!(
                    "source {name} would shrink from {old} to {new} entries ({pct:.1}%), more than \
                     guard.max_removed_percent_per_source = {max}"
                )
            })
        })
        .collect()
}

/// [`evaluate`] with further refusals found by the caller (missing canaries,
/// per-domain shrinks); all of them are reported together.
pub fn evaluate_with(
    cfg: &GuardConfig,
    count: usize,
    baseline: &Baseline,
    delta: Delta,
    more: Vec<String>,
    force: bool,
) -> Verdict {
    let mut reasons: Vec<String> = refusal(cfg, count, baseline, delta).into_iter().collect();
    reasons.extend(more);
    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    match reason {
        None => Verdict { ok: true, reason: None, forced: false },
        Some(r) if force => Verdict { ok: true, reason: Some(format!("overridden by --force: {r}")), forced: true },
        Some(r) => Verdict { ok: false, reason: Some(r), forced: false },
    }
}

fn baseline_count(baseline: &Baseline) -> Option<usize> {
    match baseline {
        Baseline::Applied { count, largest } => Some((*count).max(*largest)),
        _ => None,
    }
}

fn refusal(cfg: &GuardConfig, count: usize, baseline: &Baseline, delta: Delta) -> Option<String> {
    if count == 0 {
        return Some("the new list is empty".into());
    }
    let min = min_recipients(cfg, baseline_count(baseline));
    if (count as u64) < min {
        let how = if cfg.min_recipients.is_some() { "" } else { " (by default half the largest recent list)" };
        return Some(format!("the new list has {count} entries, fewer than guard.min_recipients = {min}{how}"));
    }
    match baseline {
        Baseline::None => None,
        Baseline::Unreadable(why) => Some(format!(
            "the last applied list cannot be read ({why}), so a shrink cannot be measured; \
             check the new list with `rcptsync list`, then run `rcptsync sync --force` to make it the new baseline"
        )),
        Baseline::Applied { count: old, .. } if *old > 0 => {
            let pct = delta.removed as f64 * 100.0 / *old as f64;
            (pct > cfg.max_removed_percent).then(|| {
                format!(
                    "{} of {old} entries ({pct:.1}%) would be removed, more than guard.max_removed_percent = {}",
                    delta.removed, cfg.max_removed_percent
                )
            })
        }
        Baseline::Applied { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u64, pct: f64) -> GuardConfig {
        GuardConfig { min_recipients: Some(min), max_removed_percent: pct, ..GuardConfig::default() }
    }

    #[test]
    fn canaries_are_found_as_addresses_or_under_a_catchall() {
        use crate::policy::{Locator, Policy, RawItem, RawKind, normalise};
        let raw = ["@catch.example.org", "a@example.com", "ceo@example.com", "z@example.net"].map(|v| RawItem {
            value: v.into(),
            kind: RawKind::of(v),
            locator: Locator::Line(1),
        });
        let (ok, _) = normalise(raw.into());
        let (list, _) = Policy::default().apply(vec![("s".into(), ok)]);
        let c = [
            "ceo@example.com",
            "boss@catch.example.org",
            "cfo@example.com",
            "a@example.com",
            "z@example.net",
            "y@example.net",
            "@catch.example.org",
            "@example.com",
        ]
        .map(String::from);
        assert_eq!(missing_canaries(&c, &list, None), ["cfo@example.com", "y@example.net", "@example.com"]);
        // The same list as a hashed bundle's digests on an edge: the canaries
        // are looked up as their digests, with the hub's salt.
        let d = crate::policy::digest::Digests::of(&list, "pepper");
        let digests = d.catchall_hexes().map(|h| (h, true)).chain(d.address_hexes().map(|h| (h, false)));
        let located =
            digests.map(|(h, c)| (crate::policy::address::Entry::digest(h, c).unwrap(), Locator::LastGood)).collect();
        let (hashed, _) = Policy::default().apply(vec![("bundle".into(), located)]);
        assert_eq!(missing_canaries(&c, &hashed, Some("pepper")), ["cfo@example.com", "y@example.net", "@example.com"]);
        assert_eq!(
            missing_canaries(&c[..1], &hashed, Some("other")),
            ["ceo@example.com"],
            "another salt finds nothing"
        );
    }

    #[test]
    fn a_domain_losing_too_much_or_everything_is_named() {
        let old = [
            "a@big.example",
            "b@big.example",
            "c@big.example",
            "d@big.example",
            "x@small.example",
            "y@small.example",
            "z@gone.example",
        ];
        let new =
            ["a@big.example", "b@big.example", "c@big.example", "d@big.example", "new@big.example", "x@small.example"];
        let s = domain_shrinks(old.iter().copied(), new.iter().copied(), 40.0);
        assert_eq!(
            s,
            [
                "domain gone.example would lose all 1 of its entries",
                "domain small.example would lose 1 of 2 entries (50.0%)"
            ]
        );
        assert!(domain_shrinks(old.iter().copied(), new.iter().copied(), 60.0).len() == 1, "only the emptied domain");
        let v = evaluate_with(
            &cfg(1, 10.0),
            6,
            &Baseline::Applied { count: 7, largest: 7 },
            Delta { added: 1, removed: 2 },
            s,
            false,
        );
        assert!(!v.ok);
        let r = v.reason.unwrap();
        assert!(r.contains("28.6%") && r.contains("gone.example"), "{r}");
    }

    #[test]
    fn delta_counts_both_sides() {
        let d = delta(["a", "b", "c", "e"], ["b", "c", "d", "f", "g"]);
        assert_eq!(d, Delta { added: 3, removed: 2 });
        assert_eq!(delta([], ["a"]), Delta { added: 1, removed: 0 });
        assert_eq!(delta(["a"], []), Delta { added: 0, removed: 1 });
    }

    #[test]
    fn empty_list_is_refused_even_on_first_run() {
        let v = evaluate(&cfg(0, 100.0), 0, &Baseline::None, Delta::default(), false);
        assert!(!v.ok);
        assert_eq!(v.reason.as_deref(), Some("the new list is empty"));
    }

    #[test]
    fn min_recipients() {
        let v = evaluate(&cfg(5, 100.0), 4, &Baseline::None, Delta::default(), false);
        assert!(!v.ok && v.reason.unwrap().contains("fewer than guard.min_recipients = 5"));
        assert!(evaluate(&cfg(5, 100.0), 5, &Baseline::None, Delta::default(), false).ok);
    }

    #[test]
    fn shrink_over_limit_is_refused_at_the_boundary() {
        let base = Baseline::Applied { count: 100, largest: 100 };
        assert!(evaluate(&cfg(1, 10.0), 90, &base, Delta { added: 0, removed: 10 }, false).ok);
        let v = evaluate(&cfg(1, 10.0), 89, &base, Delta { added: 0, removed: 11 }, false);
        assert!(!v.ok);
        assert_eq!(
            v.reason.as_deref(),
            Some("11 of 100 entries (11.0%) would be removed, more than guard.max_removed_percent = 10")
        );
        // Growth elsewhere does not hide removals.
        assert!(!evaluate(&cfg(1, 10.0), 200, &base, Delta { added: 111, removed: 11 }, false).ok);
    }

    #[test]
    fn force_overrides_but_says_why() {
        let base = Baseline::Applied { count: 100, largest: 100 };
        let v = evaluate(&cfg(1, 10.0), 50, &base, Delta { added: 0, removed: 50 }, true);
        assert!(v.ok && v.forced);
        assert!(v.reason.unwrap().starts_with("overridden by --force: 50 of 100"));
        assert!(evaluate(&cfg(1, 10.0), 0, &base, Delta { added: 0, removed: 100 }, true).ok);
    }

    #[test]
    fn unreadable_baseline_refuses_until_forced() {
        let base = Baseline::Unreadable("bad header".into());
        let v = evaluate(&cfg(1, 10.0), 10, &base, Delta::default(), false);
        assert!(!v.ok && v.reason.unwrap().contains("bad header"));
        assert!(evaluate(&cfg(1, 10.0), 10, &base, Delta::default(), true).ok);
    }
}
