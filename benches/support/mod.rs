//! Timing helpers shared by the benchmarks (included with `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The spine benchmarks' config: the generated file into the `postfix` (no
/// postmap), `exim` and `json` outputs, with the shrink guard off.
pub const THREE_OUTPUTS: &str = r#"state_dir = "state"
[guard]
max_removed_percent = 100
[[source]]
name = "bench"
kind = "file"
path = "recipients.txt"
[[output]]
name = "postfix"
template = "postfix"
path = "out/relay_recipients"
[[output]]
name = "exim"
template = "exim"
path = "out/exim_recipients"
[[output]]
name = "json"
template = "json"
path = "out/recipients.json"
"#;

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

/// Deterministic mixed-case addresses with 1 % duplicates, shuffled.
pub fn generate(path: &Path, n: usize) {
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let unique = n - n / 100;
    let domains = ["example.com", "Example.ORG", "corp.example.net", "mail.example.de", "EXAMPLE.co.uk"];
    let mut lines: Vec<String> = (0..unique)
        .map(|i| {
            let r = rnd();
            let local = if r & 1 == 0 { format!("User.{i:07}") } else { format!("user.{i:07}") };
            format!("{local}@{}", domains[(r >> 8) as usize % domains.len()])
        })
        .collect();
    for _ in 0..n / 100 {
        let dup = lines[(rnd() as usize) % unique].to_uppercase();
        lines.push(dup);
    }
    for i in (1..lines.len()).rev() {
        let j = (rnd() as usize) % (i + 1);
        lines.swap(i, j);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Inode and mtime of every output and state file: equal snapshots mean nothing
/// was rewritten.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    for sub in ["out", "state", "state/sources"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            let m = e.metadata().unwrap();
            // The lock file holds the pid of the last run; it is not output or state.
            if m.is_file() && e.file_name() != "lock" {
                v.push((e.path(), m.ino(), m.mtime(), m.mtime_nsec()));
            }
        }
    }
    v.sort();
    v
}
