//! Stage 2, unchanged?: a run whose configuration, sources' raw data, applied
//! list and outputs on disk are all as the last successful run left them stops
//! here, having written nothing. Otherwise the put-off parses run.

use std::time::{Duration, Instant};

use super::{FetchResults, Run};
use crate::config::Config;
use crate::connector::Fetched;
use crate::report::{Report, SourceReport, SourceStatus};
use crate::state::{OutputRecord, StateDir, hash_bytes, hash_file};
use crate::writer;
use crate::writer::config::OutputConfig;

/// The fingerprints the run record keeps.
pub(super) struct Fingerprints {
    pub config: String,
    /// Per source; None when it was not read (failed, not due).
    pub raw: Vec<Option<String>>,
}

pub(super) enum Check {
    /// Nothing to do: the report of the run that stopped here.
    Unchanged(Report),
    /// Something changed: every source's data, parsed.
    Changed(FetchResults, Fingerprints),
}

pub(super) fn check(run: &Run, fetched: FetchResults) -> Check {
    let cfg = run.cfg;
    let config = config_fingerprint(cfg);
    let mut raw: Vec<Option<String>> =
        fetched.iter().map(|(r, _)| r.as_ref().ok().and_then(Fetched::fingerprint)).collect();
    // Entries in removal grace can expire while the sources stay the same.
    let in_grace = cfg.guard.removal_grace.is_some() && !run.state.read_tombstones().is_empty();
    // A salt is a secret kept out of the config fingerprint, so a changed salt
    // file would go unnoticed: hashed outputs are always rendered.
    let salted = cfg.outputs.iter().any(|o| o.hash_salt.is_some());
    if !in_grace
        && !salted
        && let Some(report) = unchanged(cfg, &run.state, &config, &raw)
    {
        return Check::Unchanged(report);
    }
    // The record keeps the fingerprint of what was parsed, in case a file
    // changed since it was hashed.
    let fetched = fetched
        .into_iter()
        .zip(raw.iter_mut())
        .map(|((r, took), fp)| {
            let t = Instant::now();
            match r.and_then(Fetched::complete) {
                Ok((batch, parsed)) => {
                    if parsed.is_some() {
                        *fp = parsed;
                    }
                    (Ok(batch.map_or(Fetched::NotDue, Fetched::Ready)), took + t.elapsed())
                }
                Err(e) => {
                    *fp = None;
                    (Err(e), took)
                }
            }
        })
        .collect();
    Check::Changed(fetched, Fingerprints { config, raw })
}

/// Fingerprint of everything in the configuration that shapes the outputs.
fn config_fingerprint(cfg: &Config) -> String {
    let text = format!("rcptsync {} {cfg:?}", env!("CARGO_PKG_VERSION"));
    hash_bytes(text.as_bytes())
}

/// Some when output `o` is on disk exactly as the record says (and its
/// postmap database is not older than it).
fn as_recorded(o: &OutputConfig, r: &OutputRecord) -> Option<()> {
    if o.name != r.name || o.path != r.path {
        return None;
    }
    let meta = std::fs::metadata(&o.path).ok()?;
    if meta.len() != r.len {
        return None;
    }
    if let Some(map) = writer::target(o).map_path() {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(map).ok()?;
        if (m.mtime(), m.mtime_nsec()) < (meta.mtime(), meta.mtime_nsec()) {
            return None;
        }
    }
    let (len, hash) = hash_file(&o.path).ok()?;
    (len == r.len && hash == r.hash).then_some(())
}

/// The report of a run with nothing to do, or None when anything differs from
/// the last successful run (configuration, any source's raw data, the published
/// list, or any output's bytes on disk).
fn unchanged(cfg: &Config, state: &StateDir, config_fp: &str, raw_fps: &[Option<String>]) -> Option<Report> {
    let rec = state.read_record()?;
    if rec.config != config_fp || rec.sources.len() != raw_fps.len() || rec.outputs.len() != cfg.outputs.len() {
        return None;
    }
    for ((s, r), fp) in cfg.sources.iter().zip(&rec.sources).zip(raw_fps) {
        if s.name != r.name || fp.as_deref() != Some(r.raw.as_str()) {
            return None;
        }
    }
    if state.read_header(&state.applied_path()).ok()??.fingerprint != rec.list {
        return None;
    }
    // The last-known-good slices must still be there to fall back on.
    for s in &cfg.sources {
        state.read_header(&state.slice_path(&s.name)).ok()??;
    }
    for (o, r) in cfg.outputs.iter().zip(&rec.outputs) {
        as_recorded(o, r)?;
    }
    // A killed run may have left a staged file behind; the outputs themselves are
    // verified above.
    for o in &cfg.outputs {
        writer::target(o).clean_leftovers();
    }
    for s in &rec.sources {
        if s.refused > 0 {
            tracing::warn!(source = %s.name, refused = s.refused, "source data unchanged since the last run, which dropped invalid entries (see that run's log)");
        }
    }
    tracing::info!(
        entries = rec.recipients,
        "sources and configuration unchanged since the last run and every output verified: nothing to do"
    );
    let mut report = Report::new(
        rec.sources
            .iter()
            .zip(&cfg.sources)
            .map(|(r, s)| SourceReport {
                name: r.name.clone(),
                kind: s.kind().to_string(),
                status: SourceStatus::Ok,
                recipients: r.entries,
                error: None,
                took: Duration::ZERO,
            })
            .collect(),
        cfg,
    );
    report.recipients = rec.recipients;
    Some(report)
}
