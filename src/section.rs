//! The vocabulary every config section shares: an error with its config path,
//! a checker that collects *all* errors of a file, and the value parsers
//! (durations, names, paths relative to the config file) that the parts use in
//! their own `validate`.
//!
//! It sits below every part that owns a section (connectors, writer, policy,
//! daemon schedule), so those parts never import `config`: `config` imports
//! them and only composes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{Literal, SecretSource};

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `source[2].path`; empty for file-level errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Collects every error of one config file, and resolves relative paths against
/// the file's directory. Validation is pure: it never connects anywhere.
#[derive(Debug)]
pub struct Checker {
    errors: Vec<ConfigError>,
    base: PathBuf,
}

impl Checker {
    pub fn new(base: &Path) -> Checker {
        Checker { errors: Vec::new(), base: base.to_path_buf() }
    }

    pub fn push(&mut self, path: impl Into<String>, message: String) {
        self.errors.push(ConfigError { path: path.into(), message });
    }

    /// How many errors so far (to tell whether a section added any).
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// Whether an error was recorded at or under `prefix`.
    pub fn has_errors_under(&self, prefix: &str) -> bool {
        self.errors.iter().any(|e| e.path.starts_with(prefix))
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    /// A path from the file, made absolute against the file's directory.
    pub fn abs(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() { p } else { self.base.join(p) }
    }

    /// [`Checker::abs`] for an optional path, in place.
    pub fn abs_opt(&self, p: &mut Option<PathBuf>) {
        *p = p.take().map(|p| self.abs(p));
    }

    /// Deserialises one section, recording the error under its path.
    pub fn section<T: for<'de> Deserialize<'de>>(&mut self, at: &str, value: toml::Value) -> Option<T> {
        match T::deserialize(value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.push(at, clean_serde_message(&e.to_string()));
                None
            }
        }
    }

    /// Resolves the `key` / `key_file` / `key_env` triple of a secret; an error
    /// (more than one set) is recorded under `at.key`.
    pub fn secret(
        &mut self,
        at: &str,
        key: &str,
        literal: Option<Literal>,
        file: Option<PathBuf>,
        env: Option<String>,
    ) -> Option<SecretSource> {
        let file = file.map(|p| self.abs(p));
        match SecretSource::from_keys(key, literal.map(|l| l.0), file, env) {
            Ok(s) => s,
            Err(e) => {
                self.push(format!("{at}.{key}"), e);
                None
            }
        }
    }

    /// Parses an optional duration key, falling back to `default`.
    pub fn duration(&mut self, at: &str, value: Option<&str>, default: Duration) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(at, e);
                default
            }
        }
    }
}

/// (config key, message) of each override file that could not be loaded.
pub type LoadErrors = Vec<(String, String)>;

/// The `*.EXT` files of an override directory (`profile_dir`, `template_dir`)
/// as (stem, path, text), sorted; unreadable ones are recorded under `key`.
pub fn read_dir_files(dir: &Path, ext: &str, key: &str, errors: &mut LoadErrors) -> Vec<(String, String, String)> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            errors.push((key.into(), format!("cannot read {}: {e}", dir.display())));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((name.to_string(), path.display().to_string(), text)),
            Err(e) => errors.push((key.into(), format!("cannot read {}: {e}", path.display()))),
        }
    }
    out.sort();
    out
}

/// Names that are safe as file names in `state_dir`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Parses durations such as `90s`, `5m`, `72h`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like \"30s\" or \"5m\": {e}"))
}

/// serde: an optional duration written as text (`"90s"`).
pub fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
}

/// serde: one value or a list of them (`url = "…"` or `url = ["…", "…"]`).
pub fn one_or_many<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// serde default `true`.
pub fn yes() -> bool {
    true
}

/// A serde message on one line.
pub fn clean_serde_message(msg: &str) -> String {
    msg.trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("x").is_err());
        assert!(valid_name("corp-ad_1.x"));
        assert!(!valid_name("../x") && !valid_name("") && !valid_name(".hidden") && !valid_name("a/b"));
    }
}
