//! Real Sendmail (Debian's 8.17, extracted beside Postfix): a backup MX that
//! validates recipients with its access map. rcptsync writes the map's text
//! (`sendmail-access`) and builds it with the real `makemap`, and writes the
//! relay domains (`sendmail-domains`, read when sendmail starts).
//!
//! The session comes from 127.0.0.2: Sendmail lets 127.0.0.1 relay anywhere.

use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::{enabled, free_port};
use crate::smtp::rcpt_replies_from;
use crate::util::{TestDir, config_with};

fn root() -> PathBuf {
    PathBuf::from(
        std::env::var("RCPTSYNC_TEST_SENDMAIL_ROOT").unwrap_or_else(|_| {
            panic!("RCPTSYNC_TEST_SENDMAIL_ROOT is not set: run the tests through scripts/test.sh")
        }),
    )
}

/// Builds `sendmail.cf` from the fixture with the real m4 and Sendmail's cf
/// files; returns its path and the listening port.
fn configure(dir: &Path, access: &Path, relay_domains: &Path) -> (PathBuf, u16) {
    let cf_dir = root().join("usr/share/sendmail/cf");
    let port = free_port();
    std::fs::create_dir_all(dir.join("queue")).unwrap();
    std::fs::write(dir.join("local-host-names"), "").unwrap();
    let mc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sendmail/sendmail.mc.in"))
            .unwrap()
            .replace("@DIR@", &dir.display().to_string())
            .replace("@ACCESS@", &access.display().to_string())
            .replace("@RELAY_DOMAINS@", &relay_domains.display().to_string())
            .replace("@PORT@", &port.to_string());
    std::fs::write(dir.join("sendmail.mc"), mc).unwrap();
    let out = Command::new("m4")
        .arg(format!("-D_CF_DIR_={}/", cf_dir.display()))
        .arg(cf_dir.join("m4/cf.m4"))
        .arg(dir.join("sendmail.mc"))
        .output()
        .expect("m4 (scripts/test-deps.sh installs it)");
    assert!(out.status.success(), "m4: {}", String::from_utf8_lossy(&out.stderr));
    let cf = dir.join("sendmail.cf");
    std::fs::write(&cf, out.stdout).unwrap();
    (cf, port)
}

/// A Sendmail daemon (`-bD`, in the foreground) with its own host name (so it
/// does not wait on DNS for this machine's); stopped on drop.
struct Sendmail {
    child: Child,
    port: u16,
}

impl Sendmail {
    fn start(cf: &Path, port: u16) -> Sendmail {
        let sendmail = root().join("usr/libexec/sendmail/sendmail");
        let child = Command::new("unshare")
            .args(["--uts", "sh", "-c", "hostname backupmx.test && exec \"$0\" -C \"$1\" -bD"])
            .arg(&sendmail)
            .arg(cf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sendmail");
        let mut s = Sendmail { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = s.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("sendmail exited ({status}): {err}");
            }
            assert!(Instant::now() < deadline, "sendmail did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn rcpt(&self, rcpts: &[&str]) -> Vec<String> {
        rcpt_replies_from(Ipv4Addr::new(127, 0, 0, 2), self.port, rcpts)
    }
}

impl Drop for Sendmail {
    fn drop(&mut self) {
        crate::util::terminate(&mut self.child);
    }
}

const OUTPUTS: &str = r#"[[output]]
name = "access"
template = "sendmail-access"
path = "out/access"
makemap = "hash"

[[output]]
name = "relay-domains"
template = "sendmail-domains"
path = "out/relay-domains"

[guard]
max_removed_percent = 100
"#;

#[test]
fn sendmail_accepts_listed_rejects_unlisted_honours_catchall_and_picks_up_changes() {
    if !enabled("sendmail_accepts_listed_rejects_unlisted_honours_catchall_and_picks_up_changes") {
        return;
    }
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    std::fs::create_dir_all(t.join("sendmail")).unwrap();
    let (cf, port) = configure(&t.join("sendmail"), &t.join("out/access"), &t.join("out/relay-domains"));
    // makemap reads sendmail.cf for its options: on a real host the default
    // /etc/mail/sendmail.cf; here the test's (rcptsync runs `makemap` from PATH).
    t.script(
        "makemap",
        &format!("exec {} -C {} \"$@\"", root().join("usr/libexec/sendmail/makemap").display(), cf.display()),
    );
    t.write("recipients.txt", "alice@example.test\nBob@Example.TEST\n@other.test\n");
    t.config(&config_with(OUTPUTS, ""));
    t.run_with_path(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(t.join("out/access.db").exists(), "makemap built no access.db");

    let sm = Sendmail::start(&cf, port);
    let r = sm.rcpt(&[
        "alice@example.test",
        "BOB@example.test",
        "nobody@example.test",
        "Anyone@Other.TEST",
        "x@elsewhere.test",
        "alice@sub.example.test",
    ]);
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(r[1].starts_with("250"), "any case: {r:?}");
    assert_eq!(r[2], "550 5.1.1 <nobody@example.test>... User unknown");
    assert!(r[3].starts_with("250"), "catch-all: {r:?}");
    assert!(r[4].starts_with("550 5.7.1"), "not a relay domain: {r:?}");
    assert!(r[5].starts_with("550"), "a subdomain is not the domain: {r:?}");

    // A rebuilt map is used by the next session, without a restart.
    t.write("recipients.txt", "bob@example.test\ncarol@example.test\nzed@other.test\n");
    t.run_with_path(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let r = sm.rcpt(&["carol@example.test", "alice@example.test", "anyone@other.test", "zed@other.test"]);
    assert!(r[0].starts_with("250"), "added: {r:?}");
    assert_eq!(r[1], "550 5.1.1 <alice@example.test>... User unknown", "removed");
    assert_eq!(r[2], "550 5.1.1 <anyone@other.test>... User unknown", "catch-all removed");
    assert!(r[3].starts_with("250"), "{r:?}");

    // The shipped units run rcptsync as its own user, so the map is that
    // user's: Sendmail uses it only when that user is its TrustedUser (here
    // nobody); otherwise it ignores the map and accepts every address.
    // (chowned before any lookup, so the map sendmail opens next is nobody's.)
    t.write("recipients.txt", "bob@example.test\ncarol@example.test\ndave@example.test\nzed@other.test\n");
    t.run_with_path(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let status = Command::new("chown").arg("nobody").arg(t.join("out/access.db")).status().unwrap();
    assert!(status.success());
    let r = sm.rcpt(&["dave@example.test", "alice@example.test"]);
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(r[1], "550 5.1.1 <alice@example.test>... User unknown", "a TrustedUser's map is used");

    // makemap failing (here: not Sendmail's) fails the run and keeps the map.
    t.script("makemap", "echo 'makemap: cannot open sendmail.cf' >&2; exit 66");
    t.write("recipients.txt", "bob@example.test\ncarol@example.test\nzed@other.test\n");
    let run = t.run_with_path(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("makemap failed") && run.stderr.contains("cannot open sendmail.cf"), "{}", run.stderr);
    let r = sm.rcpt(&["dave@example.test"]);
    assert!(r[0].starts_with("250"), "the previous map stays: {r:?}");
}
