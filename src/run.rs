//! The one sync function. The CLI, the daemon and pipelines all run exactly this:
//! fetch every source → merge under the policy → guard against the last applied
//! list → render every output → write only what changed, with hooks → record state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::config::{Config, OnSourceFailure};
use crate::connector::{Fetched, Source, SourceError};
use crate::policy::address::Entry;
use crate::policy::guard::{self, Baseline, Delta, Verdict};
use crate::policy::{Located, Locator, Policy, RecipientList, Rejected, normalise};
use crate::report::{GuardReport, Outcome, OutputReport, Report, SourceReport, SourceStatus};
use crate::state::{
    OutputRecord, PendingFile, RUN_RECORD_VERSION, RunRecord, SourceRecord, StateDir, StateError, fingerprint,
    hash_bytes, hash_file,
};
use crate::writer;

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
}

/// Errors that stop a run before it can report per-source results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the run stopped unexpectedly: {0}")]
    Task(String),
}

/// Fetches every source concurrently and validates what they return. A failed
/// source falls back to its last-known-good slice when the config says so.
pub async fn gather(cfg: &Config, state: &StateDir) -> Vec<Gathered> {
    let fetched = fetch_all(cfg, true).await;
    validate(cfg, state, fetched)
}

/// Like [`gather`], but every source reads in full (no incremental shortcuts), so
/// that what a directory leaves out on purpose can be explained (`why`).
pub async fn gather_full(cfg: &Config, state: &StateDir) -> Vec<Gathered> {
    let fetched = fetch_all(cfg, false).await;
    validate(cfg, state, fetched)
}

/// What each source returned, in config order, with how long it took.
pub type FetchResults = Vec<(Result<Fetched, SourceError>, Duration)>;

/// Fetches every source concurrently.
pub async fn fetch_all(cfg: &Config, incremental: bool) -> FetchResults {
    fetch_some(cfg, incremental, &[]).await
}

/// Fetches every source concurrently except those named in `not_due`, which
/// get [`SourceError::not_due`] (their last good copy is used).
pub async fn fetch_some(cfg: &Config, incremental: bool, not_due: &[String]) -> FetchResults {
    let mut set = JoinSet::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        if not_due.contains(&s.name) {
            set.spawn(async move { (i, Err(SourceError::not_due()), Duration::ZERO) });
            continue;
        }
        let source = if incremental { Source::build_with_state(s, &cfg.state_dir) } else { Source::build(s) };
        set.spawn(async move {
            let started = Instant::now();
            let r = source.fetch().await;
            (i, r, started.elapsed())
        });
    }
    let mut fetched: Vec<Option<(Result<Fetched, SourceError>, Duration)>> =
        (0..cfg.sources.len()).map(|_| None).collect();
    let mut progress = Progress::new(cfg.sources.iter().map(|s| s.name.clone()).collect());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    // Directory and database drivers read a whole protocol message before
    // rcptsync sees it, so an enormous LDAP message or SQL row cannot be refused
    // by size: instead the process's memory is watched while sources are
    // fetched, and past the limit every fetch still running is stopped.
    let limit = crate::mem::limit_mib();
    let tripped = std::sync::Arc::new(tokio::sync::Notify::new());
    let _watch = limit.map(|l| {
        let tripped = tripped.clone();
        crate::mem::MemoryWatch::start(l, move || tripped.notify_one())
    });
    let mut over: Option<u64> = None;
    loop {
        tokio::select! {
            joined = set.join_next() => match joined {
                Some(Ok((i, r, took))) => {
                    fetched[i] = Some((r, took));
                    progress.done(i);
                }
                Some(Err(e)) if e.is_cancelled() => {}
                Some(Err(e)) => tracing::error!(error = %e, "source task failed"),
                None => break,
            },
            _ = tick.tick() => progress.show(),
            _ = tripped.notified(), if over.is_none() => {
                over = limit;
                set.abort_all();
            }
        }
    }
    progress.clear();
    let stopped = |limit: u64| {
        SourceError::new(format!(
            "stopped: rcptsync's memory passed its limit of {limit} MiB while this source was being fetched \
             (an enormous directory message or database row?); nothing was written. The limit is half the \
             machine's memory unless {} sets it (MiB)",
            crate::mem::LIMIT_ENV
        ))
    };
    fetched
        .into_iter()
        .map(|f| {
            f.unwrap_or_else(|| match over {
                Some(limit) => (Err(stopped(limit)), Duration::ZERO),
                None => (Err(SourceError::new("fetch task did not complete")), Duration::ZERO),
            })
        })
        .collect()
}

/// A one-line "still fetching" display on stderr, only when stderr is a terminal
/// and a fetch takes more than a moment (a directory with many pages).
struct Progress {
    names: Vec<String>,
    done: Vec<bool>,
    started: Instant,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(names: Vec<String>) -> Progress {
        use std::io::IsTerminal as _;
        let n = names.len();
        Progress {
            names,
            done: vec![false; n],
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn done(&mut self, i: usize) {
        if let Some(d) = self.done.get_mut(i) {
            *d = true;
        }
    }

    fn show(&mut self) {
        if !self.tty || self.started.elapsed() < Duration::from_secs(1) {
            return;
        }
        let waiting: Vec<&str> =
            self.names.iter().zip(&self.done).filter(|(_, d)| !**d).map(|(n, _)| n.as_str()).collect();
        if waiting.is_empty() {
            return;
        }
        let line = format!(
            "fetching {}: {:.0}s, {} of {} sources done",
            waiting.join(", "),
            self.started.elapsed().as_secs_f64(),
            self.names.len() - waiting.len(),
            self.names.len()
        );
        eprint!("\r\x1b[2K{line}");
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }
}

/// Validates what the sources returned; a failed source falls back to its
/// last-known-good slice when the config says so.
pub fn validate(cfg: &Config, state: &StateDir, fetched: FetchResults) -> Vec<Gathered> {
    let mut out = Vec::with_capacity(cfg.sources.len());
    for (s, (result, took)) in cfg.sources.iter().zip(fetched) {
        let kind = s.spec.kind();
        // A put-off parse runs here unless the caller ran it already.
        let result = result.and_then(|f| tokio::task::block_in_place(|| f.complete()).map(|(f, _)| f));
        match result {
            Ok(f) => {
                let Fetched { items, entries: mut pre, mut rejected, left_out, .. } = f;
                let t = Instant::now();
                let (mut entries, bad) = tokio::task::block_in_place(|| normalise(items));
                if entries.is_empty() {
                    entries = pre;
                } else {
                    entries.append(&mut pre);
                }
                tracing::debug!(source = %s.name, took_ms = t.elapsed().as_millis() as u64, peak_rss_mib = crate::mem::peak_rss_mib(), "validated");
                rejected.extend(bad);
                for r in &rejected {
                    tracing::warn!(source = %s.name, object = %r.locator, value = ?shorten(&r.value), "dropped invalid entry: it {}", r.reason);
                }
                tracing::info!(source = %s.name, kind, entries = entries.len(), refused = rejected.len(), took_ms = took.as_millis() as u64, "source fetched");
                out.push(Gathered {
                    name: s.name.clone(),
                    kind,
                    status: SourceStatus::Ok,
                    entries,
                    rejected,
                    left_out,
                    error: None,
                });
            }
            Err(e) if e.not_due => {
                let entries = match state.read_list(&state.slice_path(&s.name)) {
                    Ok(Some((_, entries))) => entries.into_iter().map(|e| (e, Locator::LastGood)).collect(),
                    // The daemon only skips a source that has a copy; if it is gone
                    // since, the source is simply fetched at its next tick.
                    _ => Vec::new(),
                };
                tracing::info!(source = %s.name, entries = entries.len(), "not due at this tick: using its last good copy");
                out.push(Gathered {
                    name: s.name.clone(),
                    kind,
                    status: SourceStatus::LastGood,
                    entries,
                    rejected: Vec::new(),
                    left_out: Vec::new(),
                    error: None,
                });
            }
            Err(e) => {
                let msg = format!("source {} ({kind}): {e}", s.name);
                tracing::error!(source = %s.name, kind, error = %e, "source failed");
                let (status, entries, error) = match cfg.guard.on_source_failure {
                    OnSourceFailure::Abort => (SourceStatus::Failed, Vec::new(), msg),
                    OnSourceFailure::KeepLastGood => match state.read_list(&state.slice_path(&s.name)) {
                        Ok(Some((_, entries))) => {
                            tracing::warn!(source = %s.name, entries = entries.len(), "using the last-known-good copy");
                            let entries = entries.into_iter().map(|e| (e, Locator::LastGood)).collect();
                            (SourceStatus::LastGood, entries, msg)
                        }
                        Ok(None) => {
                            (SourceStatus::Failed, Vec::new(), format!("{msg}; no last-known-good copy exists yet"))
                        }
                        Err(se) => (
                            SourceStatus::Failed,
                            Vec::new(),
                            format!("{msg}; the last-known-good copy is unusable: {se}"),
                        ),
                    },
                };
                out.push(Gathered {
                    name: s.name.clone(),
                    kind,
                    status,
                    entries,
                    rejected: Vec::new(),
                    left_out: Vec::new(),
                    error: Some(error),
                });
            }
        }
    }
    out
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

/// Merges gathered sources under the policy.
pub fn merge(cfg: &Config, gathered: &[Gathered]) -> (RecipientList, Vec<usize>) {
    let policy = Policy::new(&cfg.policy);
    policy.apply(gathered.iter().map(|g| (g.name.clone(), g.entries.clone())).collect())
}

/// Merges gathered sources under the policy, consuming their entries (the sync
/// path: a million-entry source is not copied).
pub fn merge_owned(cfg: &Config, gathered: &mut [Gathered]) -> (RecipientList, Vec<usize>) {
    let policy = Policy::new(&cfg.policy);
    policy.apply_lean(gathered.iter_mut().map(|g| (g.name.clone(), std::mem::take(&mut g.entries))).collect())
}

fn source_reports(gathered: &[Gathered]) -> Vec<SourceReport> {
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

/// One complete sync run.
pub async fn sync(cfg: &Config, opts: SyncOptions) -> Result<Report, RunError> {
    sync_some(cfg, opts, &[]).await
}

/// One complete sync run that does not fetch the sources named in `not_due`
/// (the daemon's per-source schedules): they contribute their last good copy.
pub async fn sync_some(cfg: &Config, opts: SyncOptions, not_due: &[String]) -> Result<Report, RunError> {
    let mut took = Vec::new();
    let mut report = sync_inner(cfg, opts, not_due, &mut took).await?;
    for (s, d) in report.sources.iter_mut().zip(took) {
        s.took = d;
    }
    if !opts.dry_run {
        tokio::task::block_in_place(|| stale_defence(cfg, &report));
    }
    Ok(report)
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

/// `guard.max_staleness`: after a run that was not fresh, if the last fresh one
/// is older than the limit, runs `on_stale` once (e.g. make Postfix tempfail
/// unknown recipients instead of rejecting them on stale data); after the next
/// fresh run, runs `on_fresh` once. A marker in `state_dir` remembers which.
fn stale_defence(cfg: &Config, report: &Report) {
    let Some(max) = cfg.guard.max_staleness else { return };
    let Ok(state) = StateDir::open(&cfg.state_dir, false) else { return };
    let (marker, last) = (state.root().join("stale"), state.root().join("last-fresh"));
    let now = crate::state::unix_now();
    let hook = |argv: &[String], what: &str| -> bool {
        if argv.is_empty() {
            return true;
        }
        match writer::hook::run(argv, crate::config::DEFAULT_HOOK_TIMEOUT) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "{what} hook failed; it runs again after the next run");
                false
            }
        }
    };
    if fresh(report) {
        let _ = std::fs::write(&last, now.to_string());
        if marker.exists() {
            tracing::info!("the list is fresh again: running guard.on_fresh");
            if hook(&cfg.guard.on_fresh, "on_fresh") {
                let _ = std::fs::remove_file(&marker);
            }
        }
        return;
    }
    let since = std::fs::read_to_string(&last).ok().and_then(|t| t.trim().parse::<u64>().ok()).or_else(|| {
        let m = std::fs::metadata(state.applied_path()).ok()?.modified().ok()?;
        m.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
    });
    let Some(since) = since else { return };
    let age = now.saturating_sub(since);
    if age <= max.as_secs() {
        return;
    }
    if marker.exists() {
        tracing::warn!(age_s = age, "the published list is still stale");
        return;
    }
    tracing::error!(
        age_s = age,
        max_staleness_s = max.as_secs(),
        "the published list is stale (no fresh run for longer than guard.max_staleness): running guard.on_stale"
    );
    if hook(&cfg.guard.on_stale, "on_stale") {
        let _ = std::fs::write(&marker, now.to_string());
    }
}

async fn sync_inner(
    cfg: &Config,
    opts: SyncOptions,
    not_due: &[String],
    took: &mut Vec<Duration>,
) -> Result<Report, RunError> {
    let started = Instant::now();
    let state = StateDir::open(&cfg.state_dir, !opts.dry_run)?;
    let _lock = if opts.dry_run { None } else { Some(state.lock(cfg.lock_timeout)?) };

    let fetched = fetch_some(cfg, true, not_due).await;
    *took = fetched.iter().map(|(_, d)| *d).collect();
    let config_fp = config_fingerprint(cfg);
    let raw_fps: Vec<Option<String>> = fetched.iter().map(|(r, _)| r.as_ref().ok().map(raw_fingerprint)).collect();
    // Entries in removal grace can expire while the sources stay the same.
    let in_grace = cfg.guard.removal_grace.is_some() && !read_tombstones(&state).is_empty();
    // A salt is a secret kept out of the config fingerprint, so a changed salt
    // file would go unnoticed: hashed outputs are always rendered.
    let salted = cfg.outputs.iter().any(|o| o.hash_salt.is_some());
    if let Some(mut report) = (!in_grace && !salted)
        .then(|| tokio::task::block_in_place(|| unchanged(cfg, &state, &config_fp, &raw_fps)))
        .flatten()
    {
        report.elapsed = started.elapsed();
        return Ok(report);
    }
    // Something changed: run the put-off parses. The record keeps the
    // fingerprint of what was parsed, in case a file changed since it was hashed.
    let mut raw_fps = raw_fps;
    let fetched: FetchResults = fetched
        .into_iter()
        .zip(raw_fps.iter_mut())
        .map(|((r, took), fp)| {
            let t = Instant::now();
            match r.and_then(|f| tokio::task::block_in_place(|| f.complete())) {
                Ok((f, parsed)) => {
                    if parsed.is_some() {
                        *fp = parsed;
                    }
                    (Ok(f), took + t.elapsed())
                }
                Err(e) => {
                    *fp = None;
                    (Err(e), took)
                }
            }
        })
        .collect();
    let mut gathered = validate(cfg, &state, fetched);
    let refused: Vec<usize> = gathered.iter().map(|g| g.rejected.len()).collect();
    let mut report = Report::new(source_reports(&gathered), cfg);
    let failed: Vec<&str> = gathered
        .iter()
        .filter(|g| {
            g.status == SourceStatus::Failed
                || (g.status != SourceStatus::Ok && cfg.guard.on_source_failure == OnSourceFailure::Abort)
        })
        .filter_map(|g| g.error.as_deref())
        .collect();
    if !failed.is_empty() {
        report.outcome = Outcome::Failed(format!("nothing written: {}", failed.join("; ")));
        return Ok(report);
    }

    let t = Instant::now();
    // Entries that left every source stay for guard.removal_grace (not with
    // --force or --no-grace, which drop them at once and forget the tombstones).
    let tombstones = match (cfg.guard.removal_grace, opts.force || opts.no_grace) {
        (Some(grace), false) => tokio::task::block_in_place(|| keep_in_grace(&state, &mut gathered, grace)),
        _ => BTreeMap::new(),
    };
    let list = tokio::task::block_in_place(|| {
        let (list, dropped) = merge_owned(cfg, &mut gathered);
        report_drops(&gathered, &dropped);
        Arc::new(list)
    });
    drop(gathered);
    tracing::debug!(
        took_ms = t.elapsed().as_millis() as u64,
        peak_rss_mib = crate::mem::peak_rss_mib(),
        entries = list.len(),
        "merged"
    );
    let t = Instant::now();
    report.recipients = list.len();

    // Guard against the last applied list.
    let new_fp = fingerprint(list.sorted());
    let applied_path = state.applied_path();
    // Refusals beyond the global ones: per-domain shrinks and missing canaries.
    let mut more: Vec<String> = Vec::new();
    let (baseline, delta) = match state.read_header(&applied_path) {
        Ok(None) => (Baseline::None, Delta { added: list.len(), removed: 0 }),
        Ok(Some(h)) if h.fingerprint == new_fp && h.count == list.len() => {
            (Baseline::Applied { count: h.count }, Delta::default())
        }
        Ok(Some(_)) => match state.read_list(&applied_path) {
            Ok(Some((h, old))) => {
                let d = guard::delta(old.iter().map(Entry::as_str), list.sorted());
                if let (Some(pct), true) = (cfg.guard.max_removed_percent_per_domain, d.removed > 0) {
                    more.extend(
                        guard::domain_shrinks(old.iter().map(Entry::as_str), list.sorted(), pct)
                            .into_iter()
                            .map(|s| format!("{s}, more than guard.max_removed_percent_per_domain = {pct}")),
                    );
                }
                (Baseline::Applied { count: h.count }, d)
            }
            Ok(None) => (Baseline::None, Delta { added: list.len(), removed: 0 }),
            Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default()),
        },
        Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default()),
    };
    report.added = delta.added;
    report.removed = delta.removed;
    let missing = guard::missing_canaries(&cfg.guard.canaries, &list);
    if !missing.is_empty() {
        more.push(format!("guard.canaries missing from the new list: {}", missing.join(", ")));
    }
    let verdict: Verdict = guard::evaluate_with(&cfg.guard, list.len(), &baseline, delta, more, opts.force);
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
        return Ok(report);
    }

    // Render and compare with disk.
    tracing::debug!(
        took_ms = t.elapsed().as_millis() as u64,
        peak_rss_mib = crate::mem::peak_rss_mib(),
        "guard evaluated"
    );
    let t = Instant::now();
    // Render (and, for a real run, stage the changed outputs' temp files) while the
    // state files are staged: both are complete on disk before anything is renamed.
    let (rendered, staged_state) = tokio::task::block_in_place(|| {
        rayon::join(
            || writer::render_all(&cfg.outputs, &list, opts.diff, !opts.dry_run),
            || if opts.dry_run { Ok(Vec::new()) } else { stage_state(&state, &list, &new_fp) },
        )
    });
    let mut ready = Vec::new();
    let mut errors = Vec::new();
    for r in rendered {
        match r {
            Ok(r) => ready.push(r),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        report.outcome = Outcome::Failed(format!("nothing written: {}", errors.join("; ")));
        return Ok(report);
    }
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
        report.elapsed = started.elapsed();
        return Ok(report);
    }

    tracing::debug!(
        took_ms = t.elapsed().as_millis() as u64,
        peak_rss_mib = crate::mem::peak_rss_mib(),
        "rendered and compared"
    );
    let t = Instant::now();
    let outcomes = tokio::task::block_in_place(|| writer::commit_all(&cfg.outputs, &mut ready));
    tracing::debug!(took_ms = t.elapsed().as_millis() as u64, peak_rss_mib = crate::mem::peak_rss_mib(), "committed");
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
        return Ok(report);
    }

    // Record the new baseline and last-known-good slices, only when they differ.
    let t = Instant::now();
    for f in staged_state? {
        f.install()?;
    }
    if cfg.guard.removal_grace.is_some() || state.root().join(TOMBSTONES).exists() {
        write_tombstones(&state, &tombstones);
    }
    if raw_fps.iter().all(Option::is_some) {
        let record = RunRecord {
            version: RUN_RECORD_VERSION,
            config: config_fp,
            sources: report
                .sources
                .iter()
                .zip(&raw_fps)
                .zip(&refused)
                .map(|((s, fp), refused)| SourceRecord {
                    name: s.name.clone(),
                    raw: fp.clone().unwrap_or_default(),
                    entries: s.recipients,
                    refused: *refused,
                })
                .collect(),
            recipients: list.len(),
            list: new_fp.clone(),
            outputs: cfg
                .outputs
                .iter()
                .zip(&ready)
                .map(|(o, r)| OutputRecord {
                    name: o.name.clone(),
                    path: o.path.clone(),
                    len: r.len,
                    hash: r.hash.clone(),
                })
                .collect(),
        };
        tokio::task::block_in_place(|| state.write_record(&record))?;
    }
    tracing::debug!(
        took_ms = t.elapsed().as_millis() as u64,
        peak_rss_mib = crate::mem::peak_rss_mib(),
        "state recorded"
    );
    crate::mem::dispose((list, ready));
    report.outcome = Outcome::Success;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Fingerprint of everything in the configuration that shapes the outputs.
fn config_fingerprint(cfg: &Config) -> String {
    let text = format!("rcptsync {} {cfg:?}", env!("CARGO_PKG_VERSION"));
    hash_bytes(text.as_bytes())
}

/// Fingerprint of what a source returned, before validation.
fn raw_fingerprint(f: &Fetched) -> String {
    if let Some(fp) = &f.raw_fingerprint {
        return fp.clone();
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let items = f.items.iter().map(|i| (i.value.as_str(), i.kind as u8));
    // Validated entries are canonical already; a catch-all's text says it is one.
    let entries = f.entries.iter().map(|(e, _)| (e.as_str(), 0xfe));
    let rejected = f.rejected.iter().map(|r| (r.value.as_str(), 0xff));
    for (v, k) in items.chain(entries).chain(rejected) {
        if buf.len() + v.len() + 2 > buf.capacity() {
            h.update(&buf);
            buf.clear();
        }
        buf.extend_from_slice(v.as_bytes());
        buf.push(0);
        buf.push(k);
    }
    h.update(&buf);
    crate::state::digest_hex(&h)
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
        if len != r.len || hash != r.hash {
            return None;
        }
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
                kind: s.spec.kind().to_string(),
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

fn report_drops(gathered: &[Gathered], dropped: &[usize]) {
    for (g, d) in gathered.iter().zip(dropped) {
        if *d > 0 {
            tracing::info!(source = %g.name, dropped = d, "entries left out by policy.domains / policy.exclude");
        }
    }
}

/// Writes, to fsynced temp files, the state files that differ from what is on
/// disk: the new baseline and each source's last-known-good slice. Done while
/// the outputs are being committed; installed only if the commit succeeds.
/// `state_dir/tombstones.json`: entry → unix time it was first missing.
const TOMBSTONES: &str = "tombstones.json";

fn read_tombstones(state: &StateDir) -> BTreeMap<String, u64> {
    match std::fs::read(state.root().join(TOMBSTONES)) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            // Losing them restarts every grace period from now: later, never earlier.
            tracing::warn!(error = %e, "removal-grace tombstones unreadable; grace periods restart now");
            BTreeMap::new()
        }),
        Err(_) => BTreeMap::new(),
    }
}

fn write_tombstones(state: &StateDir, t: &BTreeMap<String, u64>) {
    crate::connector::save_state(&state.root().join(TOMBSTONES), t, "removal-grace");
}

/// Adds the entries of the last applied list that no source returns any more,
/// and whose grace has not run out, as a pseudo-source; returns the tombstones
/// to keep (entry → first missing).
pub fn keep_in_grace(state: &StateDir, gathered: &mut Vec<Gathered>, grace: Duration) -> BTreeMap<String, u64> {
    let Ok(Some((_, old))) = state.read_list(&state.applied_path()) else { return BTreeMap::new() };
    let present: std::collections::HashSet<&str> =
        gathered.iter().flat_map(|g| g.entries.iter().map(|(e, _)| e.as_str())).collect();
    let before = read_tombstones(state);
    let now = crate::state::unix_now();
    let mut kept = Vec::new();
    let mut tombstones = BTreeMap::new();
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
    });
    tombstones
}

fn stage_state(state: &StateDir, list: &RecipientList, new_fp: &str) -> Result<Vec<PendingFile>, StateError> {
    let mut pending = Vec::new();
    let applied = state.applied_path();
    let applied_changed = state.read_header(&applied).ok().flatten().is_none_or(|h| h.fingerprint != new_fp);
    if applied_changed {
        pending.push(state.stage_list(&applied, "list", list.len(), list.sorted(), Some(new_fp))?.1);
    }
    // Each source's slice of the final list, built in the list's sorted order
    // (addresses and catch-alls merged), so no sorting is needed.
    let names = list.source_names();
    // A source that produced the whole list (the usual single-source case) has
    // the list itself as its slice: counted first, so that it is not copied.
    let mut counts = vec![0usize; names.len()];
    for (_, sources) in list.sorted_with_sources() {
        for_each_unique(sources, |s| {
            if let Some(c) = counts.get_mut(s) {
                *c += 1;
            }
        });
    }
    let whole: Vec<bool> = counts.iter().map(|&c| c == list.len()).collect();
    let mut slices: Vec<Vec<&str>> = vec![Vec::new(); names.len()];
    for (entry, sources) in list.sorted_with_sources() {
        for_each_unique(sources, |s| {
            if let (Some(false), Some(v)) = (whole.get(s).copied(), slices.get_mut(s)) {
                v.push(entry);
            }
        });
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
                let from = if applied_changed { pending[0].staged().to_path_buf() } else { applied.clone() };
                state.stage_link(&from, &path)?
            } else {
                state.stage_list(&path, "list", slice.len(), slice.iter().copied(), Some(&fp))?.1
            };
            pending.push(file);
        }
    }
    Ok(pending)
}

/// Calls `f` once per distinct source index (an entry's sources are sorted, so
/// repeats are adjacent).
fn for_each_unique(sources: &[u16], mut f: impl FnMut(usize)) {
    let mut last = None;
    for &s in sources {
        if last != Some(s) {
            f(usize::from(s));
            last = Some(s);
        }
    }
}
