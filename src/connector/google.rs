//! `kind = "google"`: Google Workspace through the Admin SDK Directory API.
//!
//! A service account with domain-wide delegation impersonates `subject` (an
//! admin) with read-only scopes. Recipients are users' `primaryEmail`,
//! `aliases` and `nonEditableAliases` and the same of groups, kept only in the
//! customer's verified domains and domain aliases. Suspended and archived
//! users are left out (Google rejects mail to them), and so are Google's
//! internal `*.test-google-a.com` routing aliases. The Directory API has no
//! delta query: every run lists users (500 a page) and groups (200 a page)
//! concurrently.

mod settings;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::http::{Auth, Http, Response, TokenRequest, TokenSource};
use super::jwt::{Alg, SigningKey};
use super::{Batch, Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind, Rejected};
use crate::section::Checker;

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
    /// Root of the Groups Settings API (who may post to a group).
    #[serde(default = "default_settings_api")]
    pub settings_api_url: String,
    /// Read each group's `whoCanPostMessage` and leave out the groups that
    /// refuse outside mail (default true; needs the `apps.groups.settings` scope).
    #[serde(default = "crate::section::yes")]
    pub check_external_senders: bool,
    /// Group addresses published whatever their posting setting.
    #[serde(default)]
    pub external_senders_allowed: Vec<String>,
    /// Group addresses left out: groups closed to outside mail where the
    /// setting cannot be read.
    #[serde(default)]
    pub external_senders_refused: Vec<String>,
    pub ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub timeout: Option<Duration>,
    /// Keep suspended users: Google rejects their mail unless the admin routes
    /// it elsewhere (a routing rule for suspended users); then say so here.
    #[serde(default)]
    pub keep_suspended: bool,
    pub max_retries: Option<u32>,
    /// Test labs only: allow plain `http://` token and API endpoints (the key
    /// file's `token_uri` included).
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl GoogleSourceSpec {
    pub fn http(&self) -> super::http::HttpSettings {
        super::http::HttpSettings::new(&self.ca_file, self.connect_timeout, self.timeout, self.max_retries)
    }
}

fn default_customer() -> String {
    "my_customer".into()
}

fn default_google_api() -> String {
    "https://admin.googleapis.com".into()
}

fn default_settings_api() -> String {
    "https://www.googleapis.com".into()
}

impl GoogleSourceSpec {
    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        self.credentials_file = c.abs(std::mem::take(&mut self.credentials_file));
        c.abs_opt(&mut self.ca_file);
        if !self.subject.contains('@') {
            c.push(format!("{at}.subject"), "must be the email address of the admin to impersonate".into());
        }
        if self.customer.trim().is_empty() {
            c.push(format!("{at}.customer"), "must not be empty (the default is my_customer)".into());
        }
        super::http::check_url(c, at, "api_url", &self.api_url, self.allow_insecure_http);
        super::http::check_url(c, at, "settings_api_url", &self.settings_api_url, self.allow_insecure_http);
        super::check_group_lists(c, at, &mut self.external_senders_allowed, &mut self.external_senders_refused);
    }
}

/// Read-only scopes the delegation must grant.
pub const SCOPES: [&str; 3] = [
    "https://www.googleapis.com/auth/admin.directory.user.readonly",
    "https://www.googleapis.com/auth/admin.directory.group.readonly",
    "https://www.googleapis.com/auth/admin.directory.domain.readonly",
];
const ROUTING_SUFFIX: &str = ".test-google-a.com";

#[derive(Debug, Clone)]
pub struct GoogleSource {
    spec: GoogleSourceSpec,
}

/// The fields of a service-account key file used here. No Debug: it holds the key.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type", default)]
    kind: String,
    client_email: String,
    #[serde(default)]
    client_id: String,
    private_key: String,
    #[serde(default)]
    private_key_id: String,
    #[serde(default)]
    token_uri: String,
}

pub struct GoogleCredentials {
    /// The scopes this token asks for, space-separated.
    scopes: String,
    token_uri: String,
    client_email: String,
    client_id: String,
    subject: String,
    key_id: String,
    key: SigningKey,
}

impl TokenSource for GoogleCredentials {
    fn token_request(&self) -> Result<TokenRequest, String> {
        let now = crate::state::unix_now();
        let mut header = serde_json::Map::new();
        if !self.key_id.is_empty() {
            header.insert("kid".into(), self.key_id.clone().into());
        }
        let claims = serde_json::json!({
            "iss": self.client_email,
            "sub": self.subject,
            "scope": self.scopes,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3500,
        });
        let assertion = self.key.sign(Alg::Rs256, header, &claims)?;
        Ok((
            self.token_uri.clone(),
            vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string()), ("assertion", assertion)],
        ))
    }

    fn explain(&self, status: u16, error: &str, description: &str) -> String {
        let remedy = match error {
            "unauthorized_client" => format!(
                "domain-wide delegation is missing these scopes: {} for client ID {} (Admin console → Security → \
                 API controls → Domain-wide delegation; changes can take up to 24 hours)",
                self.scopes.replace(' ', ","),
                self.client_id
            ),
            "invalid_grant" if description.contains("JWT") => {
                format!("the signed assertion was refused ({description}): check this machine's clock (NTP)")
            }
            "invalid_grant" => format!(
                "{description}: check that subject {} is an existing admin of the Workspace domain",
                self.subject
            ),
            "invalid_client" => format!(
                "the key in credentials_file is not accepted (deleted or disabled key of {}): create a new key",
                self.client_email
            ),
            _ => description.lines().next().unwrap_or("").to_string(),
        };
        format!("Google refused the token ({status} {error}): {remedy}")
    }
}

#[derive(Debug, Deserialize)]
struct UsersPage {
    #[serde(default)]
    users: Vec<Member>,
}

#[derive(Debug, Deserialize)]
struct GroupsPage {
    #[serde(default)]
    groups: Vec<Member>,
}

/// A user or a group: the fields that hold addresses.
#[derive(Debug, Deserialize)]
struct Member {
    #[serde(default, rename = "primaryEmail")]
    primary_email: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    aliases: Vec<Option<String>>,
    #[serde(default, rename = "nonEditableAliases")]
    non_editable_aliases: Vec<Option<String>>,
    #[serde(default)]
    suspended: bool,
    #[serde(default)]
    archived: bool,
}

#[derive(Debug, Deserialize)]
struct DomainsPage {
    #[serde(default)]
    domains: Vec<DomainEntry>,
}

#[derive(Debug, Deserialize)]
struct DomainEntry {
    #[serde(rename = "domainName")]
    domain_name: String,
    #[serde(default)]
    verified: bool,
    #[serde(default, rename = "domainAliases")]
    domain_aliases: Vec<DomainAlias>,
}

#[derive(Debug, Deserialize)]
struct DomainAlias {
    #[serde(rename = "domainAliasName")]
    domain_alias_name: String,
    #[serde(default)]
    verified: bool,
}

/// Whether a user receives mail: Ok, or Err(reason) for the whole user.
fn user_verdict(m: &Member, keep_suspended: bool) -> Result<String, String> {
    if m.suspended && !keep_suspended {
        Err("user is suspended: Google rejects mail to suspended users (keep_suspended = true if you route it elsewhere)"
            .to_string())
    } else if m.archived {
        Err("user is archived: archived users receive no mail".to_string())
    } else {
        Ok(String::new())
    }
}

/// Who may send to groups from outside: the settings read and the admin's
/// per-group lists (lowercased addresses).
#[derive(Debug, Default)]
struct GroupRules {
    lists: super::GroupLists,
    checked: bool,
    postings: std::collections::HashMap<String, settings::Posting>,
    /// Why some groups' setting is unknown.
    unread: Option<String>,
}

impl GroupRules {
    /// Ok(note for `why`) to keep a group, Err(reason) to leave it out.
    fn verdict(&self, g: &Member) -> Result<String, String> {
        let values = g.email.iter().chain(g.aliases.iter().flatten()).chain(g.non_editable_aliases.iter().flatten());
        if let Some(listed) = self.lists.decide(&values.map(String::as_str).collect::<Vec<_>>()) {
            return listed;
        }
        if !self.checked {
            return Ok(String::new());
        }
        match g.email.as_ref().and_then(|e| self.postings.get(e)) {
            Some(p) => p.verdict(),
            None => Ok(format!(
                " (group kept: its whoCanPostMessage could not be read: {})",
                self.unread.as_deref().unwrap_or("no answer")
            )),
        }
    }
}

/// Adds one member's addresses to `out`, or to `left_out` with the reason,
/// a user as its suspension and archival say.
fn take(out: &mut Batch, noun: &str, m: &Member, domains: &HashSet<String>, keep_suspended: bool) {
    take_as(out, noun, m, domains, &user_verdict(m, keep_suspended));
}

/// Adds one member's addresses to `out` with the note of `verdict`, or all
/// to `left_out` with its reason.
fn take_as(out: &mut Batch, noun: &str, m: &Member, domains: &HashSet<String>, verdict: &Result<String, String>) {
    let Some(primary) = m.primary_email.as_deref().or(m.email.as_deref()) else { return };
    let primary_key = if noun == "user" { "primaryEmail" } else { "email" };
    let label = format!("{noun} {}", primary.escape_debug());
    let whole = verdict.clone().err();
    let note = verdict.as_deref().unwrap_or("");
    let values = std::iter::once((primary, primary_key))
        .chain(m.aliases.iter().flatten().map(|a| (a.as_str(), "aliases")))
        .chain(m.non_editable_aliases.iter().flatten().map(|a| (a.as_str(), "nonEditableAliases")));
    for (value, from) in values {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        let locator = Locator::Object(format!("{label} {from}{note}").into());
        // An invalid value goes on to validation, which refuses and reports it.
        let parsed = crate::policy::address::parse_address(value);
        let reason = match parsed.as_ref().map(|e| e.domain()) {
            _ if whole.is_some() => whole.clone(),
            Ok(d) if d.ends_with(ROUTING_SUFFIX) => Some("Google-internal routing alias (*.test-google-a.com)".into()),
            Ok(d) if !domains.contains(d) => {
                Some(format!("domain {d} is not a verified domain or domain alias of the customer"))
            }
            _ => None,
        };
        match reason {
            Some(reason) => out.left_out.push(Rejected { value: value.to_string(), locator, reason }),
            None => out.items.push(RawItem { value: value.to_string(), kind: RawKind::Address, locator }),
        }
    }
}

impl GoogleSource {
    pub fn new(spec: GoogleSourceSpec) -> GoogleSource {
        GoogleSource { spec }
    }

    fn session(&self) -> Result<Session, SourceError> {
        let what = format!("credentials_file {}", self.spec.credentials_file.display());
        crate::secure_fs::warn_if_readable_by_others(&self.spec.credentials_file, "credentials_file");
        let text = std::fs::read(&self.spec.credentials_file).map_err(|e| SourceError::new(format!("{what}: {e}")))?;
        let key: KeyFile = serde_json::from_slice(&text).map_err(|e| {
            // serde_json's message names the field, never the value.
            SourceError::new(format!("{what}: not a service-account key file: {e}"))
        })?;
        if key.kind != "service_account" {
            return Err(SourceError::new(format!(
                "{what}: type is {:?}, expected \"service_account\" (create a JSON key for a service account)",
                key.kind
            )));
        }
        let token_uri =
            if key.token_uri.is_empty() { "https://oauth2.googleapis.com/token".to_string() } else { key.token_uri };
        super::http::endpoint_allowed(&token_uri, self.spec.allow_insecure_http)
            .map_err(|e| SourceError::new(format!("{what}: token_uri {e}")))?;
        let http = Http::new(&self.spec.http())?;
        // Two tokens from one key: the directory scopes, and the Groups
        // Settings scope (delegation may grant the first without the second).
        let credentials = |scopes: String| -> Result<GoogleCredentials, SourceError> {
            Ok(GoogleCredentials {
                scopes,
                token_uri: token_uri.clone(),
                client_email: key.client_email.clone(),
                client_id: key.client_id.clone(),
                subject: self.spec.subject.clone(),
                key_id: key.private_key_id.clone(),
                key: SigningKey::from_pem(key.private_key.as_bytes(), &format!("{what}: private_key"))
                    .map_err(SourceError::new)?,
            })
        };
        let auth = Auth::new(credentials(SCOPES.join(" "))?);
        let settings_auth = Auth::new(credentials(settings::SETTINGS_SCOPE.to_string())?);
        let api = format!("{}/admin/directory/v1", self.spec.api_url.trim_end_matches('/'));
        Ok(Session {
            http,
            auth,
            settings_auth,
            api,
            settings_api: self.spec.settings_api_url.trim_end_matches('/').to_string(),
            customer: self.spec.customer.clone(),
            subject: self.spec.subject.clone(),
        })
    }
}

struct Session {
    http: Http,
    auth: Auth<GoogleCredentials>,
    /// For the Groups Settings API.
    settings_auth: Auth<GoogleCredentials>,
    api: String,
    settings_api: String,
    customer: String,
    subject: String,
}

impl Session {
    async fn get(&self, url: &reqwest::Url, what: &str) -> Result<Response, String> {
        let r = self.http.get(url.as_str(), &self.auth, &[]).await?;
        if r.ok() { Ok(r) } else { Err(self.api_error(&r, what)) }
    }

    fn api_error(&self, r: &Response, what: &str) -> String {
        let e = super::http::ApiError::parse(&r.body);
        let detail = if e.message.is_empty() { r.excerpt() } else { format!("{}: {}", e.reason(), e.message) };
        let status = r.status.as_u16();
        let remedy = match status {
            401 => " (the access token was refused twice)".to_string(),
            403 => format!(
                " (subject {} must be an admin allowed to read users, groups and domains, and the Admin SDK API must be enabled in the service account's project)",
                self.subject
            ),
            404 if what == "domains" => format!(" (customer {:?} does not exist; use my_customer)", self.customer),
            _ => String::new(),
        };
        format!("reading {what} from {}: {status} {detail}{remedy}", r.what)
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<reqwest::Url, String> {
        let mut u = reqwest::Url::parse(&format!("{}/{path}", self.api)).map_err(|e| format!("api_url: {e}"))?;
        u.query_pairs_mut().extend_pairs(query);
        Ok(u)
    }

    /// The customer's verified domains and domain aliases, lowercased.
    async fn domains(&self) -> Result<HashSet<String>, String> {
        let url = self.url(&format!("customer/{}/domains", self.customer), &[])?;
        let r = self.get(&url, "domains").await?;
        let page: DomainsPage = r.json()?;
        let mut set = HashSet::new();
        // Compared with addresses' normalised (IDNA, lowercase) domains.
        let norm = |d: &str| crate::policy::address::parse_domain(d).unwrap_or_else(|_| d.to_ascii_lowercase());
        for d in page.domains.iter().filter(|d| d.verified) {
            set.insert(norm(&d.domain_name));
            for a in d.domain_aliases.iter().filter(|a| a.verified) {
                set.insert(norm(&a.domain_alias_name));
            }
        }
        if set.is_empty() {
            return Err(format!("{} lists no verified domain; every address would be dropped", r.what));
        }
        Ok(set)
    }

    /// Every page of `users` or `groups`. The next page is requested as soon
    /// as its token is known, and this page is decoded while that request travels.
    async fn list(&self, collection: &str) -> Result<Vec<Member>, String> {
        let (max, fields) = match collection {
            "users" => ("500", "nextPageToken,users(primaryEmail,aliases,nonEditableAliases,suspended,archived)"),
            _ => ("200", "nextPageToken,groups(email,aliases,nonEditableAliases)"),
        };
        let page_url = |token: Option<&str>| {
            let mut q = vec![("customer", self.customer.as_str()), ("maxResults", max), ("fields", fields)];
            if let Some(t) = token {
                q.push(("pageToken", t));
            }
            self.url(collection, &q)
        };
        /// Only the token; serde skips the list without building it.
        #[derive(Deserialize)]
        struct Next {
            #[serde(default, rename = "nextPageToken")]
            next: Option<String>,
        }
        let mut members = Vec::new();
        let mut decode = |r: &Response| -> Result<(), String> {
            if collection == "users" {
                members.extend(r.json::<UsersPage>()?.users);
            } else {
                members.extend(r.json::<GroupsPage>()?.groups);
            }
            Ok(())
        };
        let first = self.get(&page_url(None)?, collection).await?;
        let page = |token: String| {
            let url = page_url(Some(&token));
            async move { self.get(&url?, collection).await }
        };
        let next = |r: &Response| Ok(r.json::<Next>()?.next);
        super::http::follow(collection, None, first, next, page, &mut decode).await?;
        Ok(members)
    }
}

impl GoogleSource {
    /// The rules for groups: the admin's lists, and each group's posting
    /// settings unless the check is off. A settings lookup that Google refuses
    /// or that fails keeps the groups, with one warning.
    async fn group_rules(&self, s: &Session, groups: &[Member]) -> GroupRules {
        let mut rules = GroupRules {
            lists: super::GroupLists::new(&self.spec.external_senders_allowed, &self.spec.external_senders_refused),
            checked: self.spec.check_external_senders,
            ..GroupRules::default()
        };
        if !rules.checked || groups.is_empty() {
            return rules;
        }
        let emails: Vec<String> = groups.iter().filter_map(|g| g.email.clone()).collect();
        let asked = emails.len();
        let lookup = s.postings(emails).await;
        rules.postings = lookup.values;
        tracing::debug!(api = %s.settings_api, asked, read = rules.postings.len(), "groups' posting settings");
        rules.unread = match (lookup.refused, lookup.failed) {
            (Some(why), _) => {
                tracing::warn!(api = %s.settings_api, reason = %why, "Google refuses to tell who may post to groups (Groups Settings API, scope apps.groups.settings); groups are kept (grant the scope and enable the API, or list closed groups in external_senders_refused)");
                Some(format!("Google refused it: {why}"))
            }
            (None, Some((n, why))) => {
                tracing::warn!(api = %s.settings_api, groups = n, reason = %why, "groups' posting settings could not be read; those groups are kept");
                Some(format!("the lookup failed: {why}"))
            }
            (None, None) => None,
        };
        rules
    }
}

impl Connector for GoogleSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let s = self.session()?;
        // Groups' posting settings are read while the users' pages travel.
        let groups = async {
            let groups = s.list("groups").await?;
            let rules = self.group_rules(&s, &groups).await;
            Ok::<_, String>((groups, rules))
        };
        let (domains, users, (groups, rules)) =
            tokio::try_join!(s.domains(), s.list("users"), groups).map_err(SourceError::new)?;
        let mut out = Batch::default();
        for u in &users {
            take(&mut out, "user", u, &domains, self.spec.keep_suspended);
        }
        let mut matched = HashSet::new();
        for g in &groups {
            take_as(&mut out, "group", g, &domains, &rules.verdict(g));
            let values =
                g.email.iter().chain(g.aliases.iter().flatten()).chain(g.non_editable_aliases.iter().flatten());
            matched.extend(values.map(|v| v.trim().to_ascii_lowercase()));
        }
        rules.lists.warn_unmatched(&matched, "group of the customer");
        tracing::info!(
            api = %s.api,
            users = users.len(),
            groups = groups.len(),
            requests = s.http.requests(),
            "google directory read"
        );
        Ok(Fetched::Ready(out))
    }

    async fn check(&self) -> Result<String, SourceError> {
        let s = self.session()?;
        let domains = s.domains().await.map_err(SourceError::new)?;
        let mut names: Vec<_> = domains.into_iter().collect();
        names.sort();
        Ok(format!("customer {} as {}: token OK, verified domains: {}", s.customer, s.subject, names.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(json: serde_json::Value) -> Member {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn users_keep_primary_and_aliases_but_not_routing_aliases() {
        let domains: HashSet<String> = ["example.com".to_string(), "example-alias.com".to_string()].into();
        let mut out = Batch::default();
        take(
            &mut out,
            "user",
            &member(serde_json::json!({
                "primaryEmail": "Liz@Example.com", "aliases": ["sales@example.com"],
                "nonEditableAliases": ["liz@example-alias.com", "liz@example.com.test-google-a.com"],
                "emails": [{"address": "liz.personal@gmail.com"}]
            })),
            &domains,
            false,
        );
        let kept: Vec<&str> = out.items.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(kept, ["Liz@Example.com", "sales@example.com", "liz@example-alias.com"]);
        assert_eq!(out.left_out.len(), 1);
        assert!(out.left_out[0].reason.contains("test-google-a.com"));
    }

    /// Whatever a users or groups page holds, decoding fails cleanly or what
    /// survives validation is a plain address in the customer's domains.
    #[test]
    fn fuzz_google_pages() {
        let domains: HashSet<String> = ["example.com".to_string(), "example-alias.com".to_string()].into();
        crate::fuzz::run("google", |input| {
            let mut out = Batch::default();
            if let Ok(p) = serde_json::from_slice::<UsersPage>(input) {
                p.users.iter().for_each(|m| take(&mut out, "user", m, &domains, false));
            }
            if let Ok(p) = serde_json::from_slice::<GroupsPage>(input) {
                p.groups.iter().for_each(|m| take(&mut out, "group", m, &domains, false));
            }
            let (ok, _) = crate::policy::normalise(out.items.clone());
            for (e, _) in &ok {
                if !domains.contains(e.domain()) {
                    return Err(format!("{:?} accepted outside the customer's domains", e.as_str()));
                }
            }
            crate::fuzz::check_validated(out.items)
        });
    }

    #[test]
    fn suspended_and_archived_users_are_left_out_whole() {
        let domains: HashSet<String> = ["example.com".to_string()].into();
        let mut out = Batch::default();
        take(
            &mut out,
            "user",
            &member(
                serde_json::json!({"primaryEmail": "a@example.com", "suspended": true, "aliases": ["b@example.com"]}),
            ),
            &domains,
            false,
        );
        take(
            &mut out,
            "user",
            &member(serde_json::json!({"primaryEmail": "c@example.com", "archived": true})),
            &domains,
            false,
        );
        assert!(out.items.is_empty());
        assert_eq!(out.left_out.len(), 3);
        assert!(out.left_out[0].reason.contains("suspended") && out.left_out[2].reason.contains("archived"));
        // An admin who routes suspended users' mail elsewhere keeps them;
        // archived users receive nothing either way.
        let mut out = Batch::default();
        let suspended =
            serde_json::json!({"primaryEmail": "a@example.com", "suspended": true, "aliases": ["b@example.com"]});
        take(&mut out, "user", &member(suspended), &domains, true);
        take(
            &mut out,
            "user",
            &member(serde_json::json!({"primaryEmail": "c@example.com", "archived": true})),
            &domains,
            true,
        );
        let kept: Vec<&str> = out.items.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(kept, ["a@example.com", "b@example.com"]);
        assert_eq!(out.left_out.len(), 1);
    }

    #[test]
    fn token_errors_name_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k.pem");
        assert!(
            std::process::Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"])
                .arg(&k)
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap()
                .success()
        );
        let c = GoogleCredentials {
            scopes: SCOPES.join(" "),
            token_uri: "https://oauth2.googleapis.com/token".into(),
            client_email: "svc@p.iam.gserviceaccount.com".into(),
            client_id: "1234567890".into(),
            subject: "admin@example.com".into(),
            key_id: "kid1".into(),
            key: SigningKey::from_pem(&std::fs::read(&k).unwrap(), "k").unwrap(),
        };
        let e = c.explain(401, "unauthorized_client", "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.");
        assert!(e.contains("domain-wide delegation is missing these scopes") && e.contains("1234567890"), "{e}");
        assert!(e.contains("admin.directory.user.readonly"), "{e}");
        let e = c.explain(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.",
        );
        assert!(e.contains("clock"), "{e}");
        let (url, form) = c.token_request().unwrap();
        assert_eq!(url, "https://oauth2.googleapis.com/token");
        assert_eq!(form[0].1, "urn:ietf:params:oauth:grant-type:jwt-bearer");
        assert_eq!(form[1].1.split('.').count(), 3);
    }
}
