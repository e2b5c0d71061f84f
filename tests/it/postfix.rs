//! Real Postfix end to end: a private backup-MX instance whose
//! `relay_recipient_maps` is the map rcptsync writes. An SMTP client must get 250
//! for listed recipients and `550 5.1.1 … User unknown in relay recipient table`
//! for the others, and a sync must change that without any manual step.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::smtp::rcpt_replies;
use crate::util::{Run, TestDir, real_mta_required, say};

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/postfix").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub use crate::support::db::free_port;

/// Whether to run; says why not when skipping.
pub fn enabled(test: &str) -> bool {
    if !real_mta_required() {
        say(&format!(
            "SKIPPED {test}: real-MTA tests need RCPTSYNC_TEST_REAL_MTA=1 (scripts/test.sh installs Postfix and Exim and sets it)"
        ));
        return false;
    }
    true
}

/// A private Postfix instance on a free 127.0.0.1 port, stopped on drop.
pub struct Postfix {
    pub etc: PathBuf,
    pub port: u16,
}

impl Postfix {
    /// Writes the instance's config; returns its config directory.
    pub fn configure(dir: &Path, domains: &str, maps: &str) -> PathBuf {
        assert!(
            Path::new("/usr/sbin/postfix").exists(),
            "RCPTSYNC_TEST_REAL_MTA=1 but Postfix is not installed: run scripts/test-deps.sh"
        );
        let (etc, queue, data) = (dir.join("etc"), dir.join("queue"), dir.join("data"));
        for d in [&etc, &queue, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        Command::new("chown").args(["postfix:postfix"]).arg(&data).status().unwrap();
        let port = free_port();
        let subst = |s: String| {
            s.replace("@DIR@", &dir.display().to_string())
                .replace("@PORT@", &port.to_string())
                .replace("@RELAY_PORT@", &free_port().to_string())
                .replace("@DOMAINS@", domains)
                .replace("@MAPS@", maps)
        };
        std::fs::write(etc.join("main.cf"), subst(fixture("main.cf.in"))).unwrap();
        std::fs::write(etc.join("master.cf"), subst(fixture("master.cf.in"))).unwrap();
        std::fs::write(dir.join("port"), port.to_string()).unwrap();
        etc
    }

    /// Starts a configured instance and waits until it answers.
    pub fn run(etc: PathBuf) -> Postfix {
        let port: u16 = std::fs::read_to_string(etc.parent().unwrap().join("port")).unwrap().parse().unwrap();
        let out = Command::new("postfix").arg("-c").arg(&etc).arg("start").output().unwrap();
        assert!(out.status.success(), "postfix start: {}", String::from_utf8_lossy(&out.stderr));
        let pf = Postfix { etc, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "postfix did not listen on {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        pf
    }
}

impl Postfix {
    /// The end of the instance's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.etc.parent().unwrap().join("maillog")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix").arg("-c").arg(&self.etc).arg("stop").output();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

const UNKNOWN: &str = "User unknown in relay recipient table";

/// `rcptsync sync -c rcptsync.toml ARGS` for the private instance in `etc`:
/// postmap finds its main.cf through MAIL_CONFIG, which rcptsync passes on to
/// its hooks unchanged.
pub fn sync_for(t: &TestDir, etc: &Path, args: &[&str]) -> Run {
    let mut argv = vec!["sync", "-c", "rcptsync.toml"];
    argv.extend_from_slice(args);
    Run::from(t.cmd(&argv).env("MAIL_CONFIG", etc).output().unwrap())
}

fn sync(t: &TestDir, etc: &Path) -> Run {
    sync_for(t, etc, &["--detailed-exitcode"])
}

fn end_to_end(map: &str) {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("maps")).unwrap();
    let map_file = t.join("maps/relay_recipients");
    t.write("recipients.txt", "alice@example.test\nBob@Example.TEST\n@other.test\n");
    t.config(&format!(
        r#"state_dir = "state"
[guard]
max_removed_percent = 100
[[source]]
name = "list"
kind = "file"
path = "recipients.txt"
[[output]]
name = "postfix"
template = "postfix"
path = "{}"
postmap = "{map}"
check = ["postfix", "check"]
"#,
        map_file.display()
    ));
    // The instance's config must exist for postmap; the first sync builds the map
    // before Postfix starts (an smtpd that found no map keeps tempfailing with 451
    // until it exits, so the README says: sync first, then point Postfix at it).
    let pf_dir = t.join("pf");
    let maps = format!("{map}:{}", map_file.display());
    let etc = Postfix::configure(&pf_dir, "example.test, other.test", &maps);
    sync(&t, &etc).expect(2);
    let pf = Postfix::run(etc);

    let r = rcpt_replies(
        pf.port,
        &["alice@example.test", "BOB@example.test", "nobody@example.test", "Anyone@Other.TEST", "x@elsewhere.test"],
    );
    assert!(r[0].starts_with("250"), "{map}: {r:?}\n{}", pf.log_tail());
    assert!(r[1].starts_with("250"), "{map}: {r:?}");
    assert!(r[2].starts_with("550 5.1.1 <nobody@example.test>") && r[2].contains(UNKNOWN), "{map}: {r:?}");
    assert!(r[3].starts_with("250"), "{map} catch-all: {r:?}");
    assert!(r[4].starts_with("554 5.7.1"), "{map}: {r:?}");

    // The directory changes: alice leaves, carol arrives, the catch-all goes.
    t.write("recipients.txt", "Bob@Example.TEST\ncarol@example.test\nsomeone@other.test\n");
    sync(&t, &pf.etc).expect(2);
    let r =
        rcpt_replies(pf.port, &["carol@example.test", "alice@example.test", "anyone@other.test", "someone@other.test"]);
    assert!(r[0].starts_with("250"), "{map}: new address not accepted: {r:?}");
    assert!(r[1].starts_with("550 5.1.1") && r[1].contains(UNKNOWN), "{map}: removed address still accepted: {r:?}");
    assert!(r[2].starts_with("550 5.1.1"), "{map}: catch-all still active: {r:?}");
    assert!(r[3].starts_with("250"), "{map}: {r:?}");

    // Nothing changed: exit 0, map untouched.
    sync(&t, &pf.etc).expect(0);
    drop(pf);
}

#[test]
fn postfix_hash_map() {
    if enabled("postfix_hash_map") {
        end_to_end("hash");
    }
}

#[test]
fn postfix_lmdb_map() {
    if enabled("postfix_lmdb_map") {
        end_to_end("lmdb");
    }
}

#[test]
fn postfix_cdb_map() {
    if enabled("postfix_cdb_map") {
        end_to_end("cdb");
    }
}

#[test]
fn real_postmap_failure_rolls_back() {
    if !enabled("real_postmap_failure_rolls_back") {
        return;
    }
    // Without MAIL_CONFIG postmap cannot find a main.cf and fails: the error must
    // carry postmap's own words, and the old map must stay.
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("maps")).unwrap();
    t.write("recipients.txt", "alice@example.test\n");
    t.config(&crate::util::config_with(
        "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"maps/relay_recipients\"\npostmap = \"lmdb\"\n",
        "",
    ));
    let r = Run::from(t.cmd(&["sync", "-c", "rcptsync.toml"]).env("MAIL_CONFIG", "/nonexistent").output().unwrap());
    r.expect(1);
    assert!(r.stdout.contains("postmap failed") && r.stdout.contains("/nonexistent/main.cf"), "{}", r.stdout);
    assert!(!t.join("maps/relay_recipients").exists());
    assert_eq!(std::fs::read_dir(t.join("maps")).unwrap().count(), 0);
}

#[test]
fn real_map_is_restored_byte_for_byte_when_check_fails() {
    if !enabled("real_map_is_restored_byte_for_byte_when_check_fails") {
        return;
    }
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("maps")).unwrap();
    let map_file = t.join("maps/relay_recipients");
    let etc = Postfix::configure(&t.join("pf"), "example.test", &format!("lmdb:{}", map_file.display()));
    t.write("recipients.txt", "alice@example.test\nbob@example.test\n");
    // The check fails whenever carol is in the new map, as `postfix check` would
    // for a broken configuration.
    let check = format!("! postmap -q carol@example.test lmdb:{}", map_file.display());
    t.config(&crate::util::config_with(
        &format!(
            "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"{}\"\npostmap = \"lmdb\"\ncheck = [\"sh\", \"-c\", \"{check}\"]\n",
            map_file.display()
        ),
        "",
    ));
    sync(&t, &etc).expect(2);
    let before = (std::fs::read(&map_file).unwrap(), std::fs::read(t.join("maps/relay_recipients.lmdb")).unwrap());
    t.write("recipients.txt", "alice@example.test\nbob@example.test\ncarol@example.test\n");
    let r = sync(&t, &etc);
    r.expect(1);
    assert!(r.stdout.contains("check failed, previous version restored"), "{}", r.stdout);
    let after = (std::fs::read(&map_file).unwrap(), std::fs::read(t.join("maps/relay_recipients.lmdb")).unwrap());
    assert!(before == after, "text or lmdb map differs after rollback");
    // Postfix itself still answers from the old map.
    let out = std::process::Command::new("postmap")
        .arg("-c")
        .arg(&etc)
        .args(["-q", "carol@example.test"])
        .arg(format!("lmdb:{}", map_file.display()))
        .output()
        .unwrap();
    assert!(!out.status.success(), "carol must not be in the restored map");
}

/// guard.max_staleness with the documented Postfix recipe: while the list is
/// stale, unknown recipients get 450 (retry later) instead of 550; once a fresh
/// run publishes again, 550 comes back. No manual step.
#[test]
fn a_stale_list_makes_postfix_tempfail_unknown_recipients() {
    if !enabled("a_stale_list_makes_postfix_tempfail_unknown_recipients") {
        return;
    }
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.test\n");
    std::fs::create_dir_all(t.join("maps")).unwrap();
    let map = t.join("maps/relay_recipients");
    let code =
        |c: u16| format!("[\"sh\", \"-c\", \"postconf -e unknown_relay_recipient_reject_code={c} && postfix reload\"]");
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\nmax_staleness = \"1s\"\non_stale = {}\non_fresh = {}\n\
         [[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"{}\"\npostmap = \"lmdb\"\n",
        code(450),
        code(550),
        map.display()
    ));
    let etc = Postfix::configure(&t.join("pf"), "example.test", &format!("lmdb:{}", map.display()));
    sync_for(&t, &etc, &[]).expect(0);
    let pf = Postfix::run(etc.clone());
    let reply = |to: &str| rcpt_replies(pf.port, &[to]).remove(0);
    assert!(reply("nobody@example.test").starts_with("550"));

    // The source breaks: its last good copy keeps the list, which now ages.
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    // List age is kept in whole seconds, so "older than 1 s" needs 2 s of clock
    // seconds between the fresh run and this one, whatever the fractions.
    std::thread::sleep(Duration::from_millis(2100));
    let r = sync_for(&t, &etc, &[]);
    r.expect(0);
    assert!(r.stderr.contains("the published list is stale"), "{}", r.stderr);
    let tempfail = wait_reply(&reply, "nobody@example.test", "450");
    assert!(tempfail, "unknown recipients must be tempfailed while stale\n{}", pf.log_tail());
    assert!(reply("alice@example.test").starts_with("250"), "known ones are still accepted");
    // on_stale ran once: the next stale run only warns.
    let r = sync_for(&t, &etc, &[]);
    assert!(r.stderr.contains("still stale") && !r.stderr.contains("running guard.on_stale"), "{}", r.stderr);

    // Fresh again: on_fresh restores the rejection.
    t.write("recipients.txt", "alice@example.test\n");
    let r = sync_for(&t, &etc, &[]);
    r.expect(0);
    assert!(r.stderr.contains("running guard.on_fresh"), "{}", r.stderr);
    assert!(wait_reply(&reply, "nobody@example.test", "550"), "{}", pf.log_tail());
}

/// Waits (a reload takes a moment) until `to` gets a reply starting with `want`.
fn wait_reply(reply: &dyn Fn(&str) -> String, to: &str, want: &str) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if reply(to).starts_with(want) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `rcptsync socketmap --output OUTPUT` of `t`'s config on a free loopback
/// port, once it listens.
fn socketmap_on_loopback(t: &TestDir, output: &str) -> (crate::util::Stopped, u16) {
    let port = free_port();
    let listen = format!("inet:127.0.0.1:{port}");
    let server = crate::util::Stopped(
        t.cmd(&["socketmap", "-c", "rcptsync.toml", "--output", output, "--listen", &listen])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "socketmap server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

/// `rcptsync socketmap` serving a hashed list to the real Postfix
/// (`relay_recipient_maps = socketmap:inet:…`): hashed keys answer, a sync is
/// picked up without a restart, and with the server down Postfix tempfails.
#[test]
fn postfix_reads_a_hashed_list_through_socketmap() {
    if !enabled("postfix_reads_a_hashed_list_through_socketmap") {
        return;
    }
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("recipients.txt", "alice@example.test\n@catch.test\n");
    t.write("salt", "Pepper42\n");
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\nhash_salt_file = \"salt\"\n",
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(!t.read("out/hashed").contains("alice"));
    let (mut server, port) = socketmap_on_loopback(&t, "hashed");
    let etc = Postfix::configure(
        &t.join("pf"),
        "example.test, catch.test",
        &format!("socketmap:inet:127.0.0.1:{port}:relay"),
    );
    let pf = Postfix::run(etc);
    let r = rcpt_replies(pf.port, &["alice@example.test", "Alice@Example.TEST", "bob@example.test", "any@catch.test"]);
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[3].starts_with("250"), "{r:?}\n{}", pf.log_tail());
    assert!(r[2].starts_with("550 5.1.1"), "{r:?}");
    // A sync replaces the file; the server swaps the list in without a restart.
    t.write("recipients.txt", "alice@example.test\nbob@example.test\n@catch.test\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let end = Instant::now() + Duration::from_secs(10);
    while !rcpt_replies(pf.port, &["bob@example.test"])[0].starts_with("250") {
        assert!(Instant::now() < end, "bob never accepted");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The server is down: Postfix must tempfail, never accept.
    let _ = server.0.kill();
    let _ = server.0.wait();
    let r = rcpt_replies(pf.port, &["alice@example.test", "nobody@example.test"]);
    assert!(r.iter().all(|l| l.starts_with("451 4.3.0")), "{r:?}\n{}", pf.log_tail());
}

/// An edge of a hashed bundle serves the hub's digests to the real Postfix
/// through `rcptsync socketmap`, which hashes each query with the hub's salt
/// (the edge source's `hash_salt`; the outputs have none of their own).
#[test]
fn postfix_on_a_hashed_edge_reads_the_hubs_digests_through_socketmap() {
    if !enabled("postfix_on_a_hashed_edge_reads_the_hubs_digests_through_socketmap") {
        return;
    }
    let (hub, e) = crate::fleet::hashed_hub_and_edge("");
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(e.read("out/hashed"), hub.read("out/hashed"));
    let (_server, port) = socketmap_on_loopback(&e, "hashed");
    let etc = Postfix::configure(
        &e.join("pf"),
        "example.test, other.test",
        &format!("socketmap:inet:127.0.0.1:{port}:relay"),
    );
    let pf = Postfix::run(etc);
    let r = rcpt_replies(pf.port, &["alice@example.test", "Bob@Example.TEST", "nobody@example.test", "any@other.test"]);
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[3].starts_with("250"), "{r:?}\n{}", pf.log_tail());
    assert!(r[2].starts_with("550 5.1.1"), "{r:?}");
}

/// The same over a unix socket, as the shipped systemd unit runs it.
#[test]
fn postfix_reads_a_socketmap_over_a_unix_socket() {
    if !enabled("postfix_reads_a_socketmap_over_a_unix_socket") {
        return;
    }
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    std::fs::create_dir_all(t.join("run")).unwrap();
    t.write("recipients.txt", "alice@example.test\n");
    t.write("salt", "Pepper42\n");
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\nhash_salt_file = \"salt\"\n",
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let sock = t.join("run/map.sock");
    let mut server = t
        .cmd(&[
            "socketmap",
            "-c",
            "rcptsync.toml",
            "--output",
            "hashed",
            "--listen",
            &format!("unix:{}", sock.display()),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The smtpd user must be able to connect (the unit uses group postfix and UMask=0007).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let etc = Postfix::configure(&t.join("pf"), "example.test", &format!("socketmap:unix:{}:relay", sock.display()));
    let pf = Postfix::run(etc);
    let r = rcpt_replies(pf.port, &["alice@example.test", "nobody@example.test"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(r[0].starts_with("250") && r[1].starts_with("550 5.1.1"), "{r:?}\n{}", pf.log_tail());
    // With the server gone (its socket file left behind), Postfix tempfails.
    let r = rcpt_replies(pf.port, &["alice@example.test"]);
    assert!(r[0].starts_with("451 4.3.0"), "{r:?}\n{}", pf.log_tail());
}

/// `recipient_delimiter = +` on the backup MX: Postfix looks
/// `user+tag@domain` up in `relay_recipient_maps`, then `user@domain`, so the
/// published list needs no extension. The socketmap server strips the
/// extension itself (`policy.recipient_delimiter`), so it answers the same
/// even for a client that does not; `why` explains the decision.
#[test]
fn address_extensions_are_accepted_with_a_recipient_delimiter() {
    if !enabled("address_extensions_are_accepted_with_a_recipient_delimiter") {
        return;
    }
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("recipients.txt", "alice@example.test\n");
    t.config(
        "state_dir = \"state\"\n[policy]\nrecipient_delimiter = \"+\"\n[[source]]\nname = \"list\"\nkind = \"file\"\n\
         path = \"recipients.txt\"\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n\
         postmap = \"lmdb\"\n[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/plain\"\n",
    );
    let map = t.join("out/relay_recipients");
    let etc = Postfix::configure(&t.join("pf"), "example.test", &format!("lmdb:{}", map.display()));
    let main_cf = etc.join("main.cf");
    let text = std::fs::read_to_string(&main_cf).unwrap();
    std::fs::write(&main_cf, format!("{text}\nrecipient_delimiter = +\n")).unwrap();
    sync_for(&t, &etc, &[]).expect(0);
    let why = t.run(&["why", "-c", "rcptsync.toml", "alice+news@example.test"]);
    why.expect(0);
    assert!(why.stdout.contains("ACCEPTED alice+news@example.test as alice@example.test"), "{}", why.stdout);
    let why = t.run(&["why", "-c", "rcptsync.toml", "bob+news@example.test"]);
    assert!(why.stdout.contains("nor is bob@example.test"), "{}", why.stdout);
    let pf = Postfix::run(etc);
    let r = rcpt_replies(pf.port, &["alice+news@example.test", "alice@example.test", "bob+news@example.test"]);
    assert!(r[0].starts_with("250") && r[1].starts_with("250"), "{r:?}\n{}", pf.log_tail());
    assert!(r[2].starts_with("550 5.1.1"), "{r:?}");
    drop(pf);

    // A socketmap client without Postfix's own splitting: the server strips.
    let port = free_port();
    let listen = format!("inet:127.0.0.1:{port}");
    let mut server = t
        .cmd(&["socketmap", "-c", "rcptsync.toml", "--output", "plain", "--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "socketmap server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let etc = Postfix::configure(&t.join("pf2"), "example.test", &format!("socketmap:inet:127.0.0.1:{port}:relay"));
    let pf = Postfix::run(etc);
    let r = rcpt_replies(pf.port, &["alice+news@example.test", "bob+news@example.test"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(r[0].starts_with("250") && r[1].starts_with("550 5.1.1"), "{r:?}\n{}", pf.log_tail());
}
