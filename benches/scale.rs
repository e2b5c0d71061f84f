//! Growth of the sync spine with the list size (`cargo bench --bench scale`).
//!
//! Cold syncs of 1,000,000, 2,000,000 and 5,000,000 generated addresses (the
//! same generator as `spine`: 1 % duplicates, mixed case, shuffled) to the
//! `postfix`, `exim` and `json` outputs (median of 5), then an unchanged re-run
//! of each.
//! Targets (issue #7): 5M within 5.5 × the 1M time (linear growth), peak RSS
//! ≤ 2 GB, and the unchanged re-run rewrites nothing.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{generate, measure, median, snapshot};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench --bench scale`");
        return;
    }
    let mut base: Option<Duration> = None;
    println!(
        "{:>10}  {:>9}  {:>8}  {:>9}  {:>9}  rewrote nothing",
        "addresses", "cold", "vs 1M", "peak RSS", "unchanged"
    );
    // RCPTSYNC_BENCH_SIZES="5000000" measures one size (the first is the base).
    let sizes: Vec<usize> = std::env::var("RCPTSYNC_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 2_000_000, 5_000_000]);
    for n in sizes {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-scale-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        generate(&dir.join("recipients.txt"), n);
        std::fs::write(dir.join("rcptsync.toml"), support::THREE_OUTPUTS).unwrap();
        // Same footing for every size: the generated file flushed to disk and in
        // the page cache, and one unmeasured run.
        let _ = std::process::Command::new("sync").status();
        measure(&mut support::sync_command(&dir));
        // Five runs: on this VM a cold run's page faults vary by tens of percent.
        let runs = 5;
        let mut rss = 0;
        let cold = median((0..runs).map(|_| {
            let _ = std::fs::remove_dir_all(dir.join("state"));
            let _ = std::fs::remove_dir_all(dir.join("out"));
            std::fs::create_dir_all(dir.join("out")).unwrap();
            let (d, r) = measure(&mut support::sync_command(&dir));
            rss = rss.max(r);
            d
        }));
        let before = snapshot(&dir);
        let (warm, _) = measure(&mut support::sync_command(&dir));
        let untouched = snapshot(&dir) == before;
        let b = *base.get_or_insert(cold);
        let ratio = cold.as_secs_f64() / b.as_secs_f64();
        let target = n as f64 / 1e6 * 1.1;
        println!(
            "{n:>10}  {:>7.2} s  {ratio:>6.2}x  {:>6} MB  {:>7.2} s  {untouched}   (target ≤ {target:.1}x, ≤ 2048 MB)",
            cold.as_secs_f64(),
            rss / 1024,
            warm.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
