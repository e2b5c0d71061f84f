//! `kind = "bundle"`: an edge reads the signed bundle its hub published (README,
//! Fleets). This version reads a bundle copied onto the edge (`path`, e.g. by
//! Ansible or Salt) with its signature at `PATH.minisig`.
//!
//! The signature is checked before anything else is parsed; then the bundle is
//! refused when it is older than `max_age`, when its serial is lower than the
//! last one this edge accepted (a rollback), or when it reuses an accepted
//! serial for other entries. Each refusal is a failed source, so the guard,
//! the last-known-good copy and the stale-list defence act as for any source.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bundle::{self, PublicKey};
use crate::connector::{Batch, Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind};
use crate::section::{Checker, parse_duration};
use crate::state::Cache;

/// `max_age` when not set: a hub re-signs an unchanged list every 6 hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A bundle dated this far in the future is still taken (clocks differ a little).
const CLOCK_SKEW: i64 = 300;

/// `kind = "bundle"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSourceSpec {
    /// The bundle, copied here (its signature beside it as PATH.minisig).
    pub path: PathBuf,
    /// The hub's public key itself (`RW…`), or
    pub public_key: Option<String>,
    /// the hub's `.pub` file.
    pub public_key_file: Option<PathBuf>,
    /// Refuse a bundle generated longer ago than this (default 24h): the hub
    /// is down or the copy is stuck.
    pub max_age: Option<String>,
    #[serde(skip)]
    pub max_age_parsed: Option<Duration>,
}

impl BundleSourceSpec {
    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        self.path = c.abs(std::mem::take(&mut self.path));
        match (&self.public_key, &self.public_key_file) {
            (Some(_), Some(_)) => {
                c.push(format!("{at}.public_key"), "set public_key or public_key_file, not both".into())
            }
            (None, None) => c.push(
                format!("{at}.public_key"),
                "is required (or public_key_file): the hub's key from rcptsync keygen (PREFIX.pub)".into(),
            ),
            (Some(k), None) => {
                if let Err(e) = PublicKey::parse(k) {
                    c.push(format!("{at}.public_key"), e.to_string());
                }
            }
            (None, Some(f)) => self.public_key_file = Some(c.abs(f.clone())),
        }
        self.max_age_parsed = Some(match &self.max_age {
            None => DEFAULT_MAX_AGE,
            Some(s) => match parse_duration(s) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    c.push(format!("{at}.max_age"), "must be longer than 0s".into());
                    DEFAULT_MAX_AGE
                }
                Err(e) => {
                    c.push(format!("{at}.max_age"), e);
                    DEFAULT_MAX_AGE
                }
            },
        });
    }
}

/// What this edge last accepted (its state directory), against rollbacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Accepted {
    serial: u64,
    entries_sha256: String,
    publisher: String,
}

#[derive(Debug, Clone)]
pub struct BundleSource {
    spec: BundleSourceSpec,
    /// None for `check`, which must not move the rollback mark.
    cache: Option<Cache>,
}

impl BundleSource {
    pub fn new(spec: BundleSourceSpec, cache: Option<Cache>) -> BundleSource {
        BundleSource { spec, cache }
    }

    fn key(&self) -> Result<PublicKey, SourceError> {
        match (&self.spec.public_key, &self.spec.public_key_file) {
            (Some(k), _) => PublicKey::parse(k),
            (None, Some(f)) => PublicKey::from_arg(&f.display().to_string()),
            (None, None) => return Err(SourceError::new("no public key configured")),
        }
        .map_err(|e| SourceError::new(e.to_string()))
    }

    /// Reads and checks the bundle; returns its header and entry lines.
    fn read(&self) -> Result<(bundle::Header, Vec<String>), SourceError> {
        let path = &self.spec.path;
        let mut sig_path = path.as_os_str().to_owned();
        sig_path.push(bundle::SIG_SUFFIX);
        let sig_path = PathBuf::from(sig_path);
        let bytes =
            std::fs::read(path).map_err(|e| SourceError::new(format!("cannot read {}: {e}", path.display())))?;
        let sig = std::fs::read_to_string(&sig_path)
            .map_err(|e| SourceError::new(format!("cannot read the signature {}: {e}", sig_path.display())))?;
        let key = self.key()?;
        let v = bundle::verify(&bytes, &sig, &key)
            .map_err(|e| SourceError::new(format!("bundle {} refused: {e}", path.display())))?;
        let h = v.header;
        if h.hash.is_some() {
            return Err(SourceError::new(format!(
                "bundle {} holds hashed entries, which a bundle source cannot read yet; publish a clear one for this edge",
                path.display()
            )));
        }
        let now = now_unix();
        let max_age = self.spec.max_age_parsed.unwrap_or(DEFAULT_MAX_AGE);
        let age = now - h.generated_unix;
        if age > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
            return Err(SourceError::new(format!(
                "bundle {} (serial {} from {}) was generated {} ago ({}), more than max_age {}: is the hub publishing?",
                path.display(),
                h.serial,
                h.publisher,
                humantime::format_duration(Duration::from_secs(u64::try_from(age).unwrap_or(0))),
                h.generated,
                humantime::format_duration(max_age)
            )));
        }
        if age < -CLOCK_SKEW {
            return Err(SourceError::new(format!(
                "bundle {} claims to be generated at {}, in the future: check the hub's and this host's clocks",
                path.display(),
                h.generated
            )));
        }
        if let Some(last) = self.cache.as_ref().and_then(|c| c.load::<Accepted>()) {
            if h.serial < last.serial {
                return Err(SourceError::new(format!(
                    "bundle {} has serial {}, lower than the last accepted {} (a rollback: an old copy came back)",
                    path.display(),
                    h.serial,
                    last.serial
                )));
            }
            if h.serial == last.serial && h.entries_sha256 != last.entries_sha256 {
                return Err(SourceError::new(format!(
                    "bundle {} reuses serial {} for other entries than the ones accepted under it",
                    path.display(),
                    h.serial
                )));
            }
        }
        let entries = v.entries.iter().map(|e| e.to_string()).collect();
        Ok((h, entries))
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Connector for BundleSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let (h, entries) = self.read()?;
        if let Some(c) = &self.cache {
            c.save(
                &Accepted {
                    serial: h.serial,
                    entries_sha256: h.entries_sha256.clone(),
                    publisher: h.publisher.clone(),
                },
                "bundle",
            );
        }
        tracing::info!(path = %self.spec.path.display(), serial = h.serial, publisher = %h.publisher, hub_sources = %h.sources.join(","), "bundle accepted");
        let items = entries
            .into_iter()
            .enumerate()
            .map(|(i, value)| RawItem {
                kind: RawKind::of(&value),
                value,
                // Line numbers of the bundle file (line 1 is the header).
                locator: Locator::Line(u32::try_from(i + 2).unwrap_or(u32::MAX)),
            })
            .collect();
        Ok(Fetched::Ready(Batch {
            items,
            entries: Vec::new(),
            rejected: Vec::new(),
            left_out: Vec::new(),
            raw_fingerprint: Some(format!("bundle:{}", h.entries_sha256)),
        }))
    }

    async fn check(&self) -> Result<String, SourceError> {
        let (h, _) = self.read()?;
        Ok(format!("bundle {}: {}", self.spec.path.display(), h.summary()))
    }
}
