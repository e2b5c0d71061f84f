//! What the daemon tells Prometheus and load balancers: per-source and
//! per-output figures from each run's report, rendered in the Prometheus text
//! format, and a health verdict from the age of the published list.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::report::{Outcome, Report, SourceStatus};

#[derive(Debug, Default, Clone)]
struct SourceFigures {
    kind: String,
    last_success: Option<f64>,
    recipients: u64,
    duration: f64,
    failures: u64,
}

#[derive(Debug, Default, Clone)]
struct OutputFigures {
    last_change: Option<f64>,
    last_reload_ok: Option<bool>,
}

#[derive(Debug, Default)]
struct Figures {
    sources: BTreeMap<String, SourceFigures>,
    outputs: BTreeMap<String, OutputFigures>,
    runs: BTreeMap<&'static str, u64>,
    guard_refusals: u64,
    ticks_skipped: u64,
    reloads: BTreeMap<&'static str, u64>,
    recipients: Option<u64>,
    /// Unix time at which the published list last held fresh data of every source.
    fresh_at: Option<f64>,
}

/// Shared between the daemon loop (writer) and the HTTP endpoint (reader).
#[derive(Debug, Default)]
pub struct Metrics {
    figures: Mutex<Figures>,
    max_staleness: Mutex<Option<Duration>>,
}

impl Metrics {
    /// `fresh_at`: when the list on disk was written (a restart must not make an
    /// old list look fresh, nor a fresh one look stale).
    pub fn new(fresh_at: Option<f64>, max_staleness: Option<Duration>) -> Metrics {
        let m = Metrics::default();
        m.lock().fresh_at = fresh_at;
        m.set_max_staleness(max_staleness);
        m
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_max_staleness(&self, d: Option<Duration>) {
        *self.max_staleness.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// Takes in one run's report, finished at `now` (unix seconds).
    pub fn record(&self, report: &Report, now: f64) {
        let mut f = self.lock();
        let result = match report.outcome {
            Outcome::Success => "success",
            Outcome::GuardRefused => "guard_refused",
            Outcome::Failed(_) => "failed",
        };
        *f.runs.entry(result).or_default() += 1;
        if report.outcome == Outcome::GuardRefused {
            f.guard_refusals += 1;
        }
        let success = report.outcome == Outcome::Success;
        let mut all_fresh = success;
        for s in &report.sources {
            let e = f.sources.entry(s.name.clone()).or_default();
            e.kind = s.kind.clone();
            match (s.status, &s.error) {
                (SourceStatus::Ok, _) => {
                    e.recipients = s.recipients as u64;
                    e.duration = s.took.as_secs_f64();
                    if success {
                        e.last_success = Some(now);
                    }
                }
                // Not due at this tick: its copy is as fresh as its last fetch.
                (SourceStatus::LastGood, None) => {
                    if e.last_success.is_none() {
                        all_fresh = false;
                    }
                }
                _ => {
                    e.failures += 1;
                    all_fresh = false;
                }
            }
        }
        for o in &report.outputs {
            let e = f.outputs.entry(o.name.clone()).or_default();
            if success && o.changed && !report.dry_run {
                e.last_change = Some(now);
            }
            if o.reloaded {
                e.last_reload_ok = Some(success);
            } else if o.error.is_some() {
                e.last_reload_ok = Some(false);
            }
        }
        if success {
            f.recipients = Some(report.recipients as u64);
            if all_fresh {
                // The list is as old as its oldest source.
                let oldest = f.sources.values().filter_map(|s| s.last_success).fold(now, f64::min);
                f.fresh_at = Some(oldest);
            }
        }
    }

    /// A run that could not start (e.g. the state lock was held).
    pub fn record_error(&self) {
        *self.lock().runs.entry("failed").or_default() += 1;
    }

    pub fn tick_skipped(&self) {
        self.lock().ticks_skipped += 1;
    }

    pub fn config_reload(&self, ok: bool) {
        *self.lock().reloads.entry(if ok { "success" } else { "failed" }).or_default() += 1;
    }

    /// Seconds since the published list last held fresh data from every source.
    pub fn list_age(&self, now: f64) -> Option<f64> {
        self.lock().fresh_at.map(|t| (now - t).max(0.0))
    }

    /// `Ok(text)` when healthy; `Err(text)` when the list is older than
    /// `max_staleness` or was never published.
    pub fn health(&self, now: f64) -> Result<String, String> {
        let max = *self.max_staleness.lock().unwrap_or_else(|p| p.into_inner());
        match (self.list_age(now), max) {
            (None, _) => Err("no list has been published yet\n".into()),
            (Some(age), Some(max)) if age > max.as_secs_f64() => Err(format!(
                "stale: the published list is {age:.0} s old, more than max_staleness ({} s)\n",
                max.as_secs()
            )),
            (Some(age), _) => Ok(format!("ok: the published list is {age:.0} s old\n")),
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, now: f64) -> String {
        let f = self.lock();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let per_source = |get: &dyn Fn(&SourceFigures) -> Option<f64>| -> Vec<(String, f64)> {
            f.sources
                .iter()
                .filter_map(|(n, s)| get(s).map(|v| (format!("{{source=\"{}\",kind=\"{}\"}}", label(n), s.kind), v)))
                .collect()
        };
        family(
            "rcptsync_source_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the source's last successful fetch in a successful run.",
            per_source(&|s| s.last_success),
        );
        family(
            "rcptsync_source_recipients",
            "gauge",
            "Entries the source returned at its last successful fetch.",
            per_source(&|s| Some(s.recipients as f64)),
        );
        family(
            "rcptsync_source_duration_seconds",
            "gauge",
            "How long the source's last successful fetch took.",
            per_source(&|s| Some(s.duration)),
        );
        family(
            "rcptsync_source_failures_total",
            "counter",
            "Fetches of the source that failed.",
            per_source(&|s| Some(s.failures as f64)),
        );
        let per_output = |get: &dyn Fn(&OutputFigures) -> Option<f64>| -> Vec<(String, f64)> {
            f.outputs.iter().filter_map(|(n, o)| get(o).map(|v| (format!("{{output=\"{}\"}}", label(n)), v))).collect()
        };
        family(
            "rcptsync_output_last_change_timestamp_seconds",
            "gauge",
            "Unix time the output last changed on disk.",
            per_output(&|o| o.last_change),
        );
        family(
            "rcptsync_output_last_reload_success",
            "gauge",
            "1 if the output's last reload (or check) succeeded, 0 if it failed.",
            per_output(&|o| o.last_reload_ok.map(|ok| if ok { 1.0 } else { 0.0 })),
        );
        let runs = ["success", "failed", "guard_refused"]
            .iter()
            .map(|r| (format!("{{result=\"{r}\"}}"), f.runs.get(r).copied().unwrap_or(0) as f64))
            .collect();
        family("rcptsync_runs_total", "counter", "Sync runs by result.", runs);
        family(
            "rcptsync_guard_refusals_total",
            "counter",
            "Runs whose new list the guard refused.",
            vec![(String::new(), f.guard_refusals as f64)],
        );
        family(
            "rcptsync_ticks_skipped_total",
            "counter",
            "Scheduled ticks skipped because a run was still in progress.",
            vec![(String::new(), f.ticks_skipped as f64)],
        );
        let reloads = ["success", "failed"]
            .iter()
            .map(|r| (format!("{{result=\"{r}\"}}"), f.reloads.get(r).copied().unwrap_or(0) as f64))
            .collect();
        family("rcptsync_config_reloads_total", "counter", "Config reloads by result.", reloads);
        family(
            "rcptsync_recipients",
            "gauge",
            "Entries in the published list.",
            f.recipients.map(|r| vec![(String::new(), r as f64)]).unwrap_or_default(),
        );
        family(
            "rcptsync_list_age_seconds",
            "gauge",
            "Seconds since the published list last held fresh data from every source.",
            f.fresh_at.map(|t| vec![(String::new(), (now - t).max(0.0))]).unwrap_or_default(),
        );
        out
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{OutputReport, SourceReport};

    fn report(outcome: Outcome, sources: &[(&str, SourceStatus, usize, Option<&str>)], changed: bool) -> Report {
        let cfg = crate::config::parse(
            "[[source]]\nname = \"a\"\nkind = \"file\"\npath = \"a\"\n[[output]]\nname = \"pf\"\ntemplate = \"plain\"\npath = \"/tmp/x\"\n",
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        let mut r = Report::new(
            sources
                .iter()
                .map(|(n, st, rc, e)| SourceReport {
                    name: n.to_string(),
                    kind: "file".into(),
                    status: *st,
                    recipients: *rc,
                    error: e.map(str::to_string),
                    took: Duration::from_millis(250),
                })
                .collect(),
            &cfg,
        );
        r.outcome = outcome;
        r.recipients = 42;
        r.outputs = vec![OutputReport {
            name: "pf".into(),
            path: "/tmp/x".into(),
            changed,
            reloaded: changed,
            diff: None,
            error: None,
        }];
        r
    }

    /// Parses the exposition text into `name{labels}` → value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn runs_become_figures_and_staleness_flips_health() {
        let m = Metrics::new(None, Some(Duration::from_secs(60)));
        assert!(m.health(1000.0).is_err(), "nothing published yet");
        m.record(&report(Outcome::Success, &[("a", SourceStatus::Ok, 40, None)], true), 1000.0);
        let s = samples(&m.render(1010.0));
        assert_eq!(s["rcptsync_source_last_success_timestamp_seconds{source=\"a\",kind=\"file\"}"], 1000.0);
        assert_eq!(s["rcptsync_source_recipients{source=\"a\",kind=\"file\"}"], 40.0);
        assert_eq!(s["rcptsync_source_duration_seconds{source=\"a\",kind=\"file\"}"], 0.25);
        assert_eq!(s["rcptsync_output_last_change_timestamp_seconds{output=\"pf\"}"], 1000.0);
        assert_eq!(s["rcptsync_output_last_reload_success{output=\"pf\"}"], 1.0);
        assert_eq!(s["rcptsync_runs_total{result=\"success\"}"], 1.0);
        assert_eq!(s["rcptsync_recipients"], 42.0);
        assert_eq!(s["rcptsync_list_age_seconds"], 10.0);
        assert!(m.health(1050.0).is_ok());

        // The source fails from now on (kept by its last good copy): the list ages.
        m.record(&report(Outcome::Success, &[("a", SourceStatus::LastGood, 40, Some("down"))], false), 1030.0);
        m.record(&report(Outcome::GuardRefused, &[("a", SourceStatus::Ok, 1, None)], false), 1040.0);
        let s = samples(&m.render(1070.0));
        assert_eq!(s["rcptsync_source_failures_total{source=\"a\",kind=\"file\"}"], 1.0);
        assert_eq!(s["rcptsync_guard_refusals_total"], 1.0);
        assert_eq!(s["rcptsync_runs_total{result=\"guard_refused\"}"], 1.0);
        assert_eq!(s["rcptsync_list_age_seconds"], 70.0);
        let e = m.health(1070.0).unwrap_err();
        assert!(e.starts_with("stale: the published list is 70 s old"), "{e}");
        // A fresh run makes it healthy again.
        m.record(&report(Outcome::Success, &[("a", SourceStatus::Ok, 41, None)], true), 1080.0);
        assert!(m.health(1081.0).is_ok());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
