//! Stage 6, publish: render every output and compare it with disk (staging
//! the changed ones' temp files and the new state files side by side), then
//! commit the changed outputs with their hooks.

use std::sync::Arc;

use super::guard::Guarded;
use super::{Halt, Run, Step};
use crate::policy::{RecipientList, unique_sources};
use crate::report::{Outcome, OutputReport, Report};
use crate::state::{PendingFile, StateDir, StateError, fingerprint};
use crate::writer::{self, Rendered};

/// The rendered outputs and the staged state files, or None for a dry run
/// (which ends successfully here, having written nothing).
pub(super) type Staged = Option<(Vec<Rendered>, Result<Vec<PendingFile>, StateError>)>;

pub(super) fn render(run: &Run, list: &Arc<RecipientList>, guarded: &Guarded, report: &mut Report) -> Step<Staged> {
    let (cfg, opts) = (run.cfg, run.opts);
    // Both are complete on disk before anything is renamed.
    let (rendered, staged_state) = rayon::join(
        || writer::render_all(&cfg.outputs, list, opts.diff, !opts.dry_run),
        || {
            if opts.dry_run {
                Ok(Vec::new())
            } else {
                stage_state(&run.state, list, &guarded.fingerprint, &guarded.per_source)
            }
        },
    );
    let (ready, errors): (Vec<_>, Vec<_>) = rendered.into_iter().partition(Result::is_ok);
    let errors: Vec<String> = errors.into_iter().filter_map(Result::err).collect();
    if !errors.is_empty() {
        report.outcome = Outcome::Failed(format!("nothing written: {}", errors.join("; ")));
        return Err(Halt::Done);
    }
    let ready: Vec<Rendered> = ready.into_iter().filter_map(Result::ok).collect();
    report.outputs = cfg
        .outputs
        .iter()
        .zip(&ready)
        .map(|(o, r)| OutputReport {
            name: o.name.clone(),
            path: o.path.clone(),
            changed: r.changed,
            reloaded: false,
            diff: r.diff.clone(),
            error: None,
        })
        .collect();
    report.changed = ready.iter().any(|r| r.changed);
    if opts.dry_run {
        report.outcome = Outcome::Success;
        return Ok(None);
    }
    Ok(Some((ready, staged_state)))
}

/// Renames the changed outputs into place and runs their hooks.
pub(super) fn commit(run: &Run, mut ready: Vec<Rendered>, report: &mut Report) -> Step<Vec<Rendered>> {
    let outcomes = writer::commit_all(&run.cfg.outputs, &mut ready);
    let mut failures = Vec::new();
    for (rep, o) in report.outputs.iter_mut().zip(outcomes) {
        rep.changed = o.changed;
        rep.reloaded = o.reloaded;
        if let Some(e) = &o.error {
            failures.push(format!("output {}: {e}", o.name));
            rep.error = Some(e.clone());
        }
    }
    report.changed = report.outputs.iter().any(|o| o.changed);
    if !failures.is_empty() {
        for f in &failures {
            tracing::error!("{f}");
        }
        report.outcome = Outcome::Failed(failures.join("; "));
        return Err(Halt::Done);
    }
    Ok(ready)
}

/// Writes, to fsynced temp files, the state files that differ from what is on
/// disk: the new baseline and each source's last-known-good slice. Done while
/// the outputs are rendered; installed only if every output is committed.
fn stage_state(
    state: &StateDir,
    list: &RecipientList,
    new_fp: &str,
    counts: &[usize],
) -> Result<Vec<PendingFile>, StateError> {
    let mut pending = Vec::new();
    let applied = state.applied_path();
    let applied_changed = state.read_header(&applied).ok().flatten().is_none_or(|h| h.fingerprint != new_fp);
    if applied_changed {
        pending.push(state.stage_list(&applied, "list", list.len(), list.sorted(), Some(new_fp))?.1);
    }
    let linked = if applied_changed { pending[0].staged().to_path_buf() } else { applied };
    pending.extend(stage_slices(state, list, new_fp, counts, &linked)?);
    Ok(pending)
}

/// Each source's slice of the final list, built in the list's sorted order
/// (addresses and catch-alls merged), so no sorting is needed. `whole_list` is
/// the file holding the whole list, linked to for a source that is all of it.
fn stage_slices(
    state: &StateDir,
    list: &RecipientList,
    new_fp: &str,
    counts: &[usize],
    whole_list: &std::path::Path,
) -> Result<Vec<PendingFile>, StateError> {
    let mut pending = Vec::new();
    let names = list.source_names();
    // A source that produced the whole list (the usual single-source case) has
    // the list itself as its slice (counted by the guard), so it is not copied.
    let whole: Vec<bool> = counts.iter().map(|&c| c == list.len()).collect();
    let mut slices: Vec<Vec<&str>> = vec![Vec::new(); names.len()];
    for (entry, sources) in list.sorted_with_sources() {
        for s in unique_sources(sources) {
            if let (Some(false), Some(v)) = (whole.get(s).copied(), slices.get_mut(s)) {
                v.push(entry);
            }
        }
    }
    for (i, (name, slice)) in names.iter().zip(slices).enumerate() {
        if name == crate::policy::INCLUDE_SOURCE || name == crate::policy::GRACE_SOURCE {
            continue;
        }
        let path = state.slice_path(name);
        let fp = if whole[i] { new_fp.to_string() } else { fingerprint(slice.iter().copied()) };
        if state.read_header(&path).ok().flatten().is_none_or(|h| h.fingerprint != fp) {
            let file = if fp == new_fp {
                // Same bytes as the whole list (one source, no includes): link, don't copy.
                state.stage_link(whole_list, &path)?
            } else {
                state.stage_list(&path, "list", slice.len(), slice.iter().copied(), Some(&fp))?.1
            };
            pending.push(file);
        }
    }
    Ok(pending)
}
