//! Stage 4, merge: entries in removal grace join as a pseudo-source, then the
//! compiled policy merges every source into the final list.

use std::sync::Arc;
use std::time::Duration;

use super::{Gathered, Run};
use crate::config::Config;
use crate::policy::{Locator, RecipientList};
use crate::report::SourceStatus;
use crate::state::{StateDir, Tombstones};

/// Merges gathered sources under the policy (keeping every entry's origin, for
/// `list` and `why`). Returns the list and, per source, how many the policy dropped.
pub fn merge(cfg: &Config, gathered: &[Gathered]) -> (RecipientList, Vec<usize>) {
    cfg.policy.apply(gathered.iter().map(|g| (g.name.clone(), g.entries.clone())).collect())
}

/// The sync's merge: consumes the sources' entries (a million-entry source is
/// not copied). Entries that left every source stay for `guard.removal_grace`
/// (not with `--force` or `--no-grace`, which drop them at once and forget the
/// tombstones); returns the tombstones to keep.
pub(super) fn merge_owned(run: &Run, mut gathered: Vec<Gathered>) -> (Arc<RecipientList>, Tombstones) {
    let tombstones = match (run.cfg.guard.removal_grace, run.opts.force || run.opts.no_grace) {
        (Some(grace), false) => keep_in_grace(&run.state, &mut gathered, grace),
        _ => Tombstones::new(),
    };
    let sources = gathered.iter_mut().map(|g| (g.name.clone(), std::mem::take(&mut g.entries))).collect();
    let (list, dropped) = run.cfg.policy.apply_lean(sources);
    for (g, d) in gathered.iter().zip(&dropped) {
        if *d > 0 {
            tracing::info!(source = %g.name, dropped = d, "entries left out by policy.domains / policy.exclude");
        }
    }
    (Arc::new(list), tombstones)
}

/// Adds the entries of the last applied list that no source returns any more,
/// and whose grace has not run out, as a pseudo-source; returns the tombstones
/// to keep (entry → first missing).
pub fn keep_in_grace(state: &StateDir, gathered: &mut Vec<Gathered>, grace: Duration) -> Tombstones {
    let Ok(Some((_, old))) = state.read_list(&state.applied_path()) else { return Tombstones::new() };
    let present: std::collections::HashSet<&str> =
        gathered.iter().flat_map(|g| g.entries.iter().map(|(e, _)| e.as_str())).collect();
    let before = state.read_tombstones();
    let now = crate::state::unix_now();
    let mut kept = Vec::new();
    let mut tombstones = Tombstones::new();
    let mut expired = 0usize;
    for e in old {
        if present.contains(e.as_str()) {
            continue;
        }
        let since = before.get(e.as_str()).copied().unwrap_or(now);
        let until = since.saturating_add(grace.as_secs());
        if now < until {
            tombstones.insert(e.as_str().to_string(), since);
            kept.push((e, Locator::Grace { since, until }));
        } else {
            expired += 1;
        }
    }
    drop(present);
    if !kept.is_empty() || expired > 0 {
        tracing::info!(kept = kept.len(), expired, "removal grace: entries absent from every source");
    }
    gathered.push(Gathered {
        name: crate::policy::GRACE_SOURCE.to_string(),
        kind: "grace",
        status: SourceStatus::Ok,
        entries: kept,
        rejected: Vec::new(),
        left_out: Vec::new(),
        error: None,
        note: None,
    });
    tombstones
}
