//! The shipped monitoring (`dist/monitoring/`): the alerting rules are tested
//! with `promtool test rules` against the series a real `rcptsync daemon`
//! serves on `/metrics` (names, labels and values as scraped, then played
//! forward in time), and the dashboard asks only for metrics that exist.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{Run, TestDir, http_get, say};

fn promtool() -> Option<String> {
    match std::env::var("RCPTSYNC_TEST_PROMTOOL") {
        Ok(p) if Path::new(&p).exists() => Some(p),
        _ => {
            say(
                "SKIPPED monitoring: promtool tests need RCPTSYNC_TEST_PROMTOOL (scripts/test.sh extracts Debian's promtool)",
            );
            None
        }
    }
}

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// One scrape: `name{labels}` and value.
type Series = [(String, f64)];

/// `name{labels}` → value, from one scrape.
fn scrape(port: u16) -> Vec<(String, f64)> {
    let (code, body) = http_get(([127, 0, 0, 1], port).into(), "/metrics", None);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// Scrapes a daemon whose source `bad` worked once and now fails, so every
/// family (and the failing source's labels) is present.
fn live_series(t: &TestDir) -> Vec<(String, f64)> {
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("list.txt", "a@example.com\nb@example.com\n");
    t.write("bad.txt", "c@example.com\n");
    let port = crate::support::db::free_port();
    t.config(&format!(
        "state_dir = \"state\"\n[daemon]\nschedule = \"* * * * * *\"\nlisten = \"127.0.0.1:{port}\"\n\
         [[source]]\nname = \"list\"\nkind = \"file\"\npath = \"list.txt\"\n\
         [[source]]\nname = \"bad\"\nkind = \"file\"\npath = \"bad.txt\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\nreload = [\"true\"]\n"
    ));
    let _daemon = crate::util::Stopped(
        t.cmd(&["daemon", "-c", "rcptsync.toml"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap(),
    );
    let wait = |what: &str, ok: &dyn Fn(&Series) -> bool| {
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let s =
                if http_get(([127, 0, 0, 1], port).into(), "/metrics", None).0 == 200 { scrape(port) } else { vec![] };
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < end, "metrics never showed {what}: {s:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let has = |s: &Series, k: &str, min: f64| s.iter().any(|(n, v)| n == k && *v >= min);
    wait("a first good run", &|s| has(s, "rcptsync_recipients", 3.0));
    std::fs::remove_file(t.join("bad.txt")).unwrap();
    wait("the failing source", &|s| has(s, "rcptsync_source_failures_total{source=\"bad\",kind=\"file\"}", 1.0))
}

/// promtool's series notation for a scraped value played forward: `start+stepxN`.
fn series(name: &str, start: f64, step: f64) -> String {
    format!("      - series: '{name}'\n        values: '{start}+{step}x120'\n")
}

#[test]
fn alerting_rules_fire_on_the_series_rcptsync_serves() {
    let Some(promtool) = promtool() else { return };
    let t = TestDir::new();
    let scraped = live_series(&t);
    let instance = "instance=\"mx2:9154\",job=\"rcptsync\"";
    let mut input = String::new();
    for (name, v) in &scraped {
        // Add the labels Prometheus adds when it scrapes.
        let with_target = match name.split_once('{') {
            Some((n, rest)) => format!("{n}{{{instance},{rest}"),
            None => format!("{name}{{{instance}}}"),
        };
        let (start, step) = if name.starts_with("rcptsync_list_age_seconds") {
            (0.0, 60.0) // the list keeps getting older: nothing fresh is published
        } else if name.starts_with("rcptsync_source_failures_total{source=\"bad\"") {
            (*v, 1.0) // the bad source fails at every run
        } else {
            (*v, 0.0)
        };
        input.push_str(&series(&with_target, start, step));
    }
    input.push_str(&series("up{instance=\"mx2:9154\",job=\"rcptsync\"}", 1.0, 0.0));
    let rules = repo("dist/monitoring/rcptsync-alerts.yml");
    let test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n{input}\
         \x20   alert_rule_test:\n\
         \x20     - eval_time: 100m\n        alertname: RcptsyncListStale\n        exp_alerts:\n\
         \x20         - exp_labels: {{severity: critical, instance: \"mx2:9154\", job: rcptsync}}\n\
         \x20           exp_annotations:\n\
         \x20             summary: \"rcptsync's recipient list on mx2:9154 is 1h 40m 0s old\"\n\
         \x20             description: \"No run has published fresh data from every source for over an hour. Look for source= errors in the daemon's log and run `rcptsync check`.\"\n\
         \x20     - eval_time: 100m\n        alertname: RcptsyncSourceFailing\n        exp_alerts:\n\
         \x20         - exp_labels: {{severity: warning, instance: \"mx2:9154\", job: rcptsync, source: bad, kind: file}}\n\
         \x20           exp_annotations:\n\
         \x20             summary: \"rcptsync source bad (file) keeps failing on mx2:9154\"\n\
         \x20             description: \"Fetches of bad failed in the last 15 minutes. `rcptsync check` names the cause and the fix.\"\n\
         \x20     - eval_time: 100m\n        alertname: RcptsyncGuardRefused\n        exp_alerts: []\n\
         \x20     - eval_time: 100m\n        alertname: RcptsyncDown\n        exp_alerts: []\n\
         \x20     - eval_time: 100m\n        alertname: RcptsyncSlowSource\n        exp_alerts: []\n\
         \x20     - eval_time: 100m\n        alertname: RcptsyncReloadFailing\n        exp_alerts: []\n\
         \x20     - eval_time: 30m\n        alertname: RcptsyncListStale\n        exp_alerts: []\n",
        rules.display()
    );
    let file = t.write("rules.test.yml", &test);
    let r = Run::from(Command::new(&promtool).args(["test", "rules"]).arg(&file).output().unwrap());
    assert_eq!(r.code, 0, "promtool test rules failed:\n{}{}\n--- test file\n{test}", r.stdout, r.stderr);
    let r = Run::from(Command::new(&promtool).args(["check", "rules"]).arg(&rules).output().unwrap());
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // The dashboard asks only for metric families the daemon serves.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo("dist/monitoring/rcptsync-dashboard.json")).unwrap())
            .unwrap();
    let families: std::collections::BTreeSet<&str> =
        scraped.iter().map(|(n, _)| n.split('{').next().unwrap_or(n)).collect();
    let mut exprs = 0;
    for p in dash["panels"].as_array().unwrap() {
        for target in p["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let named: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("rcptsync_"))
                .collect();
            assert!(!named.is_empty(), "{expr}");
            for m in named {
                assert!(
                    families.contains(m),
                    "dashboard panel {:?} asks for {m}, which /metrics does not serve",
                    p["title"]
                );
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 8);
}
