//! Stage 7, record: install the staged state files (new baseline and
//! last-known-good slices), keep the grace tombstones, and write the run
//! record the next run's "unchanged?" stage compares with.

use super::unchanged::Fingerprints;
use super::{Run, Step};
use crate::report::Report;
use crate::state::{
    Applied, OutputRecord, PendingFile, RUN_RECORD_VERSION, RunRecord, SourceRecord, StateError, Tombstones,
};
use crate::writer::Rendered;

/// What the earlier stages leave for the record.
pub(super) struct Recorded<'a> {
    pub state_files: Result<Vec<PendingFile>, StateError>,
    pub tombstones: Tombstones,
    pub fps: Fingerprints,
    /// Values each source refused.
    pub refused: Vec<usize>,
    /// The published list's fingerprint.
    pub fingerprint: String,
    /// The sizes of the lists applied lately, as the guard read them.
    pub history: Vec<Applied>,
    pub ready: &'a [Rendered],
}

/// The guard's slow baseline: the sizes of the lists applied lately. `--force`
/// makes this list the new baseline (the old, larger ones are forgotten).
fn remember_size(run: &Run, mut history: Vec<Applied>, report: &Report) {
    let window = run.cfg.guard.shrink_window;
    if window.is_zero() {
        return;
    }
    let now = crate::state::unix_now();
    if run.opts.force {
        history.clear();
    }
    let changed = report.added > 0 || report.removed > 0;
    if changed || history.last().is_none_or(|a| a.count != report.recipients) {
        history.push(Applied { at: now, count: report.recipients });
        run.state.write_history(history, window, now);
    }
}

pub(super) fn record(run: &Run, r: Recorded, report: &Report) -> Step<()> {
    let (cfg, state) = (run.cfg, &run.state);
    for f in r.state_files? {
        f.install()?;
    }
    if cfg.guard.removal_grace.is_some() || state.has_tombstones() {
        state.write_tombstones(&r.tombstones);
    }
    remember_size(run, r.history, report);
    // A source that was not read (not due) has no fingerprint to compare with
    // next time: no record, so the next run does the whole work.
    if !r.fps.raw.iter().all(Option::is_some) {
        return Ok(());
    }
    let sources = report
        .sources
        .iter()
        .zip(&r.fps.raw)
        .zip(&r.refused)
        .map(|((s, fp), refused)| SourceRecord {
            name: s.name.clone(),
            raw: fp.clone().unwrap_or_default(),
            entries: s.recipients,
            refused: *refused,
        })
        .collect();
    let outputs = cfg
        .outputs
        .iter()
        .zip(r.ready)
        .map(|(o, r)| OutputRecord { name: o.name.clone(), path: o.path.clone(), len: r.len, hash: r.hash.clone() })
        .collect();
    let record = RunRecord {
        version: RUN_RECORD_VERSION,
        config: r.fps.config,
        sources,
        recipients: report.recipients,
        list: r.fingerprint,
        outputs,
    };
    state.write_record(&record)?;
    Ok(())
}
