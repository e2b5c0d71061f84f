//! `rcptsync init`: prints a commented starting config for one kind of
//! source and one MTA, the setups the README describes, generated so that
//! `rcptsync check --offline` passes on every combination (a test runs them
//! all). Nothing is written: redirect it to `/etc/rcptsync/rcptsync.toml`.

use std::fmt::Write as _;

/// Where the recipients come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitSource {
    File,
    Ldap,
    Ad,
    Graph,
    Google,
    Sql,
}

/// Which MTA reads the list; `none` writes a plain list under the state dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitMta {
    Postfix,
    Exim,
    Opensmtpd,
    Sendmail,
    None,
}

/// Profiles `init` offers per source kind (the first is the default).
pub fn profiles_for(source: InitSource) -> &'static [&'static str] {
    match source {
        InitSource::Sql => &["postfixadmin", "iredmail", "mailcow", "modoboa", "mailu"],
        InitSource::Ldap => &["openldap", "iredmail-ldap"],
        _ => &[],
    }
}

/// The config text, or why the combination cannot be made.
pub fn config(source: InitSource, profile: Option<&str>, mta: InitMta) -> Result<String, String> {
    let offered = profiles_for(source);
    let profile = match (profile, offered.first()) {
        (None, first) => first.copied(),
        (Some(p), _) if offered.contains(&p) => Some(p),
        (Some(p), _) if offered.is_empty() => {
            return Err(format!("--source {source:?} takes no --profile (got {p:?})").to_lowercase());
        }
        (Some(p), _) => {
            return Err(format!("--profile {p:?} is not one for this source; choose one of: {}", offered.join(", ")));
        }
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# rcptsync configuration: a starting point made by `rcptsync init`.\n\
         # Fill in the example values, then `rcptsync check` (it connects to the\n\
         # source), `rcptsync sync --dry-run --diff`, and the first `rcptsync sync`\n\
         # before you point the MTA at the outputs. Every key: man rcptsync, README.\n\n\
         # State (last good lists, history, caches); the daemon's unit owns it.\n\
         state_dir = \"/var/lib/rcptsync\"\n\n\
         [policy]\n\
         # Keep only these domains (recommended: the domains this backup MX relays for).\n\
         # domains = [\"example.com\"]\n\
         # Addresses the MTA sees with an extension (user+tag@domain) count as user@domain;\n\
         # set it like Postfix's recipient_delimiter on the backup MX.\n\
         # recipient_delimiter = \"+\"\n\n\
         [guard]\n\
         # A run that would remove more than this share of the list is refused.\n\
         max_removed_percent = 10\n"
    );
    t.push_str(&source_section(source, profile));
    t.push_str(output_section(mta));
    t.push_str(
        "\n# As a daemon (`rcptsync daemon`, the rcptsync.service unit): when to sync.\n\
         # [daemon]\n\
         # schedule = \"*/5 * * * *\"\n",
    );
    Ok(t)
}

fn source_section(source: InitSource, profile: Option<&str>) -> String {
    let head = "\n[[source]]\n";
    match source {
        InitSource::File => format!(
            "{head}name = \"recipients\"\nkind = \"file\"\n\
             # One address per line; \"@domain\" lines are catch-alls. Export it from the\n\
             # primary (or keep it by hand); nothing else reads it.\n\
             path = \"/etc/rcptsync/recipients.txt\"\n"
        ),
        InitSource::Ldap => format!(
            "{head}name = \"ldap\"\nkind = \"ldap\"\nprofile = \"{}\"\n\
             url = [\"ldaps://ldap1.example.com\", \"ldaps://ldap2.example.com\"]   # tried in order\n\
             bind_dn = \"cn=rcptsync,ou=services,dc=example,dc=com\"\n\
             bind_password_file = \"/etc/rcptsync/ldap-password\"   # mode 0600, owned by rcptsync\n\
             base_dn = \"ou=people,dc=example,dc=com\"\n\
             # ca_file = \"/etc/rcptsync/ldap-ca.pem\"               # if the CA is not in the system store\n",
            profile.unwrap_or("openldap")
        ),
        InitSource::Ad => format!(
            "{head}name = \"corp-ad\"\nkind = \"ldap\"\nprofile = \"active-directory\"\n\
             url = [\"ldaps://dc1.corp.example.com\", \"ldaps://dc2.corp.example.com\"]\n\
             bind_dn = \"svc-rcptsync@corp.example.com\"\n\
             bind_password_file = \"/etc/rcptsync/ad-password\"     # mode 0600, owned by rcptsync\n\
             base_dn = \"DC=corp,DC=example,DC=com\"\n\
             # Exchange's accepted domains decide which addresses count; a forest\n\
             # without Exchange needs [policy] domains above.\n\
             # A multi-domain forest: a Global Catalog, url = \"ldaps://gc1.corp.example.com:3269\".\n\
             # Kerberos instead of a password (a build with --features kerberos):\n\
             # bind = \"gssapi\"\n\
             # keytab_file = \"/etc/rcptsync/rcptsync.keytab\"\n\
             # principal = \"svc-rcptsync@CORP.EXAMPLE.COM\"\n"
        ),
        InitSource::Graph => format!(
            "{head}name = \"m365\"\nkind = \"graph\"\n\
             tenant = \"contoso.onmicrosoft.com\"                   # or the tenant ID\n\
             client_id = \"00000000-0000-0000-0000-000000000000\"  # the app registration's ID\n\
             client_secret_file = \"/etc/rcptsync/graph-secret\"   # or certificate_file + private_key_file\n\
             # Groups closed to outside senders that Graph cannot tell about:\n\
             # external_senders_refused = [\"all-staff@contoso.com\"]\n"
        ),
        InitSource::Google => format!(
            "{head}name = \"workspace\"\nkind = \"google\"\n\
             credentials_file = \"/etc/rcptsync/google-sa.json\"   # the service account's key, mode 0600\n\
             subject = \"admin@example.com\"                        # the admin it impersonates\n"
        ),
        InitSource::Sql => {
            let p = profile.unwrap_or("postfixadmin");
            let url = match p {
                "iredmail" => "mysql://rcptsync@db.example.com/vmail",
                "mailcow" => "mysql://rcptsync@db.example.com/mailcow",
                "modoboa" => "postgres://rcptsync@db.example.com/modoboa",
                "mailu" => "postgres://rcptsync@db.example.com/mailu",
                _ => "postgres://rcptsync@db.example.com/postfixadmin",
            };
            format!(
                "{head}name = \"primary\"\nkind = \"sql\"\nprofile = \"{p}\"\n\
                 # A read-only database user on the primary (GRANT SELECT); postgres://, mysql:// or sqlite:///path.\n\
                 url = \"{url}\"\n\
                 password_file = \"/etc/rcptsync/db-password\"          # mode 0600, owned by rcptsync\n"
            )
        }
    }
}

fn output_section(mta: InitMta) -> &'static str {
    match mta {
        InitMta::Postfix => {
            "\n# Postfix on the backup MX (main.cf):\n\
             #   relay_domains = lmdb:/etc/postfix/rcptsync/relay_domains\n\
             #   relay_recipient_maps = lmdb:/etc/postfix/rcptsync/relay_recipients\n\
             [[output]]\n\
             name = \"relay-recipients\"\n\
             template = \"postfix\"\n\
             path = \"/etc/postfix/rcptsync/relay_recipients\"\n\
             postmap = \"lmdb\"\n\n\
             [[output]]\n\
             name = \"relay-domains\"\n\
             template = \"postfix-domains\"\n\
             path = \"/etc/postfix/rcptsync/relay_domains\"\n\
             postmap = \"lmdb\"\n"
        }
        InitMta::Exim => {
            "\n# Exim on the backup MX, in acl_check_rcpt before the accept for relay domains:\n\
             #   deny    domains     = +relay_to_domains\n\
             #           !recipients = lsearch*@;/etc/exim4/rcptsync/relay_recipients\n\
             #           message     = 5.1.1 <$local_part@$domain> User unknown in relay recipient table\n\
             [[output]]\n\
             name = \"exim\"\n\
             template = \"exim\"\n\
             path = \"/etc/exim4/rcptsync/relay_recipients\"\n\
             mode = \"0640\"   # chgrp the file to Debian-exim once; rcptsync keeps owner and mode\n"
        }
        InitMta::Opensmtpd => {
            "\n# OpenSMTPD on the backup MX (smtpd.conf, 6.4 and later):\n\
             #   table rcpts file:/etc/mail/rcptsync/recipients\n\
             #   table relaydomains file:/etc/mail/rcptsync/relay-domains\n\
             #   match from any for domain <relaydomains> rcpt-to <rcpts> action \"relay\"\n\
             # and systemctl enable --now rcptsync-opensmtpd.path (smtpctl update table is root's).\n\
             [[output]]\n\
             name = \"opensmtpd-recipients\"\n\
             template = \"opensmtpd\"\n\
             path = \"/etc/mail/rcptsync/recipients\"\n\n\
             [[output]]\n\
             name = \"opensmtpd-domains\"\n\
             template = \"opensmtpd-domains\"\n\
             path = \"/etc/mail/rcptsync/relay-domains\"\n"
        }
        InitMta::Sendmail => {
            "\n# Sendmail on the backup MX (sendmail.mc; README, Sendmail):\n\
             #   define(`confTRUSTED_USER', `rcptsync')dnl   (else Sendmail ignores the map)\n\
             #   FEATURE(`access_db', `hash -T<TMPF> -o /etc/mail/rcptsync/access')dnl\n\
             #   FEATURE(`blocklist_recipients')dnl\n\
             #   FEATURE(`relay_hosts_only')dnl\n\
             [[output]]\n\
             name = \"sendmail-access\"\n\
             template = \"sendmail-access\"\n\
             path = \"/etc/mail/rcptsync/access\"\n\
             makemap = \"hash\"\n"
        }
        InitMta::None => {
            "\n# A plain list, one address per line, for a look before any MTA uses it.\n\
             [[output]]\n\
             name = \"list\"\n\
             template = \"plain\"\n\
             path = \"/var/lib/rcptsync/out/recipients\"\n"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_parses_and_profiles_are_checked() {
        use clap::ValueEnum as _;
        for s in InitSource::value_variants() {
            let mut profiles: Vec<Option<&str>> = vec![None];
            profiles.extend(profiles_for(*s).iter().map(|p| Some(*p)));
            for p in profiles {
                for m in InitMta::value_variants() {
                    let text = config(*s, p, *m).unwrap();
                    let parsed = crate::config::parse(&text, std::path::Path::new("/etc/rcptsync"));
                    assert!(parsed.is_ok(), "{s:?} {p:?} {m:?}: {:?}\n{text}", parsed.err());
                }
            }
        }
        assert!(
            config(InitSource::Sql, Some("nosuch"), InitMta::Postfix).unwrap_err().contains("postfixadmin, iredmail")
        );
        assert!(config(InitSource::Graph, Some("x"), InitMta::Postfix).unwrap_err().contains("takes no --profile"));
    }
}
