//! Exchange's accepted domains, read from the forest's Configuration NC.
//!
//! An Exchange organisation accepts mail only for its accepted domains
//! (`msExchAcceptedDomain` objects under `CN=Microsoft Exchange,CN=Services,`
//! in the Configuration naming context). A mail user's or contact's address in
//! any other domain (`x@gmail.com`) is not one the primary receives for, and
//! publishing it would make its domain look like one of ours. The low two bits
//! of `msExchAcceptedDomainFlags` are the domain type (0 authoritative,
//! 1 external relay, 2 internal relay); bit 256 marks an outbound-only domain.
//! On a relay domain the primary accepts any recipient and relays the unknown
//! ones, so it is published as a catch-all (unless `relay_domains =
//! "addresses"`).

use ldap3::{Scope, SearchEntry};
use serde::Deserialize;

use super::{LdapSource, first};
use crate::policy::{Locator, RawItem, RawKind, Rejected};

/// Where the AD profile learns which domains the primary accepts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AcceptedDomainsFrom {
    /// Nowhere: every address the directory holds counts (generic LDAP).
    #[default]
    None,
    /// Exchange's accepted domains in the Configuration NC; without an Exchange
    /// organisation, `policy.domains` must say.
    Exchange,
}

/// What a relay accepted domain becomes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RelayDomains {
    /// `@domain`: the primary accepts any recipient there.
    #[default]
    CatchAll,
    /// Only the addresses the directory holds in it.
    Addresses,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainType {
    Authoritative,
    ExternalRelay,
    InternalRelay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedDomain {
    /// Lowercased; `*.example.com` for a wildcard domain.
    pub name: String,
    pub kind: DomainType,
    /// Mail to it is not accepted from outside (hybrid, bit 256).
    pub outbound_only: bool,
}

impl AcceptedDomain {
    /// Reads one `msExchAcceptedDomain` entry.
    fn from_entry(e: &SearchEntry) -> Option<AcceptedDomain> {
        let name = first(e, "msExchAcceptedDomainName").or_else(|| first(e, "cn"))?;
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let normal = match name.strip_prefix("*.") {
            Some(rest) => format!("*.{}", crate::policy::address::parse_domain(rest).ok()?),
            None => crate::policy::address::parse_domain(&name).ok()?,
        };
        let flags: i64 = first(e, "msExchAcceptedDomainFlags").and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let kind = match flags & 3 {
            1 => DomainType::ExternalRelay,
            2 => DomainType::InternalRelay,
            _ => DomainType::Authoritative,
        };
        Some(AcceptedDomain { name: normal, kind, outbound_only: flags & 256 != 0 })
    }

    fn covers(&self, domain: &str) -> bool {
        match self.name.strip_prefix("*.") {
            // "*.contoso.com": contoso.com and every domain under it.
            Some(parent) => domain == parent || domain.ends_with(&format!(".{parent}")),
            None => domain == self.name,
        }
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            DomainType::Authoritative => "Authoritative",
            DomainType::ExternalRelay => "ExternalRelay",
            DomainType::InternalRelay => "InternalRelay",
        }
    }
}

/// The organisation's accepted domains, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub domains: Vec<AcceptedDomain>,
    /// Where they were read (for messages).
    pub container: String,
}

impl Accepted {
    /// The accepted domain that takes inbound mail for `domain`, if any.
    fn inbound(&self, domain: &str) -> Option<&AcceptedDomain> {
        self.domains.iter().filter(|d| !d.outbound_only).find(|d| d.covers(domain))
    }

    /// Keeps the items in accepted domains; moves the others to `left_out`
    /// with the reason; adds each relay domain as a catch-all.
    pub fn apply(&self, items: Vec<RawItem>, out: &mut crate::connector::Batch, relay: RelayDomains) {
        for item in items {
            let domain = crate::policy::address::parse_address(&item.value).ok().map(|e| e.domain().to_string());
            match domain {
                // Invalid values go on to validation, which refuses and reports them.
                None => out.items.push(item),
                Some(d) if self.inbound(&d).is_some() => out.items.push(item),
                Some(d) => out.left_out.push(Rejected {
                    value: item.value,
                    locator: item.locator,
                    reason: format!(
                        "domain {d} is not an accepted domain of the Exchange organisation (msExchAcceptedDomain under {})",
                        self.container
                    ),
                }),
            }
        }
        if relay == RelayDomains::Addresses {
            return;
        }
        for d in self.domains.iter().filter(|d| d.kind != DomainType::Authoritative && !d.outbound_only) {
            if d.name.starts_with("*.") {
                tracing::warn!(domain = %d.name, "a wildcard relay domain cannot be published as a catch-all; list its subdomains in policy.include");
                continue;
            }
            out.items.push(RawItem {
                value: format!("@{}", d.name),
                kind: RawKind::CatchAll,
                locator: Locator::Object(
                    format!(
                        "accepted domain {} ({} relay domain): Exchange accepts any recipient there and relays the \
                         ones it does not know (relay_domains = \"addresses\" publishes only the known ones)",
                        d.name,
                        d.type_name()
                    )
                    .into(),
                ),
            });
        }
    }
}

impl LdapSource {
    /// The Exchange organisation's accepted domains, or None when the forest
    /// has no Exchange organisation (no `CN=Microsoft Exchange` container, or
    /// no accepted domain in it).
    pub(super) async fn accepted_domains(&self, ldap: &mut ldap3::Ldap, url: &str) -> Result<Option<Accepted>, String> {
        let root = self.read_entry(ldap, url, "", &["configurationNamingContext"]).await?;
        let Some(config) = first(&root, "configurationNamingContext") else {
            return Err(format!(
                "{url} publishes no configurationNamingContext in its rootDSE: accepted_domains = \"exchange\" needs \
                 Active Directory (set accepted_domains = \"none\" and policy.domains for another directory)"
            ));
        };
        let container = format!("CN=Microsoft Exchange,CN=Services,{config}");
        let op_timeout = self.spec.op_timeout.unwrap_or(super::OP_TIMEOUT);
        let attrs = vec!["msExchAcceptedDomainName", "msExchAcceptedDomainFlags", "cn"];
        let ldap3::SearchResult(entries, res) = ldap
            .with_timeout(op_timeout)
            .search(&container, Scope::Subtree, "(objectClass=msExchAcceptedDomain)", attrs)
            .await
            .map_err(|e| format!("reading the accepted domains under {container} on {url} failed: {e}"))?;
        match res.rc {
            0 => {}
            // noSuchObject: no Exchange organisation in this forest.
            32 => return Ok(None),
            rc => {
                return Err(format!(
                    "reading the accepted domains under {container} on {url} ended with result {rc}: {}",
                    res.text
                ));
            }
        }
        if !res.refs.is_empty() {
            return Err(format!(
                "reading the accepted domains under {container} on {url} returned referrals; point url at a DC of \
                 the forest root or at a Global Catalog"
            ));
        }
        let domains: Vec<AcceptedDomain> =
            entries.into_iter().map(SearchEntry::construct).filter_map(|e| AcceptedDomain::from_entry(&e)).collect();
        if domains.is_empty() {
            return Ok(None);
        }
        tracing::info!(
            server = %url,
            domains = %domains.iter().map(|d| format!("{} ({})", d.name, d.type_name())).collect::<Vec<_>>().join(", "),
            "Exchange accepted domains"
        );
        Ok(Some(Accepted { domains, container }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn entry(name: &str, flags: &str) -> SearchEntry {
        let mut attrs = HashMap::new();
        attrs.insert("msExchAcceptedDomainName".to_string(), vec![name.to_string()]);
        attrs.insert("msExchAcceptedDomainFlags".to_string(), vec![flags.to_string()]);
        SearchEntry { dn: format!("CN={name}"), attrs, bin_attrs: HashMap::new() }
    }

    fn item(v: &str) -> RawItem {
        RawItem { value: v.into(), kind: RawKind::Address, locator: Locator::Object(format!("obj {v}").into()) }
    }

    #[test]
    fn accepted_domains_decide_and_relay_domains_become_catch_alls() {
        let domains: Vec<AcceptedDomain> = [
            entry("Contoso.com", "4"),          // authoritative, the default domain
            entry("*.branch.contoso.com", "0"), // wildcard authoritative
            entry("partner-relay.com", "2"),    // internal relay
            entry("hosted.example", "1"),       // external relay
            entry("cloud-only.contoso.com", "256"),
        ]
        .iter()
        .filter_map(AcceptedDomain::from_entry)
        .collect();
        assert_eq!(domains[0].name, "contoso.com");
        assert_eq!(domains[2].kind, DomainType::InternalRelay);
        assert_eq!(domains[3].kind, DomainType::ExternalRelay);
        assert!(domains[4].outbound_only);
        let accepted = Accepted { domains, container: "CN=Microsoft Exchange,CN=Services,CN=Configuration".into() };
        let mut out = crate::connector::Batch::default();
        let items = [
            "a@contoso.com",
            "b@x.branch.contoso.com",
            "ext@gmail.com",
            "c@cloud-only.contoso.com",
            "d@partner-relay.com",
        ];
        accepted.apply(items.iter().map(|v| item(v)).collect(), &mut out, RelayDomains::CatchAll);
        let kept: Vec<&str> = out.items.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(
            kept,
            ["a@contoso.com", "b@x.branch.contoso.com", "d@partner-relay.com", "@partner-relay.com", "@hosted.example"]
        );
        let left: Vec<&str> = out.left_out.iter().map(|r| r.value.as_str()).collect();
        assert_eq!(left, ["ext@gmail.com", "c@cloud-only.contoso.com"]);
        assert!(out.left_out[0].reason.contains("not an accepted domain"), "{}", out.left_out[0].reason);
        assert!(out.items[3].locator.to_string().contains("InternalRelay relay domain"));

        let mut out = crate::connector::Batch::default();
        accepted.apply(vec![item("d@partner-relay.com")], &mut out, RelayDomains::Addresses);
        assert_eq!(out.items.len(), 1, "no catch-alls with relay_domains = \"addresses\"");
    }
}
