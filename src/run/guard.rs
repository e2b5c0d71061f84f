//! Stage 5, guard: the new list against the last applied one (size, removed
//! share, per-domain shrink, canaries). A refusal ends the run with every
//! output as it was.

use super::{Halt, Run, Step};
use crate::policy::RecipientList;
use crate::policy::address::Entry;
use crate::policy::guard::{self, Baseline, Delta};
use crate::report::{GuardReport, Outcome, Report};
use crate::state::fingerprint;

/// Returns the new list's fingerprint when the guard lets it through.
pub(super) fn check(run: &Run, list: &RecipientList, report: &mut Report) -> Step<String> {
    let cfg = &run.cfg.guard;
    let new_fp = fingerprint(list.sorted());
    // Refusals beyond the global ones: per-domain shrinks and missing canaries.
    let (baseline, delta, mut more) = compare(run, list, &new_fp);
    report.added = delta.added;
    report.removed = delta.removed;
    let missing = guard::missing_canaries(&cfg.canaries, list);
    if !missing.is_empty() {
        more.push(format!("guard.canaries missing from the new list: {}", missing.join(", ")));
    }
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
    Ok(new_fp)
}

/// The baseline, how the new list differs from it, and per-domain refusals.
fn compare(run: &Run, list: &RecipientList, new_fp: &str) -> (Baseline, Delta, Vec<String>) {
    let state = &run.state;
    let applied = state.applied_path();
    let first = (Baseline::None, Delta { added: list.len(), removed: 0 }, Vec::new());
    match state.read_header(&applied) {
        Ok(None) => first,
        Ok(Some(h)) if h.fingerprint == new_fp && h.count == list.len() => {
            (Baseline::Applied { count: h.count }, Delta::default(), Vec::new())
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
                (Baseline::Applied { count: h.count }, d, more)
            }
            Ok(None) => first,
            Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default(), Vec::new()),
        },
        Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default(), Vec::new()),
    }
}
