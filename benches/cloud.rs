//! Benchmark of the cloud connectors against the in-process fakes with added
//! latency per request (`cargo bench --bench cloud`).
//!
//! Graph: 100,000 users, 20,000 mail-enabled groups (plus as many security
//! groups) and 5,000 contacts, 50 ms per request. The lower bound of a full
//! sync is the longest page chain: users, ⌈100,000 / 999⌉ = 101 pages × 50 ms.
//! Then 100 changes and a delta sync: at most 6 requests, under 1 s.
//! Google: 100,000 users and 20,000 groups; lower bound 200 user pages × 50 ms.
//! Targets (issue #5): both full syncs within 1.2 × their lower bound.
//! `RCPTSYNC_BENCH_N` changes the number of users.

#[path = "../tests/support/mod.rs"]
mod fixtures;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fixtures::cloud::google::{FakeGoogle, google_bulk};
use fixtures::cloud::graph::{FakeGraph, graph_bulk};
use fixtures::cloud::keypair;

/// Added per request (`RCPTSYNC_BENCH_LATENCY_MS` changes it, e.g. 0 to see the
/// processing cost alone).
fn latency() -> Duration {
    Duration::from_millis(std::env::var("RCPTSYNC_BENCH_LATENCY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(50))
}

fn setup(dir: &Path, config: &str) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::write(dir.join("rcptsync.toml"), config).unwrap();
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench --bench cloud`");
        return;
    }
    let n: usize = std::env::var("RCPTSYNC_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-cloud");

    // ---- Graph
    let g = FakeGraph::start("bench.onmicrosoft.com", "bench-app");
    {
        let mut s = g.state();
        s.client_secret = Some("bench-secret".into());
        graph_bulk(&mut s, n, n / 5, n / 20);
        s.common.latency = latency();
    }
    let dir = root.join("graph");
    setup(
        &dir,
        &format!(
            "state_dir = \"state\"\n[[source]]\nname = \"m365\"\nkind = \"graph\"\ntenant = \"bench.onmicrosoft.com\"\n\
             client_id = \"bench-app\"\nclient_secret_env = \"BENCH_SECRET\"\nauthority_url = \"{u}\"\ngraph_url = \"{u}\"\nallow_insecure_http = true\n\
             [[output]]\nname = \"list\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
            u = g.url()
        ),
    );
    let pages = n.div_ceil(999) as u32;
    let bound = latency() * pages;
    let (full, rss) = support::measure(support::sync_command(&dir).env("BENCH_SECRET", "bench-secret"));
    let (requests, busy) = {
        let s = g.state();
        (s.common.log.len(), s.common.busy)
    };
    println!("  (the fake spent {:.2} s building answers)", busy.as_secs_f64());
    let lines = std::fs::read_to_string(dir.join("out/list")).unwrap().lines().count();
    println!(
        "graph full sync: {n} users, {} groups, {} contacts → {lines} addresses in {:.2} s; lower bound {pages} pages × {} ms = {:.2} s; ratio {:.2} (target ≤ 1.20); {requests} requests; peak RSS {} MB",
        n / 5,
        n / 20,
        full.as_secs_f64(),
        latency().as_millis(),
        bound.as_secs_f64(),
        full.as_secs_f64() / bound.as_secs_f64(),
        rss / 1024
    );

    // 100 changes: 50 users changed, 20 deleted, 20 groups added, 10 contacts changed.
    {
        let mut s = g.state();
        s.common.log.clear();
        for i in 0..50 {
            s.put("users", serde_json::json!({"id": format!("u{i:07}"), "userPrincipalName": format!("user{i}@bulk.example"),
                "mail": format!("renamed{i}@bulk.example"), "proxyAddresses": [format!("SMTP:renamed{i}@bulk.example")]}));
        }
        for i in 50..70 {
            s.delete("users", &format!("u{i:07}"));
        }
        for i in 0..20 {
            s.put("groups", serde_json::json!({"id": format!("new{i}"), "displayName": format!("New {i}"), "mail": format!("new{i}@bulk.example"),
                "mailEnabled": true, "proxyAddresses": [format!("SMTP:new{i}@bulk.example")]}));
        }
        for i in 0..10 {
            s.put("contacts", serde_json::json!({"id": format!("c{i:07}"), "displayName": format!("Contact {i}"), "mail": format!("moved{i}@partner.example")}));
        }
    }
    let (delta, _) = support::measure(support::sync_command(&dir).env("BENCH_SECRET", "bench-secret"));
    let requests = g.state().common.log.len();
    let list = std::fs::read_to_string(dir.join("out/list")).unwrap();
    assert!(list.contains("renamed7@bulk.example\n") && !list.contains("\nuser60@bulk.example\n"));
    println!(
        "graph delta sync after 100 changes: {:.3} s (target < 1 s), {requests} HTTP requests (target ≤ 6)",
        delta.as_secs_f64()
    );
    drop(g);

    // ---- Google
    let tmp = root.join("keys");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let key = keypair(&tmp, "sa");
    let google = FakeGoogle::start("bench@bench.iam.gserviceaccount.com", &key);
    {
        let mut s = google.state();
        google_bulk(&mut s, n, n / 5);
        s.common.latency = latency();
    }
    let kf = google.key_file(&tmp, &key);
    let dir = root.join("google");
    setup(
        &dir,
        &format!(
            "state_dir = \"state\"\n[[source]]\nname = \"workspace\"\nkind = \"google\"\ncredentials_file = \"{}\"\n\
             subject = \"admin@example.com\"\napi_url = \"{u}\"\nsettings_api_url = \"{u}\"\nallow_insecure_http = true\n[[output]]\nname = \"list\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
            kf.display(),
            u = google.url()
        ),
    );
    let pages = n.div_ceil(500) as u32;
    let bound = latency() * pages;
    let (full, rss) = support::measure(&mut support::sync_command(&dir));
    let (requests, busy) = {
        let s = google.state();
        (s.common.log.len(), s.common.busy)
    };
    println!(
        "  (the fake spent {:.2} s building answers, {:.2} s of it on group settings)",
        busy.as_secs_f64(),
        google.state().settings_busy.as_secs_f64()
    );
    let lines = std::fs::read_to_string(dir.join("out/list")).unwrap().lines().count();
    println!(
        "google full sync: {n} users, {} groups → {lines} addresses in {:.2} s; lower bound {pages} pages × {} ms = {:.2} s; ratio {:.2} (target ≤ 1.20); {requests} requests; peak RSS {} MB",
        n / 5,
        full.as_secs_f64(),
        latency().as_millis(),
        bound.as_secs_f64(),
        full.as_secs_f64() / bound.as_secs_f64(),
        rss / 1024
    );
}
