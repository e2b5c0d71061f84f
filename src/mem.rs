//! Memory helpers for the large-list paths.

/// The process's peak resident memory so far (MiB), for the phase timings that
/// debug logging shows; 0 where `/proc` is not available.
pub fn peak_rss_mib() -> u64 {
    proc_kib("/proc/self/status", "VmHWM:").map_or(0, |kib| kib / 1024)
}

/// The value of a `KEY: N kB` line of a `/proc` file.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
}

/// The environment variable that sets [`limit_mib`].
pub const LIMIT_ENV: &str = "RCPTSYNC_MEMORY_LIMIT";

/// How much memory (MiB) the process may use while fetching sources: the
/// `RCPTSYNC_MEMORY_LIMIT` environment variable (MiB; 0 turns the limit off),
/// else half the machine's memory, so that a hostile or broken server cannot
/// push the MX host into swapping or the OOM killer. `None`: no limit.
pub fn limit_mib() -> Option<u64> {
    match std::env::var(LIMIT_ENV).ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(0) => None,
        Some(mib) => Some(mib),
        None => proc_kib("/proc/meminfo", "MemTotal:").map(|kib| kib / 1024 / 2),
    }
}

/// The process's resident memory now (MiB); 0 where `/proc` is not available.
pub fn rss_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages = statm.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    pages * page / (1024 * 1024)
}

/// Watches the process's memory on its own thread while sources are fetched.
/// Past `limit` it calls `tripped` once: the caller stops the fetches. A
/// driver that keeps reading a socket that always has data never yields to be
/// stopped, so if memory still grows to half as much again, the process exits
/// with status 1 at once: nothing has been written by then, so the published
/// outputs stay as they were.
pub struct MemoryWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl MemoryWatch {
    pub fn start(limit: u64, tripped: impl Fn() + Send + 'static) -> MemoryWatch {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("rcptsync-memwatch".into())
            .spawn(move || {
                let mut soft = false;
                while !stopped.load(Ordering::Relaxed) {
                    let rss = rss_mib();
                    if !soft && rss > limit {
                        soft = true;
                        tracing::error!(
                            rss_mib = rss,
                            limit_mib = limit,
                            "memory limit reached while fetching; stopping every fetch still running"
                        );
                        tripped();
                    } else if soft && rss > limit + limit / 2 {
                        tracing::error!(
                            rss_mib = rss,
                            limit_mib = limit,
                            "memory still growing after the fetches were told to stop; exiting now, nothing was written"
                        );
                        eprintln!(
                            "rcptsync: memory passed its limit of {limit} MiB while fetching sources and kept growing; \
                             exiting without writing anything ({LIMIT_ENV} sets the limit, in MiB)"
                        );
                        std::process::exit(1);
                    }
                    // Woken early by drop, so a fetch's end is not delayed.
                    std::thread::park_timeout(std::time::Duration::from_millis(10));
                }
            })
            .ok();
        MemoryWatch { stop, handle }
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// Frees a large structure on another thread. A million small allocations take
/// tens of milliseconds to free; a one-shot CLI run exits without waiting, a
/// daemon frees them in the background.
pub fn dispose<T: Send + 'static>(garbage: T) {
    let spawned = std::thread::Builder::new().name("rcptsync-free".into()).spawn(move || drop(garbage));
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "could not free in the background");
    }
}
