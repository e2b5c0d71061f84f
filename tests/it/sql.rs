//! The SQL connector against real databases: PostgreSQL and MariaDB started from
//! private data directories on free 127.0.0.1 ports (stopped on drop), and SQLite
//! files. Each profile's schema uses the product's real table and column names.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::db::{MY_PASSWORD, Maria, PG_PASSWORD, Pg};
use crate::util::{Run, TestDir, say};

/// Whether the real-database tests run; says why not when skipping.
pub fn enabled(test: &str) -> bool {
    if std::env::var("RCPTSYNC_TEST_REAL_DB").is_ok_and(|v| v == "1") {
        return true;
    }
    say(&format!(
        "SKIPPED {test}: real-database tests need RCPTSYNC_TEST_REAL_DB=1 (scripts/test.sh installs PostgreSQL and MariaDB and sets it)"
    ));
    false
}

fn fixture(profile: &str, name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sql").join(profile).join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Creates an SQLite database file from SQL text (through sqlx, as rcptsync uses it).
pub fn sqlite_db(path: &Path, sql: &str) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut c).await.unwrap();
        c.close().await.unwrap();
    });
}

/// A private PostgreSQL with the PostfixAdmin fixture as database "postfixadmin".
pub fn postfixadmin_pg(t: &TestDir) -> Pg {
    let pg = Pg::start(&t.join("pg"));
    pg.database(
        "postfixadmin",
        &format!("{}\n{}", fixture("postfixadmin", "schema.postgres.sql"), fixture("postfixadmin", "seed.sql")),
    );
    pg
}

/// A config with one SQL source and a postfix output.
fn sql_config(t: &TestDir, source_keys: &str, extra: &str) {
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&format!(
        "state_dir = \"state\"\n{extra}\n[[source]]\nname = \"primary\"\nkind = \"sql\"\n{source_keys}\n\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n"
    ));
}

fn list(t: &TestDir, env: &[(&str, &str)]) -> Run {
    let mut c = t.cmd(&["list", "-c", "rcptsync.toml"]);
    for (k, v) in env {
        c.env(k, v);
    }
    Run::from(c.output().unwrap())
}

fn expected(profile: &str) -> Vec<String> {
    fixture(profile, "expected.txt").lines().map(String::from).collect()
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn postfixadmin_on_sqlite() {
    let t = TestDir::new();
    let db = t.join("postfixadmin.db");
    sqlite_db(
        &db,
        &format!(
            "{}\n{}\nINSERT INTO alias (address, goto, domain) VALUES ('new' || char(10) || 'line@example.test', 'x', 'example.test');",
            fixture("postfixadmin", "schema.sqlite.sql"),
            fixture("postfixadmin", "seed.sql")
        ),
    );
    sql_config(&t, &format!("profile = \"postfixadmin\"\nurl = \"sqlite://{}\"", db.display()), "");
    let r = list(&t, &[]);
    r.expect(0);
    assert_eq!(sorted_lines(&r.stdout), expected("postfixadmin"));
    // The hostile rows are reported, with the value escaped, and go nowhere.
    assert!(r.stderr.contains("value=\"evil@example.test OK\""), "{}", r.stderr);
    assert!(r.stderr.contains("value=\"new\\nline@example.test\""), "{}", r.stderr);
    // The database is opened read-only: the file is unchanged by a sync.
    let before = std::fs::read(&db).unwrap();
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(t.read("out/relay_recipients").contains("@backup.test OK\n"));
}

#[test]
fn postfixadmin_on_postgres_with_faults() {
    if !enabled("postfixadmin_on_postgres_with_faults") {
        return;
    }
    let t = TestDir::new();
    let mut pg = postfixadmin_pg(&t);
    pg.psql(
        "postfixadmin",
        "INSERT INTO alias (address, goto, domain) VALUES (E'new\\nline@example.test', 'x', 'example.test')",
    );
    let pw = t.write("db-password", &format!("{PG_PASSWORD}\n"));
    let keys = format!(
        "profile = \"postfixadmin\"\nurl = \"{}\"\npassword_file = \"{}\"",
        pg.url("postfixadmin"),
        pw.display()
    );
    sql_config(&t, &keys, "");

    let r = list(&t, &[]);
    r.expect(0);
    assert_eq!(sorted_lines(&r.stdout), expected("postfixadmin"));
    assert!(r.stderr.contains("value=\"new\\nline@example.test\"") && r.stderr.contains("object=row "), "{}", r.stderr);

    // check proves the profile fits the schema.
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("query runs"), "{}", r.stdout);

    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = t.read("out/relay_recipients");

    // Wrong password: a clear error, and the password appears nowhere.
    let wrong = t.write("wrong-password", "not-the-Password-77\n");
    sql_config(
        &t,
        &keys.replace(&pw.display().to_string(), &wrong.display().to_string()),
        "[guard]\non_source_failure = \"abort\"",
    );
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(1);
    let err = r.json()["sources"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("cannot log in to postgres://rcptsync@127.0.0.1") && err.contains("password_file"), "{err}");
    for text in [&r.stdout, &r.stderr] {
        assert!(!text.contains("not-the-Password-77") && !text.contains(PG_PASSWORD), "secret leaked: {text}");
    }
    assert_eq!(t.read("out/relay_recipients"), published);

    // A missing table is named by check.
    pg.database("empty", "CREATE TABLE domain (domain varchar(255))");
    sql_config(
        &t,
        &format!("profile = \"postfixadmin\"\nurl = \"{}\"\npassword_file = \"{}\"", pg.url("empty"), pw.display()),
        "",
    );
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(
        r.stdout.contains("relation \"mailbox\" does not exist") && r.stdout.contains("a table is missing"),
        "{}",
        r.stdout
    );

    // A query that outlives query_timeout fails the source.
    sql_config(
        &t,
        &format!(
            "url = \"{}\"\npassword_file = \"{}\"\nquery = \"SELECT 'x@example.test' FROM pg_sleep(5)\"\nquery_timeout = \"1s\"",
            pg.url("postfixadmin"),
            pw.display()
        ),
        "[guard]\non_source_failure = \"abort\"",
    );
    let started = Instant::now();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(started.elapsed() < Duration::from_secs(4), "timeout not enforced");
    assert!(r.stdout.contains("query_timeout") || r.stdout.contains("canceling statement"), "{}", r.stdout);
    assert_eq!(t.read("out/relay_recipients"), published);

    // Database down: keep_last_good publishes the last good slice, abort fails; the
    // outputs stay as they were either way.
    sql_config(&t, &keys, "");
    pg.stop();
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(0);
    let v = r.json();
    assert_eq!(v["sources"][0]["status"], "last_good");
    assert!(
        v["sources"][0]["error"].as_str().unwrap().contains("cannot connect to postgres://rcptsync@127.0.0.1"),
        "{v}"
    );
    assert_eq!(t.read("out/relay_recipients"), published);
    sql_config(&t, &keys, "[guard]\non_source_failure = \"abort\"");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(1);
    assert_eq!(t.read("out/relay_recipients"), published);

    // Back up, with a new mailbox: the next sync publishes it.
    pg.start_again();
    pg.psql("postfixadmin", "INSERT INTO mailbox (username, local_part, domain, active) VALUES ('frank@example.test', 'frank', 'example.test', true)");
    sql_config(&t, &keys, "");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let now = t.read("out/relay_recipients");
    assert!(now.contains("frank@example.test OK\n") && now.contains("frank@alias.test OK\n"), "{now}");
}

#[test]
fn postfixadmin_on_mariadb() {
    if !enabled("postfixadmin_on_mariadb") {
        return;
    }
    let t = TestDir::new();
    let m = Maria::start(&t.join("mdb"));
    m.database(
        "postfixadmin",
        &format!("{}\n{}", fixture("postfixadmin", "schema.mysql.sql"), fixture("postfixadmin", "seed.sql")),
    );
    m.sql(
        "postfixadmin",
        "INSERT INTO alias (address, goto, domain) VALUES ('new\\nline@example.test', 'x', 'example.test')",
    );
    let keys = format!(
        "profile = \"postfixadmin\"\nurl = \"{}\"\npassword_env = \"RCPTSYNC_TEST_DB_PW\"",
        m.url("postfixadmin")
    );
    sql_config(&t, &keys, "");
    let r = list(&t, &[("RCPTSYNC_TEST_DB_PW", MY_PASSWORD)]);
    r.expect(0);
    assert_eq!(sorted_lines(&r.stdout), expected("postfixadmin"));
    assert!(r.stderr.contains("value=\"new\\nline@example.test\""), "{}", r.stderr);

    let r = list(&t, &[("RCPTSYNC_TEST_DB_PW", "wrong-Pw-123")]);
    r.expect(1);
    assert!(
        r.stderr.contains("cannot log in to mysql://rcptsync@127.0.0.1") && !r.stderr.contains("wrong-Pw-123"),
        "{}",
        r.stderr
    );
    let r = list(&t, &[]);
    r.expect(1);
    assert!(r.stderr.contains("password_env: environment variable RCPTSYNC_TEST_DB_PW is not set"), "{}", r.stderr);
}

/// Points a config at `url` with `profile` and checks the exact address set.
/// The profile's list equals `want`, and `check` runs its query, naming the
/// detected schema when it is an older one (`version`).
fn assert_profile(
    t: &TestDir,
    profile: &str,
    url: &str,
    password_keys: &str,
    env: &[(&str, &str)],
    want: &[String],
    version: &str,
) {
    sql_config(t, &format!("profile = \"{profile}\"\nurl = \"{url}\"\n{password_keys}"), "");
    let r = list(t, env);
    r.expect(0);
    assert_eq!(sorted_lines(&r.stdout), want, "profile {profile} on {url}\n{}", r.stderr);
    let mut c = t.cmd(&["check", "-c", "rcptsync.toml"]);
    for (k, v) in env {
        c.env(k, v);
    }
    let r = Run::from(c.output().unwrap());
    r.expect(0);
    assert!(r.stdout.contains("query runs"), "{}", r.stdout);
    assert!(r.stdout.contains(", schema "), "{}", r.stdout);
    if !version.is_empty() {
        assert!(r.stdout.contains(version), "{profile}: check should name schema {version}: {}", r.stdout);
    }
}

/// A profile's fixtures for one engine: every `schema.<engine>[.<version>].sql`
/// (the product's real DDL for that version), with `seed[.<version>].sql` and
/// `expected[.<version>].txt` (the version's own when they exist). Returns
/// (version or "", the SQL to load, the expected list).
fn fixtures_for(profile: &str, engine: &str) -> Vec<(String, String, Vec<String>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sql").join(profile);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("schema.{engine}.")) && n.ends_with(".sql"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no {engine} schema for {profile}");
    names
        .into_iter()
        .map(|n| {
            let version = n.trim_start_matches(&format!("schema.{engine}")).trim_end_matches(".sql").to_string();
            let pick = |base: &str, ext: &str| {
                let own = format!("{base}{version}{ext}");
                if dir.join(&own).exists() { fixture(profile, &own) } else { fixture(profile, &format!("{base}{ext}")) }
            };
            let sql = format!("{}\n{}", fixture(profile, &n), pick("seed", ".sql"));
            let want = pick("expected", ".txt").lines().map(String::from).collect();
            (version.trim_start_matches('.').to_string(), sql, want)
        })
        .collect()
}

#[test]
fn sql_profiles_on_mariadb() {
    if !enabled("sql_profiles_on_mariadb") {
        return;
    }
    let t = TestDir::new();
    let m = Maria::start(&t.join("mdb"));
    let env = [("RCPTSYNC_TEST_DB_PW", MY_PASSWORD)];
    for profile in ["iredmail", "mailcow", "modoboa"] {
        for (i, (version, sql, want)) in fixtures_for(profile, "mysql").into_iter().enumerate() {
            let db = format!("{profile}{i}");
            m.database(&db, &sql);
            say(&format!("{profile} {version} on MariaDB"));
            assert_profile(&t, profile, &m.url(&db), "password_env = \"RCPTSYNC_TEST_DB_PW\"", &env, &want, &version);
        }
    }
}

#[test]
fn sql_profiles_on_postgres() {
    if !enabled("sql_profiles_on_postgres") {
        return;
    }
    let t = TestDir::new();
    let pg = Pg::start(&t.join("pg"));
    let pw = t.write("db-password", PG_PASSWORD);
    for profile in ["iredmail", "modoboa", "mailu"] {
        for (i, (version, sql, want)) in fixtures_for(profile, "postgres").into_iter().enumerate() {
            let db = format!("{profile}{i}");
            pg.database(&db, &sql);
            say(&format!("{profile} {version} on PostgreSQL"));
            let keys = format!("password_file = \"{}\"", pw.display());
            assert_profile(&t, profile, &pg.url(&db), &keys, &[], &want, &version);
        }
    }
}

#[test]
fn sql_profiles_on_sqlite() {
    let t = TestDir::new();
    for profile in ["modoboa", "mailu"] {
        for (i, (version, sql, want)) in fixtures_for(profile, "sqlite").into_iter().enumerate() {
            let db = t.join(&format!("{profile}{i}.db"));
            sqlite_db(&db, &sql);
            assert_profile(&t, profile, &format!("sqlite://{}", db.display()), "", &[], &want, &version);
        }
    }
}

#[test]
fn postfixadmin_feeds_real_postfix() {
    if !enabled("postfixadmin_feeds_real_postfix") || !crate::postfix::enabled("postfixadmin_feeds_real_postfix") {
        return;
    }
    use crate::postfix::Postfix;
    use crate::smtp::rcpt_replies;
    let t = TestDir::new();
    let pg = postfixadmin_pg(&t);
    let pw = t.write("db-password", PG_PASSWORD);
    std::fs::create_dir_all(t.join("maps")).unwrap();
    let map = t.join("maps/relay_recipients");
    t.config(&format!(
        r#"state_dir = "state"
[[source]]
name = "primary"
kind = "sql"
profile = "postfixadmin"
url = "{}"
password_file = "{}"
[[output]]
name = "postfix"
template = "postfix"
path = "{}"
postmap = "lmdb"
"#,
        pg.url("postfixadmin"),
        pw.display(),
        map.display()
    ));
    let etc =
        Postfix::configure(&t.join("pf"), "example.test, alias.test, catch.test", &format!("lmdb:{}", map.display()));
    let sync = || crate::postfix::sync_for(&t, &etc, &[]);
    sync().expect(0);
    let pf = Postfix::run(etc.clone());
    let r = rcpt_replies(
        pf.port,
        &["alice@example.test", "sales@alias.test", "frank@example.test", "bob@example.test", "any@catch.test"],
    );
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[4].starts_with("250"), "{r:?}");
    assert!(r[2].starts_with("550 5.1.1") && r[3].starts_with("550 5.1.1"), "{r:?}");
    // A mailbox added on the primary is accepted after one sync.
    pg.psql(
        "postfixadmin",
        "INSERT INTO mailbox (username, local_part, domain) VALUES ('frank@example.test', 'frank', 'example.test')",
    );
    sync().expect(0);
    let r = rcpt_replies(pf.port, &["frank@example.test", "frank@alias.test"]);
    assert!(r.iter().all(|l| l.starts_with("250")), "{r:?}");
}

#[test]
fn postgres_dying_mid_result_fails_the_source() {
    if !enabled("postgres_dying_mid_result_fails_the_source") {
        return;
    }
    let t = TestDir::new();
    let pg = postfixadmin_pg(&t);
    pg.psql(
        "postfixadmin",
        "INSERT INTO mailbox (username, local_part, domain) SELECT 'bulk' || g || '@example.test', 'bulk' || g, 'example.test' FROM generate_series(1, 20000) g",
    );
    let pw = t.write("db-password", PG_PASSWORD);
    let keys = |url: &str| {
        format!(
            "profile = \"postfixadmin\"\nurl = \"{url}\"\npassword_file = \"{}\"\nconnect_timeout = \"2s\"",
            pw.display()
        )
    };
    sql_config(&t, &keys(&pg.url("postfixadmin")), "[guard]\non_source_failure = \"abort\"");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = t.read("out/relay_recipients");
    assert!(published.lines().count() > 20_000);
    // Through a relay that dies after 150 kB of the server's answer: mid-result.
    let port = crate::support::db::cutting_proxy(pg.port, 150_000);
    let url = pg.url("postfixadmin").replace(&format!(":{}/", pg.port), &format!(":{port}/"));
    assert_ne!(url, pg.url("postfixadmin"));
    sql_config(&t, &keys(&url), "[guard]\non_source_failure = \"abort\"");
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(1);
    let err = r.json()["sources"][0]["error"].as_str().unwrap().to_string();
    assert!(err.contains("source primary (sql)"), "{err}");
    assert_eq!(t.read("out/relay_recipients"), published, "a cut result must never shorten the list");
}

/// A real PostgreSQL answering one 600 MB value: the driver reads the whole row
/// before rcptsync sees it, so the process's memory is watched instead, and
/// past RCPTSYNC_MEMORY_LIMIT the fetch is stopped with a message that says so.
#[test]
fn an_enormous_postgres_row_is_stopped_at_the_memory_limit() {
    if !enabled("an_enormous_postgres_row_is_stopped_at_the_memory_limit") {
        return;
    }
    let t = TestDir::new();
    let pg = postfixadmin_pg(&t);
    let pw = t.write("db-password", PG_PASSWORD);
    let keys =
        |rest: &str| format!("url = \"{}\"\npassword_file = \"{}\"\n{rest}", pg.url("postfixadmin"), pw.display());
    let abort = "[guard]\non_source_failure = \"abort\"";
    sql_config(&t, &keys("profile = \"postfixadmin\""), abort);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = t.read("out/relay_recipients");
    sql_config(&t, &keys("query = \"SELECT repeat('x', 600000000)\"\nquery_timeout = \"120s\""), abort);
    let mut cmd = t.cmd(&["sync", "-c", "rcptsync.toml"]);
    cmd.env("RCPTSYNC_MEMORY_LIMIT", "200");
    let (code, rss_kb, stderr) = crate::util::run_measured(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    // The driver reads a socket that always has data, mostly without yielding:
    // then the fetch cannot be stopped softly and the process exits at 1.5
    // times the limit; when it does yield, the fetch is stopped and the source
    // fails. Either way nothing is written and memory stays bounded.
    assert!(stderr.contains("memory passed its limit of 200 MiB"), "{stderr}");
    assert!(stderr.contains("kept growing") || stderr.contains("source failed source=primary"), "{stderr}");
    assert!(rss_kb < 400 * 1024, "peak RSS {} MB", rss_kb / 1024);
    assert_eq!(t.read("out/relay_recipients"), published);
}

#[test]
fn postgres_tls_is_verified_against_ca_file() {
    if !enabled("postgres_tls_is_verified_against_ca_file") {
        return;
    }
    let t = TestDir::new();
    let mut pg = postfixadmin_pg(&t);
    let ca = pg.enable_tls();
    let other_ca = crate::support::db::test_ca(&t.join("other-ca"), "root");
    let pw = t.write("db-password", PG_PASSWORD);
    let keys = format!(
        "profile = \"postfixadmin\"\nurl = \"{}\"\npassword_file = \"{}\"",
        pg.url("postfixadmin"),
        pw.display()
    );
    assert_tls_verified(&t, &keys, &ca, &other_ca, &[]);
}

/// The TLS rules, against a server whose certificate comes from `ca`:
/// `ca_file` alone asks for full verification (a certificate from another CA
/// fails, where the driver's default used to accept any certificate);
/// `tls_mode = "verify-full"` without `ca_file` does not trust a private CA;
/// the right `ca_file` works, and `require` is a loud, explicit downgrade.
fn assert_tls_verified(t: &TestDir, keys: &str, ca: &Path, other_ca: &Path, env: &[(&str, &str)]) {
    sql_config(t, &format!("{keys}\nca_file = \"{}\"", other_ca.display()), "");
    let r = list(t, env);
    r.expect(1);
    assert!(r.stderr.to_lowercase().contains("certificate"), "{}", r.stderr);
    sql_config(t, &format!("{keys}\ntls_mode = \"verify-full\""), "");
    let r = list(t, env);
    r.expect(1);
    assert!(r.stderr.to_lowercase().contains("certificate"), "{}", r.stderr);
    sql_config(t, &format!("{keys}\nca_file = \"{}\"", ca.display()), "");
    let r = list(t, env);
    r.expect(0);
    assert_eq!(sorted_lines(&r.stdout), expected("postfixadmin"));
    sql_config(t, &format!("{keys}\ntls_mode = \"require\""), "");
    list(t, env).expect(0);
}

#[test]
fn mariadb_tls_is_verified_against_ca_file() {
    if !enabled("mariadb_tls_is_verified_against_ca_file") {
        return;
    }
    let t = TestDir::new();
    let (m, ca) = Maria::start_tls(&t.join("mdb"));
    m.database(
        "postfixadmin",
        &format!("{}\n{}", fixture("postfixadmin", "schema.mysql.sql"), fixture("postfixadmin", "seed.sql")),
    );
    let other_ca = crate::support::db::test_ca(&t.join("other-ca"), "root");
    let keys = format!(
        "profile = \"postfixadmin\"\nurl = \"{}\"\npassword_env = \"RCPTSYNC_TEST_DB_PW\"",
        m.url("postfixadmin")
    );
    assert_tls_verified(&t, &keys, &ca, &other_ca, &[("RCPTSYNC_TEST_DB_PW", MY_PASSWORD)]);
}

#[test]
fn postgres_session_is_read_only() {
    if !enabled("postgres_session_is_read_only") {
        return;
    }
    let t = TestDir::new();
    let pg = postfixadmin_pg(&t);
    pg.psql("postfixadmin", "GRANT INSERT ON alias TO rcptsync");
    let pw = t.write("db-password", PG_PASSWORD);
    // Even with INSERT granted, a query that writes is refused by the session.
    sql_config(
        &t,
        &format!(
            "url = \"{}\"\npassword_file = \"{}\"\nquery = \"INSERT INTO alias (address, goto, domain) VALUES ('w@example.test', 'x', 'example.test') RETURNING address\"",
            pg.url("postfixadmin"),
            pw.display()
        ),
        "",
    );
    let r = list(&t, &[]);
    r.expect(1);
    assert!(r.stderr.contains("read-only transaction"), "{}", r.stderr);
    assert_eq!(pg.psql("postfixadmin", "SELECT count(*) FROM alias WHERE address = 'w@example.test'").trim(), "0");
}

#[test]
fn silent_server_hits_connect_timeout_and_fails_the_source() {
    // A server that accepts TCP and never says a word: each attempt ends at
    // connect_timeout, and after the bounded retries the source fails.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let Ok((c, _)) = listener.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let t = TestDir::new();
    sql_config(
        &t,
        &format!(
            "url = \"postgres://rcptsync@127.0.0.1:{port}/x\"\nquery = \"SELECT 1\"\nconnect_timeout = \"500ms\"\npassword = \"irrelevant-Pw\""
        ),
        "",
    );
    let started = Instant::now();
    let r = list(&t, &[]);
    r.expect(1);
    assert!(r.stderr.contains("no answer within 500ms (connect_timeout)"), "{}", r.stderr);
    assert!(r.stderr.contains("retrying"), "no retry was logged: {}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(!r.stderr.contains("irrelevant-Pw"));
    drop(held);
}
