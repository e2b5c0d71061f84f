//! Benchmark of the sync spine (`cargo bench --bench spine`).
//!
//! Generates 1,000,000 addresses (1 % duplicates, mixed case, shuffled) into a file
//! source and syncs them to the `postfix` (no postmap), `exim` and `json` outputs
//! with the release binary. The floor, measured in the same run on the same file, is
//! `LC_ALL=C sort -u input | awk '{print $0" OK"}' > out`. Targets (issue #2): cold
//! sync ≤ 1.5× the floor, unchanged re-run ≤ 1.0× the floor and rewriting nothing,
//! peak RSS ≤ 400 MB. Set RCPTSYNC_BENCH_N to change the size (e.g. 5000000).

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use support::{generate, measure, median, snapshot};

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too; only `cargo bench`
    // (which passes --bench) does the real, minutes-long measurement.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench --bench spine`");
        return;
    }
    let n: usize = std::env::var("RCPTSYNC_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let runs = 5;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-spine-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let input = dir.join("recipients.txt");
    let t = Instant::now();
    generate(&input, n);
    println!(
        "generated {n} addresses ({} MB) in {:.2?}",
        std::fs::metadata(&input).unwrap().len() / 1_000_000,
        t.elapsed()
    );
    std::fs::write(dir.join("rcptsync.toml"), support::THREE_OUTPUTS).unwrap();

    let floor = median((0..runs).map(|_| {
        let (d, _) = measure(
            Command::new("sh")
                .arg("-c")
                .arg("LC_ALL=C sort -u recipients.txt | awk '{print $0\" OK\"}' > floor.out")
                .current_dir(&dir),
        );
        d
    }));

    let sync = || support::sync_command(&dir);
    let mut cold = Vec::new();
    let mut cold_rss = 0;
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(dir.join("state"));
        for f in ["relay_recipients", "exim_recipients", "recipients.json"] {
            let _ = std::fs::remove_file(dir.join("out").join(f));
        }
        let (d, rss) = measure(&mut sync());
        cold.push(d);
        cold_rss = cold_rss.max(rss);
    }
    let cold = median(cold.into_iter());
    let before = snapshot(&dir);
    let mut warm = Vec::new();
    let mut warm_rss = 0;
    for _ in 0..runs {
        let (d, rss) = measure(&mut sync());
        warm.push(d);
        warm_rss = warm_rss.max(rss);
    }
    let warm = median(warm.into_iter());
    let untouched = snapshot(&dir) == before;

    let f = floor.as_secs_f64();
    println!("floor  (sort -u | awk)       {:>8.3} s", f);
    println!(
        "cold sync                    {:>8.3} s  = {:.2}x floor (target <= 1.50x)  peak RSS {} MB (target <= 400)",
        cold.as_secs_f64(),
        cold.as_secs_f64() / f,
        cold_rss / 1024
    );
    println!(
        "unchanged re-run             {:>8.3} s  = {:.2}x floor (target <= 1.00x)  peak RSS {} MB",
        warm.as_secs_f64(),
        warm.as_secs_f64() / f,
        warm_rss / 1024
    );
    println!("unchanged re-run rewrote nothing: {untouched}");
    println!(
        "(median of {runs} runs each, {} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
}
