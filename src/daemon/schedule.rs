//! When the daemon runs, and which sources each tick fetches. Pure: every
//! function takes "now" as an argument, so the tests choose the clock.
//!
//! The global `[daemon] schedule` covers the sources without a `schedule` of
//! their own; a source with its own line is fetched only at its own ticks, and
//! other ticks reuse its last good copy. When several lines fire at the same
//! instant, one run fetches all of their sources.

use std::str::FromStr as _;

use chrono::{DateTime, TimeZone};

use crate::config::{Config, DEFAULT_SCHEDULE};

/// Parses a cron line. Five fields (crontab: minute hour day month weekday) get
/// a `0` seconds field in front; six or seven are taken as they are.
pub fn parse(line: &str) -> Result<cron::Schedule, String> {
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
    cron::Schedule::from_str(&full).map_err(|e| format!("{line:?} is not a valid cron line: {e}"))
}

/// The schedules of one config: the global line and the sources it covers,
/// then each source with its own line.
#[derive(Debug, Clone)]
pub struct Plan {
    lines: Vec<(cron::Schedule, Vec<String>)>,
}

/// The next tick: when, and which sources it fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick<Z: TimeZone> {
    pub at: DateTime<Z>,
    pub sources: Vec<String>,
}

impl Plan {
    /// Builds the plan; the config was validated, so the lines parse.
    pub fn new(cfg: &Config) -> Result<Plan, String> {
        let global = cfg.daemon.as_ref().and_then(|d| d.schedule.clone()).unwrap_or_else(|| DEFAULT_SCHEDULE.into());
        let mut lines = vec![(parse(&global)?, Vec::new())];
        for s in &cfg.sources {
            match &s.schedule {
                Some(line) => lines.push((parse(line)?, vec![s.name.clone()])),
                None => lines[0].1.push(s.name.clone()),
            }
        }
        Ok(Plan { lines })
    }

    /// The first tick strictly after `now`, with every source due then.
    pub fn next<Z: TimeZone>(&self, now: &DateTime<Z>) -> Option<Tick<Z>> {
        let mut best: Option<Tick<Z>> = None;
        for (schedule, sources) in self.lines.iter().filter(|(_, s)| !s.is_empty()) {
            let Some(at) = schedule.after(now).next() else { continue };
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

    fn cfg(text: &str) -> Config {
        crate::config::parse(text, std::path::Path::new("/tmp")).unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_mean_crontab_and_six_have_seconds() {
        let now = at("2026-11-28T10:03:20Z");
        assert_eq!(parse("*/5 * * * *").unwrap().after(&now).next().unwrap(), at("2026-11-28T10:05:00Z"));
        assert_eq!(parse("*/10 * * * * *").unwrap().after(&now).next().unwrap(), at("2026-11-28T10:03:30Z"));
        assert!(parse("* * *").unwrap_err().contains("has 3 fields"));
        assert!(parse("61 * * * *").unwrap_err().contains("not a valid cron line"));
    }

    #[test]
    fn per_source_lines_pick_their_own_ticks() {
        let c = cfg(r#"
            [daemon]
            schedule = "0 * * * *"
            [[source]]
            name = "ad"
            kind = "file"
            path = "a"
            [[source]]
            name = "m365"
            kind = "file"
            path = "b"
            schedule = "*/2 * * * *"
            [[output]]
            name = "o"
            template = "plain"
            path = "/tmp/o"
        "#);
        let plan = Plan::new(&c).unwrap();
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
        let c = cfg(
            "[[source]]\nname = \"a\"\nkind = \"file\"\npath = \"a\"\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n",
        );
        let t = Plan::new(&c).unwrap().next(&at("2026-11-28T10:03:00Z")).unwrap();
        assert_eq!(t.at, at("2026-11-28T10:05:00Z"));
    }
}
