//! Timing helpers shared by the benchmarks (included with `#[path]`).
#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

/// Wall time and peak RSS (KiB) of one child process, which must succeed.
// The child is reaped by wait4 (which also reports its peak RSS), not Child::wait.
#[allow(clippy::zombie_processes)]
pub fn measure(cmd: &mut Command) -> (Duration, i64) {
    let start = Instant::now();
    let child = cmd.spawn().expect("spawn");
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid initial value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child by pid.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let took = start.elapsed();
    assert!(
        rc > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "command failed: {cmd:?} status {status}"
    );
    (took, usage.ru_maxrss)
}

/// The median of a few timings.
pub fn median(it: impl Iterator<Item = Duration>) -> Duration {
    let mut v: Vec<Duration> = it.collect();
    v.sort();
    v[v.len() / 2]
}

/// `rcptsync sync -c rcptsync.toml` in `dir`, quiet, with the benchmarked binary.
pub fn sync_command(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rcptsync"));
    c.args(["sync", "-c", "rcptsync.toml"])
        .current_dir(dir)
        .env("RCPTSYNC_LOG", std::env::var("RCPTSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::null());
    c
}
