//! `[policy]` and `[guard]`: the sections the pure core owns. Loading compiles
//! `[policy]` into a [`Policy`] once (domains IDNA-normalised, includes parsed,
//! exclude globs built); every later stage uses that, nothing re-parses it.

use std::time::Duration;

use serde::Deserialize;

use super::Policy;
use super::address::{Entry, parse_domain};
use crate::section::Checker;

/// `[policy]`: what the final list is made of.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Keep only recipients in these domains (exact match, IDNA-normalised).
    /// Omitted: keep every domain the sources produce.
    pub domains: Option<Vec<String>>,
    /// Addresses (or `@domain` catch-alls) that are always published.
    #[serde(default)]
    pub include: Vec<String>,
    /// Glob patterns (`*`, `?`, `[...]`) matched against the lowercase address
    /// (`@domain` for a catch-all); matches are removed.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The characters that start an address extension (`user+tag@domain`),
    /// like Postfix's `recipient_delimiter`; `""` for none. Unset: the
    /// delimiters the SQL sources' products use.
    pub recipient_delimiter: Option<String>,
}

/// What the guard does when a source fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSourceFailure {
    /// Use the source's last-known-good slice; fail only if there is none.
    #[default]
    KeepLastGood,
    /// Fail the whole run; nothing is written.
    Abort,
}

/// `[guard]`: the checks that stop a worse list from being published by accident.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// Refuse a list with fewer entries than this. Unset: 1 for a first list,
    /// afterwards half the largest list applied within `shrink_window`.
    pub min_recipients: Option<u64>,
    /// Refuse a list that removes more than this percentage of the last applied list.
    #[serde(default = "default_max_removed_percent")]
    pub max_removed_percent: f64,
    /// What a failed source does to the run.
    #[serde(default)]
    pub on_source_failure: OnSourceFailure,
    /// Addresses that must be in every published list (e.g. the CEO's); a list
    /// without one is refused like any guard trip. Normalised by validation.
    #[serde(default)]
    pub canaries: Vec<String>,
    /// Also compare with the largest list applied within this window, so that
    /// a staircase of small cuts trips the guard once they add up to more
    /// than `max_removed_percent` (default 7 days; `"0s"` turns it off).
    #[serde(default = "default_shrink_window", deserialize_with = "de_window")]
    pub shrink_window: Duration,
    /// Refuse when one source's share of the list shrinks by more than this
    /// against its own last good copy (default: `max_removed_percent`), so a
    /// small source emptied "successfully" is caught too.
    pub max_removed_percent_per_source: Option<f64>,
    /// Refuse when one domain loses more than this share of its entries (or all
    /// of them), even if the global share is small.
    pub max_removed_percent_per_domain: Option<f64>,
    /// Keep publishing an entry that disappeared from every source until it has
    /// been absent this long (tombstones in `state_dir`).
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub removal_grace: Option<Duration>,
    /// The list is stale when no run has published fresh data from every source
    /// for this long; `on_stale` runs once then, `on_fresh` once after the next
    /// fresh run. Also the daemon's `/healthz` limit unless `[daemon]` sets one.
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub max_staleness: Option<Duration>,
    /// argv, e.g. `["postconf", "-e", "unknown_relay_recipient_reject_code=450"]`.
    #[serde(default)]
    pub on_stale: Vec<String>,
    #[serde(default)]
    pub on_fresh: Vec<String>,
}

fn default_shrink_window() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn de_window<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::section::parse_duration(&s).map_err(serde::de::Error::custom)
}
fn default_max_removed_percent() -> f64 {
    10.0
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            min_recipients: None,
            shrink_window: default_shrink_window(),
            max_removed_percent_per_source: None,
            max_removed_percent: default_max_removed_percent(),
            on_source_failure: OnSourceFailure::default(),
            canaries: Vec::new(),
            max_removed_percent_per_domain: None,
            removal_grace: None,
            max_staleness: None,
            on_stale: Vec::new(),
            on_fresh: Vec::new(),
        }
    }
}

impl PolicyConfig {
    /// Validates and compiles the section, recording every invalid value under
    /// its config path (`policy.include[2]`).
    pub fn compile(self, c: &mut Checker) -> Policy {
        let mut domains = None;
        if let Some(list) = &self.domains {
            if list.is_empty() {
                c.push(
                    "policy.domains",
                    "is empty, so every recipient would be dropped; remove the key to keep all domains".into(),
                );
            }
            let mut set = std::collections::HashSet::new();
            for (i, d) in list.iter().enumerate() {
                match parse_domain(d) {
                    Ok(d) => {
                        set.insert(d);
                    }
                    Err(e) => c.push(format!("policy.domains[{i}]"), format!("{d:?} {e}")),
                }
            }
            domains = Some(set);
        }
        let mut include = Vec::new();
        for (i, a) in self.include.iter().enumerate() {
            match Entry::parse(a) {
                Ok(e) => include.push(e),
                Err(e) => c.push(format!("policy.include[{i}]"), format!("{a:?} {e}")),
            }
        }
        let mut b = globset::GlobSetBuilder::new();
        for (i, g) in self.exclude.iter().enumerate() {
            match globset::GlobBuilder::new(g).literal_separator(false).build() {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => c.push(format!("policy.exclude[{i}]"), format!("{g:?} is not a valid glob: {e}")),
            }
        }
        let exclude = match b.build() {
            Ok(set) => set,
            Err(e) => {
                c.push("policy.exclude", format!("cannot be compiled: {e}"));
                globset::GlobSet::empty()
            }
        };
        if let Some(d) = &self.recipient_delimiter
            && let Err(e) = check_delimiter(d)
        {
            c.push("policy.recipient_delimiter", e);
        }
        let delimiter = self.recipient_delimiter.clone();
        Policy { domains, include, exclude, delimiter, source: self }
    }
}

/// A recipient delimiter set: ASCII punctuation that can start an extension
/// (not `@`, quotes or backslash), each character once.
pub fn check_delimiter(d: &str) -> Result<(), String> {
    for ch in d.chars() {
        if !ch.is_ascii_punctuation() || matches!(ch, '@' | '"' | '\\' | '.') {
            return Err(format!("{d:?}: {ch:?} cannot start an address extension (use characters such as + or -)"));
        }
    }
    if d.chars().enumerate().any(|(i, ch)| d[..i].contains(ch)) {
        return Err(format!("{d:?} names a character twice"));
    }
    Ok(())
}

impl GuardConfig {
    /// Checks the section; canaries become their canonical form.
    pub fn validate(&mut self, c: &mut Checker) {
        if !(0.0..=100.0).contains(&self.max_removed_percent) {
            c.push("guard.max_removed_percent", "must be between 0 and 100".into());
        }
        if (!self.on_stale.is_empty() || !self.on_fresh.is_empty()) && self.max_staleness.is_none() {
            c.push("guard.on_stale", "needs guard.max_staleness (how old the list may get)".into());
        }
        if self.max_removed_percent_per_source.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
            c.push("guard.max_removed_percent_per_source", "must be between 0 and 100".into());
        }
        if self.max_removed_percent_per_domain.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
            c.push("guard.max_removed_percent_per_domain", "must be between 0 and 100".into());
        }
        for (i, canary) in self.canaries.iter_mut().enumerate() {
            match super::address::parse_address(canary) {
                Ok(e) => *canary = e.as_str().to_string(),
                Err(e) => c.push(format!("guard.canaries[{i}]"), format!("{canary:?} {e}")),
            }
        }
    }
}
