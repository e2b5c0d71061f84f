//! Real OpenSMTPD (Debian's 6.8, extracted beside Postfix): a backup MX whose
//! `rcpt-to` table is the `opensmtpd` output and whose relay domains are the
//! `opensmtpd-domains` output, both reloaded by `smtpctl update table`.
//!
//! smtpd has fixed paths (/var/spool/smtpd, /var/lib/opensmtpd/empty,
//! /run/smtpd.sock), so each instance runs in its own mount namespace with
//! private directories bound over /var/spool, /var/lib and /run; its users
//! come from nss_wrapper. `smtpctl` reaches it with `nsenter`.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::{enabled, free_port};
use crate::smtp::rcpt_replies;
use crate::util::{TestDir, config_with};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

/// A private smtpd on a free 127.0.0.1 port; stopped on drop.
struct Smtpd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Smtpd {
    fn start(dir: &Path, rcpts: &Path, domains: &Path) -> Smtpd {
        let root = PathBuf::from(env("RCPTSYNC_TEST_OPENSMTPD_ROOT"));
        for d in ["spool", "lib/opensmtpd/empty", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let port = free_port();
        // The README's recipe, with a relay that goes nowhere (nothing is
        // delivered: the test stops at RCPT).
        let conf = format!(
            "table rcpts file:{}\ntable relaydomains file:{}\nlisten on 127.0.0.1 port {port}\n\
             action \"relay\" relay host smtp://127.0.0.1:9\n\
             match from any for domain <relaydomains> rcpt-to <rcpts> action \"relay\"\n",
            rcpts.display(),
            domains.display()
        );
        std::fs::write(dir.join("smtpd.conf"), conf).unwrap();
        let script = format!(
            "set -e\nmount --bind {d}/spool /var/spool\nmount --bind {d}/lib /var/lib\nmount --bind {d}/run /run\n\
             exec {smtpd} -d -f {d}/smtpd.conf\n",
            d = dir.display(),
            smtpd = root.join("usr/sbin/smtpd").display()
        );
        std::fs::write(dir.join("run-smtpd"), script).unwrap();
        let log = std::fs::File::create(dir.join("smtpd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh"])
            .arg(dir.join("run-smtpd"))
            .env("LD_PRELOAD", env("RCPTSYNC_TEST_NSS_WRAPPER"))
            .env("NSS_WRAPPER_PASSWD", env("RCPTSYNC_TEST_NSS_PASSWD"))
            .env("NSS_WRAPPER_GROUP", env("RCPTSYNC_TEST_NSS_GROUP"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start smtpd");
        let mut s = Smtpd { child, port, dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("smtpd exited ({status}):\n{}", s.log());
            }
            assert!(Instant::now() < deadline, "smtpd did not listen on {port}:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("smtpd.log")).unwrap_or_default()
    }

    /// A script that runs `smtpctl ARGS` against this instance, as the
    /// output's `reload` hook does on a real host (`smtpctl update table NAME`).
    fn smtpctl_script(&self, t: &TestDir) -> PathBuf {
        let root = PathBuf::from(env("RCPTSYNC_TEST_OPENSMTPD_ROOT"));
        let group = std::fs::read_to_string(env("RCPTSYNC_TEST_NSS_GROUP")).unwrap();
        let gid = group
            .lines()
            .find_map(|l| l.strip_prefix("opensmtpq:x:").and_then(|r| r.split(':').next()))
            .expect("opensmtpq in the nss_wrapper group file")
            .to_string();
        // smtpctl is setgid opensmtpq on a real host; here it gets that group
        // from setpriv, and smtpd's socket from its mount namespace.
        t.script(
            "smtpctl",
            &format!(
                "export LD_PRELOAD={} NSS_WRAPPER_PASSWD={} NSS_WRAPPER_GROUP={}\n\
                 exec nsenter -t {} -m setpriv --regid={gid} --keep-groups {} \"$@\"",
                env("RCPTSYNC_TEST_NSS_WRAPPER"),
                env("RCPTSYNC_TEST_NSS_PASSWD"),
                env("RCPTSYNC_TEST_NSS_GROUP"),
                self.child.id(),
                root.join("usr/sbin/smtpctl").display()
            ),
        )
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        crate::util::terminate(&mut self.child);
    }
}

const OUTPUTS: &str = "[[output]]\nname = \"rcpts\"\ntemplate = \"opensmtpd\"\npath = \"out/recipients\"\n@RELOAD_R@\n\
                       [[output]]\nname = \"domains\"\ntemplate = \"opensmtpd-domains\"\npath = \"out/relay-domains\"\n@RELOAD_D@\n";

fn outputs(reload: bool) -> String {
    let (r, d) = if reload {
        (
            "reload = [\"smtpctl\", \"update\", \"table\", \"rcpts\"]",
            "reload = [\"smtpctl\", \"update\", \"table\", \"relaydomains\"]",
        )
    } else {
        ("", "")
    };
    OUTPUTS.replace("@RELOAD_R@", r).replace("@RELOAD_D@", d)
}

#[test]
fn opensmtpd_accepts_listed_rejects_unlisted_honours_catchall_and_reloads() {
    if !enabled("opensmtpd_accepts_listed_rejects_unlisted_honours_catchall_and_reloads") {
        return;
    }
    let t = TestDir::new();
    // smtpd's table process reads the files as user opensmtpd.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(t.join("out")).unwrap();
    std::fs::create_dir_all(t.join("smtpd")).unwrap();
    t.write("recipients.txt", "alice@example.test\nBob@Example.TEST\n@other.test\n");
    let extra = "[guard]\nmax_removed_percent = 100\n";
    t.config(&config_with(&format!("{}{extra}", outputs(false)), ""));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let list = t.read("out/recipients");
    assert!(list.starts_with("# @list\n"), "smtpd needs the list marker first:\n{list}");

    let smtpd = Smtpd::start(&t.join("smtpd"), &t.join("out/recipients"), &t.join("out/relay-domains"));
    let r = rcpt_replies(
        smtpd.port,
        &["alice@example.test", "BOB@example.test", "nobody@example.test", "Anyone@Other.TEST", "x@elsewhere.test"],
    );
    assert!(r[0].starts_with("250"), "{r:?}\n{}", smtpd.log());
    assert!(r[1].starts_with("250"), "any case: {r:?}");
    assert_eq!(r[2], "550 Invalid recipient: <nobody@example.test>");
    assert!(r[3].starts_with("250"), "catch-all: {r:?}");
    assert!(r[4].starts_with("550"), "not a relay domain: {r:?}");

    // A change reaches the running smtpd through the reload hooks only.
    smtpd.smtpctl_script(&t);
    t.config(&config_with(&format!("{}{extra}", outputs(true)), ""));
    t.write("recipients.txt", "bob@example.test\ncarol@example.test\nzed@third.test\n");
    let run = t.run_with_path(&["sync", "-c", "rcptsync.toml"]);
    run.expect(0);
    let r = rcpt_replies(
        smtpd.port,
        &["carol@example.test", "alice@example.test", "anyone@other.test", "zed@third.test", "nobody@third.test"],
    );
    assert!(r[0].starts_with("250"), "added: {r:?}\n{}", smtpd.log());
    assert!(r[1].starts_with("550"), "removed: {r:?}");
    assert!(r[2].starts_with("550"), "catch-all and domain removed: {r:?}");
    assert!(r[3].starts_with("250"), "new domain: {r:?}");
    assert_eq!(r[4], "550 Invalid recipient: <nobody@third.test>");
    assert!(smtpd.log().contains("Table \"rcpts\" successfully updated"), "{}", smtpd.log());

    // A reload that fails (smtpd gone) is a failed run that says so.
    drop(smtpd);
    t.write("recipients.txt", "bob@example.test\ncarol@example.test\n");
    let run = t.run_with_path(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(run.code, 0, "a failed smtpctl must fail the run");
    assert!(run.stderr.contains("smtpctl"), "{}", run.stderr);
}
