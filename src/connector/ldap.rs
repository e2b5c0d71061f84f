//! `kind = "ldap"`: Active Directory, OpenLDAP and other LDAP directories.
//!
//! Every search is paged (RFC 2696) and must end with result code 0. A size or
//! administrative limit, a lost paging cookie or a dropped connection fails the
//! source: a directory never silently turns into a shorter list (the classic
//! "1,000 recipients" bug of unpaged scripts). Which entries and attributes count
//! is profile data (`connectors/openldap.toml`, …).

use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::config::LdapSourceSpec;
use crate::config::secret::Secret;
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

    fn to_fetched(&self, entries: Vec<SearchEntry>) -> Result<Fetched, SourceError> {
        let mut out = Fetched::default();
        for e in entries {
            for (name, values) in &e.attrs {
                let lower = name.to_ascii_lowercase();
                if lower.contains(";range=") {
                    return Err(SourceError::new(format!(
                        "{}: the server returned {name} in ranges (more values than it sends at once); ranged retrieval is not \
                         supported yet, so the source fails rather than publish a partial list",
                        e.dn
                    )));
                }
                let plain = self.spec.address_attributes.iter().any(|a| a.eq_ignore_ascii_case(name));
                let prefixed = self.spec.prefixed_attributes.iter().any(|a| a.eq_ignore_ascii_case(name));
                for v in values {
                    let locator = Locator::Object(format!("{} {name}", e.dn).into());
                    if plain {
                        out.items.push(RawItem { value: v.clone(), kind: RawKind::Address, locator });
                    } else if prefixed {
                        // "SMTP:primary", "smtp:secondary": any case. X500:, SIP:, … are not mail.
                        match v.split_once(':') {
                            Some((p, addr)) if p.eq_ignore_ascii_case("smtp") => {
                                out.items.push(RawItem { value: addr.to_string(), kind: RawKind::Address, locator })
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
                if self
                    .spec
                    .address_attributes
                    .iter()
                    .chain(&self.spec.prefixed_attributes)
                    .any(|a| a.eq_ignore_ascii_case(name))
                {
                    for v in values {
                        out.rejected.push(Rejected {
                            value: String::from_utf8_lossy(v).into_owned(),
                            locator: Locator::Object(format!("{} {name}", e.dn).into()),
                            reason: "is not valid UTF-8".into(),
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn attributes(&self) -> Vec<String> {
        self.spec.address_attributes.iter().chain(&self.spec.prefixed_attributes).cloned().collect()
    }
}

impl Connector for LdapSource {
    async fn fetch(&self) -> Result<Fetched, SourceError> {
        let entries =
            self.search(&self.spec.base_dn, &self.spec.filter, &self.attributes(), self.spec.page_size).await?;
        self.to_fetched(entries)
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
