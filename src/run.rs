//! The one sync function. The CLI, the daemon and pipelines all run exactly this:
//! fetch every source → merge under the policy → guard against the last applied
//! list → render every output → write only what changed, with hooks → record state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::config::{Config, OnSourceFailure};
use crate::connector::{Fetched, Source, SourceError};
use crate::policy::address::Entry;
use crate::policy::guard::{self, Baseline, Delta, Verdict};
use crate::policy::{Located, Locator, Policy, RecipientList, Rejected, normalise};
use crate::report::{GuardReport, Outcome, OutputReport, Report, SourceReport, SourceStatus};
use crate::state::{StateDir, StateError, fingerprint};
use crate::writer;

/// Flags of one `sync`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    pub dry_run: bool,
    pub diff: bool,
    pub force: bool,
}

/// A source after fetching and validation.
#[derive(Debug)]
pub struct Gathered {
    pub name: String,
    pub kind: &'static str,
    pub status: SourceStatus,
    pub entries: Vec<Located>,
    pub rejected: Vec<Rejected>,
    pub error: Option<String>,
}

/// Errors that stop a run before it can report per-source results.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    State(#[from] StateError),
}

/// Fetches every source concurrently and validates what they return. A failed
/// source falls back to its last-known-good slice when the config says so.
pub async fn gather(cfg: &Config, state: &StateDir) -> Vec<Gathered> {
    let mut set = JoinSet::new();
    for (i, s) in cfg.sources.iter().enumerate() {
        let source = Source::build(s);
        let name = s.name.clone();
        set.spawn(async move {
            let started = Instant::now();
            let r = source.fetch().await;
            (i, name, r, started.elapsed())
        });
    }
    let mut fetched: Vec<Option<(Result<Fetched, SourceError>, Duration)>> =
        (0..cfg.sources.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, _, r, took)) => fetched[i] = Some((r, took)),
            Err(e) => tracing::error!(error = %e, "source task failed"),
        }
    }
    let mut out = Vec::with_capacity(cfg.sources.len());
    for (s, f) in cfg.sources.iter().zip(fetched) {
        let kind = s.spec.kind();
        let (result, took) = f.unwrap_or_else(|| {
            (
                Err(SourceError::new("fetch task did not complete")),
                Duration::ZERO,
            )
        });
        match result {
            Ok(f) => {
                let Fetched {
                    items,
                    mut rejected,
                } = f;
                let (entries, bad) = tokio::task::block_in_place(|| normalise(items));
                rejected.extend(bad);
                for r in &rejected {
                    tracing::warn!(source = %s.name, object = %r.locator, value = ?r.value, "dropped invalid entry: it {}", r.reason);
                }
                tracing::info!(source = %s.name, kind, entries = entries.len(), refused = rejected.len(), took_ms = took.as_millis() as u64, "source fetched");
                out.push(Gathered {
                    name: s.name.clone(),
                    kind,
                    status: SourceStatus::Ok,
                    entries,
                    rejected,
                    error: None,
                });
            }
            Err(e) => {
                let msg = format!("source {} ({kind}): {e}", s.name);
                tracing::error!(source = %s.name, kind, error = %e, "source failed");
                let (status, entries, error) = match cfg.guard.on_source_failure {
                    OnSourceFailure::Abort => (SourceStatus::Failed, Vec::new(), msg),
                    OnSourceFailure::KeepLastGood => {
                        match state.read_list(&state.slice_path(&s.name)) {
                            Ok(Some((_, entries))) => {
                                tracing::warn!(source = %s.name, entries = entries.len(), "using the last-known-good copy");
                                let entries = entries
                                    .into_iter()
                                    .map(|e| (e, Locator::LastGood))
                                    .collect();
                                (SourceStatus::LastGood, entries, msg)
                            }
                            Ok(None) => (
                                SourceStatus::Failed,
                                Vec::new(),
                                format!("{msg}; no last-known-good copy exists yet"),
                            ),
                            Err(se) => (
                                SourceStatus::Failed,
                                Vec::new(),
                                format!("{msg}; the last-known-good copy is unusable: {se}"),
                            ),
                        }
                    }
                };
                out.push(Gathered {
                    name: s.name.clone(),
                    kind,
                    status,
                    entries,
                    rejected: Vec::new(),
                    error: Some(error),
                });
            }
        }
    }
    out
}

/// Merges gathered sources under the policy.
pub fn merge(cfg: &Config, gathered: &[Gathered]) -> (RecipientList, Vec<usize>) {
    let policy = Policy::new(&cfg.policy);
    policy.apply(
        gathered
            .iter()
            .map(|g| (g.name.clone(), g.entries.clone()))
            .collect(),
    )
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
        })
        .collect()
}

/// Entries of the list in byte order (addresses and catch-alls merged).
fn sorted_entries(list: &RecipientList) -> Vec<&str> {
    let (a, c) = (list.addresses(), list.catchalls());
    let mut out = Vec::with_capacity(a.len() + c.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < c.len() {
        if j >= c.len() || (i < a.len() && a[i].as_str() < c[j].as_str()) {
            out.push(a[i].as_str());
            i += 1;
        } else {
            out.push(c[j].as_str());
            j += 1;
        }
    }
    out
}

/// One complete sync run.
pub async fn sync(cfg: &Config, opts: SyncOptions) -> Result<Report, RunError> {
    let started = Instant::now();
    let state = StateDir::open(&cfg.state_dir, !opts.dry_run)?;
    let _lock = if opts.dry_run {
        None
    } else {
        Some(state.lock(cfg.lock_timeout)?)
    };

    let gathered = gather(cfg, &state).await;
    let mut report = Report::new(source_reports(&gathered), cfg);
    let failed: Vec<&str> = gathered
        .iter()
        .filter(|g| {
            g.status == SourceStatus::Failed
                || (g.status != SourceStatus::Ok
                    && cfg.guard.on_source_failure == OnSourceFailure::Abort)
        })
        .filter_map(|g| g.error.as_deref())
        .collect();
    if !failed.is_empty() {
        report.outcome = Outcome::Failed(format!("nothing written: {}", failed.join("; ")));
        return Ok(report);
    }

    let list = tokio::task::block_in_place(|| {
        let (list, dropped) = merge(cfg, &gathered);
        report_drops(&gathered, &dropped);
        Arc::new(list)
    });
    drop(gathered);
    report.recipients = list.len();

    // Guard against the last applied list.
    let entries = sorted_entries(&list);
    let new_fp = fingerprint(entries.iter().copied());
    let applied_path = state.applied_path();
    let (baseline, delta) = match state.read_header(&applied_path) {
        Ok(None) => (
            Baseline::None,
            Delta {
                added: entries.len(),
                removed: 0,
            },
        ),
        Ok(Some(h)) if h.fingerprint == new_fp && h.count == entries.len() => {
            (Baseline::Applied { count: h.count }, Delta::default())
        }
        Ok(Some(_)) => match state.read_list(&applied_path) {
            Ok(Some((h, old))) => {
                let d = guard::delta(old.iter().map(Entry::as_str), entries.iter().copied());
                (Baseline::Applied { count: h.count }, d)
            }
            Ok(None) => (
                Baseline::None,
                Delta {
                    added: entries.len(),
                    removed: 0,
                },
            ),
            Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default()),
        },
        Err(e) => (Baseline::Unreadable(e.to_string()), Delta::default()),
    };
    report.added = delta.added;
    report.removed = delta.removed;
    let verdict: Verdict = guard::evaluate(&cfg.guard, list.len(), &baseline, delta, opts.force);
    report.guard = GuardReport {
        ok: verdict.ok,
        reason: verdict.reason.clone(),
    };
    if verdict.forced {
        tracing::warn!(
            reason = verdict.reason.as_deref().unwrap_or(""),
            "guard overridden by --force"
        );
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
    let rendered =
        tokio::task::block_in_place(|| writer::render_all(&cfg.outputs, &list, opts.diff));
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

    let outcomes = tokio::task::block_in_place(|| writer::commit_all(&cfg.outputs, &ready));
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
    tokio::task::block_in_place(|| record_state(&state, &list, &entries, &new_fp))?;
    report.outcome = Outcome::Success;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn report_drops(gathered: &[Gathered], dropped: &[usize]) {
    for (g, d) in gathered.iter().zip(dropped) {
        if *d > 0 {
            tracing::info!(source = %g.name, dropped = d, "entries left out by policy.domains / policy.exclude");
        }
    }
}

fn record_state(
    state: &StateDir,
    list: &RecipientList,
    entries: &[&str],
    new_fp: &str,
) -> Result<(), StateError> {
    let applied = state.applied_path();
    if state
        .read_header(&applied)
        .ok()
        .flatten()
        .is_none_or(|h| h.fingerprint != new_fp)
    {
        state.write_list(&applied, "applied-list", entries)?;
    }
    // Each source's slice of the final list, in the same sorted order.
    let names = list.source_names();
    let mut slices: Vec<Vec<&str>> = vec![Vec::new(); names.len()];
    for (i, e) in list.addresses().iter().enumerate() {
        push_unique(
            &mut slices,
            list.address_origins(i).iter().map(|o| o.source),
            e.as_str(),
        );
    }
    for (i, e) in list.catchalls().iter().enumerate() {
        push_unique(
            &mut slices,
            list.catchall_origins(i).iter().map(|o| o.source),
            e.as_str(),
        );
    }
    for (name, mut slice) in names.iter().zip(slices) {
        if name == crate::policy::INCLUDE_SOURCE {
            continue;
        }
        slice.sort_unstable();
        let path = state.slice_path(name);
        let fp = fingerprint(slice.iter().copied());
        if state
            .read_header(&path)
            .ok()
            .flatten()
            .is_none_or(|h| h.fingerprint != fp)
        {
            state.write_list(&path, "source-slice", &slice)?;
        }
    }
    Ok(())
}

fn push_unique<'a>(slices: &mut [Vec<&'a str>], sources: impl Iterator<Item = u16>, e: &'a str) {
    let mut last = None;
    for s in sources {
        if last != Some(s) {
            if let Some(v) = slices.get_mut(s as usize) {
                v.push(e);
            }
            last = Some(s);
        }
    }
}
