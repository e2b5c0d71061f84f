//! `kind = "graph"`: Microsoft 365 / Entra ID through Microsoft Graph v1.0.
//!
//! Recipients are the `smtp:` entries (any case) of `proxyAddresses` plus `mail`
//! of users (shared, room and equipment mailboxes are disabled users and stay),
//! mail-enabled groups and organisational contacts, kept only in the tenant's
//! verified Email domains, so guests' external addresses never enter.
//!
//! A full pass lists the three collections concurrently (`$top=999`, following
//! `@odata.nextLink` verbatim). With `incremental` (the default) it first asks
//! each collection's delta function for a `$deltatoken=latest` link, and later
//! runs replay only the changes from there; a delta link the service rejects,
//! or `full_sync_every` elapsing, brings back a full pass.

mod senders;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::http::{Auth, Http, Response, TokenRequest, TokenSource};
use super::jwt::{self, Alg, SigningKey};
use super::{Batch, Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind, Rejected};
use crate::secret::{Literal, SecretSource};
use crate::section::Checker;
use crate::state::Cache;

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

/// `kind = "graph"`: Microsoft 365 / Entra ID through Microsoft Graph.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSourceSpec {
    /// Tenant ID (GUID) or a verified domain such as `contoso.onmicrosoft.com`.
    pub tenant: String,
    /// The app registration's application (client) ID.
    pub client_id: String,
    #[serde(rename = "client_secret")]
    client_secret_literal: Option<Literal>,
    client_secret_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    #[serde(skip)]
    pub client_secret: Option<SecretSource>,
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
    #[serde(default = "crate::section::yes")]
    pub incremental: bool,
    /// Force a full pass this often in incremental mode (default 24h).
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub full_sync_every: Option<Duration>,
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub timeout: Option<Duration>,
    /// Publish `*.onmicrosoft.com` addresses too (their MX is Microsoft's, so
    /// by default they are left out).
    #[serde(default)]
    pub keep_onmicrosoft: bool,
    /// Read each Microsoft 365 group's `allowExternalSenders` and leave out
    /// the groups that refuse outside mail (default true).
    #[serde(default = "crate::section::yes")]
    pub check_external_senders: bool,
    /// Group addresses published even though the group refuses outside mail
    /// (or its setting cannot be read).
    #[serde(default)]
    pub external_senders_allowed: Vec<String>,
    /// Group addresses left out: groups that take mail only from inside the
    /// organisation where Graph cannot tell (distribution lists with
    /// RequireSenderAuthenticationEnabled, or an unreadable setting).
    #[serde(default)]
    pub external_senders_refused: Vec<String>,
    pub max_retries: Option<u32>,
    /// Test labs only: allow plain `http://` token and API endpoints.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl GraphSourceSpec {
    pub fn authority(&self) -> String {
        self.authority_url.clone().unwrap_or_else(|| self.cloud.endpoints().0.into()).trim_end_matches('/').into()
    }
    pub fn graph_root(&self) -> String {
        self.graph_url.clone().unwrap_or_else(|| self.cloud.endpoints().1.into()).trim_end_matches('/').into()
    }
    pub fn http(&self) -> super::http::HttpSettings {
        super::http::HttpSettings::new(&self.ca_file, self.connect_timeout, self.timeout, self.max_retries)
    }
}

impl GraphSourceSpec {
    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        let g = self;
        if g.tenant.trim().is_empty() || g.tenant.contains('/') {
            c.push(format!("{at}.tenant"), "must be the tenant ID or a verified domain of the tenant".into());
        }
        if g.client_id.trim().is_empty() {
            c.push(format!("{at}.client_id"), "is required (the app registration's application ID)".into());
        }
        g.client_secret = c.secret(
            at,
            "client_secret",
            g.client_secret_literal.take(),
            g.client_secret_file.take(),
            g.client_secret_env.take(),
        );
        c.abs_opt(&mut g.certificate_file);
        c.abs_opt(&mut g.private_key_file);
        c.abs_opt(&mut g.ca_file);
        match (&g.client_secret, &g.certificate_file, &g.private_key_file) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (None, None, None) => c.push(
                format!("{at}.client_secret"),
                "set client_secret (or _file/_env), or certificate_file and private_key_file".into(),
            ),
            (Some(_), _, _) => {
                c.push(format!("{at}.certificate_file"), "use either client_secret or a certificate, not both".into())
            }
            (None, _, _) => {
                c.push(format!("{at}.certificate_file"), "certificate_file and private_key_file go together".into())
            }
        }
        super::check_group_lists(c, at, &mut g.external_senders_allowed, &mut g.external_senders_refused);
        for (key, url) in [("authority_url", g.authority_url.clone()), ("graph_url", g.graph_url.clone())] {
            if let Some(u) = url {
                super::http::check_url(c, at, key, &u, g.allow_insecure_http);
            }
        }
    }
}

/// Default interval between forced full passes of an incremental source.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(24 * 3600);
/// 2: records carry the group type and `allowExternalSenders`.
const STATE_VERSION: u32 = 2;

#[derive(Debug, Clone)]
pub struct GraphSource {
    spec: GraphSourceSpec,
    cache: Option<Cache>,
}

/// The three directory collections that hold recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Users,
    Groups,
    Contacts,
}

const KINDS: [Kind; 3] = [Kind::Users, Kind::Groups, Kind::Contacts];

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Users => "users",
            Kind::Groups => "groups",
            Kind::Contacts => "contacts",
        }
    }
    fn select(self) -> &'static str {
        match self {
            Kind::Users => "id,userPrincipalName,mail,proxyAddresses",
            Kind::Groups => "id,displayName,mail,mailEnabled,groupTypes,proxyAddresses",
            Kind::Contacts => "id,displayName,mail,proxyAddresses",
        }
    }
    /// The application permission that reads this collection.
    fn permission(self) -> &'static str {
        match self {
            Kind::Users => "User.Read.All",
            Kind::Groups => "GroupMember.Read.All or Group.Read.All",
            Kind::Contacts => "OrgContact.Read.All",
        }
    }
    fn key(self, id: &str) -> String {
        format!("{}:{id}", &self.path()[..1])
    }
}

/// One directory object as Graph returns it (only the selected properties).
#[derive(Debug, Deserialize)]
struct Obj {
    id: String,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default, rename = "proxyAddresses")]
    proxy_addresses: Option<Vec<Option<String>>>,
    #[serde(default, rename = "userPrincipalName")]
    upn: Option<String>,
    #[serde(default, rename = "displayName")]
    display_name: Option<String>,
    #[serde(default, rename = "mailEnabled")]
    mail_enabled: Option<bool>,
    #[serde(default, rename = "groupTypes")]
    group_types: Option<Vec<Option<String>>>,
    #[serde(default, rename = "@removed")]
    removed: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(default, rename = "@odata.nextLink")]
    next: Option<String>,
    #[serde(default, rename = "@odata.deltaLink")]
    delta: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Domain {
    id: String,
    #[serde(default, rename = "isVerified")]
    is_verified: bool,
    #[serde(default, rename = "supportedServices")]
    supported_services: Vec<String>,
}

/// What one object contributes: a label for `why`, the `smtp:` values of
/// `proxyAddresses`, and `mail` when it is not among them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    label: String,
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    proxies: Vec<String>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    mail: Option<String>,
    /// A Microsoft 365 group (`groupTypes` has `Unified`).
    #[serde(rename = "u", default, skip_serializing_if = "std::ops::Not::not")]
    unified: bool,
    /// Its `allowExternalSenders`, once read.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    external: Option<bool>,
}

impl Record {
    /// Each value with the property it came from.
    fn values(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.proxies.iter().map(|v| (v.as_str(), "proxyAddresses")).chain(self.mail.as_deref().map(|m| (m, "mail")))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncState {
    version: u32,
    graph_root: String,
    tenant: String,
    client_id: String,
    full_at: u64,
    /// Delta link per collection path.
    links: BTreeMap<String, String>,
    objects: BTreeMap<String, Record>,
}

/// Maps one object to its record; None when it holds no recipient (a security
/// group, a user without mailbox).
fn record(kind: Kind, o: &Obj) -> Option<Record> {
    if kind == Kind::Groups && o.mail_enabled != Some(true) {
        return None;
    }
    let mut proxies: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for p in o.proxy_addresses.iter().flatten().flatten() {
        // `SMTP:` is the primary, `smtp:` a secondary; `SIP:`, `X500:`, `SPO:`,
        // `EUM:` … are not mail addresses.
        if let Some((prefix, addr)) = p.split_once(':')
            && prefix.trim().eq_ignore_ascii_case("smtp")
        {
            let addr = addr.trim();
            if !addr.is_empty() && seen.insert(addr.to_ascii_lowercase()) {
                proxies.push(addr.to_string());
            }
        }
    }
    let mail = o.mail.as_deref().map(str::trim).filter(|m| !m.is_empty() && !seen.contains(&m.to_ascii_lowercase()));
    if proxies.is_empty() && mail.is_none() {
        return None;
    }
    let name = match kind {
        Kind::Users => o.upn.as_deref(),
        _ => o.display_name.as_deref(),
    };
    let noun = match kind {
        Kind::Users => "user",
        Kind::Groups => "group",
        Kind::Contacts => "contact",
    };
    let label = match name {
        Some(n) => format!("{noun} {}", n.escape_debug()),
        None => format!("{noun} id {}", o.id.escape_debug()),
    };
    let unified =
        kind == Kind::Groups && o.group_types.iter().flatten().flatten().any(|t| t.eq_ignore_ascii_case("Unified"));
    Some(Record { label, proxies, mail: mail.map(str::to_string), unified, external: None })
}

/// The tenant's verified domains, by what Exchange Online does with them.
#[derive(Debug, Default, Clone)]
pub struct Domains {
    /// `supportedServices` has `Email`: Exchange Online knows every recipient.
    pub email: HashSet<String>,
    /// `EmailInternalRelayOnly` (a shared address space): recipients Exchange
    /// Online does not know are relayed on, so it accepts any recipient.
    pub relay: HashSet<String>,
}

/// Why an address in `*.onmicrosoft.com` is left out by default.
const ONMICROSOFT: &str = "is a *.onmicrosoft.com address, whose MX is Microsoft's own: mail to it never comes \
     through this backup MX (keep_onmicrosoft = true publishes it)";

/// Who may send to groups from outside: the lookups' result and the admin's
/// per-group lists (lowercased addresses).
#[derive(Debug, Default)]
pub struct GroupRules {
    pub lists: super::GroupLists,
    /// Whether `allowExternalSenders` was asked for.
    pub checked: bool,
    /// Why some groups' setting is unknown (Graph refused it, or the lookup failed).
    pub unread: Option<String>,
}

impl GroupRules {
    /// For a group's record: Err(reason) to leave it out, or Ok(note) to keep it
    /// with the note `why` shows.
    fn verdict(&self, r: &Record) -> Result<String, String> {
        if let Some(listed) = self.lists.decide(&r.values().map(|(v, _)| v).collect::<Vec<_>>()) {
            return listed;
        }
        match (r.unified, r.external) {
            (false, _) => Ok(String::new()),
            (true, Some(true)) => Ok(" (Microsoft 365 group, allowExternalSenders = true)".into()),
            (true, Some(false)) => Err("is an address of a Microsoft 365 group with allowExternalSenders = false: \
                 Exchange Online refuses mail to it from outside the organisation (external_senders_allowed \
                 publishes it)"
                .into()),
            (true, None) if !self.checked => Ok(" (Microsoft 365 group; check_external_senders = false)".into()),
            (true, None) => Ok(format!(
                " (Microsoft 365 group kept: its allowExternalSenders could not be read: {})",
                self.unread.as_deref().unwrap_or("not read yet")
            )),
        }
    }
}

/// Turns the object map into the fetch result: addresses in verified Email
/// domains (not `*.onmicrosoft.com` unless kept) of objects that take outside
/// mail, and each internal-relay domain as a catch-all, since the primary
/// accepts any recipient there.
fn finalize<'a>(
    objects: impl Iterator<Item = (&'a String, &'a Record)>,
    domains: &Domains,
    keep_onmicrosoft: bool,
    groups: &GroupRules,
) -> Batch {
    let mut out = Batch::default();
    let mut matched: HashSet<String> = HashSet::new();
    for (key, r) in objects {
        let verdict = if key.starts_with("g:") {
            for (v, _) in r.values() {
                matched.insert(v.to_ascii_lowercase());
            }
            groups.verdict(r)
        } else {
            Ok(String::new())
        };
        for (value, from) in r.values() {
            let note = verdict.as_deref().unwrap_or("");
            let locator = Locator::Object(format!("{} {from}{note}", r.label).into());
            // An invalid value goes on to validation, which refuses and reports
            // it; a valid one counts only in a verified domain.
            let reason = match crate::policy::address::parse_address(value) {
                _ if verdict.is_err() => verdict.clone().err(),
                Ok(e) if domains.relay.contains(e.domain()) => None,
                Ok(e) if !domains.email.contains(e.domain()) => {
                    Some(format!("domain {} is not a verified Email domain of the tenant", e.domain()))
                }
                Ok(e) if !keep_onmicrosoft && e.domain().ends_with(".onmicrosoft.com") => Some(ONMICROSOFT.into()),
                _ => None,
            };
            match reason {
                Some(reason) => out.left_out.push(Rejected { value: value.to_string(), locator, reason }),
                None => out.items.push(RawItem { value: value.to_string(), kind: RawKind::Address, locator }),
            }
        }
    }
    groups.lists.warn_unmatched(&matched, "mail-enabled group of the tenant");
    let mut relay: Vec<&String> = domains.relay.iter().collect();
    relay.sort();
    for d in relay {
        out.items.push(RawItem {
            value: format!("@{d}"),
            kind: RawKind::CatchAll,
            locator: Locator::Object(
                format!(
                    "domain {d}: supportedServices EmailInternalRelayOnly (a shared address space; Exchange Online \
                     accepts any recipient there and relays the unknown ones)"
                )
                .into(),
            ),
        });
    }
    out
}

/// Client credentials for the v2.0 token endpoint.
pub struct GraphCredentials {
    token_url: String,
    scope: String,
    client_id: String,
    tenant: String,
    secret: Option<SecretSource>,
    cert: Option<(SigningKey, String)>,
}

impl TokenSource for GraphCredentials {
    fn token_request(&self) -> Result<TokenRequest, String> {
        let mut form = vec![
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
            ("grant_type", "client_credentials".to_string()),
        ];
        if let Some(s) = &self.secret {
            let secret = s.resolve("client_secret").map_err(|e| e.to_string())?;
            form.push(("client_secret", secret.expose().to_string()));
        }
        if let Some((key, thumb)) = &self.cert {
            let now = crate::state::unix_now();
            let mut header = serde_json::Map::new();
            header.insert("x5t#S256".into(), thumb.clone().into());
            let claims = serde_json::json!({
                "aud": self.token_url,
                "iss": self.client_id,
                "sub": self.client_id,
                "jti": jwt::random_uuid(),
                "nbf": now,
                "iat": now,
                "exp": now + 600,
            });
            form.push(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string()));
            form.push(("client_assertion", key.sign(Alg::Ps256, header, &claims)?));
        }
        Ok((self.token_url.clone(), form))
    }

    fn explain(&self, status: u16, error: &str, description: &str) -> String {
        let code = description
            .find("AADSTS")
            .map(|at| description[at + 6..].chars().take_while(|c| c.is_ascii_digit()).collect::<String>())
            .unwrap_or_default();
        let (id, tenant) = (&self.client_id, &self.tenant);
        let remedy = match code.as_str() {
            "7000215" => format!(
                "the client secret is wrong or expired: create a new secret for app {id} and update client_secret"
            ),
            "7000222" => {
                format!("the client secret of app {id} has expired: create a new one and update client_secret")
            }
            "700016" => format!(
                "application {id} was not found in tenant {tenant}: check client_id and tenant, and that an admin has consented"
            ),
            "90002" | "900023" => {
                format!("tenant {tenant} was not found: check tenant (its ID or a verified domain) and cloud")
            }
            "700027" | "700024" | "7000274" | "700023" => format!(
                "the certificate assertion was refused: upload certificate_file's certificate to app {id} (Certificates & secrets), and check the clock"
            ),
            "70011" | "1002012" => "the scope was refused: check cloud / graph_url".to_string(),
            _ => String::new(),
        };
        let first_line = description.lines().next().unwrap_or("").trim();
        if remedy.is_empty() {
            format!("Microsoft identity platform refused the token ({status} {error}): {first_line}")
        } else {
            format!("Microsoft identity platform refused the token ({status} {error}, AADSTS{code}): {remedy}")
        }
    }
}

impl GraphSource {
    /// With a cache, a source with `incremental = true` uses delta queries.
    pub fn new(spec: GraphSourceSpec, cache: Option<Cache>) -> GraphSource {
        GraphSource { spec, cache }
    }

    fn auth(&self) -> Result<Auth<GraphCredentials>, String> {
        let cert = match (&self.spec.certificate_file, &self.spec.private_key_file) {
            (Some(c), Some(k)) => {
                let what = format!("certificate_file {}", c.display());
                let pem = std::fs::read(c).map_err(|e| format!("{what}: {e}"))?;
                let thumb = jwt::cert_thumbprint_s256(&pem, &what)?;
                let what = format!("private_key_file {}", k.display());
                crate::secure_fs::warn_if_readable_by_others(k, "private_key_file");
                let pem = std::fs::read(k).map_err(|e| format!("{what}: {e}"))?;
                Some((SigningKey::from_pem(&pem, &what)?, thumb))
            }
            _ => None,
        };
        Ok(Auth::new(GraphCredentials {
            token_url: format!("{}/{}/oauth2/v2.0/token", self.spec.authority(), self.spec.tenant),
            scope: format!("{}/.default", self.spec.graph_root()),
            client_id: self.spec.client_id.clone(),
            tenant: self.spec.tenant.clone(),
            secret: self.spec.client_secret.clone(),
            cert,
        }))
    }

    fn session(&self) -> Result<Session, SourceError> {
        let http = Http::new(&self.spec.http())?;
        let auth = self.auth().map_err(SourceError::new)?;
        Ok(Session {
            http,
            auth,
            root: self.spec.graph_root(),
            client_id: self.spec.client_id.clone(),
            check_external: self.spec.check_external_senders,
            unread: std::sync::Mutex::new(None),
        })
    }

    async fn fetch_inner(&self, s: &Session) -> Result<Batch, String> {
        let every = self.spec.full_sync_every.unwrap_or(FULL_SYNC_EVERY).as_secs();
        let state_file = self.cache.as_ref().filter(|_| self.spec.incremental);
        let prev = state_file.and_then(Cache::load::<SyncState>);
        let now = crate::state::unix_now();
        let reason = match &prev {
            _ if state_file.is_none() => None,
            None => Some("no previous sync state"),
            Some(p) if p.version != STATE_VERSION => Some("sync state from another version"),
            Some(p) if p.graph_root != s.root || p.tenant != self.spec.tenant || p.client_id != s.client_id => {
                Some("tenant, client_id or graph_url changed")
            }
            Some(p) if KINDS.iter().any(|k| !p.links.contains_key(k.path())) => Some("a delta link is missing"),
            Some(p) if now.saturating_sub(p.full_at) >= every => Some("full_sync_every elapsed"),
            Some(_) => None,
        };
        let incremental = state_file.is_some();
        let work = async {
            if let (true, None, Some(prev)) = (incremental, reason, prev) {
                match s.apply_deltas(&prev).await {
                    Ok((changes, links)) => {
                        let mut prev = prev;
                        for (key, rec) in changes {
                            match rec {
                                Some(r) => prev.objects.insert(key, r),
                                None => prev.objects.remove(&key),
                            };
                        }
                        // Changed groups came without their setting.
                        s.fill_external(&mut prev.objects).await;
                        return Ok(SyncState { links, ..prev });
                    }
                    Err(DeltaError::Rejected(why)) => {
                        tracing::warn!(graph = %s.root, reason = %why, "delta link rejected; falling back to a full sync");
                    }
                    Err(DeltaError::Failed(e)) => return Err(e),
                }
            } else if let Some(r) = reason {
                tracing::info!(graph = %s.root, reason = r, "full sync");
            }
            let (objects, links) = s.full(incremental).await?;
            Ok(SyncState {
                version: STATE_VERSION,
                graph_root: s.root.clone(),
                tenant: self.spec.tenant.clone(),
                client_id: s.client_id.clone(),
                full_at: now,
                links,
                objects,
            })
        };
        let (domains, state) = tokio::try_join!(s.domains(), work)?;
        for d in &domains.relay {
            tracing::warn!(graph = %s.root, domain = %d, "internal relay domain (EmailInternalRelayOnly): published as a catch-all, since Exchange Online accepts any recipient there");
        }
        let groups = GroupRules {
            lists: super::GroupLists::new(&self.spec.external_senders_allowed, &self.spec.external_senders_refused),
            checked: s.check_external,
            unread: s.unread.lock().map(|u| u.clone()).unwrap_or_default(),
        };
        Ok(self.save_and_finalize(state, &domains, &groups))
    }

    /// Saves the state (in incremental mode) while building the result.
    fn save_and_finalize(&self, state: SyncState, domains: &Domains, groups: &GroupRules) -> Batch {
        std::thread::scope(|scope| {
            if let (Some(cache), true) = (&self.cache, self.spec.incremental && !state.links.is_empty()) {
                scope.spawn(|| cache.save(&state, "Graph"));
            }
            finalize(state.objects.iter(), domains, self.spec.keep_onmicrosoft, groups)
        })
    }
}

/// One run's client, token cache and Graph root.
struct Session {
    http: Http,
    auth: Auth<GraphCredentials>,
    root: String,
    client_id: String,
    /// Read Microsoft 365 groups' `allowExternalSenders`.
    check_external: bool,
    /// Why some groups' setting is unknown this run (for `why`).
    unread: std::sync::Mutex<Option<String>>,
}

/// Object key and its new record; None = the object no longer holds recipients.
type Changes = Vec<(String, Option<Record>)>;

enum DeltaError {
    /// The service refused a stored delta link (expired token, resync needed).
    Rejected(String),
    /// Anything else: the source fails.
    Failed(String),
}

impl From<String> for DeltaError {
    fn from(e: String) -> DeltaError {
        DeltaError::Failed(e)
    }
}

impl DeltaError {
    fn message(self) -> String {
        match self {
            DeltaError::Rejected(m) | DeltaError::Failed(m) => m,
        }
    }
}

impl Session {
    /// Reads `allowExternalSenders` of the Microsoft 365 groups in `objects`
    /// that do not have it yet, warning once when Graph refuses it.
    async fn fill_external(&self, objects: &mut BTreeMap<String, Record>) {
        if !self.check_external {
            return;
        }
        let ids: Vec<String> = objects
            .iter()
            .filter(|(_, r)| r.unified && r.external.is_none())
            .filter_map(|(k, _)| k.strip_prefix("g:").map(str::to_string))
            .collect();
        if ids.is_empty() {
            return;
        }
        let asked = ids.len();
        let lookup = self.external_senders(ids).await;
        let read = lookup.values.len();
        for (id, v) in lookup.values {
            if let Some(r) = objects.get_mut(&Kind::Groups.key(&id)) {
                r.external = Some(v);
            }
        }
        tracing::debug!(graph = %self.root, asked, read, "allowExternalSenders of Microsoft 365 groups");
        let unread = match (lookup.refused, lookup.failed) {
            (Some(why), _) => {
                tracing::warn!(graph = %self.root, reason = %why, unread = asked - read, "Graph refuses to tell whether Microsoft 365 groups take outside mail (allowExternalSenders); those groups are kept (list the closed ones in external_senders_refused)");
                format!("Graph refused it: {why}")
            }
            (None, Some((n, why))) => {
                tracing::warn!(graph = %self.root, groups = n, reason = %why, "allowExternalSenders could not be read; those Microsoft 365 groups are kept and asked again next run");
                format!("the lookup failed: {why}")
            }
            (None, None) => return,
        };
        if let Ok(mut u) = self.unread.lock() {
            *u = Some(unread);
        }
    }

    async fn get(&self, url: &str) -> Result<Response, String> {
        // Follow links only on the Graph host: a link elsewhere would carry the
        // bearer token to a stranger.
        if !same_origin(url, &self.root) {
            return Err(format!("Graph returned a link outside {}: refusing to follow it", self.root));
        }
        self.http.get(url, &self.auth, &[]).await
    }

    /// Explains a Graph error response for `kind` (or the domains list).
    fn api_error(&self, r: &Response, what: &str, permission: &str) -> String {
        let e = super::http::ApiError::parse(&r.body);
        let status = r.status.as_u16();
        let detail = if e.code.is_empty() { r.excerpt() } else { format!("{}: {}", e.code, e.message) };
        let remedy = match status {
            401 => " (the access token was refused twice: check that the app's credentials belong to this tenant and cloud)".to_string(),
            403 => format!(
                " (app {} lacks the application permission {permission} or Directory.Read.All, or an admin has not consented)",
                self.client_id
            ),
            _ => String::new(),
        };
        format!("reading {what} from {}: {status} {detail}{remedy}", r.what)
    }

    /// The tenant's verified domains with the Email service (or internal relay
    /// only), lowercased.
    async fn domains(&self) -> Result<Domains, String> {
        let url = format!("{}/v1.0/domains?$select=id,isVerified,supportedServices", self.root);
        let page = |url: String| async move {
            let r = self.get(&url).await?;
            if !r.ok() {
                return Err(self.api_error(&r, "domains", "Domain.Read.All"));
            }
            Ok(r)
        };
        let mut set = Domains::default();
        let decode = |r: &Response| {
            for d in r.json::<Page<Domain>>()?.value.into_iter().filter(|d| d.is_verified) {
                let has = |svc: &str| d.supported_services.iter().any(|s| s.eq_ignore_ascii_case(svc));
                // Compared with addresses' normalised (IDNA, lowercase) domains.
                let name = crate::policy::address::parse_domain(&d.id).unwrap_or_else(|_| d.id.to_ascii_lowercase());
                if has("EmailInternalRelayOnly") {
                    set.relay.insert(name);
                } else if has("Email") {
                    set.email.insert(name);
                }
            }
            Ok(())
        };
        let next = |r: &Response| Ok(r.json::<Page<Domain>>()?.next);
        let first = page(url.clone()).await?;
        super::http::follow("domains", Some(url), first, next, page, decode).await?;
        if set.email.is_empty() && set.relay.is_empty() {
            return Err(format!(
                "{}/v1.0/domains lists no verified domain with the Email service; every address would be dropped",
                self.root
            ));
        }
        Ok(set)
    }

    /// Follows a page chain from `url`, handing each page's objects to `each`.
    /// Returns the delta link of the last page, if any. The next page is
    /// requested as soon as this page's link is known, and this page's objects
    /// are decoded while that request travels.
    /// A 410 Gone on any page of a delta chain rejects the stored delta link
    /// (the caller starts a full pass); every other failure fails the source.
    async fn chain(&self, kind: Kind, url: String, mut each: impl FnMut(Obj)) -> Result<Option<String>, DeltaError> {
        /// Only the links; serde skips `value` without building it.
        #[derive(Deserialize)]
        struct Links {
            #[serde(default, rename = "@odata.nextLink")]
            next: Option<String>,
            #[serde(default, rename = "@odata.deltaLink")]
            delta: Option<String>,
        }
        let mut decode = |r: &Response| -> Result<(), DeltaError> {
            let page: Page<Obj> = r.json()?;
            page.value.into_iter().for_each(&mut each);
            Ok(())
        };
        let page = |url: String| async move {
            let r = self.get(&url).await?;
            match r.status.as_u16() {
                410 => Err(DeltaError::Rejected(self.api_error(&r, kind.path(), kind.permission()))),
                _ if !r.ok() => Err(DeltaError::Failed(self.api_error(&r, kind.path(), kind.permission()))),
                _ => Ok(r),
            }
        };
        let first = page(url.clone()).await?;
        let mut delta = None;
        let next = |r: &Response| -> Result<Option<String>, DeltaError> {
            let links: Links = r.json()?;
            if links.next.is_none() {
                delta = links.delta;
            }
            Ok(links.next)
        };
        super::http::follow(kind.path(), Some(url), first, next, page, &mut decode).await?;
        Ok(delta)
    }

    /// A full listing of all three collections, concurrently. With `links`, also
    /// takes each collection's current delta link first, so that a change made
    /// during the listing is replayed by the next incremental run.
    async fn full(&self, links: bool) -> Result<(BTreeMap<String, Record>, BTreeMap<String, String>), String> {
        let one = |kind: Kind| async move {
            let link = if links {
                let url =
                    format!("{}/v1.0/{}/delta?$select={}&$deltatoken=latest", self.root, kind.path(), kind.select());
                let link = self.chain(kind, url, |_| {}).await.map_err(DeltaError::message)?;
                Some(link.ok_or_else(|| format!("{}/delta returned no @odata.deltaLink", kind.path()))?)
            } else {
                None
            };
            let filter = if kind == Kind::Groups { "&$filter=mailEnabled%20eq%20true" } else { "" };
            let url = format!("{}/v1.0/{}?$select={}{filter}&$top=999", self.root, kind.path(), kind.select());
            // Built while the next page travels, not after the last one.
            let mut objects = BTreeMap::new();
            let mut count = 0usize;
            self.chain(kind, url, |o| {
                count += 1;
                if let Some(r) = record(kind, &o) {
                    objects.insert(kind.key(&o.id), r);
                }
            })
            .await
            .map_err(DeltaError::message)?;
            tracing::debug!(collection = kind.path(), objects = count, "listed");
            if kind == Kind::Groups {
                self.fill_external(&mut objects).await;
            }
            Ok::<_, String>((objects, link))
        };
        let (u, g, c) = tokio::try_join!(one(Kind::Users), one(Kind::Groups), one(Kind::Contacts))?;
        let mut objects = BTreeMap::new();
        let mut out_links = BTreeMap::new();
        for (kind, (mut objs, link)) in KINDS.into_iter().zip([u, g, c]) {
            objects.append(&mut objs);
            if let Some(l) = link {
                out_links.insert(kind.path().to_string(), l);
            }
        }
        tracing::info!(graph = %self.root, objects = objects.len(), requests = self.http.requests(), "full sync");
        Ok((objects, out_links))
    }

    /// The changes since the stored delta links, in order, and the new links.
    async fn apply_deltas(&self, prev: &SyncState) -> Result<(Changes, BTreeMap<String, String>), DeltaError> {
        let one = |kind: Kind| async move {
            let url = prev.links.get(kind.path()).cloned().unwrap_or_default();
            // A refused first request means the stored token is no longer valid.
            let first = self.get(&url).await.map_err(DeltaError::Failed)?;
            let s = first.status.as_u16();
            if (400..500).contains(&s) && !matches!(s, 401 | 403 | 429) {
                return Err(DeltaError::Rejected(self.api_error(&first, kind.path(), kind.permission())));
            }
            if !first.ok() {
                return Err(DeltaError::Failed(self.api_error(&first, kind.path(), kind.permission())));
            }
            let page: Page<Obj> = first.json().map_err(DeltaError::Failed)?;
            let mut changes: Vec<(String, Option<Record>)> = Vec::new();
            let mut take = |o: Obj| {
                let rec = if o.removed.is_some() { None } else { record(kind, &o) };
                changes.push((kind.key(&o.id), rec));
            };
            for o in page.value {
                take(o);
            }
            let link = match (page.next, page.delta) {
                (Some(next), _) => self.chain(kind, next, take).await?,
                (None, delta) => delta,
            };
            let link =
                link.ok_or_else(|| DeltaError::Failed(format!("{}/delta returned no @odata.deltaLink", kind.path())))?;
            Ok((changes, link))
        };
        let (u, g, c) = tokio::try_join!(one(Kind::Users), one(Kind::Groups), one(Kind::Contacts))?;
        let mut all = Vec::new();
        let mut links = BTreeMap::new();
        for (kind, (changes, link)) in KINDS.into_iter().zip([u, g, c]) {
            all.extend(changes);
            links.insert(kind.path().to_string(), link);
        }
        tracing::info!(graph = %self.root, changes = all.len(), requests = self.http.requests(), "incremental sync");
        Ok((all, links))
    }
}

/// Whether `url` is on the same scheme and host (and port) as `root`.
fn same_origin(url: &str, root: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(root)) {
        (Ok(a), Ok(b)) => {
            a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
        }
        _ => false,
    }
}

impl Connector for GraphSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let s = self.session()?;
        self.fetch_inner(&s).await.map(Fetched::Ready).map_err(SourceError::new)
    }

    async fn check(&self) -> Result<String, SourceError> {
        let s = self.session()?;
        let domains = s.domains().await.map_err(SourceError::new)?;
        let mut names: Vec<_> = domains.email.into_iter().chain(domains.relay).collect();
        names.sort();
        Ok(format!("tenant {}: token OK, verified Email domains: {}", self.spec.tenant, names.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(json: serde_json::Value) -> Obj {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_smtp_proxy_addresses_and_mail_count() {
        let o = obj(serde_json::json!({
            "id": "1", "userPrincipalName": "AdeleV@contoso.com", "mail": "AdeleV@contoso.com",
            "proxyAddresses": ["SMTP:AdeleV@contoso.com", "smtp:adele.vance@contoso.com", "sMtP: spaced@contoso.com",
                "SIP:AdeleV@contoso.com", "X500:/o=ExchangeLabs/cn=Recipients", "SPO:SPO_x@SPO_y", "EUM:123;phone-context=x", null],
            "otherMails": ["adele.personal@gmail.com"]
        }));
        let r = record(Kind::Users, &o).unwrap();
        let values: Vec<&str> = r.values().map(|(v, _)| v).collect();
        assert_eq!(values, ["AdeleV@contoso.com", "adele.vance@contoso.com", "spaced@contoso.com"]);
        assert_eq!(r.label, "user AdeleV@contoso.com");
    }

    #[test]
    fn security_groups_and_mailless_users_hold_no_recipient() {
        let g = obj(
            serde_json::json!({"id": "g", "displayName": "SG", "mail": null, "mailEnabled": false, "proxyAddresses": []}),
        );
        assert!(record(Kind::Groups, &g).is_none());
        let g = obj(serde_json::json!({"id": "g", "displayName": "DL", "mail": "dl@contoso.com", "mailEnabled": true}));
        assert_eq!(record(Kind::Groups, &g).unwrap().values().count(), 1);
        let u = obj(
            serde_json::json!({"id": "u", "userPrincipalName": "admin@x.onmicrosoft.com", "mail": null, "proxyAddresses": []}),
        );
        assert!(record(Kind::Users, &u).is_none());
    }

    #[test]
    fn unverified_domains_are_left_out_with_the_reason() {
        let recs: BTreeMap<String, Record> = [(
            "u:1".to_string(),
            Record {
                label: "user john_fabrikam.com#EXT#@contoso.onmicrosoft.com".into(),
                proxies: vec!["John@Contoso.com".into()],
                mail: Some("john@fabrikam.com".into()),
                unified: false,
                external: None,
            },
        )]
        .into();
        let domains = Domains { email: ["contoso.com".to_string()].into(), relay: HashSet::new() };
        let f = finalize(recs.iter(), &domains, false, &GroupRules::default());
        assert_eq!(f.items.len(), 1);
        assert_eq!(f.items[0].value, "John@Contoso.com");
        assert_eq!(
            f.items[0].locator.to_string(),
            "user john_fabrikam.com#EXT#@contoso.onmicrosoft.com proxyAddresses"
        );
        assert_eq!(f.left_out.len(), 1);
        assert!(f.left_out[0].reason.contains("fabrikam.com is not a verified Email domain"));
    }

    /// Microsoft 365 groups that refuse outside mail are left out; the admin's
    /// lists decide for any group; unread settings keep the group and say why.
    #[test]
    fn group_sender_rules() {
        let group = |addr: &str, unified: bool, external: Option<bool>| Record {
            label: format!("group {addr}"),
            proxies: vec![addr.into()],
            mail: None,
            unified,
            external,
        };
        let recs: BTreeMap<String, Record> = [
            ("g:open", group("open@contoso.com", true, Some(true))),
            ("g:closed", group("closed@contoso.com", true, Some(false))),
            ("g:unread", group("unread@contoso.com", true, None)),
            ("g:dl", group("dl@contoso.com", false, None)),
            ("g:internal-dl", group("internal-dl@contoso.com", false, None)),
            ("g:exception", group("exception@contoso.com", true, Some(false))),
            ("u:user", Record { label: "user u".into(), ..group("internal-dl-owner@contoso.com", false, None) }),
        ]
        .into_iter()
        .map(|(k, r)| (k.to_string(), r))
        .collect();
        let domains = Domains { email: ["contoso.com".to_string()].into(), relay: HashSet::new() };
        let rules = GroupRules {
            lists: super::super::GroupLists {
                allowed: ["exception@contoso.com".to_string()].into(),
                refused: ["internal-dl@contoso.com".to_string()].into(),
            },
            checked: true,
            unread: Some("Graph refused it: 403 ErrorAccessDenied".into()),
        };
        let f = finalize(recs.iter(), &domains, false, &rules);
        let mut kept: Vec<(&str, String)> = f.items.iter().map(|i| (i.value.as_str(), i.locator.to_string())).collect();
        kept.sort();
        let kept_values: Vec<&str> = kept.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            kept_values,
            [
                "dl@contoso.com",
                "exception@contoso.com",
                "internal-dl-owner@contoso.com",
                "open@contoso.com",
                "unread@contoso.com"
            ]
        );
        assert!(kept[1].1.ends_with("(external_senders_allowed)"), "{kept:?}");
        assert!(kept[3].1.ends_with("allowExternalSenders = true)"), "{kept:?}");
        assert!(kept[4].1.contains("could not be read: Graph refused it: 403 ErrorAccessDenied"), "{kept:?}");
        let left: BTreeMap<&str, &str> = f.left_out.iter().map(|r| (r.value.as_str(), r.reason.as_str())).collect();
        assert!(left["closed@contoso.com"].contains("allowExternalSenders = false"), "{left:?}");
        assert!(left["internal-dl@contoso.com"].contains("external_senders_refused"), "{left:?}");
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn token_errors_name_the_remedy_not_the_secret() {
        let c = GraphCredentials {
            token_url: "u".into(),
            scope: "s".into(),
            client_id: "app-1".into(),
            tenant: "contoso.onmicrosoft.com".into(),
            secret: Some(SecretSource::Literal("hunter2-secret".into())),
            cert: None,
        };
        let e = c.explain(401, "invalid_client", "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: x");
        assert!(e.contains("client secret is wrong or expired") && e.contains("app-1"), "{e}");
        assert!(!e.contains("hunter2"));
        let e = c.explain(400, "invalid_request", "AADSTS90002: Tenant 'x' not found.");
        assert!(e.contains("tenant contoso.onmicrosoft.com was not found"), "{e}");
        let e = c.explain(400, "weird", "AADSTS1: Something.\r\nTrace ID: y");
        assert!(e.ends_with("AADSTS1: Something."), "{e}");
        let (_, form) = c.token_request().unwrap();
        assert!(form.iter().any(|(k, v)| *k == "client_secret" && v == "hunter2-secret"));
    }

    /// Whatever a Graph page holds, decoding fails cleanly or yields records
    /// whose validated addresses are plain ones.
    #[test]
    fn fuzz_graph_pages() {
        let domains = Domains {
            email: ["contoso.com".to_string(), "contoso.onmicrosoft.com".to_string()].into(),
            relay: ["shared.contoso.com".to_string()].into(),
        };
        crate::fuzz::run("graph", |input| {
            let Ok(page) = serde_json::from_slice::<Page<Obj>>(input) else { return Ok(()) };
            let mut recs = BTreeMap::new();
            for o in &page.value {
                for kind in KINDS {
                    if let Some(r) = record(kind, o) {
                        recs.insert(kind.key(&o.id), r);
                    }
                }
            }
            let rules = GroupRules { checked: true, ..GroupRules::default() };
            let f = finalize(recs.iter(), &domains, true, &rules);
            crate::fuzz::check_validated(f.items)
        });
    }

    #[test]
    fn links_are_followed_only_on_the_graph_host() {
        assert!(same_origin("https://graph.microsoft.com/v1.0/users?$skiptoken=x", "https://graph.microsoft.com"));
        assert!(!same_origin("https://evil.example/v1.0/users", "https://graph.microsoft.com"));
        assert!(!same_origin("http://graph.microsoft.com/v1.0/users", "https://graph.microsoft.com"));
        assert!(same_origin("http://127.0.0.1:8080/v1.0/x", "http://127.0.0.1:8080"));
        assert!(!same_origin("http://127.0.0.1:8081/v1.0/x", "http://127.0.0.1:8080"));
    }
}
