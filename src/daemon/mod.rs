//! `rcptsync daemon`: the one sync function on a cron schedule, with hot config
//! reload, signals, and a metrics/health endpoint.
//!
//! One `select!` loop owns everything: the next tick, the current run (ticks
//! that come during a run are skipped and counted, so runs never overlap),
//! file-change events (debounced, then the new config is validated before it
//! replaces the old one), SIGHUP (the same reload), and SIGTERM/SIGINT (the
//! current run finishes, then the daemon exits 0). The watcher only reports
//! events; the loop decides.

pub mod metrics;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::config::{self, Config};
use crate::report::{Outcome, Report, exit};
use crate::run::{self, RunError, SyncOptions};
use crate::schedule::{self, Plan};
use metrics::Metrics;

/// Default quiet time after a file event before reloading.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// How often the daemon checks the list's age besides after each run.
const STALE_CHECK: Duration = Duration::from_secs(1);

type RunFuture = Pin<Box<dyn Future<Output = Result<Report, RunError>>>>;

/// Runs the daemon until SIGTERM/SIGINT; returns the exit code.
pub async fn run(path: PathBuf) -> u8 {
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let mut plan = plan_of(&cfg);
    let (mut hup, mut term, mut int) =
        match (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(h), Ok(t), Ok(i)) => (h, t, i),
            _ => {
                eprintln!("rcptsync: cannot install signal handlers");
                return exit::FAILURE;
            }
        };
    let metrics = Arc::new(Metrics::new(published_at(&cfg), staleness(&cfg)));
    let listen = cfg.daemon.as_ref().and_then(|d| d.listen.clone());
    if let Some(addr) = &listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!(listen = %addr, "serving GET /metrics and GET /healthz");
                tokio::spawn(serve(l, metrics.clone()));
            }
            Err(e) => {
                eprintln!("rcptsync: daemon.listen {addr}: {e}");
                return exit::FAILURE;
            }
        }
    }
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut watcher = watch(&cfg, &path, events_tx.clone());
    let mut cfg = Arc::new(cfg);

    sd_notify("READY=1");
    tracing::info!(config = %path.display(), sources = cfg.sources.len(), "daemon started; first run now");
    let mut running: Option<RunFuture> = Some(start(cfg.clone(), None));
    let mut next = next_tick(&plan, &cfg);
    let mut reload_at: Option<tokio::time::Instant> = None;
    let mut stopping: Option<&'static str> = None;
    // The stale-list defence runs on its own timer too, so it fires even while
    // a run hangs or keeps failing without ending.
    let mut stale_check = tokio::time::interval(STALE_CHECK);
    stale_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stale_check.tick(), if cfg.guard.max_staleness.is_some() => {
                let c = cfg.clone();
                let _ = tokio::task::spawn_blocking(move || run::check_staleness(&c)).await;
            }
            result = async { running.as_mut().expect("guarded by the branch condition").await }, if running.is_some() => {
                running = None;
                finished(result, &metrics);
                if let Some(signal) = stopping {
                    tracing::info!(signal, "the current run is complete; exiting");
                    break;
                }
            }
            _ = tokio::time::sleep_until(next.0), if stopping.is_none() => {
                let due = std::mem::take(&mut next.1);
                if running.is_some() {
                    tracing::warn!(sources = %due.join(","), "tick skipped: the previous run is still in progress");
                    metrics.tick_skipped();
                } else {
                    tracing::info!(sources = %due.join(","), "scheduled run");
                    running = Some(start(cfg.clone(), Some(due)));
                }
                next = next_tick(&plan, &cfg);
            }
            Some(()) = events.recv() => {
                let debounce = daemon_opt(&cfg, |d| d.debounce).unwrap_or(DEBOUNCE);
                reload_at = Some(tokio::time::Instant::now() + debounce);
            }
            _ = async { tokio::time::sleep_until(reload_at.expect("guarded")).await }, if reload_at.is_some() => {
                reload_at = None;
                reload(&path, "a watched file changed", &mut cfg, &mut plan, &metrics, &mut watcher, &events_tx, &listen);
                next = next_tick(&plan, &cfg);
            }
            _ = hup.recv() => {
                reload(&path, "SIGHUP", &mut cfg, &mut plan, &metrics, &mut watcher, &events_tx, &listen);
                next = next_tick(&plan, &cfg);
            }
            _ = term.recv() => {
                if stop("SIGTERM", running.is_some(), &mut stopping) { break; }
            }
            _ = int.recv() => {
                if stop("SIGINT", running.is_some(), &mut stopping) { break; }
            }
        }
    }
    sd_notify("STOPPING=1");
    exit::OK
}

/// Handles SIGTERM/SIGINT: exit now when idle, else after the current run.
/// Returns whether to leave the loop now.
fn stop(signal: &'static str, running: bool, stopping: &mut Option<&'static str>) -> bool {
    if !running {
        tracing::info!(signal, "stopping");
        return true;
    }
    if stopping.is_none() {
        tracing::info!(signal, "stopping after the current run completes (outputs are never left half-written)");
    }
    *stopping = Some(signal);
    false
}

/// The `/healthz` limit: `[daemon] max_staleness`, else `[guard] max_staleness`.
fn staleness(cfg: &Config) -> Option<Duration> {
    daemon_opt(cfg, |d| d.max_staleness).or(cfg.guard.max_staleness)
}

/// The schedules of a config (parsed when it was loaded).
fn plan_of(cfg: &Config) -> Plan {
    let global = cfg.daemon.as_ref().and_then(|d| d.schedule.as_ref());
    Plan::new(global, cfg.sources.iter().map(|s| (s.name.as_str(), s.schedule.as_ref())))
}

fn daemon_opt<T>(cfg: &Config, get: impl Fn(&schedule::DaemonConfig) -> Option<T>) -> Option<T> {
    cfg.daemon.as_ref().and_then(get)
}

/// Starts one run. `due`: the sources this tick fetches (None: all). A source
/// that is not due reuses its last good copy, if it has one.
fn start(cfg: Arc<Config>, due: Option<Vec<String>>) -> RunFuture {
    Box::pin(async move {
        let not_due: Vec<String> = match &due {
            None => Vec::new(),
            Some(due) => {
                let state = crate::state::StateDir::open(&cfg.state_dir, false).ok();
                cfg.sources
                    .iter()
                    .filter(|s| !due.contains(&s.name))
                    .filter(|s| state.as_ref().is_some_and(|st| st.slice_path(&s.name).exists()))
                    .map(|s| s.name.clone())
                    .collect()
            }
        };
        // On its own task: hooks wait synchronously, and the loop must keep
        // answering ticks, signals and file events meanwhile.
        let task = tokio::spawn(async move { run::sync_some(&cfg, SyncOptions::default(), &not_due).await });
        task.await.unwrap_or_else(|e| Err(RunError::Task(e.to_string())))
    })
}

/// Logs a finished run and feeds the metrics.
fn finished(result: Result<Report, RunError>, metrics: &Metrics) {
    let now = unix_now();
    match result {
        Ok(report) => {
            metrics.record(&report, now);
            let changed: Vec<&str> = report.outputs.iter().filter(|o| o.changed).map(|o| o.name.as_str()).collect();
            match &report.outcome {
                Outcome::Success => tracing::info!(
                    recipients = report.recipients,
                    added = report.added,
                    removed = report.removed,
                    changed = %changed.join(","),
                    took_ms = report.elapsed.as_millis() as u64,
                    "run complete"
                ),
                Outcome::GuardRefused => tracing::error!(
                    reason = report.guard.reason.as_deref().unwrap_or(""),
                    "run refused by the guard; outputs left unchanged"
                ),
                Outcome::Failed(e) => tracing::error!(error = %e, "run failed; outputs left unchanged"),
            }
            sd_notify(&format!("STATUS=last run: {:?}, {} recipients", report.outcome, report.recipients));
        }
        Err(e) => {
            metrics.record_error();
            tracing::error!(error = %e, "run failed");
        }
    }
}

/// Validates the config file and, if it is valid, makes it the running one.
#[allow(clippy::too_many_arguments)]
fn reload(
    path: &Path,
    why: &str,
    cfg: &mut Arc<Config>,
    plan: &mut Plan,
    metrics: &Metrics,
    watcher: &mut Option<notify::RecommendedWatcher>,
    events: &mpsc::UnboundedSender<()>,
    listen: &Option<String>,
) {
    match config::load(path).map_err(|e| e.to_string()).map(|c| {
        let p = plan_of(&c);
        (c, p)
    }) {
        Ok((new, new_plan)) => {
            let new_listen = new.daemon.as_ref().and_then(|d| d.listen.clone());
            if &new_listen != listen {
                tracing::warn!("daemon.listen changed: restart the daemon to move the metrics endpoint");
            }
            metrics.set_max_staleness(staleness(&new));
            *watcher = watch(&new, path, events.clone());
            *plan = new_plan;
            *cfg = Arc::new(new);
            metrics.config_reload(true);
            tracing::info!(reason = why, sources = cfg.sources.len(), outputs = cfg.outputs.len(), "config reloaded");
        }
        Err(e) => {
            metrics.config_reload(false);
            tracing::error!(reason = why, "config reload refused; the previous config keeps running:\n{e}");
        }
    }
}

/// The next tick as a tokio instant (plus jitter) and the sources it fetches.
fn next_tick(plan: &Plan, cfg: &Config) -> (tokio::time::Instant, Vec<String>) {
    let now = chrono::Local::now();
    let jitter = daemon_opt(cfg, |d| d.jitter).unwrap_or(Duration::ZERO);
    match plan.next(&now) {
        Some(t) => {
            let wait = (t.at - now).to_std().unwrap_or(Duration::ZERO)
                + jitter.mul_f64(crate::connector::http::jitter_fraction());
            (tokio::time::Instant::now() + wait, t.sources)
        }
        // A schedule that never fires again (a past year): wait "forever".
        None => (tokio::time::Instant::now() + Duration::from_secs(365 * 86_400), Vec::new()),
    }
}

/// Watches the directories that hold the config file, user profiles and user
/// templates (editors and config tools replace files by rename, so the files
/// themselves can't be watched). Relevant events go to `tx`; the loop debounces.
fn watch(cfg: &Config, path: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher as _};
    if !cfg.daemon.as_ref().is_none_or(|d| d.watch) {
        return None;
    }
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let file_dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let dirs: Vec<PathBuf> = cfg.profile_dir.iter().chain(&cfg.template_dir).cloned().collect();
    let (f, d) = (file.clone(), dirs.clone());
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        if ev.paths.iter().any(|p| p == &f || d.iter().any(|dir| p.starts_with(dir))) {
            let _ = tx.send(());
        }
    };
    let mut w = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config for changes; reload with SIGHUP");
            return None;
        }
    };
    for dir in std::iter::once(&file_dir).chain(&dirs) {
        if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch this directory; reload with SIGHUP");
        }
    }
    Some(w)
}

/// When the list on disk was last written: the state's applied list.
fn published_at(cfg: &Config) -> Option<f64> {
    crate::state::StateDir::at(&cfg.state_dir).applied_mtime()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `GET /metrics` and `GET /healthz`.
async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let m1 = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render(unix_now())) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let m = metrics.clone();
                async move {
                    match m.health(unix_now()) {
                        Ok(t) => (StatusCode::OK, t),
                        Err(t) => (StatusCode::SERVICE_UNAVAILABLE, t),
                    }
                }
            }),
        );
    // A connection cap (the idlest closed first) and an idle timeout: sockets
    // left open by a broken scraper cannot lock out the next scrape.
    let limiter = crate::limit::Limiter::new(crate::limit::MAX_CONNECTIONS, crate::limit::IDLE_TIMEOUT);
    let listener = crate::limit::LimitedListener { inner: listener, limiter };
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics endpoint stopped");
    }
}

/// Tells systemd (Type=notify) about readiness and status, if it is listening.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket name.
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(daemon: &str) -> Config {
        let text = format!(
            "[daemon]\nschedule = \"0 * * * * *\"\n{daemon}\n[[source]]\nname = \"a\"\nkind = \"file\"\npath = \"a\"\n\
             [[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n"
        );
        config::parse(&text, Path::new("/tmp")).unwrap()
    }

    #[tokio::test]
    async fn jitter_spreads_ticks_within_its_bound() {
        let plain = cfg("");
        let plan = plan_of(&plain);
        let jittered = cfg("jitter = \"20s\"");
        // Retried if a minute boundary passes while sampling.
        let waits = loop {
            let base = next_tick(&plan, &plain).0;
            let waits: Vec<Duration> =
                (0..40).map(|_| next_tick(&plan, &jittered).0.saturating_duration_since(base)).collect();
            if next_tick(&plan, &plain).0.saturating_duration_since(base) < Duration::from_secs(1) {
                break waits;
            }
        };
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(21)), "{waits:?}");
        let distinct: std::collections::HashSet<u128> = waits.iter().map(|w| w.as_millis() / 100).collect();
        assert!(distinct.len() > 10, "jitter must vary between ticks: {waits:?}");
    }

    #[test]
    fn stop_waits_for_a_running_sync() {
        let mut stopping = None;
        assert!(stop("SIGTERM", false, &mut stopping), "idle: stop now");
        assert!(!stop("SIGTERM", true, &mut stopping), "running: after the run");
        assert_eq!(stopping, Some("SIGTERM"));
    }
}
