//! `kind = "sql"`: the primary mail server's own database (PostgreSQL, MySQL or
//! MariaDB, SQLite).
//!
//! The SQL is data: a `query` in the source, or a profile's per-dialect `queries`
//! (`connectors/postfixadmin.toml` and friends) that reproduce what the product's
//! own Postfix lookups accept. A query returns one column of addresses; rows
//! `@domain` are catch-alls (they only come from SQL an operator or a profile wrote
//! for that purpose). The connection is read-only, every step has a timeout, and a
//! failed or timed-out query fails the source as a whole: never a partial list.

use std::str::FromStr;
use std::time::Duration;

use futures_util::TryStreamExt;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Row};

use std::path::PathBuf;

use serde::Deserialize;

use crate::connector::{Batch, Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind, Rejected};
use crate::secret::{Literal, Secret, SecretSource};
use crate::section::Checker;

/// `kind = "sql"`: a mail server's database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSourceSpec {
    /// `postgres://user@host:port/db`, `mysql://…` (MariaDB too) or
    /// `sqlite:///path/to/file.db`. Put the password in `password*`, not here.
    pub url: String,
    #[serde(rename = "password")]
    password_literal: Option<Literal>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    /// Resolved from `password` / `password_file` / `password_env` by validation.
    #[serde(skip)]
    pub password: Option<SecretSource>,
    /// One query returning one column of addresses (`@domain` rows are
    /// catch-alls). Overrides the profile's `queries`.
    pub query: Option<String>,
    /// Per-dialect queries (`postgres`, `mysql`, `sqlite`), usually from a profile.
    #[serde(default)]
    pub queries: std::collections::BTreeMap<String, String>,
    /// CA certificate(s) to verify the server's TLS certificate with (implies
    /// `tls_mode = "verify-full"`).
    pub ca_file: Option<PathBuf>,
    /// `verify-full` (default for a server not on this host, and with
    /// `ca_file`): TLS with the certificate and the host name verified.
    /// Weaker modes are logged loudly at every connection: `require` (TLS, the
    /// certificate not checked), `prefer` (TLS if the server offers it, not
    /// checked: the default on this host), `disable`.
    pub tls_mode: Option<TlsMode>,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub query_timeout: Option<Duration>,
    /// The product's `recipient_delimiter` (set by its profile): the default
    /// of `policy.recipient_delimiter` when the config names none.
    pub recipient_delimiter: Option<String>,
    /// The product versions `queries` were written for (from the profile; for
    /// logs and `check`).
    pub schema: Option<String>,
    /// Older schemas of the same product (profile data): the first whose
    /// `when_missing` column the database lacks supplies the queries instead.
    #[serde(default)]
    pub older_schemas: Vec<OlderSchema>,
}

/// An older schema of a product, told apart by a column newer ones have.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OlderSchema {
    /// Which versions, in words (`"Mailu 2024.06"`).
    pub schema: String,
    /// `table.column` that newer schemas have and this one lacks.
    pub when_missing: String,
    /// Per-dialect queries for this schema.
    pub queries: std::collections::BTreeMap<String, String>,
}

/// A plain SQL identifier (table or column name), safe to put in a query.
fn plain_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// How a SQL connection uses TLS (`tls_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    VerifyFull,
    Require,
    Prefer,
    Disable,
}

impl TlsMode {
    fn as_str(self) -> &'static str {
        match self {
            TlsMode::VerifyFull => "verify-full",
            TlsMode::Require => "require",
            TlsMode::Prefer => "prefer",
            TlsMode::Disable => "disable",
        }
    }
}

/// The TLS mode a source connects with, and whether it was chosen explicitly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveTls {
    /// `tls_mode`, or the default for where the server is.
    Mode(TlsMode),
    /// `sslmode` / `ssl-mode` in the URL, left as the driver reads it.
    FromUrl,
    /// SQLite: a file, no network.
    None,
}

/// Query parameters that carry a password: refused, so a password never
/// travels (and is never printed) with the URL.
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "pass"];

/// The query parameters of a URL, keys lowercased.
fn url_params(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else { return Vec::new() };
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect()
}

/// The host a URL connects to (`""` for a local socket).
fn url_host(url: &str) -> String {
    if url_params(url).iter().any(|(k, v)| (k == "host" && v.starts_with('/')) || k == "socket") {
        return String::new();
    }
    let Some((_, rest)) = url.split_once("://") else { return String::new() };
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("").to_string();
    }
    hostport.split(':').next().unwrap_or("").to_ascii_lowercase()
}

/// Whether traffic to `host` stays on this machine.
fn is_local(host: &str) -> bool {
    host.is_empty() || host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl SqlSourceSpec {
    /// The TLS mode this source connects with: `tls_mode`; else the URL's
    /// `sslmode`; else full verification unless the server is on this host
    /// (and no `ca_file` asks for it).
    pub fn effective_tls(&self) -> EffectiveTls {
        if Dialect::from_url(&self.url) == Some(Dialect::Sqlite) {
            return EffectiveTls::None;
        }
        if let Some(m) = self.tls_mode {
            return EffectiveTls::Mode(m);
        }
        if url_params(&self.url).iter().any(|(k, _)| k == "sslmode" || k == "ssl-mode") {
            return EffectiveTls::FromUrl;
        }
        if self.ca_file.is_some() || !is_local(&url_host(&self.url)) {
            EffectiveTls::Mode(TlsMode::VerifyFull)
        } else {
            EffectiveTls::Mode(TlsMode::Prefer)
        }
    }

    /// A warning for a connection whose TLS does not verify the server while
    /// the server is elsewhere on the network.
    fn weak_tls(&self) -> Option<String> {
        let host = url_host(&self.url);
        if is_local(&host) {
            return None;
        }
        let mode = match self.effective_tls() {
            EffectiveTls::Mode(TlsMode::VerifyFull) | EffectiveTls::None => return None,
            EffectiveTls::Mode(m) => m.as_str().to_string(),
            EffectiveTls::FromUrl => {
                let v = url_params(&self.url)
                    .into_iter()
                    .find(|(k, _)| k == "sslmode" || k == "ssl-mode")
                    .map(|(_, v)| v.to_ascii_lowercase())
                    .unwrap_or_default();
                if matches!(v.as_str(), "verify-full" | "verify_identity" | "verify-identity") {
                    return None;
                }
                format!("sslmode={v}")
            }
        };
        Some(format!(
            "TLS mode {mode} to {host} does not verify the server: a man-in-the-middle can read the password and \
             change the rows. Use tls_mode = \"verify-full\" (with ca_file for a private CA)"
        ))
    }

    /// The query to run against `dialect`: `query`, else `queries[dialect]`.
    pub fn effective_query(&self, dialect: crate::connector::sql::Dialect) -> Option<String> {
        self.query.clone().or_else(|| self.queries.get(dialect.key()).cloned())
    }

    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        let q = self;
        if let Some(d) = &q.recipient_delimiter
            && let Err(e) = crate::policy::check_delimiter(d)
        {
            c.push(format!("{at}.recipient_delimiter"), e);
        }
        let Some(dialect) = Dialect::from_url(&q.url) else {
            c.push(format!("{at}.url"), "must start with postgres://, mysql://, mariadb:// or sqlite://".into());
            return;
        };
        if url_password(&q.url).is_some() {
            c.push(
                format!("{at}.url"),
                "contains a password; move it to password_file or password_env so it cannot leak with the URL".into(),
            );
        }
        if let Some((k, _)) = url_params(&q.url).into_iter().find(|(k, _)| SECRET_PARAMS.contains(&k.as_str())) {
            c.push(
                format!("{at}.url"),
                format!(
                    "carries a password in its query string ({k}=…); move it to password_file or password_env \
                     (a client key must be unencrypted, readable only by rcptsync's user)"
                ),
            );
        }
        if q.tls_mode.is_some() {
            if dialect == Dialect::Sqlite {
                c.push(format!("{at}.tls_mode"), "SQLite reads a local file; remove it".into());
            } else if url_params(&q.url).iter().any(|(k, _)| k == "sslmode" || k == "ssl-mode") {
                c.push(format!("{at}.tls_mode"), "the url sets sslmode too; set it in one place, tls_mode".into());
            }
        }
        q.password = c.secret(at, "password", q.password_literal.take(), q.password_file.take(), q.password_env.take());
        if dialect == Dialect::Sqlite && q.password.is_some() {
            c.push(format!("{at}.password"), "SQLite has no passwords; remove it".into());
        }
        for k in q.queries.keys() {
            if !["postgres", "mysql", "sqlite"].contains(&k.as_str()) {
                c.push(format!("{at}.queries.{k}"), "unknown dialect; use postgres, mysql or sqlite".into());
            }
        }
        for (i, o) in q.older_schemas.iter().enumerate() {
            let ok = o.when_missing.split_once('.').is_some_and(|(t, c)| plain_identifier(t) && plain_identifier(c));
            if !ok {
                c.push(
                    format!("{at}.older_schemas[{i}].when_missing"),
                    format!("{:?} must be table.column (letters, digits, _)", o.when_missing),
                );
            }
            if q.query.is_none() && !o.queries.contains_key(dialect.key()) {
                c.push(
                    format!("{at}.older_schemas[{i}].queries"),
                    format!("has no query for {} ({})", dialect.key(), o.schema),
                );
            }
        }
        match q.effective_query(dialect) {
            Some(sql) if sql.trim().is_empty() => c.push(format!("{at}.query"), "is empty".into()),
            Some(_) => {}
            None if q.queries.is_empty() => c.push(
                format!("{at}.query"),
                "is required: set query = \"SELECT …\" or profile = \"postfixadmin\" (or another SQL profile)".into(),
            ),
            None => c.push(
                format!("{at}.queries"),
                format!("the profile has no query for {}; set query yourself", dialect.key()),
            ),
        }
        c.abs_opt(&mut q.ca_file);
    }
}

/// The database family, from the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl Dialect {
    pub fn from_url(url: &str) -> Option<Dialect> {
        let scheme = url.split_once("://").map(|(s, _)| s).or_else(|| url.split_once(':').map(|(s, _)| s))?;
        match scheme {
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::Mysql),
            "sqlite" => Some(Dialect::Sqlite),
            _ => None,
        }
    }

    /// The key of this dialect in a profile's `queries` table.
    pub fn key(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// Hides the password part of a database URL (`scheme://user:***@host/db`).
pub fn redact_url(url: &str) -> String {
    // The query string is left out whole: whatever it holds is not printed.
    let url = match url.split_once('?') {
        Some((base, q)) if !q.is_empty() => return format!("{}?…", redact_url(base)),
        Some((base, _)) => base,
        None => url,
    };
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let (auth_end, _) = match rest.find(['/', '?']) {
        Some(i) => (i, ()),
        None => (rest.len(), ()),
    };
    let authority = &rest[..auth_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_string() };
            format!("{scheme}://{masked}{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Default connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout for the whole query, including reading every row.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
pub struct SqlSource {
    spec: SqlSourceSpec,
    dialect: Dialect,
    query: String,
}

impl SqlSource {
    /// `spec` has been validated: the dialect is known and a query exists.
    pub fn new(spec: SqlSourceSpec) -> SqlSource {
        let dialect = Dialect::from_url(&spec.url).unwrap_or(Dialect::Postgres);
        let query = spec.effective_query(dialect).unwrap_or_default();
        SqlSource { spec, dialect, query }
    }

    fn password(&self) -> Result<Option<Secret>, SourceError> {
        match &self.spec.password {
            None => Ok(None),
            Some(src) => src.resolve("password").map(Some).map_err(|e| SourceError::new(e.to_string())),
        }
    }

    /// Makes a message safe to show: no password, no URL password.
    fn clean(&self, msg: String, secret: Option<&Secret>) -> String {
        let mut msg = msg.replace(&self.spec.url, &redact_url(&self.spec.url));
        if let Some(s) = secret.filter(|s| s.expose().len() >= 3) {
            msg = msg.replace(s.expose(), "***");
        }
        if let Some(pw) = url_password(&self.spec.url).filter(|p| p.len() >= 3) {
            msg = msg.replace(&pw, "***");
        }
        msg
    }

    fn where_(&self) -> String {
        redact_url(&self.spec.url)
    }

    /// The query for this database's schema, and the schema's name: an older
    /// schema's when the database lacks the column that tells it apart (checked
    /// in order), else the profile's current one. A `query` written in the
    /// config is run as it is.
    async fn query_for_schema(&self) -> Result<(String, Option<String>), SourceError> {
        if self.spec.query.is_some() || self.spec.older_schemas.is_empty() {
            return Ok((self.query.clone(), self.spec.schema.clone()));
        }
        for o in &self.spec.older_schemas {
            let Some((table, column)) = o.when_missing.split_once('.') else { continue };
            let probe = match self.dialect {
                Dialect::Postgres => format!(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() \
                     AND table_name = '{table}' AND column_name = '{column}'"
                ),
                Dialect::Mysql => format!(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() \
                     AND table_name = '{table}' AND column_name = '{column}'"
                ),
                Dialect::Sqlite => format!("SELECT name FROM pragma_table_info('{table}') WHERE name = '{column}'"),
            };
            if self.rows(&probe).await?.is_empty() {
                let sql = o.queries.get(self.dialect.key()).cloned().unwrap_or_default();
                tracing::info!(source = %self.where_(), schema = %o.schema, missing = %o.when_missing, "older schema detected");
                return Ok((sql, Some(o.schema.clone())));
            }
        }
        Ok((self.query.clone(), self.spec.schema.clone()))
    }

    /// Runs `sql` and returns the first column of every row.
    async fn rows(&self, sql: &str) -> Result<Vec<Option<Vec<u8>>>, SourceError> {
        let secret = self.password()?;
        let result = self.rows_inner(sql, secret.as_ref()).await;
        result.map_err(|e| SourceError::new(self.clean(e, secret.as_ref())))
    }

    async fn rows_inner(&self, sql: &str, secret: Option<&Secret>) -> Result<Vec<Option<Vec<u8>>>, String> {
        if let Some(w) = self.spec.weak_tls() {
            tracing::warn!(source = %self.where_(), "{w}");
        }
        let connect_timeout = self.spec.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
        let query_timeout = self.spec.query_timeout.unwrap_or(QUERY_TIMEOUT);
        // The SQL comes from the operator's config or a reviewed profile, never from
        // directory data, so it is run as written.
        let sql = AssertSqlSafe(sql.to_string());
        match self.dialect {
            Dialect::Postgres => {
                let mut opts = sqlx::postgres::PgConnectOptions::from_str(&self.spec.url)
                    .map_err(|e| format!("invalid url {}: {e}", self.where_()))?
                    .application_name("rcptsync")
                    .log_statements(log::LevelFilter::Trace)
                    .log_slow_statements(log::LevelFilter::Off, Duration::MAX)
                    .options([
                        ("default_transaction_read_only", "on".to_string()),
                        ("statement_timeout", format!("{}", query_timeout.as_millis())),
                    ]);
                if let Some(s) = secret {
                    opts = opts.password(s.expose());
                }
                if let Some(ca) = &self.spec.ca_file {
                    opts = opts.ssl_root_cert(ca);
                }
                if let EffectiveTls::Mode(m) = self.spec.effective_tls() {
                    use sqlx::postgres::PgSslMode;
                    opts = opts.ssl_mode(match m {
                        TlsMode::VerifyFull => PgSslMode::VerifyFull,
                        TlsMode::Require => PgSslMode::Require,
                        TlsMode::Prefer => PgSslMode::Prefer,
                        TlsMode::Disable => PgSslMode::Disable,
                    });
                }
                let conn =
                    connect_with_retry(|| sqlx::PgConnection::connect_with(&opts), connect_timeout, &self.where_())
                        .await?;
                first_column_of_rows(conn, None, sql, query_timeout).await.map_err(|e| self.describe(e))
            }
            Dialect::Mysql => {
                let url = self.spec.url.replacen("mariadb://", "mysql://", 1);
                let mut opts = sqlx::mysql::MySqlConnectOptions::from_str(&url)
                    .map_err(|e| format!("invalid url {}: {e}", self.where_()))?
                    .log_statements(log::LevelFilter::Trace)
                    .log_slow_statements(log::LevelFilter::Off, Duration::MAX);
                if let Some(s) = secret {
                    opts = opts.password(s.expose());
                }
                if let Some(ca) = &self.spec.ca_file {
                    opts = opts.ssl_ca(ca);
                }
                if let EffectiveTls::Mode(m) = self.spec.effective_tls() {
                    use sqlx::mysql::MySqlSslMode;
                    opts = opts.ssl_mode(match m {
                        TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
                        TlsMode::Require => MySqlSslMode::Required,
                        TlsMode::Prefer => MySqlSslMode::Preferred,
                        TlsMode::Disable => MySqlSslMode::Disabled,
                    });
                }
                let conn =
                    connect_with_retry(|| sqlx::MySqlConnection::connect_with(&opts), connect_timeout, &self.where_())
                        .await?;
                let read_only = Some("SET SESSION TRANSACTION READ ONLY");
                first_column_of_rows(conn, read_only, sql, query_timeout).await.map_err(|e| self.describe(e))
            }
            Dialect::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(&self.spec.url)
                    .map_err(|e| format!("invalid url {}: {e}", self.where_()))?
                    .read_only(true)
                    .create_if_missing(false)
                    .log_statements(log::LevelFilter::Trace)
                    .log_slow_statements(log::LevelFilter::Off, Duration::MAX);
                let conn =
                    connect_with_retry(|| sqlx::SqliteConnection::connect_with(&opts), connect_timeout, &self.where_())
                        .await?;
                first_column_of_rows(conn, None, sql, query_timeout).await.map_err(|e| self.describe(e))
            }
        }
    }

    /// Turns a query error into a message that says what to fix.
    fn describe(&self, e: QueryError) -> String {
        match e {
            QueryError::Timeout(d) => format!(
                "query on {} did not finish within {d:?}; raise query_timeout or check the server's load",
                self.where_()
            ),
            QueryError::Sql(e) => {
                let hint = match &e {
                    sqlx::Error::Database(db) => match db.code().as_deref() {
                        Some("42P01") | Some("1146") => {
                            " (a table is missing: does the profile match this product and schema version?)"
                        }
                        Some("42703") | Some("1054") => {
                            " (a column is missing: does the profile match this product and schema version?)"
                        }
                        Some("57014") | Some("1969") | Some("3024") => {
                            " (the server cancelled the query at query_timeout)"
                        }
                        _ => "",
                    },
                    sqlx::Error::ColumnDecode { .. } => " (the first column must be text: the address)",
                    _ => "",
                };
                format!("query on {} failed: {e}{hint}", self.where_())
            }
        }
    }

    fn to_batch(&self, rows: Vec<Option<Vec<u8>>>) -> Batch {
        let mut out = Batch { items: Vec::with_capacity(rows.len()), ..Batch::default() };
        for (i, v) in rows.into_iter().enumerate() {
            let locator = Locator::Object(format!("row {}", i + 1).into());
            let value = match v.map(String::from_utf8) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    out.rejected.push(Rejected {
                        value: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        locator,
                        reason: "is not valid UTF-8".into(),
                    });
                    continue;
                }
                None => {
                    out.rejected.push(Rejected { value: "NULL".into(), locator, reason: "is NULL".into() });
                    continue;
                }
            };
            let kind = RawKind::of(&value);
            out.items.push(RawItem { value, kind, locator });
        }
        out
    }
}

/// The password embedded in a URL, if any.
pub fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p.to_string())
}

enum QueryError {
    Timeout(Duration),
    Sql(sqlx::Error),
}

async fn timed<T>(limit: Duration, f: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, QueryError> {
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(QueryError::Sql(e)),
        Err(_) => Err(QueryError::Timeout(limit)),
    }
}

/// Connects with a timeout per attempt; retries connection-level failures (not
/// authentication or configuration errors) with backoff.
async fn connect_with_retry<C, F, Fut>(connect: F, limit: Duration, where_: &str) -> Result<C, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<C, sqlx::Error>>,
{
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 1..=CONNECT_ATTEMPTS {
        let retryable = match tokio::time::timeout(limit, connect()).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => {
                let retry = matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_));
                last = match &e {
                    sqlx::Error::Database(db)
                        if matches!(db.code().as_deref(), Some("28P01") | Some("28000") | Some("1045")) =>
                    {
                        format!(
                            "cannot log in to {where_}: {e} (check the user in url and password / password_file / password_env)"
                        )
                    }
                    sqlx::Error::Io(io) => {
                        format!("cannot connect to {where_}: {io} (is the server running and reachable?)")
                    }
                    _ => format!("cannot connect to {where_}: {e}"),
                };
                retry
            }
            Err(_) => {
                last = format!("cannot connect to {where_}: no answer within {limit:?} (connect_timeout)");
                true
            }
        };
        if !retryable || attempt == CONNECT_ATTEMPTS {
            break;
        }
        tracing::warn!(target_db = %where_, attempt, error = %last, "database connection failed; retrying");
        tokio::time::sleep(delay).await;
        delay *= 4;
    }
    Err(last)
}

/// Runs `sql` on `conn` within `limit` (after `setup`, a statement that makes
/// the session read-only where the URL cannot say so), streaming the first
/// column of every row; then closes the connection. One body for every driver.
async fn first_column_of_rows<C>(
    mut conn: C,
    setup: Option<&'static str>,
    sql: AssertSqlSafe<String>,
    limit: Duration,
) -> Result<Vec<Option<Vec<u8>>>, QueryError>
where
    C: Connection,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = C::Database>,
    <C::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<C::Database>,
    usize: sqlx::ColumnIndex<<C::Database as sqlx::Database>::Row>,
    for<'r> Option<String>: sqlx::Decode<'r, C::Database> + sqlx::Type<C::Database>,
    for<'r> Option<Vec<u8>>: sqlx::Decode<'r, C::Database> + sqlx::Type<C::Database>,
{
    let rows = timed(limit, async {
        if let Some(setup) = setup {
            sqlx::query(setup).execute(&mut conn).await?;
        }
        let mut out = Vec::new();
        let mut stream = sqlx::query(sql).fetch(&mut conn);
        while let Some(row) = stream.try_next().await? {
            out.push(first_column(&row)?);
        }
        Ok::<_, sqlx::Error>(out)
    })
    .await;
    let _ = conn.close().await;
    rows
}

/// The first column of a row as bytes: text, or binary (MySQL's CONCAT() over
/// binary collations yields VARBINARY).
fn first_column<'r, R>(row: &'r R) -> Result<Option<Vec<u8>>, sqlx::Error>
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    match row.try_get::<Option<String>, _>(0) {
        Ok(v) => Ok(v.map(String::into_bytes)),
        Err(_) => row.try_get::<Option<Vec<u8>>, _>(0),
    }
}

impl Connector for SqlSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let (query, _) = self.query_for_schema().await?;
        let rows = self.rows(&query).await?;
        Ok(Fetched::Ready(self.to_batch(rows)))
    }

    async fn check(&self) -> Result<String, SourceError> {
        // Wrapping the query proves that every table and column it names exists,
        // while reading at most one row.
        let (query, schema) = self.query_for_schema().await?;
        let probe = format!("SELECT * FROM ({}) AS rcptsync_probe LIMIT 1", query.trim().trim_end_matches(';'));
        let rows = self.rows(&probe).await?;
        let schema = schema.map(|s| format!(", schema {s}")).unwrap_or_default();
        Ok(format!(
            "{} ({}{schema}): query runs, {} row(s) in a LIMIT 1 probe",
            self.where_(),
            self.dialect.key(),
            rows.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_and_redaction() {
        assert_eq!(Dialect::from_url("postgres://u@h/db"), Some(Dialect::Postgres));
        assert_eq!(Dialect::from_url("mariadb://u@h/db"), Some(Dialect::Mysql));
        assert_eq!(Dialect::from_url("sqlite:///var/lib/x.db"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::from_url("oracle://x"), None);
        assert_eq!(
            redact_url("postgres://pfa:s3cret@db:5432/pfa?sslmode=require&sslpassword=k3y"),
            "postgres://pfa:***@db:5432/pfa?…"
        );
        assert_eq!(redact_url("mysql://pfa@db/pfa"), "mysql://pfa@db/pfa");
        assert_eq!(redact_url("sqlite:///x.db"), "sqlite:///x.db");
        assert_eq!(url_password("postgres://pfa:s3cret@db/pfa").as_deref(), Some("s3cret"));
    }

    fn spec(url: &str, extra: &str) -> SqlSourceSpec {
        toml::from_str(&format!("url = \"{url}\"\nquery = \"SELECT 1\"\n{extra}")).unwrap()
    }

    #[test]
    fn tls_is_verified_unless_the_server_is_on_this_host() {
        use EffectiveTls::*;
        let tls = |url: &str, extra: &str| spec(url, extra).effective_tls();
        assert_eq!(tls("postgres://u@db.example.com/pfa", ""), Mode(TlsMode::VerifyFull));
        assert_eq!(tls("mysql://u@10.0.0.5:3306/pfa", ""), Mode(TlsMode::VerifyFull));
        assert_eq!(tls("postgres://u@[2001:db8::1]:5432/pfa", ""), Mode(TlsMode::VerifyFull));
        for local in
            ["postgres://u@127.0.0.1/pfa", "postgres://u@localhost/pfa", "mysql://u@[::1]/pfa", "postgres:///pfa"]
        {
            assert_eq!(tls(local, ""), Mode(TlsMode::Prefer), "{local}");
        }
        assert_eq!(tls("postgres://u@db.example.com/pfa?host=/run/postgresql", ""), Mode(TlsMode::Prefer));
        // ca_file asks for verification even on this host.
        assert_eq!(tls("postgres://u@127.0.0.1/pfa", "ca_file = \"/ca.pem\""), Mode(TlsMode::VerifyFull));
        assert_eq!(tls("postgres://u@db/pfa", "tls_mode = \"require\""), Mode(TlsMode::Require));
        assert_eq!(tls("postgres://u@db/pfa?sslmode=verify-full", ""), FromUrl);
        assert_eq!(tls("sqlite:///x.db", ""), None);
        // Weak modes to another host are named loudly; on this host, not.
        let weak = spec("postgres://u@db.example.com/pfa", "tls_mode = \"require\"").weak_tls().unwrap();
        assert!(weak.contains("TLS mode require to db.example.com does not verify the server"), "{weak}");
        assert!(spec("postgres://u@db/pfa?sslmode=disable", "").weak_tls().unwrap().contains("sslmode=disable"));
        assert!(spec("postgres://u@db/pfa", "").weak_tls().is_none());
        assert!(spec("postgres://u@127.0.0.1/pfa", "tls_mode = \"disable\"").weak_tls().is_none());
    }

    #[test]
    fn passwords_in_the_query_string_are_refused_without_printing_them() {
        for url in ["postgres://u@db/pfa?sslpassword=hunter2", "mysql://u@db/pfa?Password=hunter2&x=1"] {
            let mut s = spec(url, "");
            let mut c = Checker::new(std::path::Path::new("/"));
            s.validate(&mut c, "source[0]");
            let errors: Vec<String> = c.into_errors().iter().map(|e| e.to_string()).collect();
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].contains("carries a password in its query string"), "{errors:?}");
            assert!(!errors[0].contains("hunter2"), "{errors:?}");
        }
    }
}
