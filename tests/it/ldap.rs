//! The LDAP connector against a real OpenLDAP server (slapd on loopback with an
//! AD-like 1000-entry limit per unpaged search).

use std::time::Duration;

use crate::support::slapd::{LIMITED_DN, SYNC_DN, SYNC_PASSWORD, Slapd, person};
use crate::util::{Run, TestDir, say};

/// Whether the LDAP server tests run; says why not when skipping.
pub fn enabled(test: &str) -> bool {
    if std::env::var("RCPTSYNC_TEST_REAL_DB").is_ok_and(|v| v == "1")
        && std::path::Path::new("/usr/sbin/slapd").exists()
    {
        return true;
    }
    say(&format!(
        "SKIPPED {test}: LDAP server tests need slapd and RCPTSYNC_TEST_REAL_DB=1 (scripts/test.sh installs and sets both)"
    ));
    false
}

fn people(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i % 100 == 0 {
            s.push_str(&person(
                &format!("u{i}"),
                &[&format!("User{i}@Example.test")],
                &[&format!("alias{i}@example.test")],
            ));
        } else {
            s.push_str(&person(&format!("u{i}"), &[&format!("user{i}@example.test")], &[]));
        }
    }
    s.push_str(&person("nomail", &[], &[]));
    s.push_str(&person("evil", &["evil@example.test OK"], &[]));
    s
}

fn config(t: &TestDir, keys: &str) {
    std::fs::create_dir_all(t.join("out")).unwrap();
    let pw = t.write("ldap-password", &format!("{SYNC_PASSWORD}\n"));
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"dir\"\nkind = \"ldap\"\nprofile = \"openldap\"\nbase_dn = \"ou=people,dc=example,dc=test\"\nbind_password_file = \"{}\"\n{keys}\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n",
        pw.display()
    ));
}

fn list(t: &TestDir) -> Run {
    t.run(&["list", "-c", "rcptsync.toml"])
}

#[test]
fn openldap_paged_sync_returns_every_entry_over_ldaps() {
    if !enabled("openldap_paged_sync_returns_every_entry_over_ldaps") {
        return;
    }
    let t = TestDir::new();
    let s = Slapd::start(&t.join("slapd"), &people(2500));
    config(&t, &format!("url = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nca_file = \"{}\"", s.ldaps_url(), s.ca.display()));
    let r = list(&t);
    r.expect(0);
    let got: Vec<&str> = r.stdout.lines().collect();
    // 2,500 people (mixed case folded) + 25 aliases; no entry without mail, no hostile value.
    assert_eq!(got.len(), 2525, "{}", r.stderr);
    assert!(
        got.contains(&"user0@example.test")
            && got.contains(&"alias0@example.test")
            && got.contains(&"user2499@example.test")
    );
    assert!(r.stderr.contains("value=\"evil@example.test OK\""), "{}", r.stderr);
    assert!(r.stderr.contains("object=uid=evil,ou=people,dc=example,dc=test mail"), "{}", r.stderr);
    // check binds and proves paging works.
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("paging supported"), "{}", r.stdout);
}

#[test]
fn limits_fail_the_source_instead_of_truncating() {
    if !enabled("limits_fail_the_source_instead_of_truncating") {
        return;
    }
    let t = TestDir::new();
    let s = Slapd::start(&t.join("slapd"), &people(2500));
    let tls = format!("url = \"{}\"\nca_file = \"{}\"", s.ldaps_url(), s.ca.display());
    // A page bigger than the server allows: adminLimitExceeded, not 1000 entries.
    config(&t, &format!("{tls}\nbind_dn = \"{SYNC_DN}\"\npage_size = 5000"));
    let r = list(&t);
    r.expect(1);
    assert!(r.stderr.contains("adminLimitExceeded") && r.stderr.contains("lower page_size"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    // A total limit hit after 1500 entries: sizeLimitExceeded, the source fails.
    config(&t, &format!("{tls}\nbind_dn = \"{LIMITED_DN}\""));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(1);
    let err = r.json()["sources"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("size limit after") && err.contains("sizeLimitExceeded"), "{err}");
    assert!(!t.join("out/relay_recipients").exists());
}

#[test]
fn failover_credentials_tls_and_plaintext_rules() {
    if !enabled("failover_credentials_tls_and_plaintext_rules") {
        return;
    }
    let t = TestDir::new();
    let s = Slapd::start(&t.join("slapd"), &people(10));
    let dead = crate::support::db::free_port();
    // The first DC is down: the second answers.
    config(
        &t,
        &format!(
            "url = [\"ldaps://127.0.0.1:{dead}\", \"{}\"]\nbind_dn = \"{SYNC_DN}\"\nca_file = \"{}\"\nconnect_timeout = \"2s\"",
            s.ldaps_url(),
            s.ca.display()
        ),
    );
    let r = list(&t);
    r.expect(0);
    assert_eq!(r.stdout.lines().count(), 11, "{}", r.stderr);
    assert!(r.stderr.contains("LDAP server unreachable; trying the next one"), "{}", r.stderr);

    // Wrong password: a clear error that names what to fix, without the password.
    let wrong = t.write("wrong", "Not-The-Password-3\n");
    let cfg =
        t.read("rcptsync.toml").replace(&t.join("ldap-password").display().to_string(), &wrong.display().to_string());
    t.config(&cfg);
    let r = list(&t);
    r.expect(1);
    assert!(r.stderr.contains("invalid credentials (check bind_dn and bind_password"), "{}", r.stderr);
    assert!(!r.stderr.contains("Not-The-Password-3") && !r.stderr.contains(SYNC_PASSWORD));

    // An untrusted certificate fails with a hint.
    config(&t, &format!("url = \"{}\"\nbind_dn = \"{SYNC_DN}\"", s.ldaps_url()));
    let r = list(&t);
    r.expect(1);
    assert!(r.stderr.contains("set ca_file"), "{}", r.stderr);

    // StartTLS on ldap:// with the CA works.
    config(
        &t,
        &format!("url = \"{}\"\nstarttls = true\nbind_dn = \"{SYNC_DN}\"\nca_file = \"{}\"", s.url(), s.ca.display()),
    );
    list(&t).expect(0);
    // StartTLS to a certificate nobody trusts fails the same clear way.
    config(&t, &format!("url = \"{}\"\nstarttls = true\nbind_dn = \"{SYNC_DN}\"", s.url()));
    let r = list(&t);
    r.expect(1);
    assert!(r.stderr.contains("set ca_file"), "{}", r.stderr);

    // A password over plain ldap:// is refused by config validation ...
    config(&t, &format!("url = \"{}\"\nbind_dn = \"{SYNC_DN}\"", s.url()));
    let r = list(&t);
    r.expect(78);
    assert!(r.stderr.contains("a password bind over unencrypted ldap:// is refused"), "{}", r.stderr);
    // ... unless explicitly allowed, which is logged.
    config(&t, &format!("url = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nallow_plaintext_bind = true", s.url()));
    let r = list(&t);
    r.expect(0);
    assert!(r.stderr.contains("allow_plaintext_bind"), "{}", r.stderr);
}

#[test]
fn server_down_keeps_last_good_and_new_entries_arrive() {
    if !enabled("server_down_keeps_last_good_and_new_entries_arrive") {
        return;
    }
    let t = TestDir::new();
    let mut s = Slapd::start(&t.join("slapd"), &people(20));
    config(
        &t,
        &format!(
            "url = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nca_file = \"{}\"\nconnect_timeout = \"2s\"",
            s.ldaps_url(),
            s.ca.display()
        ),
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = t.read("out/relay_recipients");
    s.stop();
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(0);
    assert_eq!(r.json()["sources"][0]["status"], "last_good");
    assert_eq!(t.read("out/relay_recipients"), published);
    s.start_again();
    s.add(&person("newbie", &["newbie@example.test"], &[]));
    std::thread::sleep(Duration::from_millis(50));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(t.read("out/relay_recipients").contains("newbie@example.test OK\n"));
}

#[test]
fn iredmail_ldap_profile() {
    if !enabled("iredmail_ldap_profile") {
        return;
    }
    let entry = |uid: &str, class: &str, attrs: &[(&str, &str)]| {
        let mut e = format!("dn: mail={uid}@example.test,ou=people,dc=example,dc=test\n");
        if class == "mailUser" {
            e.push_str("objectClass: inetOrgPerson\nobjectClass: mailUser\n");
            e.push_str(&format!("uid: {uid}\ncn: {uid}\nsn: {uid}\n"));
        } else {
            e.push_str(&format!("objectClass: {class}\ncn: {uid}\n"));
        }
        e.push_str(&format!("mail: {uid}@example.test\n"));
        for (k, v) in attrs {
            e.push_str(&format!("{k}: {v}\n"));
        }
        e.push('\n');
        e
    };
    let active = [("accountStatus", "active"), ("enabledService", "mail"), ("enabledService", "deliver")];
    let mut ldif = String::new();
    ldif.push_str(&entry(
        "alice",
        "mailUser",
        &[active[0], active[1], active[2], ("shadowAddress", "a.liddell@example.test")],
    ));
    ldif.push_str(&entry("nodeliver", "mailUser", &[active[0], active[1]]));
    ldif.push_str(&entry("disabled", "mailUser", &[("accountStatus", "disabled"), active[1], active[2]]));
    ldif.push_str(&entry("indisabled", "mailUser", &[active[0], active[1], active[2], ("domainStatus", "disabled")]));
    ldif.push_str(&entry(
        "sales",
        "mailAlias",
        &[active[0], active[1], ("mailForwardingAddress", "alice@example.test")],
    ));
    ldif.push_str(&entry("news", "mailList", &[active[0], active[1], ("shadowAddress", "newsletter@example.test")]));
    let t = TestDir::new();
    let s = Slapd::start(&t.join("slapd"), &ldif);
    std::fs::create_dir_all(t.join("out")).unwrap();
    let pw = t.write("ldap-password", SYNC_PASSWORD);
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"iredmail\"\nkind = \"ldap\"\nprofile = \"iredmail-ldap\"\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nbind_password_file = \"{}\"\nbase_dn = \"ou=people,dc=example,dc=test\"\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"out/plain\"\n",
        s.ldaps_url(),
        s.ca.display(),
        pw.display()
    ));
    let r = list(&t);
    r.expect(0);
    assert_eq!(
        r.stdout,
        "a.liddell@example.test\nalice@example.test\nnews@example.test\nnewsletter@example.test\nsales@example.test\n",
        "{}",
        r.stderr
    );
}

#[test]
fn connection_lost_between_pages_fails_the_source() {
    if !enabled("connection_lost_between_pages_fails_the_source") {
        return;
    }
    let t = TestDir::new();
    let s = Slapd::start(&t.join("slapd"), &people(2500));
    let base = format!(
        "bind_dn = \"{SYNC_DN}\"\nallow_plaintext_bind = true\npage_size = 100\n[guard]\non_source_failure = \"abort\""
    );
    config(&t, &format!("url = \"{}\"\n{base}", s.url()));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = t.read("out/relay_recipients");
    // Through a relay that dies after about 60 kB: several pages in, not the end.
    let port = crate::support::db::cutting_proxy(s.port, 60_000);
    config(&t, &format!("url = \"ldap://127.0.0.1:{port}\"\n{base}"));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(1);
    let err = r.json()["sources"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("search on ldap://127.0.0.1") && err.contains("failed"), "{err}");
    assert_eq!(t.read("out/relay_recipients"), published, "a cut search must never shorten the list");
}

mod ad {
    use super::*;
    use crate::postfix::Postfix;
    use crate::smtp::rcpt_replies;
    use crate::support::samba::{ADMIN, BASE, Samba};

    fn samba_enabled(test: &str) -> bool {
        if std::env::var("RCPTSYNC_TEST_REAL_DB").is_ok_and(|v| v == "1")
            && std::path::Path::new("/usr/sbin/samba").exists()
        {
            return true;
        }
        say(&format!(
            "SKIPPED {test}: Samba AD tests need samba and RCPTSYNC_TEST_REAL_DB=1 (scripts/test.sh installs and sets both)"
        ));
        false
    }

    fn user(name: &str, uac: u32, extra: &[(&str, &str)]) -> String {
        let mut s = format!(
            "dn: CN={name},CN=Users,{BASE}\nobjectClass: user\nsAMAccountName: {name}\nuserAccountControl: {uac}\n"
        );
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push('\n');
        s
    }

    fn directory(exchange: bool) -> String {
        let mut s = String::new();
        s.push_str(&user(
            "alice",
            512,
            &[
                ("mail", "Alice@example.test"),
                ("proxyAddresses", "SMTP:Alice@example.test"),
                ("proxyAddresses", "smtp:a.smith@example.test"),
                ("proxyAddresses", "X500:/o=Example/cn=alice"),
                ("proxyAddresses", "SIP:alice@example.test"),
                ("proxyAddresses", "smtp:@example.test"),
            ],
        ));
        s.push_str(&user("carol", 514, &[("mail", "carol@example.test")]));
        if exchange {
            s.push_str(&user("shared", 514, &[("mail", "shared@example.test"), ("msExchRecipientTypeDetails", "4")]));
            s.push_str(&user(
                "room1",
                66050,
                &[("proxyAddresses", "SMTP:room1@example.test"), ("msExchRecipientTypeDetails", "16")],
            ));
            s.push_str(&user(
                "ceo",
                512,
                &[("mail", "ceo-only@example.test"), ("mailNickname", "ceo"), ("msExchRequireAuthToSendTo", "TRUE")],
            ));
            // A leaver: the account is disabled, the mailbox (UserMailbox) still
            // receives mail, as Exchange delivers regardless of the account.
            s.push_str(&user("leaver", 514, &[("mail", "leaver@example.test"), ("msExchRecipientTypeDetails", "1")]));
            // A mail user whose primary address is outside the organisation (the
            // New-MailUser default): only its address in an accepted domain counts.
            s.push_str(&user(
                "consultant",
                512,
                &[
                    ("mail", "ext.consultant@gmail.test"),
                    ("proxyAddresses", "SMTP:ext.consultant@gmail.test"),
                    ("proxyAddresses", "smtp:consultant@example.test"),
                    ("targetAddress", "SMTP:ext.consultant@gmail.test"),
                    ("mailNickname", "consultant"),
                    ("msExchRecipientTypeDetails", "128"),
                ],
            ));
            // Only `mail`: not an Exchange recipient (no proxyAddresses, mailNickname or type).
            s.push_str(&user("legacy", 512, &[("mail", "legacy@example.test")]));
            // A mailbox in an internal relay domain, and one in an outbound-only domain.
            s.push_str(&user("sub", 512, &[("proxyAddresses", "SMTP:x@subsidiary.test"), ("mailNickname", "sub")]));
            s.push_str(&user(
                "cloudonly",
                512,
                &[("proxyAddresses", "SMTP:y@cloud-only.example.test"), ("mailNickname", "cloudonly")],
            ));
        }
        let nickname = if exchange { "mailNickname: sales\n" } else { "" };
        s.push_str(&format!("dn: CN=sales,CN=Users,{BASE}\nobjectClass: group\nsAMAccountName: sales\ngroupType: 8\nmail: sales@example.test\n{nickname}\n"));
        s.push_str(&format!(
            "dn: CN=secgroup,CN=Users,{BASE}\nobjectClass: group\nsAMAccountName: secgroup\ngroupType: -2147483646\n\n"
        ));
        s.push_str(&format!("dn: CN=partner,CN=Users,{BASE}\nobjectClass: contact\nmail: partner@external.test\nproxyAddresses: SMTP:partner@external.test\nproxyAddresses: smtp:partner@example.test\n\n"));
        s
    }

    fn bulk(n: usize) -> String {
        (0..n)
            .map(|i| {
                user(
                    &format!("bulk{i:04}"),
                    512,
                    &[
                        ("mail", &format!("bulk{i:04}@example.test")),
                        ("proxyAddresses", &format!("smtp:b{i:04}@example.test")),
                    ],
                )
            })
            .collect()
    }

    fn ad_config(t: &TestDir, dc: &Samba, extra: &str, output: &str) {
        std::fs::create_dir_all(t.join("out")).unwrap();
        t.config(&format!(
            "state_dir = \"state\"\n[[source]]\nname = \"corp-ad\"\nkind = \"ldap\"\nprofile = \"active-directory\"\nurl = \"{}\"\nca_file = \"{}\"\nbind_dn = \"{ADMIN}\"\nbind_password_file = \"{}\"\nbase_dn = \"{BASE}\"\n{extra}\n{output}",
            dc.url(),
            dc.ca.display(),
            dc.password_file.display()
        ));
    }

    const PLAIN: &str = "[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/plain\"\n";

    /// [`ad_config`] for a forest without an Exchange organisation, which
    /// needs `policy.domains`.
    fn ad_config_without_exchange(t: &TestDir, dc: &Samba, extra: &str, output: &str) {
        ad_config(t, dc, extra, output);
        let cfg =
            t.read("rcptsync.toml").replacen("[[source]]", "[policy]\ndomains = [\"example.test\"]\n[[source]]", 1);
        t.config(&cfg);
    }

    #[test]
    fn active_directory_profile_on_samba_with_exchange_schema() {
        if !samba_enabled("active_directory_profile_on_samba_with_exchange_schema") {
            return;
        }
        let t = TestDir::new();
        let dc = Samba::start(&t.join("dc"), true);
        dc.add(&directory(true));
        dc.add(&bulk(2500));
        ad_config(&t, &dc, "", PLAIN);
        let r = list(&t);
        r.expect(0);
        let got: Vec<&str> = r.stdout.lines().collect();
        let mut want: Vec<String> = vec![
            "@subsidiary.test",
            "a.smith@example.test",
            "alice@example.test",
            "consultant@example.test",
            "leaver@example.test",
            "partner@example.test",
            "room1@example.test",
            "sales@example.test",
            "shared@example.test",
            "x@subsidiary.test",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for i in 0..2500 {
            want.push(format!("bulk{i:04}@example.test"));
            want.push(format!("b{i:04}@example.test"));
        }
        want.sort();
        let mut got_sorted: Vec<String> = got.iter().map(|s| s.to_string()).collect();
        got_sorted.sort();
        assert_eq!(got_sorted.len(), want.len(), "{}", r.stderr);
        assert_eq!(got_sorted, want);
        // "smtp:@example.test" is an invalid address, reported, never a catch-all.
        assert!(r.stderr.contains("value=\"@example.test\""), "{}", r.stderr);
        assert!(
            r.stderr.contains("rule=\"auth-only\" entries=1")
                && r.stderr.contains("rule=\"disabled-account\" entries=1")
                && r.stderr.contains("rule=\"not-exchange-recipient\" entries=1"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("Exchange accepted domains"), "{}", r.stderr);

        // The EdgeSync-like default can be switched off.
        ad_config(&t, &dc, "keep_skipped = [\"auth-only\"]", PLAIN);
        let r = list(&t);
        assert!(r.stdout.lines().any(|l| l == "ceo-only@example.test"), "{}", r.stderr);

        // why names the rule that left an address out.
        ad_config(&t, &dc, "", PLAIN);
        let r = t.run(&["why", "carol@example.test", "-c", "rcptsync.toml"]);
        r.expect(1);
        assert!(
            r.stdout.contains(
                "CN=carol,CN=Users,DC=example,DC=test mail: carol@example.test left out: skip rule disabled-account"
            ),
            "{}",
            r.stdout
        );
        let r = t.run(&["why", "ceo-only@example.test", "-c", "rcptsync.toml"]);
        assert!(r.stdout.contains("skip rule auth-only"), "{}", r.stdout);
        // Accepted domains: an external primary address, an outbound-only
        // domain, a mail-only object, and a relay domain's catch-all.
        let r = t.run(&["why", "ext.consultant@gmail.test", "-c", "rcptsync.toml"]);
        assert!(r.stdout.contains("not an accepted domain of the Exchange organisation"), "{}", r.stdout);
        let r = t.run(&["why", "y@cloud-only.example.test", "-c", "rcptsync.toml"]);
        assert!(r.stdout.contains("not an accepted domain"), "{}", r.stdout);
        let r = t.run(&["why", "legacy@example.test", "-c", "rcptsync.toml"]);
        assert!(r.stdout.contains("skip rule not-exchange-recipient"), "{}", r.stdout);
        let r = t.run(&["why", "anyone@subsidiary.test", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stdout.contains("InternalRelay relay domain"), "{}", r.stdout);
        // relay_domains = "addresses": only the known address of the relay domain.
        ad_config(&t, &dc, "relay_domains = \"addresses\"", PLAIN);
        let r = list(&t);
        r.expect(0);
        assert!(!r.stdout.contains("@subsidiary.test\n@") && r.stdout.contains("x@subsidiary.test"), "{}", r.stdout);
        assert!(!r.stdout.lines().any(|l| l == "@subsidiary.test"), "{}", r.stdout);
        ad_config(&t, &dc, "", PLAIN);

        // check reports the bind and paging.
        let r = t.run(&["check", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stdout.contains("paging supported"), "{}", r.stdout);

        // End to end: a private Postfix accepts AD addresses and rejects a disabled user;
        // a user added in AD is accepted after one sync.
        if !crate::postfix::enabled("active_directory_profile_on_samba_with_exchange_schema (postfix part)") {
            return;
        }
        let map = t.join("out/relay_recipients");
        let etc = Postfix::configure(&t.join("pf"), "example.test", &format!("lmdb:{}", map.display()));
        ad_config(
            &t,
            &dc,
            "",
            &format!(
                "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"{}\"\npostmap = \"lmdb\"\n",
                map.display()
            ),
        );
        let sync = || crate::postfix::sync_for(&t, &etc, &[]);
        sync().expect(0);
        let pf = Postfix::run(etc.clone());
        let r = rcpt_replies(
            pf.port,
            &["a.smith@example.test", "shared@example.test", "carol@example.test", "newhire@example.test"],
        );
        assert!(r[0].starts_with("250") && r[1].starts_with("250"), "{r:?}");
        assert!(r[2].starts_with("550 5.1.1") && r[3].starts_with("550 5.1.1"), "{r:?}");
        dc.add(&user("newhire", 512, &[("mail", "newhire@example.test"), ("mailNickname", "newhire")]));
        sync().expect(0);
        let r = rcpt_replies(pf.port, &["newhire@example.test"]);
        assert!(r[0].starts_with("250"), "{r:?}");
    }

    #[test]
    fn active_directory_profile_on_samba_without_exchange_schema() {
        if !samba_enabled("active_directory_profile_on_samba_without_exchange_schema") {
            return;
        }
        let t = TestDir::new();
        let dc = Samba::start(&t.join("dc"), false);
        dc.add(&directory(false));
        // No Exchange organisation: nothing says which domains the primary
        // accepts, so the AD source needs policy.domains, and says so.
        ad_config(&t, &dc, "", PLAIN);
        let r = list(&t);
        assert_ne!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr.contains("no Exchange organisation") && r.stderr.contains("set policy.domains"),
            "{}",
            r.stderr
        );
        ad_config_without_exchange(&t, &dc, "", PLAIN);
        let want = "a.smith@example.test\nalice@example.test\npartner@example.test\nsales@example.test\n";
        let r = list(&t);
        r.expect(0);
        assert_eq!(r.stdout, want, "{}", r.stderr);
        // StartTLS on 389 with the test CA works too.
        let cfg = t
            .read("rcptsync.toml")
            .replace("url = \"ldaps://127.0.0.1\"", "url = \"ldap://127.0.0.1\"\nstarttls = true");
        t.config(&cfg);
        let r = list(&t);
        r.expect(0);
        assert_eq!(r.stdout, want, "{}", r.stderr);
    }

    #[test]
    fn incremental_sync_reads_only_changes_and_equals_a_full_pass() {
        if !samba_enabled("incremental_sync_reads_only_changes_and_equals_a_full_pass") {
            return;
        }
        let t = TestDir::new();
        let dc = Samba::start(&t.join("dc"), true);
        dc.add(&directory(true));
        dc.add(&bulk(300));
        ad_config(&t, &dc, "[guard]\nmax_removed_percent = 100", PLAIN);
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stderr.contains("full sync") && r.stderr.contains("no previous sync state"), "{}", r.stderr);

        // Changes between runs: an addition, an added alias, a deletion, a user
        // disabled, a mail attribute removed (the object leaves the filter).
        dc.add(&user("delta", 512, &[("mail", "delta@example.test"), ("mailNickname", "delta")]));
        dc.modify(&format!(
            "dn: CN=alice,CN=Users,{BASE}\nchangetype: modify\nadd: proxyAddresses\nproxyAddresses: smtp:new.alias@example.test\n-\n\n\
             dn: CN=bulk0001,CN=Users,{BASE}\nchangetype: delete\n\n\
             dn: CN=bulk0002,CN=Users,{BASE}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n-\n\n\
             dn: CN=bulk0003,CN=Users,{BASE}\nchangetype: modify\ndelete: mail\n-\ndelete: proxyAddresses\n-\n"
        ));
        let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
        r.expect(0);
        assert!(r.stderr.contains("incremental sync"), "{}", r.stderr);
        let matching: usize = r
            .stderr
            .split("matching=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(matching <= 4, "the delta run read {matching} matching objects, not just the changes: {}", r.stderr);
        let v = r.json();
        assert_eq!((v["added"].as_u64(), v["removed"].as_u64()), (Some(2), Some(6)), "{v}");
        let incremental = t.read("out/plain");
        assert!(incremental.contains("delta@example.test\n") && incremental.contains("new.alias@example.test\n"));
        for gone in ["bulk0001@example.test", "b0001@", "bulk0002@", "bulk0003@"] {
            assert!(!incremental.contains(gone), "{gone} still published");
        }

        // The same directory read by a full, non-incremental pass gives the same list.
        let full = TestDir::new();
        ad_config(&full, &dc, "incremental = false", PLAIN);
        let r = full.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert_eq!(full.read("out/plain"), incremental);

        // An unchanged directory: the next incremental run sees nothing new.
        let r = t.run(&["sync", "-c", "rcptsync.toml", "--detailed-exitcode"]);
        r.expect(0);
        assert!(r.stderr.contains("changed=0") || r.stderr.contains("nothing to do"), "{}", r.stderr);

        // A restored or rebuilt DC (new invocationId) or another DC forces a full pass.
        let state_file = t.join("state/sources/corp-ad.ldap.json");
        let edit = |key: &str, value: &str| {
            let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
            state[key] = serde_json::json!(value);
            std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();
        };
        edit("invocation_id", "00ff");
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stderr.contains("full sync") && r.stderr.contains("invocationId changed"), "{}", r.stderr);
        edit("server", "ldaps://dc2.example.test");
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        assert!(
            r.stderr.contains("full sync") && r.stderr.contains("the previous sync used ldaps://dc2.example.test"),
            "{}",
            r.stderr
        );
        // full_sync_every forces one periodically.
        ad_config(&t, &dc, "full_sync_every = \"1s\"\n[guard]\nmax_removed_percent = 100", PLAIN);
        std::thread::sleep(Duration::from_millis(1100));
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        assert!(r.stderr.contains("full sync") && r.stderr.contains("full_sync_every elapsed"), "{}", r.stderr);
        assert_eq!(t.read("out/plain"), full.read("out/plain"));
    }

    /// A Global Catalog (3269 over TLS) holds a forest-wide partial replica:
    /// the AD profile reads it with base_dn at the forest root, the accepted
    /// domains come from its copy of the Configuration NC, and incremental runs
    /// look for changes forest-wide. Each run equals a full pass on the DC port.
    #[test]
    fn global_catalog_full_and_incremental_runs_equal_a_dc_pass() {
        if !samba_enabled("global_catalog_full_and_incremental_runs_equal_a_dc_pass") {
            return;
        }
        let t = TestDir::new();
        let dc = Samba::start(&t.join("dc"), true);
        dc.add(&directory(true));
        dc.add(&bulk(300));
        let on_gc = |t: &TestDir, extra: &str| {
            ad_config(t, &dc, extra, PLAIN);
            let cfg =
                t.read("rcptsync.toml").replace("url = \"ldaps://127.0.0.1\"", "url = \"ldaps://127.0.0.1:3269\"");
            t.config(&cfg);
        };
        let dc_pass = || {
            let d = TestDir::new();
            ad_config(&d, &dc, "incremental = false", PLAIN);
            d.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
            d.read("out/plain")
        };
        on_gc(&t, "[guard]\nmax_removed_percent = 100");
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stderr.contains("full sync") && r.stderr.contains(":3269"), "{}", r.stderr);
        assert!(r.stderr.contains("Exchange accepted domains"), "{}", r.stderr);
        let first = t.read("out/plain");
        assert!(first.contains("bulk0299@example.test\n") && first.contains("@subsidiary.test\n"), "{first}");
        assert_eq!(first, dc_pass());

        dc.add(&user("gcnew", 512, &[("mail", "gcnew@example.test"), ("mailNickname", "gcnew")]));
        dc.modify(&format!(
            "dn: CN=bulk0010,CN=Users,{BASE}\nchangetype: delete\n\n\
             dn: CN=bulk0011,CN=Users,{BASE}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n-\n"
        ));
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stderr.contains("incremental sync"), "{}", r.stderr);
        let second = t.read("out/plain");
        assert!(second.contains("gcnew@example.test\n"), "{second}");
        assert!(!second.contains("bulk0010@") && !second.contains("bulk0011@"), "{second}");
        assert_eq!(second, dc_pass());
    }

    /// Kerberos instead of a password: a service account's keytab, exported
    /// from the Samba DC, signs in through SASL GSSAPI against the DC's own
    /// KDC, over ldaps:// and over plain ldap:// (GSSAPI then seals the
    /// connection); the list equals a password bind's. A wrong principal or
    /// service host fails the source and names the fix.
    #[test]
    fn kerberos_bind_with_a_keytab() {
        if !samba_enabled("kerberos_bind_with_a_keytab") {
            return;
        }
        if !cfg!(feature = "kerberos") {
            say("SKIPPED kerberos_bind_with_a_keytab: needs --features kerberos (scripts/test.sh sets it)");
            return;
        }
        let t = TestDir::new();
        let dc = Samba::start(&t.join("dc"), true);
        dc.add(&directory(true));
        let keytab = t.join("rcptsync.keytab");
        dc.service_keytab("svc-rcptsync", &keytab);
        let krb5 = dc.krb5_conf();
        let host = dc.register_ldap_spn();
        ad_config(&t, &dc, "", PLAIN);
        let want = list(&t);
        want.expect(0);
        let gssapi = |t: &TestDir, url: &str, principal: &str, host: &str| {
            let cfg = format!(
                "state_dir = \"state\"\n[[source]]\nname = \"corp-ad\"\nkind = \"ldap\"\nprofile = \"active-directory\"\n\
                 url = \"{url}\"\nca_file = \"{}\"\nbind = \"gssapi\"\nkeytab_file = \"{}\"\nprincipal = \"{principal}\"\n\
                 sasl_host = \"{host}\"\nbase_dn = \"{BASE}\"\nincremental = false\n{PLAIN}",
                dc.ca.display(),
                keytab.display()
            );
            t.config(&cfg);
            Run::from(t.cmd(&["list", "-c", "rcptsync.toml"]).env("KRB5_CONFIG", &krb5).output().unwrap())
        };
        for url in ["ldap://127.0.0.1", "ldaps://127.0.0.1"] {
            let r = gssapi(&t, url, "svc-rcptsync@EXAMPLE.TEST", &host);
            r.expect(0);
            assert_eq!(r.stdout, want.stdout, "{url}: {}", r.stderr);
        }
        let r = gssapi(&t, "ldaps://127.0.0.1", "someone-else@EXAMPLE.TEST", &host);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("someone-else@EXAMPLE.TEST") && r.stderr.contains("keytab"), "{}", r.stderr);
        let r = gssapi(&t, "ldaps://127.0.0.1", "svc-rcptsync@EXAMPLE.TEST", "127.0.0.1");
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("Kerberos (GSSAPI) bind as svc-rcptsync@EXAMPLE.TEST failed"), "{}", r.stderr);
        assert!(r.stderr.contains("sasl_host"), "{}", r.stderr);
    }

    #[test]
    fn many_proxy_addresses_arrive_complete_with_range_retrieval() {
        if !samba_enabled("many_proxy_addresses_arrive_complete_with_range_retrieval") {
            return;
        }
        let t = TestDir::new();
        let dc = Samba::start(&t.join("dc"), false);
        let mut many = format!(
            "dn: CN=many,CN=Users,{BASE}\nobjectClass: user\nsAMAccountName: many\nuserAccountControl: 512\nmail: many@example.test\n"
        );
        for i in 0..1600 {
            many.push_str(&format!("proxyAddresses: smtp:many{i}@example.test\n"));
        }
        dc.add(&format!("{many}\n"));
        // Samba sends all values at once; range_size makes rcptsync ask in ranges
        // of 100, the way AD answers above MaxValRange, and complete them with
        // follow-up requests until the last range.
        for keys in ["incremental = false", "incremental = false\nrange_size = 100"] {
            ad_config_without_exchange(&t, &dc, keys, PLAIN);
            let r = list(&t);
            r.expect(0);
            let got: Vec<&str> = r.stdout.lines().collect();
            assert_eq!(got.len(), 1601, "{keys}: {}", r.stderr);
            assert!(got.contains(&"many1599@example.test") && got.contains(&"many0@example.test"));
        }
    }
}

/// A subtree that lives on another server comes back as a continuation
/// reference, which the library's entries-only adapter used to drop: the list
/// silently lost those recipients. Now the source fails and says to use the
/// Global Catalog.
#[test]
fn a_continuation_reference_fails_the_source_instead_of_being_dropped() {
    if !enabled("a_continuation_reference_fails_the_source_instead_of_being_dropped") {
        return;
    }
    let t = TestDir::new();
    let mut ldif = people(10);
    ldif.push_str(
        "dn: ou=branch,ou=people,dc=example,dc=test\nobjectClass: referral\nobjectClass: extensibleObject\nou: branch\n\
         ref: ldap://branch.example.test/ou=branch,dc=example,dc=test\n\n",
    );
    let s = Slapd::start(&t.join("slapd"), &ldif);
    config(&t, &format!("url = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nca_file = \"{}\"", s.ldaps_url(), s.ca.display()));
    let r = list(&t);
    r.expect(1);
    assert!(
        r.stderr.contains("1 continuation reference(s) to other servers (ldap://branch.example.test/ou=branch")
            && r.stderr.contains("Global Catalog (port 3268"),
        "{}",
        r.stderr
    );
}
