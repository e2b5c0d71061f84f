//! `kind = "ldap"`: Active Directory, OpenLDAP and other LDAP directories.
//!
//! Every search is paged (RFC 2696) and must end with result code 0. A size or
//! administrative limit, a lost paging cookie or a dropped connection fails the
//! source: a directory never silently turns into a shorter list (the classic
//! "1,000 recipients" bug of unpaged scripts). Which entries and attributes count
//! is profile data (`connectors/openldap.toml`, …).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use serde::Deserialize;

mod exchange;
#[cfg(feature = "kerberos")]
mod kerberos;

pub use exchange::{AcceptedDomainsFrom, RelayDomains};

use crate::connector::{Batch, Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind, Rejected};
use crate::secret::{Literal, Secret, SecretSource};
use crate::section::Checker;
use crate::state::Cache;

/// `kind = "ldap"`: an LDAP directory (Active Directory, OpenLDAP, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapSourceSpec {
    /// `ldaps://dc1.example.com` or `ldap://…` (with `starttls`), or a list tried
    /// in order (DC failover).
    #[serde(deserialize_with = "crate::section::one_or_many")]
    pub url: Vec<String>,
    /// DN (or AD user principal name) to bind as; omitted = anonymous.
    pub bind_dn: Option<String>,
    /// `"simple"` (bind_dn and a password, the default) or `"gssapi"` (Kerberos
    /// with `keytab_file` and `principal`).
    #[serde(default)]
    pub bind: BindMethod,
    /// GSSAPI: the keytab that holds the principal's keys.
    pub keytab_file: Option<PathBuf>,
    /// GSSAPI: the principal to sign in as (`svc-rcptsync@EXAMPLE.COM`).
    pub principal: Option<String>,
    /// GSSAPI: the server's DNS name in its service principal `ldap/<host>`
    /// (default: the host of the URL in use).
    pub sasl_host: Option<String>,
    #[serde(rename = "bind_password")]
    bind_password_literal: Option<Literal>,
    bind_password_file: Option<PathBuf>,
    bind_password_env: Option<String>,
    #[serde(skip)]
    pub bind_password: Option<SecretSource>,
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
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub full_sync_every: Option<Duration>,
    /// Names of `skip` rules to switch off for this source.
    #[serde(default)]
    pub keep_skipped: Vec<String>,
    /// Entries whose addresses count only in the directory's own domains (e.g.
    /// contacts, which often carry external addresses).
    #[serde(default)]
    pub restrict_to_own_domains: Option<Condition>,
    /// Where the domains the primary accepts come from: `"exchange"` (the AD
    /// profile) reads Exchange's accepted domains and keeps only addresses in
    /// them; `"none"` keeps every address.
    #[serde(default)]
    pub accepted_domains: AcceptedDomainsFrom,
    /// Exchange relay domains as catch-alls (default) or only their known addresses.
    #[serde(default)]
    pub relay_domains: RelayDomains,
    /// Whether `policy.domains` is set (filled in by the config loader): an AD
    /// forest without an Exchange organisation then needs nothing more.
    #[serde(skip)]
    pub policy_domains: bool,
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub connect_timeout: Option<Duration>,
    /// Timeout of one operation (bind, one page of results).
    #[serde(default, deserialize_with = "crate::section::de_duration")]
    pub op_timeout: Option<Duration>,
}

fn default_page_size() -> i32 {
    1000
}

/// How the source signs in.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BindMethod {
    /// `bind_dn` and a password (or anonymous without either).
    #[default]
    Simple,
    /// SASL GSSAPI: Kerberos with a keytab.
    Gssapi,
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
    /// Matches when the attribute has any value at all.
    #[serde(default)]
    pub present: bool,
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
    /// ... except when any of these matches (one condition or a list).
    #[serde(default, deserialize_with = "crate::section::one_or_many")]
    pub unless: Vec<Condition>,
    /// Active only in a forest with an Exchange organisation (accepted domains
    /// found): where there is none, plain `mail` users are the recipients.
    #[serde(default)]
    pub only_with_exchange: bool,
}

impl LdapSourceSpec {
    pub fn validate(&mut self, c: &mut Checker, at: &str) {
        let l = self;
        if l.url.is_empty() {
            c.push(format!("{at}.url"), "needs at least one server".into());
        }
        for (i, u) in l.url.iter().enumerate() {
            if !(u.starts_with("ldap://") || u.starts_with("ldaps://") || u.starts_with("ldapi://")) {
                c.push(format!("{at}.url[{i}]"), format!("{u:?} must start with ldaps://, ldap:// or ldapi://"));
            }
        }
        l.bind_password = c.secret(
            at,
            "bind_password",
            l.bind_password_literal.take(),
            l.bind_password_file.take(),
            l.bind_password_env.take(),
        );
        c.abs_opt(&mut l.keytab_file);
        match l.bind {
            BindMethod::Simple => {
                match (&l.bind_dn, &l.bind_password) {
                    (Some(_), None) => c.push(format!("{at}.bind_password"), "is required with bind_dn".into()),
                    (None, Some(_)) => c.push(format!("{at}.bind_dn"), "is required with bind_password".into()),
                    _ => {}
                }
                if l.keytab_file.is_some() || l.principal.is_some() {
                    c.push(format!("{at}.keytab_file"), "keytab_file and principal need bind = \"gssapi\"".into());
                }
            }
            BindMethod::Gssapi => {
                if !cfg!(feature = "kerberos") {
                    c.push(
                        format!("{at}.bind"),
                        "this rcptsync was built without Kerberos support: build it with `cargo build --release \
                         --features kerberos` (needs libkrb5-dev and libclang-dev), or install the package"
                            .into(),
                    );
                }
                if l.keytab_file.is_none() {
                    c.push(format!("{at}.keytab_file"), "is required with bind = \"gssapi\"".into());
                }
                if l.principal.as_deref().is_none_or(|p| p.trim().is_empty() || !p.contains('@')) {
                    c.push(
                        format!("{at}.principal"),
                        "is required with bind = \"gssapi\": the Kerberos principal with its realm, e.g. \
                         svc-rcptsync@EXAMPLE.COM"
                            .into(),
                    );
                }
                if l.bind_dn.is_some() || l.bind_password.is_some() {
                    c.push(
                        format!("{at}.bind_dn"),
                        "bind = \"gssapi\" signs in with the keytab: remove bind_dn and bind_password".into(),
                    );
                }
            }
        }
        let plaintext = l.url.iter().any(|u| u.starts_with("ldap://")) && !l.starttls;
        if plaintext && l.bind_password.is_some() {
            if l.allow_plaintext_bind {
                tracing::warn!(source = %at, "allow_plaintext_bind: the bind password crosses the network unencrypted");
            } else {
                c.push(
                    format!("{at}.url"),
                    "a password bind over unencrypted ldap:// is refused: use ldaps://, or starttls = true, \
                     or (labs only) allow_plaintext_bind = true"
                        .into(),
                );
            }
        }
        if l.base_dn.trim().is_empty() {
            c.push(format!("{at}.base_dn"), "is required".into());
        }
        if l.filter.trim().is_empty() {
            c.push(format!("{at}.filter"), "is required: set filter or use a profile such as \"openldap\"".into());
        }
        if l.address_attributes.is_empty() && l.prefixed_attributes.is_empty() {
            c.push(
                format!("{at}.address_attributes"),
                "name at least one attribute that holds addresses (or use a profile)".into(),
            );
        }
        if l.range_size == Some(0) {
            c.push(format!("{at}.range_size"), "must be at least 1".into());
        }
        if !(1..=100_000).contains(&l.page_size) {
            c.push(format!("{at}.page_size"), "must be between 1 and 100000".into());
        }
        c.abs_opt(&mut l.ca_file);
        let conditions = l
            .skip
            .iter()
            .flat_map(|r| std::iter::once(&r.when).chain(&r.unless))
            .chain(l.restrict_to_own_domains.as_ref());
        for cond in conditions {
            if cond.any_of.is_empty() && cond.bits.is_none() && !cond.present {
                c.push(format!("{at}.skip"), format!("condition on {} needs any_of, bits or present", cond.attribute));
            }
        }
        for k in &l.keep_skipped {
            if !l.skip.iter().any(|r| &r.name == k) {
                let known: Vec<&str> = l.skip.iter().map(|r| r.name.as_str()).collect();
                c.push(format!("{at}.keep_skipped"), format!("no skip rule named {k:?}; known: {}", known.join(", ")));
            }
        }
    }
}

/// Default connect timeout, per server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout for one LDAP operation (bind, one page).
pub const OP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct LdapSource {
    spec: LdapSourceSpec,
    /// Where incremental sync keeps its cursor and object map (None: always full).
    cache: Option<Cache>,
}

impl LdapSource {
    /// With a cache, a source with `incremental = true` syncs incrementally.
    pub fn new(spec: LdapSourceSpec, cache: Option<Cache>) -> LdapSource {
        LdapSource { spec, cache }
    }

    fn password(&self) -> Result<Option<Secret>, SourceError> {
        match &self.spec.bind_password {
            None => Ok(None),
            Some(src) => src.resolve("bind_password").map(Some).map_err(|e| SourceError::new(e.to_string())),
        }
    }

    fn settings(&self, url: &str) -> Result<LdapConnSettings, String> {
        let mut s = LdapConnSettings::new()
            .set_conn_timeout(self.spec.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            .set_starttls(self.spec.starttls && url.starts_with("ldap://"));
        if let Some(ca) = &self.spec.ca_file {
            s = s.set_config(Arc::new(super::tls::client_config(Some(ca))?));
        }
        Ok(s)
    }

    /// Connects to the first URL that answers and binds. Returns the handle and
    /// the URL used.
    async fn connect(&self, secret: Option<&Secret>) -> Result<(ldap3::Ldap, String), String> {
        let op_timeout = self.spec.op_timeout.unwrap_or(OP_TIMEOUT);
        let mut errors = Vec::new();
        for url in &self.spec.url {
            let settings = self.settings(url)?;
            let (conn, mut ldap) = match LdapConnAsync::with_settings(settings, url).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(server = %url, error = %e, "LDAP server unreachable; trying the next one");
                    errors.push(format!("{url}: {}", describe_connect(&e)));
                    continue;
                }
            };
            ldap3::drive!(conn);
            #[cfg(feature = "kerberos")]
            if let (BindMethod::Gssapi, Some(keytab), Some(principal)) =
                (self.spec.bind, &self.spec.keytab_file, &self.spec.principal)
            {
                let host = self.spec.sasl_host.clone().unwrap_or_else(|| kerberos::url_host(url));
                let cred = kerberos::credentials(keytab, principal)?;
                let bound = ldap
                    .with_timeout(op_timeout)
                    .sasl_gssapi_cred_bind(cross_krb5::Cred::from(cred), &host)
                    .await
                    .and_then(|r| r.success());
                if let Err(e) = bound {
                    let text = match e {
                        ldap3::LdapError::GssapiOperationError(m) => m,
                        other => other.to_string(),
                    };
                    return Err(format!("{url}: {}", kerberos::explain(&text, principal, &host)));
                }
                tracing::debug!(server = %url, principal = %principal, service = %format!("ldap/{host}"), "Kerberos bind");
                return Ok((ldap, url.clone()));
            }
            if let (Some(dn), Some(pw)) = (&self.spec.bind_dn, secret) {
                let bound = ldap.with_timeout(op_timeout).simple_bind(dn, pw.expose()).await.and_then(|r| r.success());
                if let Err(e) = bound {
                    let msg = describe_bind(&e, dn);
                    // Wrong credentials are wrong on every DC: stop here.
                    return Err(format!("{url}: {msg}"));
                }
            }
            return Ok((ldap, url.clone()));
        }
        Err(format!("no LDAP server answered: {}", errors.join("; ")))
    }

    fn clean(&self, m: String, secret: &Option<Secret>) -> String {
        match secret.as_ref().filter(|s| s.expose().len() >= 3) {
            Some(s) => m.replace(s.expose(), "***"),
            None => m,
        }
    }

    /// One paged subtree search that must end with success. The pages are
    /// requested here, not by a library adapter, so that every page's result
    /// code is checked (a page that fails with a cookie must not be skipped)
    /// and every continuation reference is seen.
    #[allow(clippy::too_many_arguments)]
    async fn paged(
        &self,
        ldap: &mut ldap3::Ldap,
        url: &str,
        base: &str,
        filter: &str,
        attrs: &[String],
        page_size: i32,
        control: Option<ldap3::controls::RawControl>,
    ) -> Result<Vec<SearchEntry>, String> {
        use ldap3::controls::{Control, ControlType, PagedResults};
        let op_timeout = self.spec.op_timeout.unwrap_or(OP_TIMEOUT);
        let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let mut entries = Vec::new();
        let mut refs = Vec::new();
        let mut cookie = Vec::new();
        for page in 1.. {
            let mut controls: Vec<ldap3::controls::RawControl> =
                vec![PagedResults { size: page_size, cookie: std::mem::take(&mut cookie) }.into()];
            controls.extend(control.clone());
            let result = async {
                let handle = ldap.with_timeout(op_timeout);
                handle.with_controls(controls);
                let mut stream = handle.streaming_search(base, Scope::Subtree, filter, &attr_refs).await?;
                while let Some(entry) = stream.next().await? {
                    if entry.is_ref() {
                        refs.extend(ldap3::parse_refs(entry.0));
                    } else if !entry.is_intermediate() {
                        entries.push(SearchEntry::construct(entry));
                    }
                }
                Ok::<_, ldap3::LdapError>(stream.finish().await)
            }
            .await;
            let res = result.map_err(|e| format!("search on {url} failed on page {page}: {e}"))?;
            page_result(url, page, entries.len(), &res)?;
            cookie = res
                .ctrls
                .iter()
                .find_map(|c| match c {
                    Control(Some(ControlType::PagedResults), raw) => Some(raw.parse::<PagedResults>().cookie),
                    _ => None,
                })
                .unwrap_or_default();
            if cookie.is_empty() {
                break;
            }
        }
        check_references(url, base, &refs)?;
        self.complete_ranges(ldap, url, &mut entries).await?;
        Ok(entries)
    }

    /// Full or incremental (uSNChanged) fetch, keeping the object map in state.
    async fn incremental_inner(
        &self,
        spec: &LdapSourceSpec,
        ldap: &mut ldap3::Ldap,
        url: &str,
        cache: &Cache,
    ) -> Result<BTreeMap<String, ObjectRecord>, String> {
        // The DC's position and identity, read before any search, so that a change
        // made during this run is seen again by the next one rather than missed.
        let root =
            self.read_entry(ldap, url, "", &["highestCommittedUSN", "dsServiceName", "defaultNamingContext"]).await?;
        let usn: u64 = first(&root, "highestCommittedUSN").and_then(|v| v.parse().ok()).ok_or_else(|| {
            format!(
                "{url} does not publish highestCommittedUSN in its rootDSE: incremental sync needs Active Directory"
            )
        })?;
        // Where changes and deletions are looked for: the whole domain (an object
        // that left base_dn or the filter must leave the list too), or on a
        // Global Catalog the whole forest (the empty base), since a
        // forest-wide base_dn spans every domain's partial replica.
        let nc = if global_catalog(url) {
            String::new()
        } else {
            first(&root, "defaultNamingContext").unwrap_or_else(|| self.spec.base_dn.clone())
        };
        let invocation = match first(&root, "dsServiceName") {
            Some(dn) => {
                let e = self.read_entry(ldap, url, &dn, &["invocationId"]).await?;
                binary(&e, "invocationId").unwrap_or_default()
            }
            None => String::new(),
        };
        let now = crate::state::unix_now();
        let every = self.spec.full_sync_every.unwrap_or(FULL_SYNC_EVERY).as_secs();
        let prev = cache.load::<SyncState>();
        let reason = match &prev {
            None => Some("no previous sync state".to_string()),
            Some(p) if p.version != SYNC_STATE_VERSION => Some("sync state from another version".into()),
            Some(p) if p.server != url => Some(format!("the previous sync used {}", p.server)),
            Some(p) if p.invocation_id != invocation => {
                Some("the DC's invocationId changed (restored or rebuilt)".into())
            }
            Some(p)
                if p.filter != self.spec.filter
                    || p.base_dn != self.spec.base_dn
                    || p.attributes != self.attributes() =>
            {
                Some("filter, base_dn or attributes changed".into())
            }
            // The stored records were made under the skip rules; other rules
            // would have made other records.
            Some(p) if p.rules != rules_of(spec) => Some("skip rules changed".into()),
            Some(p) if now.saturating_sub(p.full_at) >= every => Some("full_sync_every elapsed".into()),
            Some(p) if usn < p.highest_usn => Some("the DC's USN went backwards".into()),
            Some(_) => None,
        };
        let mut attrs = self.attributes();
        attrs.push("objectGUID".into());
        let (objects, full_at) = match (reason, prev) {
            (None, Some(prev)) => {
                let since = prev.highest_usn + 1;
                let matching_filter = format!("(&{}(uSNChanged>={since}))", self.spec.filter);
                let matching = self
                    .paged(ldap, url, &self.spec.base_dn, &matching_filter, &attrs, self.spec.page_size, None)
                    .await?;
                // Everything that changed anywhere in the domain: an object that left
                // the filter or the base DN must leave the list too.
                let guid_only = ["objectGUID".to_string()];
                let changed = self
                    .paged(ldap, url, &nc, &format!("(uSNChanged>={since})"), &guid_only, self.spec.page_size, None)
                    .await?;
                let show_deleted =
                    ldap3::controls::RawControl { ctype: SHOW_DELETED_OID.into(), crit: true, val: None };
                let deleted_filter = format!("(&(isDeleted=TRUE)(uSNChanged>={since}))");
                let deleted = self
                    .paged(ldap, url, &nc, &deleted_filter, &guid_only, self.spec.page_size, Some(show_deleted))
                    .await?;
                let mut objects = prev.objects;
                let before = objects.len();
                for e in changed.iter().chain(&deleted) {
                    if let Some(g) = guid(e) {
                        objects.remove(&g);
                    }
                }
                let mut skipped = BTreeMap::new();
                for e in &matching {
                    match (guid(e), map_one(spec, e)?) {
                        (Some(g), Some(rec)) => {
                            objects.insert(g, rec);
                        }
                        (_, None) => count_skip(spec, e, &mut skipped),
                        _ => {}
                    }
                }
                log_skips(skipped);
                tracing::info!(
                    server = %url,
                    since,
                    changed = changed.len(),
                    deleted = deleted.len(),
                    matching = matching.len(),
                    objects_before = before,
                    objects = objects.len(),
                    "incremental sync"
                );
                (objects, prev.full_at)
            }
            (reason, _) => {
                let reason = reason.unwrap_or_default();
                let entries = self
                    .paged(ldap, url, &self.spec.base_dn, &self.spec.filter, &attrs, self.spec.page_size, None)
                    .await?;
                let mut objects = BTreeMap::new();
                let mut skipped = BTreeMap::new();
                for e in &entries {
                    match map_one(spec, e)? {
                        Some(rec) => {
                            objects.insert(guid(e).unwrap_or_else(|| format!("dn:{}", e.dn)), rec);
                        }
                        None => count_skip(spec, e, &mut skipped),
                    }
                }
                log_skips(skipped);
                tracing::info!(server = %url, reason = %reason, objects = objects.len(), "full sync");
                (objects, now)
            }
        };
        let state = SyncState {
            version: SYNC_STATE_VERSION,
            server: url.to_string(),
            invocation_id: invocation,
            highest_usn: usn,
            full_at,
            filter: self.spec.filter.clone(),
            base_dn: self.spec.base_dn.clone(),
            attributes: self.attributes(),
            rules: rules_of(spec),
            objects,
        };
        cache.save(&state, "LDAP");
        Ok(state.objects)
    }

    /// Completes attributes the server returned in ranges (`proxyAddresses;range=0-1499`,
    /// as AD does above MaxValRange values, or as asked by `range_size`): asks for
    /// the next range until the last one (`…-*`), and stores all values under the
    /// plain attribute name.
    async fn complete_ranges(
        &self,
        ldap: &mut ldap3::Ldap,
        url: &str,
        entries: &mut [SearchEntry],
    ) -> Result<(), String> {
        for e in entries.iter_mut() {
            let ranged: Vec<String> =
                e.attrs.keys().filter(|k| k.to_ascii_lowercase().contains(";range=")).cloned().collect();
            for key in ranged {
                let mut all = e.attrs.remove(&key).unwrap_or_default();
                let (base, mut next) =
                    parse_range(&key).ok_or_else(|| format!("{}: cannot parse ranged attribute {key}", e.dn))?;
                let mut rounds = 0;
                while let Some(hi) = next {
                    rounds += 1;
                    if rounds > 100_000 {
                        return Err(format!("{}: {base} ranges do not end", e.dn));
                    }
                    let request = format!("{base};range={}-*", hi + 1);
                    let more = self.read_entry(ldap, url, &e.dn, &[request.as_str()]).await?;
                    let prefix = format!("{};range=", base.to_ascii_lowercase());
                    let Some((k, v)) =
                        more.attrs.into_iter().find(|(k, _)| k.to_ascii_lowercase().starts_with(&prefix))
                    else {
                        return Err(format!(
                            "{}: the server stopped answering {request}; the values would be incomplete",
                            e.dn
                        ));
                    };
                    let (_, after) =
                        parse_range(&k).ok_or_else(|| format!("{}: cannot parse ranged attribute {k}", e.dn))?;
                    if after.is_some_and(|a| a <= hi) {
                        return Err(format!("{}: {k} does not advance past {hi}", e.dn));
                    }
                    all.extend(v);
                    next = after;
                }
                e.attrs.entry(base).or_default().extend(all);
            }
        }
        Ok(())
    }

    /// A base-scope read of one entry.
    async fn read_entry(
        &self,
        ldap: &mut ldap3::Ldap,
        url: &str,
        dn: &str,
        attrs: &[&str],
    ) -> Result<SearchEntry, String> {
        let op_timeout = self.spec.op_timeout.unwrap_or(OP_TIMEOUT);
        let (entries, _) = ldap
            .with_timeout(op_timeout)
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .and_then(|r| r.success())
            .map_err(|e| format!("reading {dn:?} on {url} failed: {e}"))?;
        entries.into_iter().next().map(SearchEntry::construct).ok_or_else(|| format!("{dn:?} not found on {url}"))
    }

    fn attributes(&self) -> Vec<String> {
        let spec = &self.spec;
        let ranged = |a: &String| match spec.range_size {
            Some(n) => format!("{a};range=0-{}", n.saturating_sub(1)),
            None => a.clone(),
        };
        let mut attrs: Vec<String> =
            spec.address_attributes.iter().chain(&spec.prefixed_attributes).map(ranged).collect();
        let conditions = spec.skip.iter().flat_map(|r| std::iter::once(&r.when).chain(&r.unless));
        for c in conditions.chain(spec.restrict_to_own_domains.as_ref()) {
            if !attrs.iter().any(|a| a.split(';').next().unwrap_or(a).eq_ignore_ascii_case(&c.attribute)) {
                attrs.push(c.attribute.clone());
            }
        }
        attrs
    }
}

impl LdapSource {
    /// One fetch on one connection: the accepted domains (when the profile
    /// reads them), then a full or incremental pass under the rules that apply
    /// to this forest.
    async fn fetch_on(&self, ldap: &mut ldap3::Ldap, url: &str) -> Result<Batch, String> {
        let accepted = match self.spec.accepted_domains {
            AcceptedDomainsFrom::None => None,
            AcceptedDomainsFrom::Exchange => {
                let found = self.accepted_domains(ldap, url).await?;
                if found.is_none() && !self.spec.policy_domains {
                    return Err(format!(
                        "{url}: the forest has no Exchange organisation (no msExchAcceptedDomain under CN=Microsoft \
                         Exchange,CN=Services in the Configuration NC that the bind account can read), so rcptsync cannot tell \
                         which domains the primary accepts and would publish external addresses too: set \
                         policy.domains to the domains this backup MX relays for"
                    ));
                }
                found
            }
        };
        let spec = rules_for(&self.spec, accepted.is_some());
        let records: Vec<ObjectRecord> = match (self.spec.incremental, &self.cache) {
            (true, Some(cache)) => self.incremental_inner(&spec, ldap, url, cache).await?.into_values().collect(),
            _ => {
                let entries = self
                    .paged(ldap, url, &spec.base_dn, &spec.filter, &self.attributes(), spec.page_size, None)
                    .await?;
                return map_entries_in(&spec, entries, accepted.as_ref()).map_err(|e| e.to_string());
            }
        };
        Ok(finalize(records.into_iter(), accepted.as_ref(), spec.relay_domains))
    }
}

/// The spec whose skip rules apply: `only_with_exchange` rules are dropped in
/// a forest without an Exchange organisation.
fn rules_for(spec: &LdapSourceSpec, exchange: bool) -> std::borrow::Cow<'_, LdapSourceSpec> {
    if exchange || !spec.skip.iter().any(|r| r.only_with_exchange) {
        return std::borrow::Cow::Borrowed(spec);
    }
    let mut spec = spec.clone();
    spec.skip.retain(|r| !r.only_with_exchange);
    std::borrow::Cow::Owned(spec)
}

impl Connector for LdapSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let secret = self.password()?;
        let (mut ldap, url) =
            self.connect(secret.as_ref()).await.map_err(|e| SourceError::new(self.clean(e, &secret)))?;
        let r = self.fetch_on(&mut ldap, &url).await;
        let _ = ldap.unbind().await;
        r.map(Fetched::Ready).map_err(|e| SourceError::new(self.clean(e, &secret)))
    }

    async fn check(&self) -> Result<String, SourceError> {
        // Bind, read the rootDSE (server, naming context, paging support), and run
        // the filter once with a size limit of one entry.
        let secret = self.password()?;
        let (mut ldap, url) =
            self.connect(secret.as_ref()).await.map_err(|e| SourceError::new(self.clean(e, &secret)))?;
        let r = async {
            let root = self
                .read_entry(&mut ldap, &url, "", &["defaultNamingContext", "namingContexts", "dnsHostName", "supportedControl", "vendorName"])
                .await?;
            let paging = root
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("supportedControl"))
                .is_some_and(|(_, v)| v.iter().any(|c| c == PAGED_RESULTS_OID));
            let nc = first(&root, "defaultNamingContext").or_else(|| first(&root, "namingContexts")).unwrap_or_default();
            let host = first(&root, "dnsHostName").or_else(|| first(&root, "vendorName")).unwrap_or_else(|| "?".into());
            let opts = ldap3::SearchOptions::new().sizelimit(1);
            let probe = ldap
                .with_search_options(opts)
                .with_timeout(self.spec.op_timeout.unwrap_or(OP_TIMEOUT))
                .search(&self.spec.base_dn, Scope::Subtree, &self.spec.filter, self.attributes())
                .await
                .map_err(|e| format!("probe search on {url} failed: {e}"))?;
            if probe.1.rc != 0 && probe.1.rc != 4 {
                return Err(format!("probe search of {} on {url} ended with result {}: {}", self.spec.base_dn, probe.1.rc, probe.1.text));
            }
            if !paging {
                return Err(format!("{url} does not announce the paged-results control; rcptsync needs it"));
            }
            Ok(format!(
                "{url}: bound, server {host}, naming context {nc}, paging supported, filter matches under {} ({} entry in a 1-entry probe)",
                self.spec.base_dn,
                probe.0.len()
            ))
        }
        .await;
        let _ = ldap.unbind().await;
        r.map_err(|e| SourceError::new(self.clean(e, &secret)))
    }
}

/// Whether an entry satisfies a condition. A missing attribute never matches.
fn matches(e: &SearchEntry, c: &Condition) -> bool {
    let Some(values) = e.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.attribute)).map(|(_, v)| v) else {
        return false;
    };
    values.iter().any(|v| {
        (c.present && !v.trim().is_empty())
            || c.any_of.iter().any(|x| x.eq_ignore_ascii_case(v.trim()))
            || c.bits.is_some_and(|bits| v.trim().parse::<i128>().is_ok_and(|n| (n as u64) & bits == bits))
    })
}

fn domain_of(value: &str) -> Option<String> {
    value.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// What one directory object contributes, kept between incremental runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ObjectRecord {
    /// Whether the object's addresses only count in the directory's own domains.
    restricted: bool,
    /// (value, locator) of each address value.
    items: Vec<(String, String)>,
    /// (value, locator, reason) of each refused value.
    rejected: Vec<(String, String, String)>,
}

const SYNC_STATE_VERSION: u32 = 1;
/// The paged-results control (RFC 2696).
const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";
/// The Show Deleted control (deleted objects in searches).
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
/// Default interval between forced full passes of an incremental source.
pub const FULL_SYNC_EVERY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SyncState {
    version: u32,
    server: String,
    invocation_id: String,
    highest_usn: u64,
    full_at: u64,
    filter: String,
    base_dn: String,
    attributes: Vec<String>,
    /// What the skip rules were (absent in older files: a full pass).
    #[serde(default)]
    rules: String,
    objects: BTreeMap<String, ObjectRecord>,
}

/// `proxyAddresses;range=0-1499` → ("proxyAddresses", Some(1499));
/// `proxyAddresses;range=1500-*` → ("proxyAddresses", None).
fn parse_range(key: &str) -> Option<(String, Option<u64>)> {
    let lower = key.to_ascii_lowercase();
    let at = lower.find(";range=")?;
    let (lo_hi, base) = (&key[at + ";range=".len()..], &key[..at]);
    let (_, hi) = lo_hi.split_once('-')?;
    let hi = if hi == "*" { None } else { Some(hi.parse().ok()?) };
    Some((base.to_string(), hi))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn first(e: &SearchEntry, attr: &str) -> Option<String> {
    e.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).and_then(|(_, v)| v.first().cloned())
}

fn guid(e: &SearchEntry) -> Option<String> {
    binary(e, "objectGUID")
}

/// A binary attribute (objectGUID, invocationId) as hex. ldap3 files a value
/// under `attrs` when its bytes happen to be valid UTF-8 (about one GUID in
/// 10,000) and under `bin_attrs` otherwise: both are read.
fn binary(e: &SearchEntry, attr: &str) -> Option<String> {
    let bin = e.bin_attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(attr)).and_then(|(_, v)| v.first());
    match bin {
        Some(b) => Some(hex(b)),
        None => first(e, attr).map(|s| hex(s.as_bytes())),
    }
}

/// Whether `url` is a Global Catalog port (3268, or 3269 over TLS): a
/// forest-wide partial replica that answers for every domain.
fn global_catalog(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    matches!(host_port.rsplit_once(':').map(|(_, p)| p), Some("3268" | "3269"))
}

/// The rules that decide what an entry contributes, as one comparable string.
fn rules_of(spec: &LdapSourceSpec) -> String {
    format!("{:?}", (&spec.skip, &spec.keep_skipped, &spec.restrict_to_own_domains))
}

fn count_skip(spec: &LdapSourceSpec, e: &SearchEntry, counts: &mut BTreeMap<String, usize>) {
    let rule = skip_rule(spec, e).map(|r| r.name.clone()).unwrap_or_default();
    *counts.entry(rule).or_default() += 1;
}

fn log_skips(counts: BTreeMap<String, usize>) {
    for (rule, n) in counts {
        tracing::info!(rule, entries = n, "entries left out by a skip rule");
    }
}

/// The first active skip rule that leaves `e` out.
fn skip_rule<'a>(spec: &'a LdapSourceSpec, e: &SearchEntry) -> Option<&'a SkipRule> {
    spec.skip
        .iter()
        .filter(|r| !spec.keep_skipped.contains(&r.name))
        .find(|r| matches(e, &r.when) && !r.unless.iter().any(|u| matches(e, u)))
}

/// What one entry contributes, or None when a skip rule leaves it out.
pub fn map_one(spec: &LdapSourceSpec, e: &SearchEntry) -> Result<Option<ObjectRecord>, String> {
    if let Some(name) = e.attrs.keys().find(|n| n.to_ascii_lowercase().contains(";range=")) {
        return Err(format!(
            "{}: the server returned {name} in ranges (more values than it sends at once); ranged retrieval is not \
             supported yet, so the source fails rather than publish a partial list",
            e.dn
        ));
    }
    if let Some(rule) = skip_rule(spec, e) {
        tracing::debug!(dn = %e.dn, rule = %rule.name, "left out: {}", rule.why);
        return Ok(None);
    }
    Ok(Some(extract(spec, e)))
}

/// The address values of an entry, whatever the skip rules say.
fn extract(spec: &LdapSourceSpec, e: &SearchEntry) -> ObjectRecord {
    let mut rec = ObjectRecord {
        restricted: spec.restrict_to_own_domains.as_ref().is_some_and(|c| matches(e, c)),
        items: Vec::new(),
        rejected: Vec::new(),
    };
    for (name, values) in &e.attrs {
        let plain = spec.address_attributes.iter().any(|a| a.eq_ignore_ascii_case(name));
        let prefixed = spec.prefixed_attributes.iter().any(|a| a.eq_ignore_ascii_case(name));
        for v in values {
            let locator = format!("{} {name}", e.dn);
            if plain {
                rec.items.push((v.clone(), locator));
            } else if prefixed {
                // "SMTP:primary", "smtp:secondary": any case. X500:, SIP:, … are not mail.
                match v.split_once(':') {
                    Some((p, addr)) if p.eq_ignore_ascii_case("smtp") => rec.items.push((addr.to_string(), locator)),
                    Some(_) => {}
                    None => rec.rejected.push((v.clone(), locator, "has no address-type prefix such as smtp:".into())),
                }
            }
        }
    }
    for (name, values) in &e.bin_attrs {
        if spec.address_attributes.iter().chain(&spec.prefixed_attributes).any(|a| a.eq_ignore_ascii_case(name)) {
            for v in values {
                let value = String::from_utf8_lossy(v).into_owned();
                rec.rejected.push((value, format!("{} {name}", e.dn), "is not valid UTF-8".into()));
            }
        }
    }
    rec
}

/// The raw values of all objects. With Exchange's accepted domains, only
/// addresses in them count (and relay domains become catch-alls); without,
/// restricted entries (contacts) count only in the directory's own domains.
fn finalize(
    records: impl Iterator<Item = ObjectRecord>,
    accepted: Option<&exchange::Accepted>,
    relay: RelayDomains,
) -> Batch {
    let mut out = Batch::default();
    let mut own_domains: HashSet<String> = HashSet::new();
    let mut restricted: Vec<(String, String)> = Vec::new();
    let mut items = Vec::new();
    let item =
        |(value, l): (String, String)| RawItem { value, kind: RawKind::Address, locator: Locator::Object(l.into()) };
    for rec in records {
        for (value, locator, reason) in rec.rejected {
            out.rejected.push(Rejected { value, locator: Locator::Object(locator.into()), reason });
        }
        if rec.restricted && accepted.is_none() {
            restricted.extend(rec.items);
        } else {
            own_domains.extend(rec.items.iter().filter_map(|(v, _)| domain_of(v)));
            items.extend(rec.items.into_iter().map(item));
        }
    }
    if let Some(accepted) = accepted {
        accepted.apply(items, &mut out, relay);
        return out;
    }
    out.items = items;
    let mut outside = 0;
    for (value, l) in restricted {
        if domain_of(&value).is_some_and(|d| own_domains.contains(&d)) {
            out.items.push(item((value, l)));
        } else {
            outside += 1;
        }
    }
    if outside > 0 {
        tracing::info!(
            addresses = outside,
            "addresses of restricted entries (e.g. contacts) outside the directory's own domains left out"
        );
    }
    out
}

/// Turns directory entries into raw recipient values: the profile's skip rules,
/// address attributes, `smtp:` prefixes and the own-domains restriction. Pure.
pub fn map_entries(spec: &LdapSourceSpec, entries: Vec<SearchEntry>) -> Result<Batch, SourceError> {
    map_entries_in(spec, entries, None)
}

/// [`map_entries`] in an Exchange organisation with these accepted domains.
fn map_entries_in(
    spec: &LdapSourceSpec,
    entries: Vec<SearchEntry>,
    accepted: Option<&exchange::Accepted>,
) -> Result<Batch, SourceError> {
    let mut records = Vec::with_capacity(entries.len());
    let mut skipped = BTreeMap::new();
    let mut left_out = Vec::new();
    for e in &entries {
        match map_one(spec, e).map_err(SourceError::new)? {
            Some(r) => records.push(r),
            None => {
                count_skip(spec, e, &mut skipped);
                if let Some(rule) = skip_rule(spec, e) {
                    let reason = format!("skip rule {} ({})", rule.name, rule.why);
                    for (value, l) in extract(spec, e).items {
                        left_out.push(Rejected { value, locator: Locator::Object(l.into()), reason: reason.clone() });
                    }
                }
            }
        }
    }
    log_skips(skipped);
    let mut out = finalize(records.into_iter(), accepted, spec.relay_domains);
    out.left_out.extend(left_out);
    Ok(out)
}

fn describe_connect(e: &ldap3::LdapError) -> String {
    let text = e.to_string();
    if text.contains("certificate") || text.contains("UnknownIssuer") || text.contains("invalid peer") {
        format!("{text} (the server's certificate is not trusted: set ca_file to the CA that issued it)")
    } else {
        text
    }
}

fn describe_bind(e: &ldap3::LdapError, dn: &str) -> String {
    match e {
        ldap3::LdapError::LdapResult { result } if result.rc == 49 => {
            format!(
                "bind as {dn} was refused: invalid credentials (check bind_dn and bind_password / bind_password_file / bind_password_env)"
            )
        }
        ldap3::LdapError::LdapResult { result } if result.rc == 8 || result.rc == 13 => {
            format!("bind as {dn} needs an encrypted connection ({}): use ldaps:// or starttls = true", result.text)
        }
        other => format!("bind as {dn} failed: {other}"),
    }
}

/// A page's result: anything but success fails the source, whichever page it is.
fn page_result(url: &str, page: usize, so_far: usize, res: &ldap3::LdapResult) -> Result<(), String> {
    let text = if res.text.is_empty() { String::new() } else { format!(": {}", res.text) };
    match res.rc {
        0 => Ok(()),
        4 => Err(format!(
            "search on {url} hit the server's size limit after {so_far} entries (result 4, sizeLimitExceeded); \
             the list would be incomplete, so the source fails. Raise the limit for the bind DN or lower page_size"
        )),
        11 => Err(format!(
            "search on {url} hit an administrative limit (result 11, adminLimitExceeded{text}); lower page_size (AD and \
             OpenLDAP cap pages, typically at 1000)"
        )),
        // A referral as the result: the base itself lives on another server.
        10 => Err(format!(
            "search on {url} was referred elsewhere (result 10, referral{text}): the base DN is not on this server. \
             {GC_HINT}"
        )),
        rc => Err(format!("search on {url} ended with result {rc} on page {page}{text}")),
    }
}

/// What to do about continuation references.
const GC_HINT: &str = "To read a forest with several domains, point url at a Global Catalog (port 3268, or 3269 \
     for TLS) and base_dn at the forest root; or add a source per domain controller.";

/// Continuation references are never dropped silently. Active Directory names
/// its DNS and configuration partitions below a domain's root (they hold no
/// recipients), so those are skipped with a note; any other reference means
/// part of the tree is on another server, and the source fails rather than
/// publish a list without it.
fn check_references(url: &str, base: &str, refs: &[String]) -> Result<(), String> {
    let (skipped, elsewhere): (Vec<&String>, Vec<&String>) = refs.iter().partition(|r| ad_partition(r));
    if !skipped.is_empty() {
        tracing::debug!(server = %url, base, references = ?skipped, "skipped references to Active Directory's DNS and configuration partitions (no recipients there)");
    }
    if elsewhere.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = elsewhere.iter().take(3).map(|s| s.as_str()).collect();
    Err(format!(
        "search on {url} under {base} returned {} continuation reference(s) to other servers ({}{}): part of the \
         directory is not on this server, and the list would be incomplete. {GC_HINT}",
        elsewhere.len(),
        shown.join(", "),
        if elsewhere.len() > 3 { ", …" } else { "" }
    ))
}

/// Whether a reference URL names one of AD's application partitions that
/// hold no recipients (DomainDnsZones, ForestDnsZones, Configuration).
fn ad_partition(reference: &str) -> bool {
    let dn = reference.split_once("://").map_or(reference, |(_, rest)| rest.split_once('/').map_or("", |(_, dn)| dn));
    let dn = dn.split('?').next().unwrap_or("");
    let first = dn.split(',').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(first.as_str(), "dc=domaindnszones" | "dc=forestdnszones" | "cn=configuration")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// An AD source (the embedded profile under `extra`), validated.
    fn checked(extra: &str) -> Result<LdapSourceSpec, Vec<crate::section::ConfigError>> {
        let text = format!("url = \"ldaps://dc1\"\nbase_dn = \"DC=example,DC=com\"\n{extra}\n");
        let mut table: toml::Table = toml::from_str(&text).unwrap();
        crate::connector::profile::Profiles::embedded().apply("active-directory", "ldap", &mut table).unwrap();
        let mut spec: LdapSourceSpec = table.try_into().unwrap();
        let mut c = Checker::new(std::path::Path::new("/"));
        spec.validate(&mut c, "source[0]");
        let errors = c.into_errors();
        if errors.is_empty() { Ok(spec) } else { Err(errors) }
    }

    fn spec(extra: &str) -> LdapSourceSpec {
        checked(extra).unwrap()
    }

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> SearchEntry {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, vs) in attrs {
            m.insert(k.to_string(), vs.iter().map(|v| v.to_string()).collect());
        }
        SearchEntry { dn: dn.to_string(), attrs: m, bin_attrs: HashMap::new() }
    }

    /// LDIF-like input (`dn: …`, `attr: value` lines, blank line between entries)
    /// through the AD profile's mapping: never a panic, and what survives
    /// validation is a plain address.
    /// A GUID whose 16 bytes are valid UTF-8 arrives among the text values;
    /// it is the same GUID (it used to be missed, and the object skipped by
    /// incremental runs).
    #[test]
    fn a_guid_that_is_valid_utf8_is_read_like_any_other() {
        let bytes: [u8; 16] = *b"0123456789abcdef";
        let text = SearchEntry {
            dn: "CN=x".into(),
            attrs: [("objectGUID".to_string(), vec![String::from_utf8(bytes.to_vec()).unwrap()])].into(),
            bin_attrs: HashMap::new(),
        };
        let bin = SearchEntry {
            dn: "CN=x".into(),
            attrs: HashMap::new(),
            bin_attrs: [("objectGUID".to_string(), vec![bytes.to_vec()])].into(),
        };
        assert_eq!(guid(&text), Some(hex(&bytes)));
        assert_eq!(guid(&text), guid(&bin));
        assert_eq!(binary(&text, "invocationid"), None);
    }

    #[test]
    fn references_to_other_servers_fail_the_source_but_ad_partitions_do_not() {
        let ad = [
            "ldap://example.com/DC=DomainDnsZones,DC=example,DC=com",
            "ldap://example.com/DC=ForestDnsZones,DC=example,DC=com",
            "ldap://example.com/CN=Configuration,DC=example,DC=com",
        ]
        .map(String::from);
        assert!(check_references("ldaps://dc1", "DC=example,DC=com", &ad).is_ok());
        let child = "ldap://emea.example.com/DC=emea,DC=example,DC=com".to_string();
        let e = check_references("ldaps://dc1", "DC=example,DC=com", &[ad[0].clone(), child]).unwrap_err();
        assert!(e.contains("1 continuation reference(s) to other servers (ldap://emea.example.com/DC=emea"), "{e}");
        assert!(e.contains("Global Catalog (port 3268"), "{e}");
    }

    #[test]
    fn any_page_that_fails_fails_the_source() {
        let res = |rc: u32| ldap3::LdapResult {
            rc,
            matched: String::new(),
            text: "limit".into(),
            refs: Vec::new(),
            ctrls: Vec::new(),
        };
        assert!(page_result("ldap://x", 2, 10, &res(0)).is_ok());
        assert!(page_result("ldap://x", 2, 10, &res(3)).unwrap_err().contains("result 3 on page 2: limit"));
        assert!(page_result("ldap://x", 1, 0, &res(10)).unwrap_err().contains("Global Catalog"));
    }

    #[test]
    fn fuzz_ldap_entries() {
        let spec = spec("");
        crate::fuzz::run("ldap", |input| {
            let text = String::from_utf8_lossy(input);
            let mut records = Vec::new();
            for block in text.split("\n\n") {
                let mut dn = String::from("cn=fuzz");
                let mut attrs: HashMap<String, Vec<String>> = HashMap::new();
                for line in block.lines() {
                    let Some((k, v)) = line.split_once(": ") else { continue };
                    if k.eq_ignore_ascii_case("dn") {
                        dn = v.to_string();
                    } else {
                        attrs.entry(k.to_string()).or_default().push(v.to_string());
                    }
                }
                let e = SearchEntry { dn, attrs, bin_attrs: HashMap::new() };
                // A ranged attribute is an error by design; anything else maps.
                if let Ok(Some(r)) = map_one(&spec, &e) {
                    records.push(r);
                }
            }
            crate::fuzz::check_validated(finalize(records.into_iter(), None, RelayDomains::CatchAll).items)
        });
    }

    fn values(f: &Batch) -> Vec<String> {
        let mut v: Vec<String> = f.items.iter().map(|i| i.value.to_lowercase()).collect();
        v.sort();
        v
    }

    fn directory() -> Vec<SearchEntry> {
        vec![
            entry(
                "CN=alice,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["top", "person", "user"]),
                    ("userAccountControl", &["512"]),
                    ("mail", &["Alice@example.com"]),
                    (
                        "proxyAddresses",
                        &[
                            "SMTP:Alice@example.com",
                            "smtp:a.smith@example.com",
                            "X500:/o=Org/cn=alice",
                            "SIP:alice@example.com",
                            "sMtP:alice@legacy.example.com",
                            "smtp:@example.com",
                        ],
                    ),
                ],
            ),
            entry(
                "CN=carol,CN=Users,DC=example,DC=com",
                &[("objectClass", &["user"]), ("userAccountControl", &["514"]), ("mail", &["carol@example.com"])],
            ),
            entry(
                "CN=shared,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["514"]),
                    ("msExchRecipientTypeDetails", &["4"]),
                    ("mail", &["shared@example.com"]),
                ],
            ),
            entry(
                "CN=room1,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["66050"]),
                    ("msExchRecipientTypeDetails", &["16"]),
                    ("proxyAddresses", &["SMTP:room1@example.com"]),
                ],
            ),
            // Disabled accounts that still receive mail: a leaver's mailbox, a
            // linked mailbox (no type set by older tools, but homeMDB), a mail
            // user routed elsewhere (targetAddress).
            entry(
                "CN=leaver,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["514"]),
                    ("msExchRecipientTypeDetails", &["1"]),
                    ("mail", &["leaver@example.com"]),
                ],
            ),
            entry(
                "CN=linked,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["514"]),
                    (
                        "homeMDB",
                        &["CN=DB01,CN=Databases,CN=Exchange Administrative Group,CN=Configuration,DC=example,DC=com"],
                    ),
                    ("mail", &["linked@example.com"]),
                    ("mailNickname", &["linked"]),
                ],
            ),
            entry(
                "CN=mailuser,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["66050"]),
                    ("targetAddress", &["SMTP:mu@cloud.example.net"]),
                    ("mail", &["mailuser@example.com"]),
                    ("mailNickname", &["mailuser"]),
                ],
            ),
            entry(
                "CN=ceo-only,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["512"]),
                    ("msExchRequireAuthToSendTo", &["TRUE"]),
                    ("mail", &["board@example.com"]),
                    ("mailNickname", &["board"]),
                ],
            ),
            entry(
                "CN=sales,CN=Users,DC=example,DC=com",
                &[("objectClass", &["group"]), ("mail", &["sales@example.com"]), ("mailNickname", &["sales"])],
            ),
            // Only `mail`: not an Exchange recipient where Exchange exists.
            entry(
                "CN=legacy,CN=Users,DC=example,DC=com",
                &[("objectClass", &["user"]), ("userAccountControl", &["512"]), ("mail", &["legacy@example.com"])],
            ),
            entry(
                "CN=partner,OU=Contacts,DC=example,DC=com",
                &[
                    ("objectClass", &["top", "person", "contact"]),
                    ("mail", &["partner@external.org"]),
                    ("proxyAddresses", &["SMTP:partner@external.org", "smtp:partner@example.com"]),
                ],
            ),
        ]
    }

    #[test]
    fn active_directory_profile_rules() {
        let f = map_entries(&spec(""), directory()).unwrap();
        assert_eq!(
            values(&f),
            [
                "@example.com",
                "a.smith@example.com",
                "alice@example.com",
                "alice@example.com",
                "alice@legacy.example.com",
                "leaver@example.com",
                "linked@example.com",
                "mailuser@example.com",
                "partner@example.com",
                "room1@example.com",
                "sales@example.com",
                "shared@example.com",
            ]
        );
        // "smtp:@example.com" is passed on as a plain address value, which the
        // address parser refuses: never a catch-all.
        assert!(f.items.iter().all(|i| i.kind == RawKind::Address));
        let legacy = f.left_out.iter().find(|r| r.value == "legacy@example.com").expect("left out");
        assert!(legacy.reason.contains("not-exchange-recipient"), "{}", legacy.reason);
        // Without an Exchange organisation, a user with only `mail` is a recipient.
        let plain = map_entries(&rules_for(&spec(""), false), directory()).unwrap();
        assert!(values(&plain).contains(&"legacy@example.com".to_string()));
        assert!(!values(&plain).contains(&"carol@example.com".to_string()), "disabled-account still applies");
    }

    #[test]
    fn keep_skipped_publishes_auth_only_recipients() {
        let f = map_entries(&spec("keep_skipped = [\"auth-only\"]"), directory()).unwrap();
        assert!(values(&f).contains(&"board@example.com".to_string()));
        assert!(!values(&f).contains(&"carol@example.com".to_string()));
        let err = checked("keep_skipped = [\"nope\"]").unwrap_err();
        assert!(
            err[0]
                .to_string()
                .contains("no skip rule named \"nope\"; known: disabled-account, auth-only, not-exchange-recipient"),
            "{err:?}"
        );
    }

    #[test]
    fn gssapi_binds_need_a_keytab_a_principal_and_no_password() {
        let ok =
            checked("bind = \"gssapi\"\nkeytab_file = \"/etc/rcptsync/ad.keytab\"\nprincipal = \"svc@EXAMPLE.COM\"");
        if cfg!(feature = "kerberos") {
            assert!(ok.is_ok(), "{ok:?}");
        } else {
            let e = ok.unwrap_err();
            assert!(e[0].to_string().contains("built without Kerberos support"), "{e:?}");
        }
        let e = checked("bind = \"gssapi\"").unwrap_err();
        let text: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        assert!(text.iter().any(|t| t.contains("keytab_file: is required")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("principal: is required")), "{text:?}");
        let e = checked(
            "bind = \"gssapi\"\nkeytab_file = \"/k\"\nprincipal = \"svc@EXAMPLE.COM\"\nbind_dn = \"x\"\nbind_password = \"y\"",
        )
        .unwrap_err();
        assert!(e.iter().any(|x| x.to_string().contains("remove bind_dn and bind_password")), "{e:?}");
        let e = checked("keytab_file = \"/k\"\nprincipal = \"svc@EXAMPLE.COM\"").unwrap_err();
        assert!(e.iter().any(|x| x.to_string().contains("need bind = \"gssapi\"")), "{e:?}");
    }

    #[test]
    fn global_catalog_ports_are_recognised() {
        assert!(global_catalog("ldaps://gc.example.com:3269"));
        assert!(global_catalog("ldap://10.0.0.1:3268/"));
        assert!(!global_catalog("ldaps://dc1.example.com"));
        assert!(!global_catalog("ldaps://dc1.example.com:636"));
        assert!(!global_catalog("ldaps://[::1]:32690"));
    }

    #[test]
    fn range_keys_parse() {
        assert_eq!(parse_range("proxyAddresses;range=0-1499"), Some(("proxyAddresses".into(), Some(1499))));
        assert_eq!(parse_range("proxyAddresses;Range=1500-*"), Some(("proxyAddresses".into(), None)));
        assert_eq!(parse_range("mail"), None);
        assert_eq!(parse_range("x;range=0-abc"), None);
    }

    #[test]
    fn uncompleted_ranged_values_fail_the_source() {
        let e = entry("CN=big,DC=example,DC=com", &[("proxyAddresses;range=0-1499", &["smtp:a@example.com"])]);
        let err = map_entries(&spec(""), vec![e]).unwrap_err();
        assert!(err.message.contains("ranged retrieval is not supported yet"), "{}", err.message);
    }
}
