//! The LDAP connector against a real OpenLDAP server (slapd on loopback with an
//! AD-like 1000-entry limit per unpaged search).

use std::time::Duration;

use crate::slapd::{LIMITED_DN, SYNC_DN, SYNC_PASSWORD, Slapd, person};
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
    assert!(r.stdout.contains("searchable with paging"), "{}", r.stdout);
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
    let dead = crate::db::free_port();
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
