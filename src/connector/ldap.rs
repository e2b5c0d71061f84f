//! `kind = "ldap"`: Active Directory, OpenLDAP and other LDAP directories.
//!
//! Every search is paged (RFC 2696) and must end with result code 0. A size or
//! administrative limit, a lost paging cookie or a dropped connection fails the
//! source: a directory never silently turns into a shorter list (the classic
//! "1,000 recipients" bug of unpaged scripts). Which entries and attributes count
//! is profile data (`connectors/openldap.toml`, …).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::config::secret::Secret;
use crate::config::{Condition, LdapSourceSpec, SkipRule};
use crate::connector::{Connector, Fetched, SourceError};
use crate::policy::{Locator, RawItem, RawKind, Rejected};

/// Default connect timeout, per server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout for one LDAP operation (bind, one page).
pub const OP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct LdapSource {
    spec: LdapSourceSpec,
}

impl LdapSource {
    pub fn new(spec: LdapSourceSpec) -> LdapSource {
        LdapSource { spec }
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
            s = s.set_config(Arc::new(tls_config(ca)?));
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

    async fn search(
        &self,
        base: &str,
        filter: &str,
        attrs: &[String],
        page_size: i32,
    ) -> Result<Vec<SearchEntry>, SourceError> {
        let secret = self.password()?;
        let clean = |m: String| match secret.as_ref().filter(|s| s.expose().len() >= 3) {
            Some(s) => m.replace(s.expose(), "***"),
            None => m,
        };
        let (mut ldap, url) = self.connect(secret.as_ref()).await.map_err(|e| SourceError::new(clean(e)))?;
        let op_timeout = self.spec.op_timeout.unwrap_or(OP_TIMEOUT);
        let adapters: Vec<Box<dyn Adapter<'_, &str, Vec<&str>>>> =
            vec![Box::new(EntriesOnly::new()), Box::new(PagedResults::new(page_size))];
        let attr_refs: Vec<&str> = attrs.iter().map(String::as_str).collect();
        let result = async {
            let mut stream = ldap
                .with_timeout(op_timeout)
                .streaming_search_with(adapters, base, Scope::Subtree, filter, attr_refs)
                .await?;
            let mut entries = Vec::new();
            while let Some(entry) = stream.next().await? {
                entries.push(SearchEntry::construct(entry));
            }
            let res = stream.finish().await;
            Ok::<_, ldap3::LdapError>((entries, res))
        }
        .await;
        let _ = ldap.unbind().await;
        let (entries, res) = result.map_err(|e| SourceError::new(clean(format!("search on {url} failed: {e}"))))?;
        match res.rc {
            0 => Ok(entries),
            4 => Err(SourceError::new(format!(
                "search on {url} hit the server's size limit after {} entries (result 4, sizeLimitExceeded); \
                 the list would be incomplete, so the source fails. Raise the limit for the bind DN or lower page_size",
                entries.len()
            ))),
            11 => Err(SourceError::new(format!(
                "search on {url} hit an administrative limit (result 11, adminLimitExceeded{}); lower page_size (AD and \
                 OpenLDAP cap pages, typically at 1000)",
                if res.text.is_empty() { String::new() } else { format!(": {}", res.text) }
            ))),
            rc => Err(SourceError::new(clean(format!("search on {url} ended with result {rc}: {}", res.text)))),
        }
    }

    fn attributes(&self) -> Vec<String> {
        let spec = &self.spec;
        let mut attrs: Vec<String> = spec.address_attributes.iter().chain(&spec.prefixed_attributes).cloned().collect();
        let conditions = spec.skip.iter().flat_map(|r| std::iter::once(&r.when).chain(r.unless.as_ref()));
        for c in conditions.chain(spec.restrict_to_own_domains.as_ref()) {
            if !attrs.iter().any(|a| a.eq_ignore_ascii_case(&c.attribute)) {
                attrs.push(c.attribute.clone());
            }
        }
        attrs
    }
}

impl Connector for LdapSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let entries =
            self.search(&self.spec.base_dn, &self.spec.filter, &self.attributes(), self.spec.page_size).await?;
        map_entries(&self.spec, entries)
    }

    async fn check(&self) -> Result<String, SourceError> {
        // A one-entry probe: binds, checks the base DN and filter, and that the
        // paged-results control is accepted.
        let entries = self.search(&self.spec.base_dn, &self.spec.filter, &self.attributes(), 1).await;
        match entries {
            Ok(e) => Ok(format!(
                "{}: bound, base {} searchable with paging ({} entries seen)",
                self.spec.url.join(", "),
                self.spec.base_dn,
                e.len()
            )),
            Err(e) => Err(e),
        }
    }
}

/// Whether an entry satisfies a condition. A missing attribute never matches.
fn matches(e: &SearchEntry, c: &Condition) -> bool {
    let Some(values) = e.attrs.iter().find(|(k, _)| k.eq_ignore_ascii_case(&c.attribute)).map(|(_, v)| v) else {
        return false;
    };
    values.iter().any(|v| {
        c.any_of.iter().any(|x| x.eq_ignore_ascii_case(v.trim()))
            || c.bits.is_some_and(|bits| v.trim().parse::<i128>().is_ok_and(|n| (n as u64) & bits == bits))
    })
}

fn domain_of(value: &str) -> Option<String> {
    value.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// Turns directory entries into raw recipient values: the profile's skip rules,
/// address attributes, `smtp:` prefixes and the own-domains restriction. Pure.
pub fn map_entries(spec: &LdapSourceSpec, entries: Vec<SearchEntry>) -> Result<Fetched, SourceError> {
    let mut out = Fetched::default();
    let skips: Vec<&SkipRule> = spec.skip.iter().filter(|r| !spec.keep_skipped.contains(&r.name)).collect();
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let mut own_domains: HashSet<String> = HashSet::new();
    let mut restricted: Vec<RawItem> = Vec::new();
    for e in entries {
        if let Some(name) = e.attrs.keys().find(|n| n.to_ascii_lowercase().contains(";range=")) {
            return Err(SourceError::new(format!(
                "{}: the server returned {name} in ranges (more values than it sends at once); ranged retrieval is not \
                 supported yet, so the source fails rather than publish a partial list",
                e.dn
            )));
        }
        if let Some(rule) =
            skips.iter().find(|r| matches(&e, &r.when) && !r.unless.as_ref().is_some_and(|u| matches(&e, u)))
        {
            tracing::debug!(dn = %e.dn, rule = %rule.name, "left out: {}", rule.why);
            *skipped.entry(rule.name.as_str()).or_default() += 1;
            continue;
        }
        let restrict = spec.restrict_to_own_domains.as_ref().is_some_and(|c| matches(&e, c));
        let mut items = Vec::new();
        for (name, values) in &e.attrs {
            let plain = spec.address_attributes.iter().any(|a| a.eq_ignore_ascii_case(name));
            let prefixed = spec.prefixed_attributes.iter().any(|a| a.eq_ignore_ascii_case(name));
            for v in values {
                let locator = Locator::Object(format!("{} {name}", e.dn).into());
                if plain {
                    items.push(RawItem { value: v.clone(), kind: RawKind::Address, locator });
                } else if prefixed {
                    // "SMTP:primary", "smtp:secondary": any case. X500:, SIP:, … are not mail.
                    match v.split_once(':') {
                        Some((p, addr)) if p.eq_ignore_ascii_case("smtp") => {
                            items.push(RawItem { value: addr.to_string(), kind: RawKind::Address, locator })
                        }
                        Some(_) => {}
                        None => out.rejected.push(Rejected {
                            value: v.clone(),
                            locator,
                            reason: "has no address-type prefix such as smtp:".into(),
                        }),
                    }
                }
            }
        }
        for (name, values) in &e.bin_attrs {
            if spec.address_attributes.iter().chain(&spec.prefixed_attributes).any(|a| a.eq_ignore_ascii_case(name)) {
                for v in values {
                    out.rejected.push(Rejected {
                        value: String::from_utf8_lossy(v).into_owned(),
                        locator: Locator::Object(format!("{} {name}", e.dn).into()),
                        reason: "is not valid UTF-8".into(),
                    });
                }
            }
        }
        if restrict {
            restricted.extend(items);
        } else {
            own_domains.extend(items.iter().filter_map(|i| domain_of(&i.value)));
            out.items.extend(items);
        }
    }
    let mut outside = 0;
    for item in restricted {
        if domain_of(&item.value).is_some_and(|d| own_domains.contains(&d)) {
            out.items.push(item);
        } else {
            outside += 1;
        }
    }
    for (rule, n) in skipped {
        tracing::info!(rule, entries = n, "entries left out by a skip rule");
    }
    if outside > 0 {
        tracing::info!(
            addresses = outside,
            "addresses of restricted entries (e.g. contacts) outside the directory's own domains left out"
        );
    }
    Ok(out)
}

fn tls_config(ca_file: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
        roots.add(c).map_err(|e| format!("ca_file {}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca_file {} contains no certificate", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn spec(extra: &str) -> LdapSourceSpec {
        let text = format!(
            "state_dir = \"s\"\n[[source]]\nname = \"ad\"\nkind = \"ldap\"\nprofile = \"active-directory\"\nurl = \"ldaps://dc1\"\nbase_dn = \"DC=example,DC=com\"\n{extra}\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n"
        );
        let cfg = crate::config::parse(&text, std::path::Path::new("/")).unwrap();
        match &cfg.sources[0].spec {
            crate::config::SourceSpec::Ldap(l) => l.clone(),
            _ => panic!("not ldap"),
        }
    }

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> SearchEntry {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, vs) in attrs {
            m.insert(k.to_string(), vs.iter().map(|v| v.to_string()).collect());
        }
        SearchEntry { dn: dn.to_string(), attrs: m, bin_attrs: HashMap::new() }
    }

    fn values(f: &Fetched) -> Vec<String> {
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
            entry(
                "CN=ceo-only,CN=Users,DC=example,DC=com",
                &[
                    ("objectClass", &["user"]),
                    ("userAccountControl", &["512"]),
                    ("msExchRequireAuthToSendTo", &["TRUE"]),
                    ("mail", &["board@example.com"]),
                ],
            ),
            entry(
                "CN=sales,CN=Users,DC=example,DC=com",
                &[("objectClass", &["group"]), ("mail", &["sales@example.com"])],
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
                "partner@example.com",
                "room1@example.com",
                "sales@example.com",
                "shared@example.com",
            ]
        );
        // "smtp:@example.com" is passed on as a plain address value, which the
        // address parser refuses: never a catch-all.
        assert!(f.items.iter().all(|i| i.kind == RawKind::Address));
    }

    #[test]
    fn keep_skipped_publishes_auth_only_recipients() {
        let f = map_entries(&spec("keep_skipped = [\"auth-only\"]"), directory()).unwrap();
        assert!(values(&f).contains(&"board@example.com".to_string()));
        assert!(!values(&f).contains(&"carol@example.com".to_string()));
        let err = crate::config::parse(
            "[[source]]\nname = \"ad\"\nkind = \"ldap\"\nprofile = \"active-directory\"\nurl = \"ldaps://dc\"\nbase_dn = \"DC=x\"\nkeep_skipped = [\"nope\"]\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"/tmp/o\"\n",
            std::path::Path::new("/"),
        )
        .unwrap_err();
        assert!(
            err[0].to_string().contains("no skip rule named \"nope\"; known: disabled-account, auth-only"),
            "{err:?}"
        );
    }

    #[test]
    fn ranged_values_fail_the_source() {
        let e = entry("CN=big,DC=example,DC=com", &[("proxyAddresses;range=0-1499", &["smtp:a@example.com"])]);
        let err = map_entries(&spec(""), vec![e]).unwrap_err();
        assert!(err.message.contains("ranged retrieval is not supported yet"), "{}", err.message);
    }
}
