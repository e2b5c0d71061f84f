//! Secrets never leave the process: every network connector runs with trace
//! logging and credentials the server refuses, and neither stdout, stderr, the
//! JSON report nor any state file may contain the secret. (The Graph and
//! Google variant, with tokens and key material, is in `cloud.rs`.)

use crate::util::{Run, TestDir};

/// Runs `sync --format json` with trace logging twice (the second run also has
/// a last-good state to report) and asserts `secret` appears nowhere.
fn assert_never_shown(t: &TestDir, secret: &str) {
    for _ in 0..2 {
        let r = Run::from(
            t.cmd(&["sync", "-c", "rcptsync.toml", "--format", "json"]).env("RCPTSYNC_LOG", "trace").output().unwrap(),
        );
        assert!(r.stderr.contains("TRACE") || r.stderr.contains("DEBUG"), "trace logging was on");
        assert!(
            !r.stdout.contains(secret) && !r.stderr.contains(secret),
            "the secret leaked:\n{}\n{}",
            r.stdout,
            r.stderr
        );
    }
    let mut stack = vec![t.join("state")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                assert!(!String::from_utf8_lossy(&bytes).contains(secret), "secret in {}", p.display());
            }
        }
    }
}

#[test]
fn ldap_bind_password_never_shown() {
    if !crate::ldap::enabled("ldap_bind_password_never_shown") {
        return;
    }
    use crate::support::slapd::{SYNC_DN, Slapd, person};
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let s = Slapd::start(&t.join("slapd"), &person("alice", &["alice@example.test"], &[]));
    let wrong = "Wr0ng-ldap-Passw0rd-7731";
    let pw = t.write("ldap-password", wrong);
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"dir\"\nkind = \"ldap\"\nprofile = \"openldap\"\nurl = \"{}\"\nca_file = \"{}\"\n\
         bind_dn = \"{SYNC_DN}\"\nbind_password_file = \"{}\"\nbase_dn = \"ou=people,dc=example,dc=test\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
        s.ldaps_url(),
        s.ca.display(),
        pw.display()
    ));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    assert!(r.stderr.contains("invalid credentials"), "the bind was refused: {}", r.stderr);
    assert_never_shown(&t, wrong);
}

#[test]
fn sql_password_never_shown() {
    if !crate::sql::enabled("sql_password_never_shown") {
        return;
    }
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let pg = crate::sql::postfixadmin_pg(&t);
    let wrong = "Wr0ng-sql-Passw0rd-4419";
    let pw = t.write("db-password", wrong);
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"db\"\nkind = \"sql\"\nprofile = \"postfixadmin\"\nurl = \"{}\"\npassword_file = \"{}\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
        pg.url("postfixadmin"),
        pw.display()
    ));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    assert!(r.stderr.contains("password authentication failed"), "the login was refused: {}", r.stderr);
    assert_never_shown(&t, wrong);
    // The right password is never shown either.
    let right = crate::support::db::PG_PASSWORD;
    t.write("db-password", right);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_never_shown(&t, right);
}

/// A password in a SQL URL's query string is refused before anything
/// connects, on every channel without the value; other query parameters are
/// never printed either (URLs are shown with the query left out).
#[test]
fn sql_url_query_passwords_are_refused_and_never_shown() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let secret = "Qu3ry-Passw0rd-5521";
    for key in ["sslpassword", "password"] {
        t.config(&format!(
            "state_dir = \"state\"\n[[source]]\nname = \"db\"\nkind = \"sql\"\nprofile = \"postfixadmin\"\n\
             url = \"postgres://pfa@db.example.test/pfa?sslmode=verify-full&{key}={secret}\"\n\
             [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
        ));
        for args in [
            &["check", "--offline", "-c", "rcptsync.toml"][..],
            &["check", "-c", "rcptsync.toml"],
            &["sync", "-c", "rcptsync.toml", "--format", "json"],
            &["list", "-c", "rcptsync.toml"],
        ] {
            let r = Run::from(t.cmd(args).env("RCPTSYNC_LOG", "trace").output().unwrap());
            assert_eq!(r.code, 78, "{args:?}: {}", r.stderr);
            assert!(r.stderr.contains(&format!("carries a password in its query string ({key}=…)")), "{}", r.stderr);
            assert!(
                !r.stdout.contains(secret) && !r.stderr.contains(secret),
                "leaked by {args:?}:\n{}\n{}",
                r.stdout,
                r.stderr
            );
        }
    }
    // A URL with an ordinary query is printed without it.
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"db\"\nkind = \"sql\"\nprofile = \"postfixadmin\"\n\
         url = \"postgres://pfa@127.0.0.1:1/pfa?application_name=Pr1vate-Label\"\nconnect_timeout = \"1s\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
    );
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("postgres://pfa@127.0.0.1:1/pfa?…"), "{}", r.stderr);
    assert!(!r.stderr.contains("Pr1vate-Label"), "{}", r.stderr);
}
