//! Stage 5, guard: the new list against the last applied one (size, removed
//! share, per-domain shrink, canaries), against the largest list applied
//! within the shrink window (so small cuts cannot add up unnoticed), and each
//! source against its own last good copy. A refusal ends the run with every
//! output as it was.

use super::{Halt, Run, Step};
use crate::policy::address::Entry;
use crate::policy::guard::{self, Baseline, Delta};
use crate::policy::{RecipientList, unique_sources};
use crate::report::{GuardReport, Outcome, Report};
use crate::state::{Applied, fingerprint};

/// What the guard measured, for the stages after it.
pub(super) struct Guarded {
    /// The published list's fingerprint.
    pub fingerprint: String,
    /// Entries per source (indexes of the list's source names).
    pub per_source: Vec<usize>,
    /// The sizes of the lists applied lately (read once; the record stage
    /// adds this one).
    pub history: Vec<Applied>,
}

/// Returns what it measured when the guard lets the list through.
pub(super) fn check(run: &Run, list: &RecipientList, report: &mut Report) -> Step<Guarded> {
    let cfg = &run.cfg.guard;
    let new_fp = fingerprint(list.sorted());
    let history = if run.cfg.guard.shrink_window.is_zero() { Vec::new() } else { run.state.read_history() };
    let largest = largest_recent(run, &history);
    // Refusals beyond the global ones: per-domain shrinks and missing canaries.
    let (baseline, delta, mut more) = compare(run, list, &new_fp, largest.map(|l| l.1));
    report.added = delta.added;
    report.removed = delta.removed;
    let salt = match run.cfg.read_digest_salt() {
        Ok(s) => s,
        Err(e) => {
            more.push(format!("guard.canaries cannot be looked up in the hashed list: {e}"));
            None
        }
    };
    let missing = guard::missing_canaries(&cfg.canaries, list, salt.as_ref().map(|s| s.expose()));
    if !missing.is_empty() {
        more.push(format!("guard.canaries missing from the new list: {}", missing.join(", ")));
    }
    more.extend(guard::slow_shrink(cfg, list.len(), largest));
    let per_source = entries_per_source(list);
    more.extend(guard::source_shrinks(cfg, &source_sizes(run, list, &per_source)));
    let verdict = guard::evaluate_with(cfg, list.len(), &baseline, delta, more, run.opts.force);
    report.guard = GuardReport { ok: verdict.ok, reason: verdict.reason.clone() };
    if verdict.forced {
        tracing::warn!(reason = verdict.reason.as_deref().unwrap_or(""), "guard overridden by --force");
    }
    if !verdict.ok {
        tracing::error!(
            reason = verdict.reason.as_deref().unwrap_or(""),
            "guard refused the new list; outputs left as they are"
        );
        report.outcome = Outcome::GuardRefused;
        return Err(Halt::Done);
    }
    Ok(Guarded { fingerprint: new_fp, per_source, history })
}

/// The largest list applied within the shrink window: (when, size).
fn largest_recent(run: &Run, history: &[Applied]) -> Option<(u64, usize)> {
    let window = run.cfg.guard.shrink_window.as_secs();
    let now = crate::state::unix_now();
    history
        .iter()
        .filter(|a| now.saturating_sub(a.at) <= window)
        .max_by_key(|a| (a.count, a.at))
        .map(|a| (a.at, a.count))
}

/// How many entries of the list each source produced.
fn entries_per_source(list: &RecipientList) -> Vec<usize> {
    let mut counts = vec![0usize; list.source_names().len()];
    for (_, sources) in list.sorted_with_sources() {
        for s in unique_sources(sources) {
            if let Some(c) = counts.get_mut(s) {
                *c += 1;
            }
        }
    }
    counts
}

/// (source, entries in its last good copy, entries now) of every real source
/// that has a last good copy.
fn source_sizes(run: &Run, list: &RecipientList, per_source: &[usize]) -> Vec<(String, usize, usize)> {
    list.source_names()
        .iter()
        .zip(per_source)
        .filter(|(name, _)| run.cfg.sources.iter().any(|s| &s.name == *name))
        .filter_map(|(name, &now)| {
            let old = run.state.read_header(&run.state.slice_path(name)).ok().flatten()?;
            Some((name.clone(), old.count, now))
        })
        .collect()
}

/// The baseline, how the new list differs from it, and per-domain refusals.
fn compare(run: &Run, list: &RecipientList, new_fp: &str, largest: Option<usize>) -> (Baseline, Delta, Vec<String>) {
    let state = &run.state;
    let applied = state.applied_path();
    let first = (Baseline::None, Delta { added: list.len(), removed: 0 }, Vec::new());
    let baseline = |count: usize| Baseline::Applied { count, largest: largest.unwrap_or(0).max(count) };
    match state.read_header(&applied) {
        Ok(None) => first,
        Ok(Some(h)) if h.fingerprint == new_fp && h.count == list.len() => {
            (baseline(h.count), Delta::default(), Vec::new())
        }
        Ok(Some(_)) => match state.read_list(&applied) {
            Ok(Some((h, old))) => {
                let d = guard::delta(old.iter().map(Entry::as_str), list.sorted());
                let mut more = Vec::new();
                if let (Some(pct), true) = (run.cfg.guard.max_removed_percent_per_domain, d.removed > 0) {
                    more.extend(
                        guard::domain_shrinks(old.iter().map(Entry::as_str), list.sorted(), pct)
                            .into_iter()
                            .map(|s| format!("{s}, more than guard.max_removed_percent_per_domain = {pct}")),
                    );
                }
                (baseline(h.count), d, more)
            }
            Ok(None) => first,
            Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default(), Vec::new()),
        },
        Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default(), Vec::new()),
    }
}
