//! Connectors: read-only drivers that pull raw recipient values from one kind of
//! directory. They do not validate or filter (that is the policy's job); they only
//! say what the source contains and where each value was found, and they fail
//! loudly rather than return a partial result.

pub mod file;
pub mod google;
pub mod graph;
pub mod http;
pub mod jwt;
pub mod ldap;
pub mod sql;
pub mod tls;

use std::future::Future;

use crate::config::{SourceConfig, SourceSpec};
use crate::policy::{RawItem, Rejected};

/// What one fetch produced.
#[derive(Debug, Default)]
pub struct Fetched {
    pub items: Vec<RawItem>,
    /// Entries the connector already validated, each with
    /// [`crate::policy::validate_item`] (the file source does it while parsing,
    /// to build each entry once); their refusals are in `rejected`.
    pub entries: Vec<crate::policy::Located>,
    /// Values the connector itself had to refuse (e.g. not UTF-8).
    pub rejected: Vec<Rejected>,
    /// Values of objects a profile rule deliberately left out (e.g. disabled
    /// accounts), with the rule: not errors, but what `why` explains.
    pub left_out: Vec<Rejected>,
    /// A fingerprint of the source's raw data, when the connector has one
    /// without parsing (the file source: a hash of the file's bytes).
    pub raw_fingerprint: Option<String>,
    /// Parsing put off until it is needed: a sync whose inputs are all as last
    /// time stops before it. [`Fetched::complete`] runs it.
    pub deferred: Option<Deferred>,
}

/// A put-off parse: returns the complete result and the fingerprint of the raw
/// data it actually parsed (which may be newer than `raw_fingerprint`).
pub struct Deferred(pub Box<dyn FnOnce() -> Result<(Fetched, String), SourceError> + Send>);

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

impl Fetched {
    /// Runs a put-off parse, if any. Returns the complete result, and the
    /// fingerprint of the data parsed when that was put off.
    pub fn complete(mut self) -> Result<(Fetched, Option<String>), SourceError> {
        match self.deferred.take() {
            Some(Deferred(parse)) => parse().map(|(f, fp)| (f, Some(fp))),
            None => Ok((self, None)),
        }
    }
}

/// Why a source could not be read. The message says what to fix; it never
/// contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
    /// Not fetched on purpose: the daemon's tick was for other sources, so this
    /// one reuses its last good copy. Not a failure.
    pub not_due: bool,
}

impl SourceError {
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError { message: message.into(), not_due: false }
    }

    pub fn not_due() -> SourceError {
        SourceError { message: "not due at this tick".into(), not_due: true }
    }
}

/// The read-only interface every driver implements.
pub trait Connector {
    /// Reads the whole recipient set. Anything short of a complete read is an error.
    fn fetch(&self) -> impl Future<Output = Result<Fetched, SourceError>> + Send;
    /// Connects and does the smallest read that proves the source works; returns
    /// a one-line description for `rcptsync check`.
    fn check(&self) -> impl Future<Output = Result<String, SourceError>> + Send;
}

/// A built connector for one `[[source]]`.
#[derive(Debug, Clone)]
pub enum Source {
    File(file::FileSource),
    Sql(Box<sql::SqlSource>),
    Ldap(Box<ldap::LdapSource>),
    Graph(Box<graph::GraphSource>),
    Google(Box<google::GoogleSource>),
}

impl Source {
    pub fn build(cfg: &SourceConfig) -> Source {
        match &cfg.spec {
            SourceSpec::File(spec) => Source::File(file::FileSource::new(spec.clone())),
            SourceSpec::Sql(spec) => Source::Sql(Box::new(sql::SqlSource::new((**spec).clone()))),
            SourceSpec::Ldap(spec) => Source::Ldap(Box::new(ldap::LdapSource::new((**spec).clone()))),
            SourceSpec::Graph(spec) => Source::Graph(Box::new(graph::GraphSource::new((**spec).clone()))),
            SourceSpec::Google(spec) => Source::Google(Box::new(google::GoogleSource::new((**spec).clone()))),
        }
    }

    /// Like [`Source::build`], for a source that may keep incremental-sync state
    /// in `state_dir` (LDAP with `incremental = true`).
    pub fn build_with_state(cfg: &SourceConfig, state_dir: &std::path::Path) -> Source {
        match &cfg.spec {
            SourceSpec::Ldap(spec) => Source::Ldap(Box::new(ldap::LdapSource::with_state(
                (**spec).clone(),
                state_dir.join("sources").join(format!("{}.ldap.json", cfg.name)),
            ))),
            SourceSpec::Graph(spec) => Source::Graph(Box::new(graph::GraphSource::with_state(
                (**spec).clone(),
                state_dir.join("sources").join(format!("{}.graph.json", cfg.name)),
            ))),
            _ => Source::build(cfg),
        }
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        match self {
            Source::File(s) => s.fetch().await,
            Source::Sql(s) => s.fetch().await,
            Source::Ldap(s) => s.fetch().await,
            Source::Graph(s) => s.fetch().await,
            Source::Google(s) => s.fetch().await,
        }
    }

    pub async fn check(&self) -> Result<String, SourceError> {
        match self {
            Source::File(s) => s.check().await,
            Source::Sql(s) => s.check().await,
            Source::Ldap(s) => s.check().await,
            Source::Graph(s) => s.check().await,
            Source::Google(s) => s.check().await,
        }
    }
}

/// Writes a connector's incremental-sync state by rename. A failure only costs
/// a full pass next time, so it is logged, not fatal. The state is a cache, so
/// it is not fsynced: after a crash a torn file fails to parse, which also
/// means a full pass, never a wrong list.
pub(crate) fn save_state<T: serde::Serialize>(path: &std::path::Path, state: &T, what: &str) {
    let Some(dir) = path.parent() else { return };
    // Like the state dir itself: private to the service's user.
    let created = {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    };
    if let Err(e) = created {
        tracing::warn!(file = %path.display(), error = %e, "cannot save {what} sync state");
        return;
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let started = std::time::Instant::now();
    let written = serde_json::to_vec(state).map_err(std::io::Error::other).and_then(|b| {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
        std::fs::rename(&tmp, path)?;
        Ok(b.len())
    });
    match written {
        Ok(bytes) => {
            tracing::debug!(file = %path.display(), bytes, took_ms = started.elapsed().as_millis() as u64, "{what} sync state saved")
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            // Without the state the next run is simply a full pass.
            tracing::warn!(file = %path.display(), error = %e, "cannot save {what} sync state");
        }
    }
}
