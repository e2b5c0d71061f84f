//! `kind = "bundle"`: an edge reads the signed bundle its hub published (README,
//! Fleets): from an HTTPS server or object store (`url`, with `URL.minisig`),
//! or a copy put on the edge by config management (`path`, with
//! `PATH.minisig`).
//!
//! Over HTTPS it asks conditionally (`If-None-Match`, `If-Modified-Since`) and
//! keeps a copy of the last bundle it accepted in `state_dir`: an unchanged hub
//! costs one request that answers 304, and the copy is checked again (its age
//! still counts).
//!
//! The signature is checked before anything else is parsed; then the bundle is
//! refused when it is older than `max_age`, when its serial is lower than the
//! last one this edge accepted (a rollback), or when it reuses an accepted
//! serial for other entries. Each refusal is a failed source, so the guard,
//! the last-known-good copy and the stale-list defence act as for any source.
//!
//! A hashed bundle (the hub set `hash_salt`) is read only by a source that
//! holds the same salt (`hash_salt`, checked against the bundle's
//! `salt_check`): its digests pass through as digest entries
//! (`policy::digest`), never hashed again, and the config lets them feed only
//! hashed outputs.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bundle::{self, PublicKey};
use crate::connector::{Batch, Connector, Fetched, Note, SourceError};
use crate::policy::address::Entry;
use crate::policy::digest::salt_check;
use crate::policy::{Located, Locator, RawItem, RawKind, Rejected, validate_item};
use crate::secret::{Literal, SecretSource};
use crate::section::{Checker, parse_duration};
use crate::state::Cache;
use rayon::prelude::*;

/// `max_age` when not set: a hub re-signs an unchanged list every 6 hours.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A bundle dated this far in the future is still taken (clocks differ a little).
const CLOCK_SKEW: i64 = 300;

/// `kind = "bundle"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSourceSpec {
    /// The bundle, copied here (its signature beside it as PATH.minisig), or
    pub path: Option<PathBuf>,
    /// the bundle's https:// URL (its signature at URL.minisig).
    pub url: Option<String>,
    /// With `url`: trust only this CA (a private CA), not the system's store.
    pub ca_file: Option<PathBuf>,
    /// The hub's public key itself (`RW…`), or
    pub public_key: Option<String>,
    /// the hub's `.pub` file.
    pub public_key_file: Option<PathBuf>,
    /// Refuse a bundle generated longer ago than this (default 24h): the hub
    /// is down or the copy is stuck.
    pub max_age: Option<String>,
    /// For a hashed bundle: the hub's `hash_salt` (or `hash_salt_file`,
    /// `hash_salt_env`). It says this edge reads digests, and it is checked
    /// against the bundle; the edge's hashed outputs and socketmap use it.
    hash_salt: Option<Literal>,
    hash_salt_file: Option<PathBuf>,
    hash_salt_env: Option<String>,
    #[serde(skip)]
    pub max_age_parsed: Option<Duration>,
    /// The salt from the three keys above.
    #[serde(skip)]
    pub salt: Option<SecretSource>,
}

impl BundleSourceSpec {
    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        match (&self.path, &self.url) {
            (Some(p), None) => {
                self.path = Some(c.abs(p.clone()));
                if self.ca_file.is_some() {
                    c.push(format!("{at}.ca_file"), "is only for url".into());
                }
            }
            (None, Some(u)) => {
                crate::connector::http::check_url(c, at, "url", u, false);
                self.ca_file = self.ca_file.clone().map(|f| c.abs(f));
            }
            _ => c.push(format!("{at}.url"), "set url (https://…) or path (a copied bundle), one of them".into()),
        }
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
        self.salt =
            c.secret(at, "hash_salt", self.hash_salt.take(), self.hash_salt_file.take(), self.hash_salt_env.take());
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

/// What this edge last accepted (its state directory), against rollbacks,
/// and the validators of the copy it keeps (for conditional GETs).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Accepted {
    serial: u64,
    entries_sha256: String,
    publisher: String,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
}

/// Lines validated per parallel chunk.
const CHUNK: usize = 64 * 1024;

/// The largest bundle downloaded (a million addresses are about 25 MB).
const MAX_BUNDLE: usize = 1 << 30;

/// A bundle and its signature as obtained, before any check.
struct Obtained {
    bytes: Vec<u8>,
    sig: String,
    /// Where it came from, for messages.
    from: String,
    /// Downloaded now, with the validators to keep; None for the kept copy
    /// (after a 304) or a local file.
    download: Option<(Option<String>, Option<String>)>,
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

    fn where_(&self) -> String {
        match (&self.spec.path, &self.spec.url) {
            (Some(p), _) => p.display().to_string(),
            (None, Some(u)) => u.clone(),
            (None, None) => "?".into(),
        }
    }

    fn key(&self) -> Result<PublicKey, SourceError> {
        match (&self.spec.public_key, &self.spec.public_key_file) {
            (Some(k), _) => PublicKey::parse(k),
            (None, Some(f)) => PublicKey::from_arg(&f.display().to_string()),
            (None, None) => return Err(SourceError::new("no public key configured")),
        }
        .map_err(|e| SourceError::new(e.to_string()))
    }

    /// A local bundle and its signature.
    fn read_files(&self, path: &std::path::Path) -> Result<Obtained, SourceError> {
        let mut sig_path = path.as_os_str().to_owned();
        sig_path.push(bundle::SIG_SUFFIX);
        let sig_path = PathBuf::from(sig_path);
        let bytes =
            std::fs::read(path).map_err(|e| SourceError::new(format!("cannot read {}: {e}", path.display())))?;
        let sig = std::fs::read_to_string(&sig_path)
            .map_err(|e| SourceError::new(format!("cannot read the signature {}: {e}", sig_path.display())))?;
        Ok(Obtained { bytes, sig, from: path.display().to_string(), download: None })
    }

    /// The bundle over HTTPS: a conditional GET when a copy is kept (a 304
    /// gives back the copy), else a GET of the bundle and of its signature.
    async fn download(&self, url: &str, conditional: bool) -> Result<Obtained, SourceError> {
        let settings = crate::connector::http::HttpSettings::new(&self.spec.ca_file, None, None, Some(3));
        let http = crate::connector::http::Http::new(&settings)?.with_max_body(MAX_BUNDLE);
        let kept = match (conditional, &self.cache) {
            (true, Some(c)) => match (c.load::<Accepted>(), c.load_bytes("bundle"), c.load_bytes("minisig")) {
                (Some(a), Some(b), Some(s)) => Some((a, b, s)),
                _ => None,
            },
            _ => None,
        };
        let mut headers = Vec::new();
        if let Some((a, _, _)) = &kept {
            if let Some(e) = &a.etag {
                headers.push((reqwest::header::IF_NONE_MATCH, e.clone()));
            }
            if let Some(m) = &a.last_modified {
                headers.push((reqwest::header::IF_MODIFIED_SINCE, m.clone()));
            }
        }
        let resp = http.get_plain(url, &headers).await.map_err(SourceError::new)?;
        if resp.status == reqwest::StatusCode::NOT_MODIFIED
            && let Some((_, bytes, sig)) = kept
        {
            tracing::debug!(url, "bundle not modified (304); checking the kept copy");
            let sig = String::from_utf8(sig).map_err(|_| SourceError::new("the kept signature is not text"))?;
            return Ok(Obtained { bytes, sig, from: format!("{url} (not modified)"), download: None });
        }
        if !resp.ok() {
            return Err(SourceError::new(format!("{}: HTTP {}: {}", resp.what, resp.status.as_u16(), resp.excerpt())));
        }
        let sig_url = format!("{url}{}", bundle::SIG_SUFFIX);
        let sig_resp = http.get_plain(&sig_url, &[]).await.map_err(SourceError::new)?;
        if !sig_resp.ok() {
            return Err(SourceError::new(format!(
                "{}: HTTP {}: the bundle's signature is missing",
                sig_resp.what,
                sig_resp.status.as_u16()
            )));
        }
        let sig = String::from_utf8(sig_resp.body.to_vec())
            .map_err(|_| SourceError::new(format!("{}: the signature is not text", sig_resp.what)))?;
        Ok(Obtained {
            bytes: resp.body.to_vec(),
            sig,
            from: url.to_string(),
            download: Some((resp.etag.clone(), resp.last_modified.clone())),
        })
    }

    /// Obtains the bundle: a local file, or a download. A fresh download whose
    /// signature does not match is fetched once more (the hub may have been
    /// replacing the pair between the two requests).
    async fn obtain(&self) -> Result<(Obtained, bundle::Header), SourceError> {
        if let Some(p) = &self.spec.path {
            let o = self.read_files(p)?;
            let h = self.check_bundle(&o)?;
            return Ok((o, h));
        }
        let url = self.spec.url.clone().unwrap_or_default();
        let o = self.download(&url, true).await?;
        match self.check_bundle(&o) {
            Ok(h) => Ok((o, h)),
            Err(first) if o.download.is_some() && first.message.contains("signature") => {
                tracing::warn!(url = %url, error = %first.message, "bundle and signature disagree; fetching both once more");
                tokio::time::sleep(Duration::from_secs(1)).await;
                let o = self.download(&url, false).await?;
                let h = self.check_bundle(&o)?;
                Ok((o, h))
            }
            Err(e) => Err(e),
        }
    }

    /// Checks an obtained bundle; returns its header and entry lines.
    fn check_bundle(&self, o: &Obtained) -> Result<bundle::Header, SourceError> {
        let (bytes, sig, path) = (&o.bytes, &o.sig, &o.from);
        let key = self.key()?;
        let v =
            bundle::verify(bytes, sig, &key).map_err(|e| SourceError::new(format!("bundle {path} refused: {e}")))?;
        let h = v.header;
        match (&h.hash, &self.spec.salt) {
            (Some(_), None) => {
                return Err(SourceError::new(format!(
                    "bundle {path} holds salted SHA-256 digests (the hub sets hash_salt): set hash_salt (or \
                     hash_salt_file, hash_salt_env) on this source to the hub's salt, and write only hashed \
                     outputs (exim-sha256, json-sha256; Postfix through rcptsync socketmap)"
                )));
            }
            (None, Some(_)) => {
                return Err(SourceError::new(format!(
                    "bundle {path} holds addresses in clear text, but this source has hash_salt and expects \
                     digests: set hash_salt on the hub's bundle output, or remove it here"
                )));
            }
            (Some(hash), Some(salt)) => {
                if hash != "sha256" {
                    return Err(SourceError::new(format!(
                        "bundle {path} is hashed with {hash:?}; this rcptsync reads sha256"
                    )));
                }
                let salt = salt.resolve("hash_salt").map_err(|e| SourceError::new(e.to_string()))?;
                if h.salt_check.as_deref() != Some(salt_check(salt.expose()).as_str()) {
                    return Err(SourceError::new(format!(
                        "bundle {path}: this source's hash_salt is not the salt the hub hashed with (the bundle's \
                         salt_check differs), so Exim and the socketmap would refuse every recipient: copy the \
                         hub's hash_salt"
                    )));
                }
            }
            (None, None) => {}
        }
        let now = now_unix();
        let max_age = self.spec.max_age_parsed.unwrap_or(DEFAULT_MAX_AGE);
        let age = now - h.generated_unix;
        if age > i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX) {
            return Err(SourceError::new(format!(
                "bundle {} (serial {} from {}) was generated {} ago ({}), more than max_age {}: is the hub publishing?",
                path,
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
                path, h.generated
            )));
        }
        if let Some(last) = self.cache.as_ref().and_then(|c| c.load::<Accepted>()) {
            if h.serial < last.serial {
                return Err(SourceError::new(format!(
                    "bundle {} has serial {}, lower than the last accepted {} (a rollback: an old copy came back)",
                    path, h.serial, last.serial
                )));
            }
            if h.serial == last.serial && h.entries_sha256 != last.entries_sha256 {
                return Err(SourceError::new(format!(
                    "bundle {} reuses serial {} for other entries than the ones accepted under it",
                    path, h.serial
                )));
            }
        }
        Ok(h)
    }
}

/// The bits of the hub's sources an entry line names (`0` or `0,2`), when
/// each index is below `n`. An index past 63 is valid but not recorded.
fn hub_sources(named: &str, n: usize) -> Option<u64> {
    let mut bits = 0u64;
    for i in named.split(',') {
        let i: usize = i.parse().ok()?;
        if i >= n {
            return None;
        }
        if i < 64 {
            bits |= 1 << i;
        }
    }
    Some(bits)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Connector for BundleSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let (o, h) = self.obtain().await?;
        if let Some(c) = &self.cache {
            let last = c.load::<Accepted>();
            let (etag, last_modified) = match &o.download {
                Some(v) => v.clone(),
                None => last.as_ref().map(|a| (a.etag.clone(), a.last_modified.clone())).unwrap_or_default(),
            };
            let accepted = Accepted {
                serial: h.serial,
                entries_sha256: h.entries_sha256.clone(),
                publisher: h.publisher.clone(),
                etag,
                last_modified,
            };
            if o.download.is_some() {
                // The copy first: validators must never describe a copy we lack.
                let kept = c.save_bytes("bundle", &o.bytes).and_then(|()| c.save_bytes("minisig", o.sig.as_bytes()));
                if let Err(e) = kept {
                    tracing::warn!(source = %self.where_(), error = %e, "cannot keep a copy of the bundle; the next fetch is a full download");
                }
            }
            let same = last.as_ref().is_some_and(|l| {
                l.serial == accepted.serial && l.etag == accepted.etag && l.last_modified == accepted.last_modified
            });
            if !same {
                c.save(&accepted, "bundle");
            }
        }
        tracing::info!(from = %o.from, serial = h.serial, publisher = %h.publisher, hub_sources = %h.sources.join(","), "bundle accepted");
        let note =
            Note { text: format!("bundle serial {} from {}", h.serial, h.publisher), hub_sources: h.sources.clone() };
        let n_sources = h.sources.len();
        // Checked by the hub, but validated again here like any source's
        // values, in parallel chunks (a million lines).
        let body = o.bytes.iter().position(|&b| b == b'\n').map_or(&o.bytes[..0], |n| &o.bytes[n + 1..]);
        let text = std::str::from_utf8(body).map_err(|_| SourceError::new("bundle entries are not UTF-8"))?;
        let lines: Vec<&str> = text.lines().collect();
        let hashed = h.hash.is_some();
        let catchalls = usize::try_from(h.catchalls).unwrap_or(usize::MAX);
        let chunks: Vec<(Vec<Located>, Vec<Rejected>)> = lines
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, chunk)| {
                let mut ok = Vec::with_capacity(chunk.len());
                let mut bad = Vec::new();
                for (k, text) in chunk.iter().enumerate() {
                    // Line numbers of the bundle file (line 1 is the header).
                    let line = u32::try_from(c * CHUNK + k + 2).unwrap_or(u32::MAX);
                    let (value, named) = bundle::split_line(text);
                    let Some(sources) = hub_sources(named, n_sources) else {
                        bad.push(Rejected {
                            value: text.to_string(),
                            locator: Locator::Line(line),
                            reason: format!("does not name its hub sources (indexes below {n_sources})"),
                        });
                        continue;
                    };
                    let locator = Locator::Hub { line, sources };
                    // A digest passes through as it is (the header counts the
                    // catch-alls' digests, which come first).
                    let checked = if hashed {
                        Entry::digest(value, c * CHUNK + k < catchalls).map(|e| (e, locator.clone())).ok_or_else(|| {
                            Rejected {
                                value: value.to_string(),
                                locator,
                                reason: "is not a SHA-256 digest (64 lowercase hex digits)".into(),
                            }
                        })
                    } else {
                        validate_item(RawItem { kind: RawKind::of(value), value: value.to_string(), locator })
                    };
                    match checked {
                        Ok(e) => ok.push(e),
                        Err(r) => bad.push(r),
                    }
                }
                (ok, bad)
            })
            .collect();
        let mut entries = Vec::with_capacity(lines.len());
        let mut rejected = Vec::new();
        for (ok, bad) in chunks {
            entries.extend(ok);
            rejected.extend(bad);
        }
        Ok(Fetched::Ready(Batch {
            items: Vec::new(),
            entries,
            rejected,
            left_out: Vec::new(),
            raw_fingerprint: Some(format!("bundle:{}", h.entries_sha256)),
            note: Some(note),
        }))
    }

    async fn check(&self) -> Result<String, SourceError> {
        let (o, h) = self.obtain().await?;
        Ok(format!("bundle {}: {}", o.from, h.summary()))
    }
}

#[cfg(test)]
mod tests {
    use super::hub_sources;

    #[test]
    fn an_entry_line_names_existing_hub_sources_only() {
        assert_eq!(hub_sources("0", 1), Some(1));
        assert_eq!(hub_sources("0,2", 3), Some(0b101));
        assert_eq!(hub_sources("70", 80), Some(0), "valid, past what a mask records");
        for bad in ["", "3", "0,", "a", "-1", "0 1"] {
            assert_eq!(hub_sources(bad, 3), None, "{bad:?}");
        }
    }
}
