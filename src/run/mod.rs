//! The one sync. The CLI, the daemon and pipelines all run exactly this, as
//! named stages, each in its own file, each returning its result or ending the
//! run with the report so far:
//!
//! fetch → unchanged? → validate → merge → guard → publish → record
//!
//! Fetching is the only asynchronous stage; everything after it is CPU and
//! disk work, run in one `block_in_place` so that the runtime's other tasks
//! (the daemon's signals and metrics) keep being served.

mod fetch;
mod gather;
mod guard;
mod merge;
mod publish;
mod record;
mod stale;
mod unchanged;

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::policy::{Located, Rejected};
use crate::report::{Outcome, Report, SourceStatus};
use crate::state::{StateDir, StateError};

pub use fetch::{FetchResults, fetch_all, fetch_some};
pub use gather::{shorten, validate};
pub use merge::{keep_in_grace, merge};
pub use stale::check_staleness;

/// Flags of one `sync`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    pub dry_run: bool,
    pub diff: bool,
    pub force: bool,
    /// Drop entries at once instead of keeping them for `guard.removal_grace`.
    pub no_grace: bool,
}

/// A source after fetching and validation.
#[derive(Debug)]
pub struct Gathered {
    pub name: String,
    pub kind: &'static str,
    pub status: SourceStatus,
    pub entries: Vec<Located>,
    pub rejected: Vec<Rejected>,
    /// Values a profile rule left out on purpose (for `why`).
    pub left_out: Vec<Rejected>,
    pub error: Option<String>,
    /// What `why` adds to this source's values (see `Batch::note`).
    pub note: Option<crate::connector::Note>,
}

/// Errors that stop a run before it can report per-source results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the run stopped unexpectedly: {0}")]
    Task(String),
    /// Refused before anything was read: an unsafe output (exit 78).
    #[error("{0}")]
    Refused(String),
}

impl RunError {
    /// A problem of the setup (who runs rcptsync, who owns its directories),
    /// which the operator must fix: exit 78 like a configuration error.
    pub fn is_setup(&self) -> bool {
        matches!(self, RunError::Refused(_) | RunError::State(StateError::Refused(_)))
    }
}

/// How a stage ends the run early: the report says why (a failed source, a
/// guard refusal, a failed output), or an error leaves no report at all.
enum Halt {
    Done,
    Error(RunError),
}

impl From<StateError> for Halt {
    fn from(e: StateError) -> Halt {
        Halt::Error(RunError::State(e))
    }
}

type Step<T> = Result<T, Halt>;

/// A run in progress: what every stage reads.
struct Run<'a> {
    cfg: &'a Config,
    opts: SyncOptions,
    state: StateDir,
}

/// Fetches every source concurrently and validates what they return. A failed
/// source falls back to its last-known-good slice when the config says so.
pub async fn gather(cfg: &Config, state: &StateDir) -> Vec<Gathered> {
    let fetched = fetch_all(cfg, true).await;
    tokio::task::block_in_place(|| validate(cfg, state, fetched))
}

/// Like [`gather`], but every source reads in full (no incremental shortcuts), so
/// that what a directory leaves out on purpose can be explained (`why`).
pub async fn gather_full(cfg: &Config, state: &StateDir) -> Vec<Gathered> {
    let fetched = fetch_all(cfg, false).await;
    tokio::task::block_in_place(|| validate(cfg, state, fetched))
}

/// One complete sync run.
pub async fn sync(cfg: &Config, opts: SyncOptions) -> Result<Report, RunError> {
    sync_some(cfg, opts, &[]).await
}

/// One complete sync run that does not fetch the sources named in `not_due`
/// (the daemon's per-source schedules): they contribute their last good copy.
pub async fn sync_some(cfg: &Config, opts: SyncOptions, not_due: &[String]) -> Result<Report, RunError> {
    let started = Instant::now();
    let state = StateDir::open(&cfg.state_dir, !opts.dry_run)?;
    if !opts.dry_run {
        crate::writer::preflight(&cfg.outputs).map_err(RunError::Refused)?;
    }
    let _lock = if opts.dry_run { None } else { Some(state.lock(cfg.lock_timeout)?) };
    let run = Run { cfg, opts, state };

    let fetched = fetch_some(cfg, true, not_due).await;
    let took: Vec<Duration> = fetched.iter().map(|(_, d)| *d).collect();
    let mut report = tokio::task::block_in_place(|| run.after_fetch(fetched))?;
    for (s, d) in report.sources.iter_mut().zip(took) {
        s.took = d;
    }
    report.elapsed = started.elapsed();
    if !opts.dry_run {
        tokio::task::block_in_place(|| stale::defence(cfg, &run.state, &report));
    }
    Ok(report)
}

impl Run<'_> {
    fn after_fetch(&self, fetched: FetchResults) -> Result<Report, RunError> {
        let (fetched, fps) = match unchanged::check(self, fetched) {
            unchanged::Check::Unchanged(report) => return Ok(report),
            unchanged::Check::Changed(fetched, fps) => (fetched, fps),
        };
        let gathered = validate(self.cfg, &self.state, fetched);
        let mut report = Report::new(gather::source_reports(&gathered), self.cfg);
        match self.stages(gathered, fps, &mut report) {
            Ok(()) | Err(Halt::Done) => Ok(report),
            Err(Halt::Error(e)) => Err(e),
        }
    }

    fn stages(&self, gathered: Vec<Gathered>, fps: unchanged::Fingerprints, report: &mut Report) -> Step<()> {
        let refused = gather::usable(self, &gathered, report)?;
        let (list, tombstones) = timed("merged", || merge::merge_owned(self, gathered));
        report.recipients = list.len();
        let guarded = timed("guard evaluated", || guard::check(self, &list, report))?;
        let staged = timed("rendered and compared", || publish::render(self, &list, &guarded, report))?;
        let Some((ready, state_files)) = staged else { return Ok(()) };
        let ready = timed("committed", || publish::commit(self, ready, report))?;
        let guard::Guarded { fingerprint, history, .. } = guarded;
        let recorded = record::Recorded { state_files, tombstones, fps, refused, fingerprint, history, ready: &ready };
        timed("state recorded", || record::record(self, recorded, report))?;
        crate::mem::dispose((list, ready));
        report.outcome = Outcome::Success;
        Ok(())
    }
}

/// Runs one stage and logs how long it took and the memory high-water mark.
fn timed<T>(stage: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    tracing::debug!(took_ms = t.elapsed().as_millis() as u64, peak_rss_mib = crate::mem::peak_rss_mib(), "{stage}");
    out
}

/// Whether a report published fresh data of every source (a source that was
/// not due at this daemon tick counts as fresh).
pub fn fresh(report: &Report) -> bool {
    report.outcome == Outcome::Success
        && report
            .sources
            .iter()
            .all(|s| s.status == SourceStatus::Ok || (s.status == SourceStatus::LastGood && s.error.is_none()))
}
