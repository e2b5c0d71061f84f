//! Connectors: read-only drivers that pull raw recipient values from one kind of
//! directory. They do not validate or filter (that is the policy's job); they only
//! say what the source contains and where each value was found, and they fail
//! loudly rather than return a partial result.

pub mod bundle;
pub mod file;
pub mod google;
pub mod graph;
pub mod http;
pub mod jwt;
pub mod ldap;
pub mod lookup;
pub mod profile;
pub mod sql;
pub mod tls;

use std::future::Future;

use serde::Deserialize;

use crate::policy::{Located, RawItem, Rejected, normalise};
use crate::section::Checker;
use crate::state::StateDir;

pub use bundle::BundleSourceSpec;
pub use file::FileSourceSpec;
pub use google::GoogleSourceSpec;
pub use graph::{Cloud, GraphSourceSpec};
pub use ldap::{Condition, LdapSourceSpec, SkipRule};
pub use sql::SqlSourceSpec;

/// The closed set of source kinds, each with its own keys (and its own
/// `validate`, beside its connector).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    File(FileSourceSpec),
    Sql(Box<SqlSourceSpec>),
    Ldap(Box<LdapSourceSpec>),
    Graph(Box<GraphSourceSpec>),
    Google(Box<GoogleSourceSpec>),
    Bundle(Box<BundleSourceSpec>),
}

/// Every `kind`, as the config spells it (for messages).
pub const KINDS: &str = "file, ldap, graph, google, sql or bundle";

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::File(_) => "file",
            SourceSpec::Sql(_) => "sql",
            SourceSpec::Ldap(_) => "ldap",
            SourceSpec::Graph(_) => "graph",
            SourceSpec::Google(_) => "google",
            SourceSpec::Bundle(_) => "bundle",
        }
    }

    /// Checks the keys (pure: no network, no file reads) and makes paths absolute.
    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        match self {
            SourceSpec::File(f) => f.validate(c, at),
            SourceSpec::Sql(q) => q.validate(c, at),
            SourceSpec::Ldap(l) => l.validate(c, at),
            SourceSpec::Graph(g) => g.validate(c, at),
            SourceSpec::Google(g) => g.validate(c, at),
            SourceSpec::Bundle(b) => b.validate(c, at),
        }
    }

    /// The key under which the config file holds this source's secret as a
    /// literal, if it does.
    pub fn literal_secret_key(&self) -> Option<&'static str> {
        use crate::secret::SecretSource::Literal;
        let (key, secret) = match self {
            SourceSpec::Sql(q) => ("password", &q.password),
            SourceSpec::Ldap(l) => ("bind_password", &l.bind_password),
            SourceSpec::Graph(g) => ("client_secret", &g.client_secret),
            SourceSpec::Bundle(b) => ("hash_salt", &b.salt),
            SourceSpec::File(_) | SourceSpec::Google(_) => return None,
        };
        matches!(secret, Some(Literal(_))).then_some(key)
    }
}

/// What one source's fetch came to.
#[derive(Debug)]
pub enum Fetched {
    /// Read, ready to be validated.
    Ready(Batch),
    /// Read far enough to be fingerprinted; the parse is put off until it is
    /// needed, so a sync whose inputs are all as last time stops before it.
    Deferred { fingerprint: String, parse: Deferred },
    /// Not fetched on purpose: the daemon's tick was for other sources, so this
    /// one reuses its last good copy. Not a failure.
    NotDue,
}

/// A put-off parse: returns the batch and the fingerprint of the raw data it
/// actually parsed (which may be newer than the deferred fingerprint).
pub struct Deferred(pub Box<dyn FnOnce() -> Result<(Batch, String), SourceError> + Send>);

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

impl Fetched {
    /// The fingerprint of the source's raw data (None when not fetched).
    pub fn fingerprint(&self) -> Option<String> {
        match self {
            Fetched::Ready(b) => Some(b.fingerprint()),
            Fetched::Deferred { fingerprint, .. } => Some(fingerprint.clone()),
            Fetched::NotDue => None,
        }
    }

    /// Runs a put-off parse, if any. Returns the batch (None when not due),
    /// and the fingerprint of the data parsed when that was put off.
    pub fn complete(self) -> Result<(Option<Batch>, Option<String>), SourceError> {
        match self {
            Fetched::Ready(b) => Ok((Some(b), None)),
            Fetched::Deferred { parse: Deferred(parse), .. } => parse().map(|(b, fp)| (Some(b), Some(fp))),
            Fetched::NotDue => Ok((None, None)),
        }
    }
}

/// What a connector read, before validation.
#[derive(Debug, Default)]
pub struct Batch {
    pub items: Vec<RawItem>,
    /// Entries the connector already validated, each with
    /// [`crate::policy::validate_item`] (the file source does it while parsing,
    /// to build each entry once); their refusals are in `rejected`.
    pub entries: Vec<Located>,
    /// Values the connector itself had to refuse (e.g. not UTF-8).
    pub rejected: Vec<Rejected>,
    /// Values of objects a profile rule deliberately left out (e.g. disabled
    /// accounts), with the rule: not errors, but what `why` explains.
    pub left_out: Vec<Rejected>,
    /// A fingerprint of the source's raw data, when the connector has one
    /// without hashing the items (the file source: a hash of the file's bytes).
    pub raw_fingerprint: Option<String>,
    /// What `why` adds to every value of this batch (a bundle: its serial and
    /// hub), said once rather than carried by each value's locator.
    pub note: Option<Note>,
}

/// What `why` says about every value of a batch.
#[derive(Debug, Clone, Default)]
pub struct Note {
    /// Said once per value (a bundle: its serial and hub).
    pub text: String,
    /// The names behind [`crate::policy::Locator::Hub`]'s source bits.
    pub hub_sources: Vec<String>,
}

/// A batch after validation: every entry is canonical.
#[derive(Debug, Default)]
pub struct Valid {
    pub entries: Vec<Located>,
    pub rejected: Vec<Rejected>,
    pub left_out: Vec<Rejected>,
    pub note: Option<Note>,
}

impl Batch {
    /// The one place where what a connector read becomes entries: raw items go
    /// through [`crate::policy::validate_item`] (on all cores), and join the
    /// entries the connector validated with the same rule while reading.
    pub fn validate(self) -> Valid {
        let Batch { items, entries: mut pre, mut rejected, left_out, note, .. } = self;
        let (mut entries, bad) = normalise(items);
        if entries.is_empty() {
            entries = pre;
        } else {
            entries.append(&mut pre);
        }
        rejected.extend(bad);
        Valid { entries, rejected, left_out, note }
    }

    /// Fingerprint of what the source returned, before validation.
    pub fn fingerprint(&self) -> String {
        if let Some(fp) = &self.raw_fingerprint {
            return fp.clone();
        }
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        let items = self.items.iter().map(|i| (i.value.as_str(), i.kind as u8));
        // Validated entries are canonical already; a catch-all's text says it is one.
        let entries = self.entries.iter().map(|(e, _)| (e.as_str(), 0xfe));
        let rejected = self.rejected.iter().map(|r| (r.value.as_str(), 0xff));
        for (v, k) in items.chain(entries).chain(rejected) {
            if buf.len() + v.len() + 2 > buf.capacity() {
                h.update(&buf);
                buf.clear();
            }
            buf.extend_from_slice(v.as_bytes());
            buf.push(0);
            buf.push(k);
        }
        h.update(&buf);
        crate::state::digest_hex(&h)
    }
}

/// Why a source could not be read. The message says what to fix; it never
/// contains a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
}

impl SourceError {
    pub fn new(message: impl Into<String>) -> SourceError {
        SourceError { message: message.into() }
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
    Bundle(Box<bundle::BundleSource>),
}

impl Source {
    /// Builds the connector of a source. With a state directory, a source that can
    /// sync incrementally (LDAP, Graph) keeps its cache there; without, every
    /// fetch is a full read.
    /// `deadline` bounds the whole fetch; the file source needs it itself (a
    /// pipe is read on a thread, which a timeout around the fetch cannot stop).
    pub fn build(name: &str, spec: &SourceSpec, state: Option<&StateDir>, deadline: std::time::Duration) -> Source {
        let cache = |kind: &str| state.map(|d| d.cache(name, kind));
        match spec {
            SourceSpec::File(spec) => Source::File(file::FileSource::new(spec.clone(), deadline)),
            SourceSpec::Sql(spec) => Source::Sql(Box::new(sql::SqlSource::new((**spec).clone()))),
            SourceSpec::Ldap(spec) => Source::Ldap(Box::new(ldap::LdapSource::new((**spec).clone(), cache("ldap")))),
            SourceSpec::Graph(spec) => {
                Source::Graph(Box::new(graph::GraphSource::new((**spec).clone(), cache("graph"))))
            }
            SourceSpec::Google(spec) => Source::Google(Box::new(google::GoogleSource::new((**spec).clone()))),
            SourceSpec::Bundle(spec) => {
                Source::Bundle(Box::new(bundle::BundleSource::new((**spec).clone(), cache("bundle"))))
            }
        }
    }

    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        match self {
            Source::File(s) => s.fetch().await,
            Source::Sql(s) => s.fetch().await,
            Source::Ldap(s) => s.fetch().await,
            Source::Graph(s) => s.fetch().await,
            Source::Google(s) => s.fetch().await,
            Source::Bundle(s) => s.fetch().await,
        }
    }

    pub async fn check(&self) -> Result<String, SourceError> {
        match self {
            Source::File(s) => s.check().await,
            Source::Sql(s) => s.check().await,
            Source::Ldap(s) => s.check().await,
            Source::Graph(s) => s.check().await,
            Source::Google(s) => s.check().await,
            Source::Bundle(s) => s.check().await,
        }
    }
}

/// Validates a cloud source's `external_senders_allowed` / `_refused` lists:
/// addresses, lowercased, in one list only.
pub fn check_group_lists(c: &mut Checker, at: &str, allowed: &mut [String], refused: &mut [String]) {
    for (key, list) in [("external_senders_allowed", &mut *allowed), ("external_senders_refused", &mut *refused)] {
        for entry in list.iter_mut() {
            match crate::policy::address::parse_address(entry) {
                Ok(e) => *entry = e.to_string().to_ascii_lowercase(),
                Err(e) => c.push(format!("{at}.{key}"), format!("{entry:?} is not a group address: {e}")),
            }
        }
    }
    if let Some(both) = allowed.iter().find(|a| refused.contains(a)) {
        c.push(format!("{at}.external_senders_refused"), format!("{both} is also in external_senders_allowed"));
    }
}

/// A cloud source's per-group lists (`external_senders_allowed` /
/// `_refused`, lowercased addresses): the admin's word on groups whose own
/// setting the API cannot give.
#[derive(Debug, Default)]
pub struct GroupLists {
    pub allowed: std::collections::HashSet<String>,
    pub refused: std::collections::HashSet<String>,
}

impl GroupLists {
    pub fn new(allowed: &[String], refused: &[String]) -> GroupLists {
        GroupLists { allowed: allowed.iter().cloned().collect(), refused: refused.iter().cloned().collect() }
    }

    /// For a group with these addresses: Some(Err(reason)) when a list closes
    /// it, Some(Ok(note)) when a list opens it, None when neither names it.
    pub fn decide(&self, values: &[&str]) -> Option<Result<String, String>> {
        let listed = |set: &std::collections::HashSet<String>| {
            values.iter().any(|v| set.contains(&v.trim().to_ascii_lowercase()))
        };
        if listed(&self.refused) {
            return Some(Err("is an address of a group listed in external_senders_refused: it takes mail only \
                             from inside the organisation"
                .into()));
        }
        if listed(&self.allowed) {
            return Some(Ok(" (external_senders_allowed)".into()));
        }
        None
    }

    /// Warns once per list entry that names none of the `matched` group
    /// addresses (a typo, or a group that is gone).
    pub fn warn_unmatched(&self, matched: &std::collections::HashSet<String>, whose: &str) {
        for (key, list) in [("external_senders_allowed", &self.allowed), ("external_senders_refused", &self.refused)] {
            let mut stray: Vec<&String> = list.iter().filter(|a| !matched.contains(*a)).collect();
            stray.sort();
            for a in stray {
                tracing::warn!(key, address = %a, "matches no {whose}; check the address");
            }
        }
    }
}
