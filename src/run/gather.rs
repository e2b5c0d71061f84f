//! Stage 3, validate: what each source returned becomes its entries (the
//! connector's [`crate::connector::Batch::validate`]); a failed source falls
//! back to its last-known-good slice when the config says so, and a run whose
//! sources cannot all be used ends here.

use std::time::{Duration, Instant};

use super::{FetchResults, Gathered, Halt, Run, Step};
use crate::config::{Config, SourceConfig};
use crate::connector::{SourceError, Valid};
use crate::policy::{Locator, OnSourceFailure};
use crate::report::{Outcome, Report, SourceReport, SourceStatus};
use crate::state::StateDir;

/// Validates what the sources returned; a failed source falls back to its
/// last-known-good slice when the config says so.
pub fn validate(cfg: &Config, state: &StateDir, fetched: FetchResults) -> Vec<Gathered> {
    cfg.sources
        .iter()
        .zip(fetched)
        .map(|(s, (result, took))| {
            // A put-off parse runs here unless the caller ran it already.
            match result.and_then(|f| f.complete().map(|(b, _)| b)) {
                Ok(None) => not_due(s, state),
                Ok(Some(batch)) => {
                    let t = Instant::now();
                    let valid = batch.validate();
                    tracing::debug!(source = %s.name, took_ms = t.elapsed().as_millis() as u64, peak_rss_mib = crate::mem::peak_rss_mib(), "validated");
                    fetched_ok(s, valid, took)
                }
                Err(e) => failed(cfg, s, state, e),
            }
        })
        .collect()
}

fn fetched_ok(s: &SourceConfig, v: Valid, took: Duration) -> Gathered {
    let kind = s.kind();
    for r in &v.rejected {
        tracing::warn!(source = %s.name, object = %r.locator, value = ?shorten(&r.value), "dropped invalid entry: it {}", r.reason);
    }
    tracing::info!(source = %s.name, kind, entries = v.entries.len(), refused = v.rejected.len(), took_ms = took.as_millis() as u64, "source fetched");
    let Valid { entries, rejected, left_out, note } = v;
    Gathered { name: s.name.clone(), kind, status: SourceStatus::Ok, entries, rejected, left_out, error: None, note }
}

fn not_due(s: &SourceConfig, state: &StateDir) -> Gathered {
    // The daemon only skips a source that has a copy; if it is gone since, the
    // source is simply fetched at its next tick.
    let entries = last_good(state, &s.name).ok().flatten().unwrap_or_default();
    tracing::info!(source = %s.name, entries = entries.len(), "not due at this tick: using its last good copy");
    Gathered {
        name: s.name.clone(),
        kind: s.kind(),
        status: SourceStatus::LastGood,
        entries,
        rejected: Vec::new(),
        left_out: Vec::new(),
        error: None,
        note: None,
    }
}

fn failed(cfg: &Config, s: &SourceConfig, state: &StateDir, e: SourceError) -> Gathered {
    let kind = s.kind();
    let msg = format!("source {} ({kind}): {e}", s.name);
    tracing::error!(source = %s.name, kind, error = %e, "source failed");
    let (status, entries, error) = match cfg.guard.on_source_failure {
        OnSourceFailure::Abort => (SourceStatus::Failed, Vec::new(), msg),
        OnSourceFailure::KeepLastGood => match last_good(state, &s.name) {
            Ok(Some(entries)) => {
                tracing::warn!(source = %s.name, entries = entries.len(), "using the last-known-good copy");
                (SourceStatus::LastGood, entries, msg)
            }
            Ok(None) => (SourceStatus::Failed, Vec::new(), format!("{msg}; no last-known-good copy exists yet")),
            Err(se) => (SourceStatus::Failed, Vec::new(), format!("{msg}; the last-known-good copy is unusable: {se}")),
        },
    };
    Gathered {
        name: s.name.clone(),
        kind,
        status,
        entries,
        rejected: Vec::new(),
        left_out: Vec::new(),
        error: Some(error),
        note: None,
    }
}

/// A source's last-known-good slice, as entries.
fn last_good(state: &StateDir, name: &str) -> Result<Option<Vec<crate::policy::Located>>, crate::state::StateError> {
    Ok(state
        .read_list(&state.slice_path(name))?
        .map(|(_, entries)| entries.into_iter().map(|e| (e, Locator::LastGood)).collect()))
}

/// A refused value as logged: a hostile directory can hold megabyte-long
/// values, and one log line must stay readable.
pub fn shorten(value: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 200;
    if value.len() <= MAX {
        return value.into();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &value[..end], value.len()).into()
}

pub(super) fn source_reports(gathered: &[Gathered]) -> Vec<SourceReport> {
    gathered
        .iter()
        .map(|g| SourceReport {
            name: g.name.clone(),
            kind: g.kind.to_string(),
            status: g.status,
            recipients: g.entries.len(),
            error: g.error.clone(),
            took: Duration::ZERO,
        })
        .collect()
}

/// Ends the run when a source failed without a usable copy (or any source
/// failed under `on_source_failure = "abort"`); else returns how many values
/// each source refused (for the run record).
pub(super) fn usable(run: &Run, gathered: &[Gathered], report: &mut Report) -> Step<Vec<usize>> {
    let abort = run.cfg.guard.on_source_failure == OnSourceFailure::Abort;
    let failed: Vec<&str> = gathered
        .iter()
        .filter(|g| g.status == SourceStatus::Failed || (g.status != SourceStatus::Ok && abort))
        .filter_map(|g| g.error.as_deref())
        .collect();
    if !failed.is_empty() {
        report.outcome = Outcome::Failed(format!("nothing written: {}", failed.join("; ")));
        return Err(Halt::Done);
    }
    Ok(gathered.iter().map(|g| g.rejected.len()).collect())
}
