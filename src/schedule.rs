//! When the daemon runs, and which sources each tick fetches: the `[daemon]`
//! section and the cron lines, parsed once when the config loads. Pure: every
//! function takes "now" as an argument, so the tests choose the clock. It sits
//! below `config` (which composes it) while the daemon that runs it sits above.
//!
//! The global `[daemon] schedule` covers the sources without a `schedule` of
//! their own; a source with its own line is fetched only at its own ticks, and
//! other ticks reuse its last good copy. When several lines fire at the same
//! instant, one run fetches all of their sources.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone};
use serde::Deserialize;

use crate::section::Checker;

/// `[daemon]`: how `rcptsync daemon` runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Cron line (5 fields, or 6 with seconds first) for sources without their
    /// own `schedule`. Default `*/5 * * * *`.
    #[serde(rename = "schedule")]
    schedule_line: Option<String>,
    /// Parsed from `schedule` by [`DaemonConfig::validate`].
    #[serde(skip)]
    pub schedule: Option<Schedule>,
    /// `host:port` for `GET /metrics` and `GET /healthz`.
    pub listen: Option<String>,
    /// Each tick waits a random extra delay up to this, so a fleet of backup
    /// MXs doesn't hit the directory at the same second.
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub jitter: Option<Duration>,
    /// `/healthz` turns unhealthy when the published list is older than this.
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub max_staleness: Option<Duration>,
    /// Watch the config, profile and template files and reload on change.
    #[serde(default = "crate::section::yes")]
    pub watch: bool,
    /// Quiet time after the last file event before reloading (default 1s).
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub debounce: Option<Duration>,
}

/// The default `[daemon] schedule`.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

impl DaemonConfig {
    /// Parses the schedule and checks what serde could not.
    pub fn validate(&mut self, c: &mut Checker) {
        if let Some(line) = self.schedule_line.take() {
            match Schedule::parse(&line) {
                Ok(s) => self.schedule = Some(s),
                Err(e) => c.push("daemon.schedule", e),
            }
        }
        if let Some(l) = &self.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            c.push("daemon.listen", format!("{l:?} is not an address like \"127.0.0.1:9187\""));
        }
    }
}

/// A parsed cron line, kept with its text.
#[derive(Clone)]
pub struct Schedule {
    line: String,
    cron: cron::Schedule,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.line.fmt(f)
    }
}

impl Schedule {
    /// Parses a cron line. Five fields (crontab: minute hour day month weekday)
    /// get a `0` seconds field in front; six or seven are taken as they are.
    pub fn parse(line: &str) -> Result<Schedule, String> {
        let fields = line.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {line}"),
            6 | 7 => line.to_string(),
            n => {
                return Err(format!(
                    "{line:?} has {n} fields; use 5 (minute hour day month weekday) or 6 (with seconds first)"
                ));
            }
        };
        let cron = cron::Schedule::from_str(&full).map_err(|e| format!("{line:?} is not a valid cron line: {e}"))?;
        Ok(Schedule { line: line.to_string(), cron })
    }

    pub fn line(&self) -> &str {
        &self.line
    }

    /// The first instant strictly after `now`.
    pub fn next_after<Z: TimeZone>(&self, now: &DateTime<Z>) -> Option<DateTime<Z>> {
        self.cron.after(now).next()
    }
}

/// The schedules of one config: the global line and the sources it covers,
/// then each source with its own line.
#[derive(Debug, Clone)]
pub struct Plan {
    lines: Vec<(Schedule, Vec<String>)>,
}

/// The next tick: when, and which sources it fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick<Z: TimeZone> {
    pub at: DateTime<Z>,
    pub sources: Vec<String>,
}

impl Plan {
    /// The plan of a global line (default [`DEFAULT_SCHEDULE`]) and the sources,
    /// each with its own line or none.
    pub fn new<'a>(
        global: Option<&Schedule>,
        sources: impl IntoIterator<Item = (&'a str, Option<&'a Schedule>)>,
    ) -> Plan {
        let global = match global {
            Some(g) => g.clone(),
            None => Schedule::parse(DEFAULT_SCHEDULE).unwrap_or_else(|e| unreachable!("default schedule: {e}")),
        };
        let mut lines = vec![(global, Vec::new())];
        for (name, own) in sources {
            match own {
                Some(line) => lines.push((line.clone(), vec![name.to_string()])),
                None => lines[0].1.push(name.to_string()),
            }
        }
        Plan { lines }
    }

    /// The first tick strictly after `now`, with every source due then.
    pub fn next<Z: TimeZone>(&self, now: &DateTime<Z>) -> Option<Tick<Z>> {
        let mut best: Option<Tick<Z>> = None;
        for (schedule, sources) in self.lines.iter().filter(|(_, s)| !s.is_empty()) {
            let Some(at) = schedule.next_after(now) else { continue };
            match &mut best {
                Some(b) if at == b.at => b.sources.extend(sources.iter().cloned()),
                Some(b) if at > b.at => {}
                _ => best = Some(Tick { at, sources: sources.clone() }),
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn line(s: &str) -> Schedule {
        Schedule::parse(s).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_mean_crontab_and_six_have_seconds() {
        let now = at("2026-11-28T10:03:20Z");
        assert_eq!(line("*/5 * * * *").next_after(&now).unwrap(), at("2026-11-28T10:05:00Z"));
        assert_eq!(line("*/10 * * * * *").next_after(&now).unwrap(), at("2026-11-28T10:03:30Z"));
        assert!(Schedule::parse("* * *").unwrap_err().contains("has 3 fields"));
        assert!(Schedule::parse("61 * * * *").unwrap_err().contains("not a valid cron line"));
    }

    #[test]
    fn per_source_lines_pick_their_own_ticks() {
        let (hourly, often) = (line("0 * * * *"), line("*/2 * * * *"));
        let plan = Plan::new(Some(&hourly), [("ad", None), ("m365", Some(&often))]);
        // Between hours, only the frequent source is due.
        let t = plan.next(&at("2026-11-28T10:03:00Z")).unwrap();
        assert_eq!((t.at, t.sources), (at("2026-11-28T10:04:00Z"), vec!["m365".to_string()]));
        // On the hour both lines fire: one run fetches both.
        let mut t = plan.next(&at("2026-11-28T10:59:00Z")).unwrap();
        t.sources.sort();
        assert_eq!((t.at, t.sources), (at("2026-11-28T11:00:00Z"), vec!["ad".to_string(), "m365".to_string()]));
    }

    #[test]
    fn global_default_is_every_five_minutes() {
        let t = Plan::new(None, [("a", None)]).next(&at("2026-11-28T10:03:00Z")).unwrap();
        assert_eq!(t.at, at("2026-11-28T10:05:00Z"));
    }
}
