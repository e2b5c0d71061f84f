//! Configuration: the TOML file an operator writes, and its validation.
//!
//! Loading is split in two stages, as in Vector: [`load`] reads and parses the file
//! and validates it **purely** (no network, no connecting), collecting *every* error
//! with its config path (`source[2].path: …`) so one `rcptsync check` run shows them
//! all. Connecting to sources is a separate, optional stage (`check` without
//! `--offline`). Unknown keys are errors everywhere: a typo must never silently turn
//! a protection off.

pub mod secret;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::address::{parse_address, parse_catchall, parse_domain};
use crate::profile::Catalog;
use crate::writer::template::{BuiltinTemplate, TemplateRef};

/// Default config path when neither `-c` nor `$RCPTSYNC_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rcptsync/rcptsync.toml";
/// How long a run waits for another run to finish, by default.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rcptsync";

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

/// All problems found in one configuration file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(f, "{}: {n} configuration error{}", self.file.display(), if n == 1 { "" } else { "s" })?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration. Paths are absolute (relative ones in the file are
/// taken relative to the file's own directory).
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    /// How long a run waits for another run's lock before failing.
    pub lock_timeout: Duration,
    pub policy: PolicyConfig,
    pub guard: GuardConfig,
    pub sources: Vec<SourceConfig>,
    pub outputs: Vec<OutputConfig>,
    pub daemon: Option<DaemonConfig>,
    pub catalog: Catalog,
    /// Where user profiles and templates live (the daemon watches them).
    pub profile_dir: Option<PathBuf>,
    pub template_dir: Option<PathBuf>,
}

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
    /// Refuse a list with fewer entries than this.
    #[serde(default = "default_min_recipients")]
    pub min_recipients: u64,
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
    /// Refuse when one domain loses more than this share of its entries (or all
    /// of them), even if the global share is small.
    pub max_removed_percent_per_domain: Option<f64>,
    /// Keep publishing an entry that disappeared from every source until it has
    /// been absent this long (tombstones in `state_dir`).
    #[serde(default, deserialize_with = "de_duration")]
    pub removal_grace: Option<Duration>,
    /// The list is stale when no run has published fresh data from every source
    /// for this long; `on_stale` runs once then, `on_fresh` once after the next
    /// fresh run. Also the daemon's `/healthz` limit unless `[daemon]` sets one.
    #[serde(default, deserialize_with = "de_duration")]
    pub max_staleness: Option<Duration>,
    /// argv, e.g. `["postconf", "-e", "unknown_relay_recipient_reject_code=450"]`.
    #[serde(default)]
    pub on_stale: Vec<String>,
    #[serde(default)]
    pub on_fresh: Vec<String>,
}

fn default_min_recipients() -> u64 {
    1
}
fn default_max_removed_percent() -> f64 {
    10.0
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            min_recipients: default_min_recipients(),
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

/// `[[source]]`: a named connector instance.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub profile: Option<String>,
    /// The daemon fetches this source on its own cron line (other ticks reuse
    /// its last good copy).
    pub schedule: Option<String>,
    pub spec: SourceSpec,
}

/// The closed set of source kinds, each with its own keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    File(FileSourceSpec),
    Sql(Box<SqlSourceSpec>),
    Ldap(Box<LdapSourceSpec>),
    Graph(Box<GraphSourceSpec>),
    Google(Box<GoogleSourceSpec>),
}

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            SourceSpec::File(_) => "file",
            SourceSpec::Sql(_) => "sql",
            SourceSpec::Ldap(_) => "ldap",
            SourceSpec::Graph(_) => "graph",
            SourceSpec::Google(_) => "google",
        }
    }
}

/// Microsoft national clouds: each has its own token authority and Graph host.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    #[default]
    Global,
    Usgov,
    Dod,
    China,
}

impl Cloud {
    /// (token authority, Graph root) as Microsoft documents them per cloud.
    pub fn endpoints(self) -> (&'static str, &'static str) {
        match self {
            Cloud::Global => ("https://login.microsoftonline.com", "https://graph.microsoft.com"),
            Cloud::Usgov => ("https://login.microsoftonline.us", "https://graph.microsoft.us"),
            Cloud::Dod => ("https://login.microsoftonline.us", "https://dod-graph.microsoft.us"),
            Cloud::China => ("https://login.chinacloudapi.cn", "https://microsoftgraph.chinacloudapi.cn"),
        }
    }
}

/// HTTP behaviour shared by the cloud connectors.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Trust only these CA certificates (a private CA or a TLS-inspecting proxy);
    /// None = the system's trust store.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included.
    pub timeout: Duration,
    /// Retries of one request after throttling, 5xx or a broken connection.
    pub max_retries: u32,
}

/// `kind = "graph"`: Microsoft 365 / Entra ID through Microsoft Graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSourceSpec {
    /// Tenant ID (GUID) or a verified domain such as `contoso.onmicrosoft.com`.
    pub tenant: String,
    /// The app registration's application (client) ID.
    pub client_id: String,
    #[serde(rename = "client_secret")]
    client_secret_literal: Option<secret::Literal>,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    #[serde(skip)]
    pub client_secret: Option<secret::SecretSource>,
    /// Certificate credential: the PEM certificate registered on the app…
    pub certificate_file: Option<PathBuf>,
    /// …and its PEM private key (PKCS#8 or PKCS#1).
    pub private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub cloud: Cloud,
    /// Override the cloud's token authority (e.g. `https://login.microsoftonline.com`).
    pub authority_url: Option<String>,
    /// Override the cloud's Graph root (e.g. `https://graph.microsoft.com`).
    pub graph_url: Option<String>,
    /// Use delta queries after a first full pass (state in `state_dir`).
    #[serde(default = "yes")]
    pub incremental: bool,
    /// Force a full pass this often in incremental mode (default 24h).
    #[serde(default, deserialize_with = "de_duration")]
    pub full_sync_every: Option<Duration>,
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    pub max_retries: Option<u32>,
}

impl GraphSourceSpec {
    pub fn authority(&self) -> String {
        self.authority_url.clone().unwrap_or_else(|| self.cloud.endpoints().0.into()).trim_end_matches('/').into()
    }
    pub fn graph_root(&self) -> String {
        self.graph_url.clone().unwrap_or_else(|| self.cloud.endpoints().1.into()).trim_end_matches('/').into()
    }
    pub fn http(&self) -> HttpSettings {
        http_settings(&self.ca_file, self.connect_timeout, self.timeout, self.max_retries)
    }
}

/// `kind = "google"`: Google Workspace through the Admin SDK Directory API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleSourceSpec {
    /// The service account's JSON key (its `token_uri` is the token endpoint).
    pub credentials_file: PathBuf,
    /// The admin the service account impersonates (domain-wide delegation).
    pub subject: String,
    #[serde(default = "default_customer")]
    pub customer: String,
    #[serde(default = "default_google_api")]
    pub api_url: String,
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    pub max_retries: Option<u32>,
}

impl GoogleSourceSpec {
    pub fn http(&self) -> HttpSettings {
        http_settings(&self.ca_file, self.connect_timeout, self.timeout, self.max_retries)
    }
}

fn default_customer() -> String {
    "my_customer".into()
}

fn default_google_api() -> String {
    "https://admin.googleapis.com".into()
}

fn http_settings(
    ca_file: &Option<PathBuf>,
    connect: Option<Duration>,
    timeout: Option<Duration>,
    retries: Option<u32>,
) -> HttpSettings {
    HttpSettings {
        ca_file: ca_file.clone(),
        connect_timeout: connect.unwrap_or(Duration::from_secs(10)),
        timeout: timeout.unwrap_or(Duration::from_secs(120)),
        max_retries: retries.unwrap_or(6),
    }
}

fn check_http_url(v: &mut Validator, at: &str, key: &str, url: &str) {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        v.push(format!("{at}.{key}"), format!("{url:?} must start with https://"));
    } else if url.starts_with("http://") {
        tracing::warn!(source = %at, key, url, "plain http:// endpoint: tokens cross the network unencrypted (tests only)");
    }
}

/// `kind = "ldap"`: an LDAP directory (Active Directory, OpenLDAP, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSourceSpec {
    /// `ldaps://dc1.example.com` or `ldap://…` (with `starttls`), or a list tried
    /// in order (DC failover).
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// DN (or AD user principal name) to bind as; omitted = anonymous.
    pub bind_dn: Option<String>,
    #[serde(rename = "bind_password")]
    bind_password_literal: Option<secret::Literal>,
    bind_password_file: Option<PathBuf>,
    bind_password_env: Option<String>,
    #[serde(skip)]
    pub bind_password: Option<secret::SecretSource>,
    /// Where to search.
    pub base_dn: String,
    /// Upgrade `ldap://` with StartTLS.
    #[serde(default)]
    pub starttls: bool,
    /// CA certificate(s) that issued the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Entries per page (RFC 2696); AD caps pages at 1000.
    #[serde(default = "default_page_size")]
    pub page_size: i32,
    /// Ask for multi-valued address attributes in ranges of this many values
    /// (AD's range retrieval). Ranged answers are always completed; this only
    /// makes rcptsync ask for ranges itself.
    pub range_size: Option<u32>,
    /// Which entries are recipients (usually from a profile).
    #[serde(default)]
    pub filter: String,
    /// Attributes whose values are addresses (e.g. `mail`, `mailLocalAddress`).
    #[serde(default)]
    pub address_attributes: Vec<String>,
    /// Attributes whose values are `type:address` (e.g. `proxyAddresses`); only
    /// `smtp:` values (any case) count.
    #[serde(default)]
    pub prefixed_attributes: Vec<String>,
    /// Allow a password bind over unencrypted `ldap://` (labs only; logged loudly).
    #[serde(default)]
    pub allow_plaintext_bind: bool,
    /// Entries left out although the filter matched them (profile data),
    /// evaluated on the client so that a directory without an attribute (e.g. AD
    /// without the Exchange schema) simply never matches it.
    #[serde(default)]
    pub skip: Vec<SkipRule>,
    /// Active Directory: after a full pass, ask the same DC only for objects
    /// changed since (uSNChanged) and for deleted objects; state in `state_dir`.
    #[serde(default)]
    pub incremental: bool,
    /// Force a full pass this often in incremental mode (default 24h).
    #[serde(default, deserialize_with = "de_duration")]
    pub full_sync_every: Option<Duration>,
    /// Names of `skip` rules to switch off for this source.
    #[serde(default)]
    pub keep_skipped: Vec<String>,
    /// Entries whose addresses count only in the directory's own domains (e.g.
    /// contacts, which often carry external addresses).
    #[serde(default)]
    pub restrict_to_own_domains: Option<Condition>,
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    /// Timeout of one operation (bind, one page of results).
    #[serde(default, deserialize_with = "de_duration")]
    pub op_timeout: Option<Duration>,
}

fn default_page_size() -> i32 {
    1000
}

/// A test on one attribute of an LDAP entry. Attribute names compare without
/// case; a missing attribute never matches.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    pub attribute: String,
    /// Matches when any value equals one of these (case-insensitive).
    #[serde(default)]
    pub any_of: Vec<String>,
    /// Matches when any value, read as an integer, has all these bits set.
    pub bits: Option<u64>,
}

/// A reason to leave out entries the filter matched.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SkipRule {
    /// Short name, used by `keep_skipped` and in logs.
    pub name: String,
    /// What it means, in words (shown by `why` and in logs).
    pub why: String,
    pub when: Condition,
    /// ... except when this matches.
    pub unless: Option<Condition>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `kind = "sql"`: a mail server's database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceSpec {
    /// `postgres://user@host:port/db`, `mysql://…` (MariaDB too) or
    /// `sqlite:///path/to/file.db`. Put the password in `password*`, not here.
    pub url: String,
    #[serde(rename = "password")]
    password_literal: Option<secret::Literal>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    /// Resolved from `password` / `password_file` / `password_env` by validation.
    #[serde(skip)]
    pub password: Option<secret::SecretSource>,
    /// One query returning one column of addresses (`@domain` rows are
    /// catch-alls). Overrides the profile's `queries`.
    pub query: Option<String>,
    /// Per-dialect queries (`postgres`, `mysql`, `sqlite`), usually from a profile.
    #[serde(default)]
    pub queries: std::collections::BTreeMap<String, String>,
    /// CA certificate(s) to verify the server's TLS certificate with.
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_duration")]
    pub query_timeout: Option<Duration>,
}

impl SqlSourceSpec {
    /// The query to run against `dialect`: `query`, else `queries[dialect]`.
    pub fn effective_query(&self, dialect: crate::connector::sql::Dialect) -> Option<String> {
        self.query.clone().or_else(|| self.queries.get(dialect.key()).cloned())
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
}

/// `kind = "file"`: one address per line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceSpec {
    /// The file to read. Blank lines and `#` comments are ignored; only the first
    /// whitespace-separated field of a line counts (an existing Postfix map works).
    pub path: PathBuf,
    /// Whether a line `@domain` declares a catch-all domain (default true). When
    /// false such lines are refused with a warning.
    #[serde(default = "yes")]
    pub catchalls: bool,
}

fn yes() -> bool {
    true
}

/// The `postmap` database types rcptsync can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapType {
    Hash,
    Btree,
    Lmdb,
    Cdb,
}

impl MapType {
    pub fn as_str(self) -> &'static str {
        match self {
            MapType::Hash => "hash",
            MapType::Btree => "btree",
            MapType::Lmdb => "lmdb",
            MapType::Cdb => "cdb",
        }
    }

    /// The suffix `postmap` appends to the source file name.
    pub fn suffix(self) -> &'static str {
        match self {
            MapType::Hash | MapType::Btree => ".db",
            MapType::Lmdb => ".lmdb",
            MapType::Cdb => ".cdb",
        }
    }
}

/// `[[output]]` as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    name: String,
    template: Option<String>,
    template_file: Option<PathBuf>,
    path: PathBuf,
    postmap: Option<MapType>,
    check: Option<Vec<String>>,
    reload: Option<Vec<String>>,
    mode: Option<String>,
    hook_timeout: Option<String>,
    hash_salt: Option<secret::Literal>,
    hash_salt_file: Option<PathBuf>,
    hash_salt_env: Option<String>,
}

/// A validated output.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub name: String,
    pub template: TemplateRef,
    pub path: PathBuf,
    pub postmap: Option<MapType>,
    pub check: Option<Vec<String>>,
    pub reload: Option<Vec<String>>,
    /// Mode for a newly created file; an existing file keeps its own.
    pub mode: Option<u32>,
    pub hook_timeout: Duration,
    /// Secret prefixed to each address by the hashed templates.
    pub hash_salt: Option<secret::SecretSource>,
}

/// Default timeout for `postmap`, `check` and `reload`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// `[daemon]`: how `rcptsync daemon` runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Cron line (5 fields, or 6 with seconds first) for sources without their
    /// own `schedule`. Default `*/5 * * * *`.
    pub schedule: Option<String>,
    /// `host:port` for `GET /metrics` and `GET /healthz`.
    pub listen: Option<String>,
    /// Each tick waits a random extra delay up to this, so a fleet of backup
    /// MXs doesn't hit the directory at the same second.
    #[serde(default, deserialize_with = "de_duration")]
    pub jitter: Option<Duration>,
    /// `/healthz` turns unhealthy when the published list is older than this.
    #[serde(default, deserialize_with = "de_duration")]
    pub max_staleness: Option<Duration>,
    /// Watch the config, profile and template files and reload on change.
    #[serde(default = "yes")]
    pub watch: bool,
    /// Quiet time after the last file event before reloading (default 1s).
    #[serde(default, deserialize_with = "de_duration")]
    pub debounce: Option<Duration>,
}

/// The default `[daemon] schedule`.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    lock_timeout: Option<String>,
    profile_dir: Option<PathBuf>,
    template_dir: Option<PathBuf>,
    policy: Option<toml::Value>,
    guard: Option<toml::Value>,
    #[serde(default)]
    source: Vec<toml::Value>,
    #[serde(default)]
    output: Vec<toml::Value>,
    daemon: Option<toml::Value>,
}

/// Where the config file is: `-c`, else `$RCPTSYNC_CONFIG`, else the default.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os("RCPTSYNC_CONFIG") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// Reads, parses and validates a config file. Never touches the network.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        file: path.to_path_buf(),
        errors: vec![ConfigError { path: String::new(), message }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let base =
        path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p }).unwrap_or(Path::new("."));
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
    let mut cfg = parse(&text, &base).map_err(|errors| ConfigErrors { file: path.to_path_buf(), errors })?;
    cfg.file = path.to_path_buf();
    warn_if_secrets_readable(path, &cfg);
    Ok(cfg)
}

/// Keys that hold a literal secret in the file.
pub fn literal_secret_keys(cfg: &Config) -> Vec<String> {
    use secret::SecretSource::Literal;
    let mut keys = Vec::new();
    for s in &cfg.sources {
        let literal = match &s.spec {
            SourceSpec::Sql(q) => matches!(q.password, Some(Literal(_))),
            SourceSpec::Ldap(l) => matches!(l.bind_password, Some(Literal(_))),
            SourceSpec::Graph(g) => matches!(g.client_secret, Some(Literal(_))),
            SourceSpec::File(_) | SourceSpec::Google(_) => false,
        };
        if literal {
            keys.push(format!("source {} password", s.name));
        }
    }
    for o in &cfg.outputs {
        if matches!(o.hash_salt, Some(Literal(_))) {
            keys.push(format!("output {} hash_salt", o.name));
        }
    }
    keys
}

/// A config file holding a literal password should be readable by its owner only.
fn warn_if_secrets_readable(path: &Path, cfg: &Config) {
    use std::os::unix::fs::PermissionsExt;
    let keys = literal_secret_keys(cfg);
    let Ok(meta) = std::fs::metadata(path) else { return };
    let mode = meta.permissions().mode() & 0o777;
    if !keys.is_empty() && mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = %format!("{mode:04o}"),
            secrets = keys.join(", "),
            "the config holds a literal secret and is readable by group or others: chmod 600 it, or use *_file / *_env"
        );
    }
}

/// Parses and validates config text; relative paths are taken against `base`.
pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_error(text, "", &e)])?;
    let mut v = Validator { errors: Vec::new(), base: base.to_path_buf() };

    let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let state_dir = raw.state_dir.map(abs).unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    let profile_dir = raw.profile_dir.map(abs);
    let template_dir = raw.template_dir.map(abs);

    let catalog = match Catalog::load(profile_dir.as_deref(), template_dir.as_deref()) {
        Ok(c) => c,
        Err(errs) => {
            for (path, message) in errs {
                v.push(path, message);
            }
            Catalog::embedded()
        }
    };

    let lock_timeout = match raw.lock_timeout.as_deref().map(parse_duration) {
        None => DEFAULT_LOCK_TIMEOUT,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            v.push("lock_timeout", e);
            DEFAULT_LOCK_TIMEOUT
        }
    };
    let policy: PolicyConfig = raw.policy.and_then(|p| v.section("policy", p)).unwrap_or_default();
    v.validate_policy(&policy);
    let mut guard: GuardConfig = raw.guard.and_then(|g| v.section("guard", g)).unwrap_or_default();
    if !(0.0..=100.0).contains(&guard.max_removed_percent) {
        v.push("guard.max_removed_percent", "must be between 0 and 100".into());
    }
    if (!guard.on_stale.is_empty() || !guard.on_fresh.is_empty()) && guard.max_staleness.is_none() {
        v.push("guard.on_stale", "needs guard.max_staleness (how old the list may get)".into());
    }
    if guard.max_removed_percent_per_domain.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
        v.push("guard.max_removed_percent_per_domain", "must be between 0 and 100".into());
    }
    for (i, c) in guard.canaries.iter_mut().enumerate() {
        match parse_address(c) {
            Ok(e) => *c = e.as_str().to_string(),
            Err(e) => v.push(format!("guard.canaries[{i}]"), format!("{c:?} {e}")),
        }
    }

    let mut sources = Vec::new();
    let mut names = BTreeSet::new();
    for (i, value) in raw.source.into_iter().enumerate() {
        let at = format!("source[{i}]");
        if let Some(s) = v.source(&at, value, &catalog) {
            if !names.insert(s.name.clone()) {
                v.push(format!("{at}.name"), format!("duplicate source name {:?}", s.name));
            }
            sources.push(s);
        }
    }
    if sources.is_empty() && !v.errors.iter().any(|e| e.path.starts_with("source")) {
        v.push("source", "at least one [[source]] is required".into());
    }

    let mut outputs = Vec::new();
    let mut out_names = BTreeSet::new();
    let mut out_paths = BTreeSet::new();
    for (i, value) in raw.output.into_iter().enumerate() {
        let at = format!("output[{i}]");
        if let Some(o) = v.output(&at, value, &catalog) {
            if !out_names.insert(o.name.clone()) {
                v.push(format!("{at}.name"), format!("duplicate output name {:?}", o.name));
            }
            if !out_paths.insert(o.path.clone()) {
                v.push(format!("{at}.path"), format!("{} is used by another output", o.path.display()));
            }
            outputs.push(o);
        }
    }
    if outputs.is_empty() && !v.errors.iter().any(|e| e.path.starts_with("output")) {
        v.push("output", "at least one [[output]] is required".into());
    }

    let daemon = raw.daemon.and_then(|d| v.section::<DaemonConfig>("daemon", d));
    if let Some(d) = &daemon {
        if let Some(line) = &d.schedule
            && let Err(e) = crate::daemon::schedule::parse(line)
        {
            v.push("daemon.schedule", e);
        }
        if let Some(l) = &d.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            v.push("daemon.listen", format!("{l:?} is not an address like \"127.0.0.1:9187\""));
        }
    }

    if !v.errors.is_empty() {
        return Err(v.errors);
    }
    Ok(Config {
        file: PathBuf::new(),
        state_dir,
        lock_timeout,
        policy,
        guard,
        sources,
        outputs,
        daemon,
        catalog,
        profile_dir,
        template_dir,
    })
}

struct Validator {
    errors: Vec<ConfigError>,
    base: PathBuf,
}

impl Validator {
    fn push(&mut self, path: impl Into<String>, message: String) {
        self.errors.push(ConfigError { path: path.into(), message });
    }

    fn abs(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() { p } else { self.base.join(p) }
    }

    /// Deserialises one section, recording the error under its path.
    fn section<T: for<'de> Deserialize<'de>>(&mut self, at: &str, value: toml::Value) -> Option<T> {
        match T::deserialize(value) {
            Ok(t) => Some(t),
            Err(e) => {
                self.push(at, clean_serde_message(&e.to_string()));
                None
            }
        }
    }

    fn validate_policy(&mut self, p: &PolicyConfig) {
        for (i, d) in p.domains.iter().flatten().enumerate() {
            if let Err(e) = parse_domain(d) {
                self.push(format!("policy.domains[{i}]"), format!("{d:?} {e}"));
            }
        }
        if p.domains.as_ref().is_some_and(|d| d.is_empty()) {
            self.push(
                "policy.domains",
                "is empty, so every recipient would be dropped; remove the key to keep all domains".into(),
            );
        }
        for (i, a) in p.include.iter().enumerate() {
            let parsed = if a.starts_with('@') { parse_catchall(a) } else { parse_address(a) };
            if let Err(e) = parsed {
                self.push(format!("policy.include[{i}]"), format!("{a:?} {e}"));
            }
        }
        for (i, g) in p.exclude.iter().enumerate() {
            if let Err(e) = globset::Glob::new(g) {
                self.push(format!("policy.exclude[{i}]"), format!("{g:?} is not a valid glob: {e}"));
            }
        }
    }

    fn source(&mut self, at: &str, value: toml::Value, catalog: &Catalog) -> Option<SourceConfig> {
        let toml::Value::Table(mut table) = value else {
            self.push(at, "must be a table".into());
            return None;
        };
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => Some(s),
            Some(_) => {
                self.push(format!("{at}.name"), "must be a string".into());
                None
            }
            None => {
                self.push(format!("{at}.name"), "is required".into());
                None
            }
        };
        if let Some(n) = &name
            && !valid_name(n)
        {
            self.push(
                format!("{at}.name"),
                format!("{n:?} may only contain letters, digits, '.', '_' and '-' (it names state files)"),
            );
        }
        let kind = match table.get("kind") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => {
                self.push(format!("{at}.kind"), "must be a string".into());
                return None;
            }
            None => {
                self.push(format!("{at}.kind"), "is required (file, ldap, graph, google or sql)".into());
                return None;
            }
        };
        let schedule = match table.remove("schedule") {
            Some(toml::Value::String(line)) => {
                if let Err(e) = crate::daemon::schedule::parse(&line) {
                    self.push(format!("{at}.schedule"), e);
                }
                Some(line)
            }
            Some(_) => {
                self.push(format!("{at}.schedule"), "must be a cron line such as \"*/2 * * * *\"".into());
                None
            }
            None => None,
        };
        let profile = match table.remove("profile") {
            Some(toml::Value::String(p)) => {
                match catalog.profile(&p) {
                    None => self.push(
                        format!("{at}.profile"),
                        format!("unknown profile {p:?}; known: {}", catalog.profile_names().join(", ")),
                    ),
                    Some(prof) if prof.kind != kind => self.push(
                        format!("{at}.profile"),
                        format!("profile {p:?} is for kind {:?}, not {kind:?}", prof.kind),
                    ),
                    Some(prof) => {
                        // The source's own keys win over the profile's defaults.
                        for (k, v) in &prof.defaults {
                            table.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                Some(p)
            }
            Some(_) => {
                self.push(format!("{at}.profile"), "must be a string".into());
                None
            }
            None => None,
        };
        let spec = match SourceSpec::deserialize(toml::Value::Table(table)) {
            Ok(s) => s,
            Err(e) => {
                self.push(at.to_string(), clean_serde_message(&e.to_string()));
                return None;
            }
        };
        let spec = match spec {
            SourceSpec::File(mut f) => {
                f.path = self.abs(f.path);
                SourceSpec::File(f)
            }
            SourceSpec::Sql(mut q) => {
                self.validate_sql(at, &mut q);
                SourceSpec::Sql(q)
            }
            SourceSpec::Ldap(mut l) => {
                self.validate_ldap(at, &mut l);
                SourceSpec::Ldap(l)
            }
            SourceSpec::Graph(mut g) => {
                self.validate_graph(at, &mut g);
                SourceSpec::Graph(g)
            }
            SourceSpec::Google(mut g) => {
                g.credentials_file = self.abs(g.credentials_file);
                g.ca_file = g.ca_file.take().map(|p| self.abs(p));
                if !g.subject.contains('@') {
                    self.push(format!("{at}.subject"), "must be the email address of the admin to impersonate".into());
                }
                if g.customer.trim().is_empty() {
                    self.push(format!("{at}.customer"), "must not be empty (the default is my_customer)".into());
                }
                let url = g.api_url.clone();
                check_http_url(self, at, "api_url", &url);
                SourceSpec::Google(g)
            }
        };
        Some(SourceConfig { name: name?, profile, schedule, spec })
    }

    fn validate_graph(&mut self, at: &str, g: &mut GraphSourceSpec) {
        if g.tenant.trim().is_empty() || g.tenant.contains('/') {
            self.push(format!("{at}.tenant"), "must be the tenant ID or a verified domain of the tenant".into());
        }
        if g.client_id.trim().is_empty() {
            self.push(format!("{at}.client_id"), "is required (the app registration's application ID)".into());
        }
        match secret::SecretSource::from_keys(
            "client_secret",
            g.client_secret_literal.take().map(|x| x.0),
            g.client_secret_file.take().map(|p| self.abs(p)),
            g.client_secret_env.take(),
        ) {
            Ok(p) => g.client_secret = p,
            Err(e) => self.push(format!("{at}.client_secret"), e),
        }
        g.certificate_file = g.certificate_file.take().map(|p| self.abs(p));
        g.private_key_file = g.private_key_file.take().map(|p| self.abs(p));
        g.ca_file = g.ca_file.take().map(|p| self.abs(p));
        match (&g.client_secret, &g.certificate_file, &g.private_key_file) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (None, None, None) => self.push(
                format!("{at}.client_secret"),
                "set client_secret (or _file/_env), or certificate_file and private_key_file".into(),
            ),
            (Some(_), _, _) => self
                .push(format!("{at}.certificate_file"), "use either client_secret or a certificate, not both".into()),
            (None, _, _) => {
                self.push(format!("{at}.certificate_file"), "certificate_file and private_key_file go together".into())
            }
        }
        for (key, url) in [("authority_url", g.authority_url.clone()), ("graph_url", g.graph_url.clone())] {
            if let Some(u) = url {
                check_http_url(self, at, key, &u);
            }
        }
    }

    fn validate_ldap(&mut self, at: &str, l: &mut LdapSourceSpec) {
        if l.url.is_empty() {
            self.push(format!("{at}.url"), "needs at least one server".into());
        }
        for (i, u) in l.url.iter().enumerate() {
            if !(u.starts_with("ldap://") || u.starts_with("ldaps://") || u.starts_with("ldapi://")) {
                self.push(format!("{at}.url[{i}]"), format!("{u:?} must start with ldaps://, ldap:// or ldapi://"));
            }
        }
        match secret::SecretSource::from_keys(
            "bind_password",
            l.bind_password_literal.take().map(|x| x.0),
            l.bind_password_file.take().map(|p| self.abs(p)),
            l.bind_password_env.take(),
        ) {
            Ok(p) => l.bind_password = p,
            Err(e) => self.push(format!("{at}.bind_password"), e),
        }
        match (&l.bind_dn, &l.bind_password) {
            (Some(_), None) => self.push(format!("{at}.bind_password"), "is required with bind_dn".into()),
            (None, Some(_)) => self.push(format!("{at}.bind_dn"), "is required with bind_password".into()),
            _ => {}
        }
        let plaintext = l.url.iter().any(|u| u.starts_with("ldap://")) && !l.starttls;
        if plaintext && l.bind_password.is_some() {
            if l.allow_plaintext_bind {
                tracing::warn!(source = %at, "allow_plaintext_bind: the bind password crosses the network unencrypted");
            } else {
                self.push(
                    format!("{at}.url"),
                    "a password bind over unencrypted ldap:// is refused: use ldaps://, or starttls = true, \
                     or (labs only) allow_plaintext_bind = true"
                        .into(),
                );
            }
        }
        if l.base_dn.trim().is_empty() {
            self.push(format!("{at}.base_dn"), "is required".into());
        }
        if l.filter.trim().is_empty() {
            self.push(format!("{at}.filter"), "is required: set filter or use a profile such as \"openldap\"".into());
        }
        if l.address_attributes.is_empty() && l.prefixed_attributes.is_empty() {
            self.push(
                format!("{at}.address_attributes"),
                "name at least one attribute that holds addresses (or use a profile)".into(),
            );
        }
        if l.range_size == Some(0) {
            self.push(format!("{at}.range_size"), "must be at least 1".into());
        }
        if !(1..=100_000).contains(&l.page_size) {
            self.push(format!("{at}.page_size"), "must be between 1 and 100000".into());
        }
        l.ca_file = l.ca_file.take().map(|p| self.abs(p));
        let conditions = l
            .skip
            .iter()
            .flat_map(|r| std::iter::once(&r.when).chain(r.unless.as_ref()))
            .chain(l.restrict_to_own_domains.as_ref());
        for c in conditions {
            if c.any_of.is_empty() && c.bits.is_none() {
                self.push(format!("{at}.skip"), format!("condition on {} needs any_of or bits", c.attribute));
            }
        }
        for k in &l.keep_skipped {
            if !l.skip.iter().any(|r| &r.name == k) {
                let known: Vec<&str> = l.skip.iter().map(|r| r.name.as_str()).collect();
                self.push(
                    format!("{at}.keep_skipped"),
                    format!("no skip rule named {k:?}; known: {}", known.join(", ")),
                );
            }
        }
    }

    fn validate_sql(&mut self, at: &str, q: &mut SqlSourceSpec) {
        use crate::connector::sql::{Dialect, url_password};
        let Some(dialect) = Dialect::from_url(&q.url) else {
            self.push(format!("{at}.url"), "must start with postgres://, mysql://, mariadb:// or sqlite://".into());
            return;
        };
        if url_password(&q.url).is_some() {
            self.push(
                format!("{at}.url"),
                "contains a password; move it to password_file or password_env so it cannot leak with the URL".into(),
            );
        }
        match secret::SecretSource::from_keys(
            "password",
            q.password_literal.take().map(|l| l.0),
            q.password_file.take().map(|p| self.abs(p)),
            q.password_env.take(),
        ) {
            Ok(p) => q.password = p,
            Err(e) => self.push(format!("{at}.password"), e),
        }
        if dialect == Dialect::Sqlite && q.password.is_some() {
            self.push(format!("{at}.password"), "SQLite has no passwords; remove it".into());
        }
        for k in q.queries.keys() {
            if !["postgres", "mysql", "sqlite"].contains(&k.as_str()) {
                self.push(format!("{at}.queries.{k}"), "unknown dialect; use postgres, mysql or sqlite".into());
            }
        }
        match q.effective_query(dialect) {
            Some(sql) if sql.trim().is_empty() => self.push(format!("{at}.query"), "is empty".into()),
            Some(_) => {}
            None if q.queries.is_empty() => self.push(
                format!("{at}.query"),
                "is required: set query = \"SELECT …\" or profile = \"postfixadmin\" (or another SQL profile)".into(),
            ),
            None => self.push(
                format!("{at}.queries"),
                format!("the profile has no query for {}; set query yourself", dialect.key()),
            ),
        }
        q.ca_file = q.ca_file.take().map(|p| self.abs(p));
    }

    fn output(&mut self, at: &str, value: toml::Value, catalog: &Catalog) -> Option<OutputConfig> {
        let raw = self.section::<RawOutput>(at, value)?;
        let before = self.errors.len();
        if !valid_name(&raw.name) {
            self.push(
                format!("{at}.name"),
                format!("{:?} may only contain letters, digits, '.', '_' and '-'", raw.name),
            );
        }
        let template = match (&raw.template, &raw.template_file) {
            (Some(_), Some(_)) => {
                self.push(format!("{at}.template"), "set template or template_file, not both".into());
                None
            }
            (None, None) => {
                self.push(
                    format!("{at}.template"),
                    format!("is required (one of {}), or set template_file", BuiltinTemplate::names().join(", ")),
                );
                None
            }
            (Some(name), None) => match catalog.template(name) {
                Some(t) => Some(t),
                None => {
                    self.push(
                        format!("{at}.template"),
                        format!("unknown template {name:?}; built-in: {}", BuiltinTemplate::names().join(", ")),
                    );
                    None
                }
            },
            (None, Some(file)) => {
                let file = self.abs(file.clone());
                match std::fs::read_to_string(&file) {
                    Ok(src) => Some(TemplateRef::user(file.display().to_string(), src)),
                    Err(e) => {
                        self.push(format!("{at}.template_file"), format!("cannot read {}: {e}", file.display()));
                        None
                    }
                }
            }
        };
        if let Some(t) = &template
            && let Err(e) = t.compile_check()
        {
            self.push(format!("{at}.template"), e);
        }
        if let (Some(map), Some(t)) = (raw.postmap, &template)
            && !t.is_key_value()
        {
            self.push(
                format!("{at}.postmap"),
                format!(
                    "postmap {} needs 'key value' lines; use template \"postfix\" or \"postfix-domains\"",
                    map.as_str()
                ),
            );
        }
        for (key, argv) in [("check", &raw.check), ("reload", &raw.reload)] {
            if let Some(argv) = argv
                && (argv.is_empty() || argv[0].is_empty())
            {
                self.push(
                    format!("{at}.{key}"),
                    "must be a non-empty argv list, e.g. [\"postfix\", \"reload\"]".into(),
                );
            }
        }
        let mode = match &raw.mode {
            None => None,
            Some(m) => match u32::from_str_radix(m.trim_start_matches("0o"), 8) {
                Ok(v) if v <= 0o777 => Some(v),
                _ => {
                    self.push(format!("{at}.mode"), format!("{m:?} is not an octal file mode like \"0640\""));
                    None
                }
            },
        };
        let hook_timeout = match &raw.hook_timeout {
            None => DEFAULT_HOOK_TIMEOUT,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.push(format!("{at}.hook_timeout"), e);
                    DEFAULT_HOOK_TIMEOUT
                }
            },
        };
        let path = self.abs(raw.path.clone());
        if path.file_name().is_none() {
            self.push(format!("{at}.path"), "must name a file".into());
        }
        if self.errors.len() > before {
            return None;
        }
        let hash_salt = match secret::SecretSource::from_keys(
            "hash_salt",
            raw.hash_salt.map(|x| x.0),
            raw.hash_salt_file.map(|p| self.abs(p)),
            raw.hash_salt_env,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.push(format!("{at}.hash_salt"), e);
                None
            }
        };
        Some(OutputConfig {
            name: raw.name,
            template: template?,
            path,
            postmap: raw.postmap,
            check: raw.check,
            reload: raw.reload,
            mode,
            hook_timeout,
            hash_salt,
        })
    }
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

fn clean_serde_message(msg: &str) -> String {
    msg.trim().replace('\n', " ")
}

/// Turns a TOML parse error into a ConfigError with line and column.
fn toml_error(text: &str, path: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = e.message().to_string();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map(|l| l.chars().count() + 1).unwrap_or(1);
        message = format!("line {line}, column {col}: {message}");
    }
    ConfigError { path: path.to_string(), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        match parse(text, Path::new("/etc/rcptsync")) {
            Ok(c) => c,
            Err(e) => panic!("unexpected errors: {e:?}"),
        }
    }

    fn parse_err(text: &str) -> Vec<String> {
        match parse(text, Path::new("/etc/rcptsync")) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    const MINIMAL: &str = r#"
        state_dir = "state"
        [[source]]
        name = "list"
        kind = "file"
        path = "recipients.txt"
        [[output]]
        name = "postfix"
        template = "postfix"
        path = "/etc/postfix/relay_recipients"
        postmap = "lmdb"
        reload = ["postfix", "reload"]
    "#;

    #[test]
    fn minimal_config_with_defaults() {
        let c = parse_ok(MINIMAL);
        assert_eq!(c.state_dir, PathBuf::from("/etc/rcptsync/state"));
        assert_eq!(c.guard.min_recipients, 1);
        assert_eq!(c.guard.max_removed_percent, 10.0);
        assert_eq!(c.guard.on_source_failure, OnSourceFailure::KeepLastGood);
        let SourceSpec::File(f) = &c.sources[0].spec else { panic!("not a file source") };
        assert_eq!(f.path, PathBuf::from("/etc/rcptsync/recipients.txt"));
        assert!(f.catchalls);
        assert_eq!(c.outputs[0].postmap, Some(MapType::Lmdb));
        assert_eq!(c.outputs[0].hook_timeout, DEFAULT_HOOK_TIMEOUT);
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let errs = parse_err(
            r#"
            [policy]
            domains = ["example.com", "bad domain"]
            include = ["a@@b"]
            exclude = ["[unclosed"]
            [guard]
            max_removed_percent = 150
            [[source]]
            name = "a"
            kind = "file"
            path = "x"
            colour = "blue"
            [[source]]
            name = "a b"
            kind = "file"
            path = "y"
            [[source]]
            name = "c"
            kind = "graph"
            [[output]]
            name = "o"
            template = "nope"
            path = "/tmp/o"
            [[output]]
            name = "p"
            template = "exim"
            path = "/tmp/p"
            postmap = "hash"
            mode = "999"
            reload = []
            hook_timeout = "soon"
            "#,
        );
        let want = [
            "policy.domains[1]: \"bad domain\" contains whitespace",
            "policy.include[0]: \"a@@b\" has more than one '@'",
            "policy.exclude[0]: \"[unclosed\" is not a valid glob",
            "guard.max_removed_percent: must be between 0 and 100",
            "source[0]: unknown field `colour`",
            "source[1].name: \"a b\" may only contain",
            "source[2]: missing field `tenant`",
            "output[0].template: unknown template \"nope\"",
            "output[1].postmap: postmap hash needs 'key value' lines",
            "output[1].reload: must be a non-empty argv list",
            "output[1].mode: \"999\" is not an octal file mode",
            "output[1].hook_timeout: \"soon\" is not a duration",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
    }

    #[test]
    fn cloud_sources_validate_credentials_and_endpoints() {
        let errs = parse_err(
            r#"
            [[source]]
            name = "m365"
            kind = "graph"
            tenant = "contoso.onmicrosoft.com"
            client_id = "app"
            graph_url = "ftp://x"
            [[source]]
            name = "m365b"
            kind = "graph"
            tenant = "t"
            client_id = "app"
            client_secret_env = "X"
            certificate_file = "c.pem"
            [[source]]
            name = "m365c"
            kind = "graph"
            tenant = "t"
            client_id = "app"
            certificate_file = "c.pem"
            [[source]]
            name = "gw"
            kind = "google"
            credentials_file = "sa.json"
            subject = "admin"
            customer = ""
            [[output]]
            name = "o"
            template = "plain"
            path = "/tmp/o"
            "#,
        );
        let want = [
            "source[0].client_secret: set client_secret (or _file/_env), or certificate_file and private_key_file",
            "source[0].graph_url: \"ftp://x\" must start with https://",
            "source[1].certificate_file: use either client_secret or a certificate, not both",
            "source[2].certificate_file: certificate_file and private_key_file go together",
            "source[3].subject: must be the email address of the admin to impersonate",
            "source[3].customer: must not be empty",
        ];
        for w in want {
            assert!(errs.iter().any(|e| e.starts_with(w)), "missing {w:?} in {errs:#?}");
        }
        assert_eq!(errs.len(), want.len(), "{errs:#?}");

        let cfg = parse(
            "[[source]]\nname = \"m\"\nkind = \"graph\"\ntenant = \"t\"\nclient_id = \"a\"\nclient_secret_file = \"s\"\ncloud = \"usgov\"\n\
             [[source]]\nname = \"g\"\nkind = \"google\"\ncredentials_file = \"sa.json\"\nsubject = \"admin@example.com\"\n\
             [[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n",
            Path::new("/etc/rcptsync"),
        )
        .unwrap();
        let SourceSpec::Graph(g) = &cfg.sources[0].spec else { panic!() };
        assert_eq!(g.authority(), "https://login.microsoftonline.us");
        assert_eq!(g.graph_root(), "https://graph.microsoft.us");
        assert!(g.incremental);
        let SourceSpec::Google(g) = &cfg.sources[1].spec else { panic!() };
        assert_eq!(g.credentials_file, Path::new("/etc/rcptsync/sa.json"));
        assert_eq!((g.customer.as_str(), g.api_url.as_str()), ("my_customer", "https://admin.googleapis.com"));
    }

    #[test]
    fn syntax_errors_have_a_line_number() {
        let errs = parse_err("state_dir = \"x\"\n[policy\n");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with("line 2, column"), "{errs:?}");
    }

    #[test]
    fn unknown_top_level_key_is_an_error() {
        let errs = parse_err("statedir = \"x\"\n");
        assert!(errs[0].contains("unknown field `statedir`"), "{errs:?}");
    }

    #[test]
    fn sources_and_outputs_are_required_and_unique() {
        let errs = parse_err("");
        assert_eq!(
            errs,
            ["source: at least one [[source]] is required", "output: at least one [[output]] is required"]
        );
        let dup = format!(
            "{MINIMAL}\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"b\"\n[[output]]\nname = \"postfix\"\ntemplate = \"plain\"\npath = \"/etc/postfix/relay_recipients\"\n"
        );
        let errs = parse_err(&dup);
        assert!(errs.contains(&"source[1].name: duplicate source name \"list\"".to_string()), "{errs:?}");
        assert!(errs.contains(&"output[1].name: duplicate output name \"postfix\"".to_string()), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.starts_with("output[1].path: /etc/postfix/relay_recipients is used")),
            "{errs:?}"
        );
    }

    #[test]
    fn profile_defaults_are_overridden_by_source_keys() {
        let c = parse_ok(&MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"plain-list\""));
        let SourceSpec::File(f) = &c.sources[0].spec else { panic!("not a file source") };
        assert!(!f.catchalls, "profile default applies");
        let c = parse_ok(
            &MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"plain-list\"\ncatchalls = true"),
        );
        let SourceSpec::File(f) = &c.sources[0].spec else { panic!("not a file source") };
        assert!(f.catchalls, "source key wins");
        let errs = parse_err(&MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"nosuch\""));
        // The list names every profile, so adding one does not change the test.
        assert!(errs[0].starts_with("source[0].profile: unknown profile \"nosuch\"; known: "), "{errs:?}");
        assert!(errs[0].contains("plain-list") && errs[0].contains("postfixadmin"), "{errs:?}");
        let errs = parse_err(&MINIMAL.replace("kind = \"file\"", "kind = \"file\"\nprofile = \"postfixadmin\""));
        assert_eq!(errs, ["source[0].profile: profile \"postfixadmin\" is for kind \"sql\", not \"file\""]);
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("x").is_err());
        assert!(valid_name("corp-ad_1.x"));
        assert!(!valid_name("../x") && !valid_name("") && !valid_name(".hidden") && !valid_name("a/b"));
    }
}

#[cfg(test)]
mod sql_tests {
    use super::*;

    fn sql_source(keys: &str) -> String {
        format!(
            "state_dir = \"s\"\n[[source]]\nname = \"db\"\nkind = \"sql\"\n{keys}\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text, Path::new("/etc/rcptsync")) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn sql_source_validation() {
        assert_eq!(
            errors(&sql_source(
                "url = \"postgres://pfa@127.0.0.1/pfa\"\nquery = \"SELECT username FROM mailbox\"\npassword_env = \"PFA_PW\""
            )),
            Vec::<String>::new()
        );
        let e = errors(&sql_source("url = \"oracle://x\"\nquery = \"SELECT 1\""));
        assert!(e[0].starts_with("source[0].url: must start with postgres://"), "{e:?}");
        let e = errors(&sql_source("url = \"mysql://pfa:hunter2@db/pfa\"\nquery = \"SELECT 1\""));
        assert!(e[0].starts_with("source[0].url: contains a password") && !e[0].contains("hunter2"), "{e:?}");
        let e = errors(&sql_source("url = \"postgres://pfa@db/pfa\""));
        assert!(e[0].starts_with("source[0].query: is required"), "{e:?}");
        let e = errors(&sql_source(
            "url = \"postgres://pfa@db/pfa\"\nquery = \"SELECT 1\"\npassword = \"x\"\npassword_env = \"Y\"",
        ));
        assert_eq!(e, ["source[0].password: set only one of password, password_file and password_env"]);
        let e = errors(&sql_source("url = \"sqlite:///x.db\"\nquery = \"SELECT 1\"\npassword = \"x\""));
        assert_eq!(e, ["source[0].password: SQLite has no passwords; remove it"]);
        let e = errors(&sql_source("url = \"postgres://pfa@db/pfa\"\nquery = \"SELECT 1\"\nquery_timeout = \"soon\""));
        assert!(e[0].contains("\"soon\" is not a duration"), "{e:?}");
    }

    #[test]
    fn literal_password_never_prints() {
        let c = parse(
            &sql_source("url = \"postgres://pfa@db/pfa\"\nquery = \"SELECT 1\"\npassword = \"hunter2-secret\""),
            Path::new("/"),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
