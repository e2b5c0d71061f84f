//! Stage 1, fetch: every source at once, with a progress line on a terminal
//! and the memory watch that stops a fetch gone out of bounds.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::config::Config;
use crate::connector::{Fetched, Source, SourceError};
use crate::state::StateDir;

/// What each source returned, in config order, with how long it took.
pub type FetchResults = Vec<(Result<Fetched, SourceError>, Duration)>;

/// Fetches every source concurrently.
pub async fn fetch_all(cfg: &Config, incremental: bool) -> FetchResults {
    fetch_some(cfg, incremental, &[]).await
}

/// Fetches every source concurrently except those named in `not_due`, which
/// are [`Fetched::NotDue`] (their last good copy is used).
pub async fn fetch_some(cfg: &Config, incremental: bool, not_due: &[String]) -> FetchResults {
    let mut set = JoinSet::new();
    let state = StateDir::at(&cfg.state_dir);
    for (i, s) in cfg.sources.iter().enumerate() {
        if not_due.contains(&s.name) {
            set.spawn(async move { (i, Ok(Fetched::NotDue), Duration::ZERO) });
            continue;
        }
        let source = Source::build(&s.name, &s.spec, incremental.then_some(&state), s.fetch_timeout);
        let limit = s.fetch_timeout;
        set.spawn(async move {
            let started = Instant::now();
            let r = match tokio::time::timeout(limit, source.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::new(format!(
                    "did not finish within fetch_timeout = {}: the server is too slow or never ends its answer \
                     (raise fetch_timeout if the directory is just large)",
                    humantime::format_duration(limit)
                ))),
            };
            (i, r, started.elapsed())
        });
    }
    collect(set, cfg).await
}

/// Waits for every fetch, showing progress, and stops them all when memory
/// passes its limit.
async fn collect(mut set: JoinSet<(usize, Result<Fetched, SourceError>, Duration)>, cfg: &Config) -> FetchResults {
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
