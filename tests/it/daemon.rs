//! `rcptsync daemon` driven as systemd would drive it: schedules with a seconds
//! field (so ticks come every second, not every minute), config edits by
//! rename, SIGHUP, SIGTERM during a run, and the metrics and health endpoint.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TestDir, http_get};

/// A daemon process with its stderr in a file, killed on drop if still running.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(t: &TestDir) -> Daemon {
        Daemon::start_with(t, &[])
    }

    fn start_with(t: &TestDir, env: &[(&str, &str)]) -> Daemon {
        let log = t.join("daemon.log");
        let mut cmd = t.cmd(&["daemon", "-c", "rcptsync.toml"]);
        cmd.env("PATH", t.path_env()).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon { child: cmd.spawn().expect("spawn daemon"), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    #[track_caller]
    fn wait_log(&self, needle: &str, within: Duration) {
        let log = wait_for(within, || self.log().contains(needle).then_some(()));
        assert!(log.is_some(), "{needle:?} not logged within {within:?}:\n{}", self.log());
    }

    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        wait_for(within, || self.child.try_wait().ok().flatten().map(|s| s.code().unwrap_or(-1)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[track_caller]
fn wait_list(t: &TestDir, d: &Daemon, want: impl Fn(&str) -> bool, what: &str) {
    let ok = wait_for(Duration::from_secs(8), || {
        std::fs::read_to_string(t.join("out/list")).ok().filter(|l| want(l)).map(|_| ())
    });
    assert!(ok.is_some(), "list never {what}:\n{}\n--- log\n{}", t.read("out/list"), d.log());
}

/// A daemon config ticking every second; `daemon` adds `[daemon]` keys,
/// `extra` adds top-level tables.
fn config(t: &TestDir, daemon: &str, extra: &str) {
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&daemon_config(daemon, extra));
}

fn daemon_config(daemon: &str, extra: &str) -> String {
    format!(
        "state_dir = \"state\"\n[daemon]\nschedule = \"* * * * * *\"\ndebounce = \"100ms\"\n{daemon}\n{extra}\n\
         [[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
    )
}

/// Replaces rcptsync.toml the way editors and config tools do: write, rename.
fn replace_config(t: &TestDir, text: &str) {
    t.write("rcptsync.toml.new", text);
    std::fs::rename(t.join("rcptsync.toml.new"), t.join("rcptsync.toml")).unwrap();
}

fn metrics(port: u16) -> std::collections::BTreeMap<String, f64> {
    let (code, body) = http_get(([127, 0, 0, 1], port).into(), "/metrics", None);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

#[test]
fn schedule_fires_metrics_are_served_and_health_follows_staleness() {
    let t = TestDir::new();
    t.write("recipients.txt", "a@example.com\nb@example.com\n");
    let port = crate::support::db::free_port();
    config(&t, &format!("listen = \"127.0.0.1:{port}\"\nmax_staleness = \"3s\""), "");
    // systemd's Type=notify: READY=1 on the notify socket.
    let sock_path = t.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut d = Daemon::start_with(&t, &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1");

    wait_list(&t, &d, |l| l == "a@example.com\nb@example.com\n", "had the first run's content");
    // A change in the source arrives with a later tick, no signal needed.
    t.write("recipients.txt", "a@example.com\nb@example.com\nc@example.com\n");
    wait_list(&t, &d, |l| l.contains("c@example.com"), "picked up c@example.com");
    // The outputs are on disk a moment before the run's figures are recorded.
    let key = "rcptsync_source_recipients{source=\"list\",kind=\"file\"}";
    let m = wait_for(Duration::from_secs(5), || Some(metrics(port)).filter(|m| m.get(key) == Some(&3.0)));
    let m = m.unwrap_or_else(|| panic!("metrics never showed 3 recipients: {:?}", metrics(port)));
    assert!(m["rcptsync_runs_total{result=\"success\"}"] >= 2.0, "{m:?}");
    assert!(m["rcptsync_source_last_success_timestamp_seconds{source=\"list\",kind=\"file\"}"] > 1.7e9);
    assert!(m["rcptsync_output_last_change_timestamp_seconds{output=\"plain\"}"] > 1.7e9);
    assert_eq!(m["rcptsync_recipients"], 3.0);
    assert!(m["rcptsync_list_age_seconds"] < 3.0);
    let (code, body) = http_get(([127, 0, 0, 1], port).into(), "/healthz", None);
    assert_eq!(code, 200, "{body}");

    // The source breaks: its last good copy keeps the list, but the list ages
    // and /healthz turns unhealthy after max_staleness.
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    let stale = wait_for(Duration::from_secs(8), || {
        let (code, body) = http_get(([127, 0, 0, 1], port).into(), "/healthz", None);
        (code == 503).then_some(body)
    });
    let body = stale.unwrap_or_else(|| panic!("healthz never turned 503:\n{}", d.log()));
    assert!(body.starts_with("stale: the published list is"), "{body}");
    let m = metrics(port);
    assert!(m["rcptsync_source_failures_total{source=\"list\",kind=\"file\"}"] >= 1.0);
    assert!(t.read("out/list").contains("c@example.com"), "the list is kept");
    // Back to health once the source is readable again.
    t.write("recipients.txt", "a@example.com\nb@example.com\nc@example.com\n");
    let ok = wait_for(Duration::from_secs(8), || {
        (http_get(([127, 0, 0, 1], port).into(), "/healthz", None).0 == 200).then_some(())
    });
    assert!(ok.is_some(), "{}", d.log());

    d.signal(libc::SIGINT);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
    assert!(d.log().contains("stopping signal=\"SIGINT\""), "{}", d.log());
}

#[test]
fn ticks_during_a_run_are_skipped_and_sigterm_lets_the_run_finish() {
    let t = TestDir::new();
    t.write("recipients.txt", "a@example.com\n");
    // The reload takes 2.5 s: ticks come every second meanwhile.
    let hook = "[[output]]\nname = \"slow\"\ntemplate = \"plain\"\npath = \"out/slow\"\n\
                reload = [\"sh\", \"-c\", \"touch reload-started; sleep 2.5; touch reload-done\"]\n";
    config(&t, "", hook);
    let mut d = Daemon::start(&t);
    d.wait_log("tick skipped: the previous run is still in progress", Duration::from_secs(8));
    wait_for(Duration::from_secs(8), || t.join("reload-done").exists().then_some(()));

    // A change starts a run whose reload is slow; SIGTERM in the middle of it.
    std::fs::remove_file(t.join("reload-started")).unwrap();
    std::fs::remove_file(t.join("reload-done")).unwrap();
    t.write("recipients.txt", "a@example.com\nb@example.com\n");
    assert!(
        wait_for(Duration::from_secs(8), || t.join("reload-started").exists().then_some(())).is_some(),
        "{}",
        d.log()
    );
    let sent = Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "{}", d.log());
    assert!(sent.elapsed() >= Duration::from_secs(1), "the daemon waited for the run");
    assert!(t.join("reload-done").exists(), "the reload finished before exit");
    assert!(d.log().contains("stopping after the current run completes"), "{}", d.log());
    // Complete new outputs, never half-written ones.
    assert_eq!(t.read("out/slow"), "a@example.com\nb@example.com\n");
    assert_eq!(t.read("out/list"), "a@example.com\nb@example.com\n");
}

#[test]
fn config_replaced_by_rename_is_picked_up_and_an_invalid_one_is_refused() {
    let t = TestDir::new();
    t.write("recipients.txt", "a@example.com\n");
    config(&t, "", "");
    let d = Daemon::start(&t);
    wait_list(&t, &d, |l| l == "a@example.com\n", "had the first run's content");

    replace_config(&t, &daemon_config("", "[policy]\ninclude = [\"postmaster@example.com\"]"));
    wait_list(&t, &d, |l| l.contains("postmaster@example.com"), "gained the include");
    d.wait_log("config reloaded", Duration::from_secs(1));

    // An invalid edit: every error is logged, the old config keeps serving.
    let broken = daemon_config("", "[policy]\ninclude = [\"postmaster@example.com\"]")
        .replace("path = \"recipients.txt\"", "path = \"recipients.txt\"\ncolour = \"blue\"")
        .replace("template = \"plain\"", "template = \"nope\"");
    replace_config(&t, &broken);
    d.wait_log("config reload refused; the previous config keeps running", Duration::from_secs(5));
    let log = d.log();
    assert!(
        log.contains("source[0]: unknown field `colour`")
            && log.contains("output[0].template: unknown template \"nope\""),
        "{log}"
    );
    t.write("recipients.txt", "a@example.com\nd@example.com\n");
    wait_list(
        &t,
        &d,
        |l| l.contains("d@example.com") && l.contains("postmaster@example.com"),
        "kept serving the old config",
    );
}

#[test]
fn a_changed_user_profile_reloads_the_config() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("recipients.txt", "a@example.com\n@catch.example.com\n");
    // A user profile that accepts catch-all lines; the edit will refuse them.
    t.write("profiles/export.toml", "kind = \"file\"\ndescription = \"test\"\n[defaults]\ncatchalls = true\n");
    t.config(
        "state_dir = \"state\"\nprofile_dir = \"profiles\"\n[daemon]\nschedule = \"* * * * * *\"\ndebounce = \"100ms\"\n\
         [guard]\nmax_removed_percent = 60\n\
         [[source]]\nname = \"list\"\nkind = \"file\"\nprofile = \"export\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/list\"\n",
    );
    let d = Daemon::start(&t);
    wait_list(&t, &d, |l| l.contains("@catch.example.com"), "had the catch-all");
    t.write("profiles/export.toml.tmp", "kind = \"file\"\ndescription = \"test\"\n[defaults]\ncatchalls = false\n");
    std::fs::rename(t.join("profiles/export.toml.tmp"), t.join("profiles/export.toml")).unwrap();
    wait_list(&t, &d, |l| !l.contains("@catch.example.com") && l.contains("a@example.com"), "dropped the catch-all");
    d.wait_log("config reloaded reason=\"a watched file changed\"", Duration::from_secs(1));
}

#[test]
fn sighup_reloads_when_watching_is_off() {
    let t = TestDir::new();
    t.write("recipients.txt", "a@example.com\n");
    config(&t, "watch = false", "");
    let d = Daemon::start(&t);
    wait_list(&t, &d, |l| l == "a@example.com\n", "had the first run's content");
    replace_config(&t, &daemon_config("watch = false", "[policy]\ninclude = [\"abuse@example.com\"]"));
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!t.read("out/list").contains("abuse@"), "no reload without the signal");
    d.signal(libc::SIGHUP);
    wait_list(&t, &d, |l| l.contains("abuse@example.com"), "gained the include after SIGHUP");
    assert!(d.log().contains("config reloaded reason=\"SIGHUP\""), "{}", d.log());
}

#[test]
fn a_source_with_its_own_schedule_is_fetched_only_at_its_ticks() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("slow.txt", "a@example.com\n");
    t.write("fast.txt", "b@example.com\n");
    // The global line fires once a year; "fast" every second.
    t.config(
        "state_dir = \"state\"\n[daemon]\nschedule = \"0 0 1 1 *\"\n\
         [[source]]\nname = \"slow\"\nkind = \"file\"\npath = \"slow.txt\"\n\
         [[source]]\nname = \"fast\"\nkind = \"file\"\npath = \"fast.txt\"\nschedule = \"* * * * * *\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
    );
    let d = Daemon::start(&t);
    wait_list(&t, &d, |l| l == "a@example.com\nb@example.com\n", "had both sources");
    t.write("slow.txt", "a@example.com\nlater@example.com\n");
    t.write("fast.txt", "b@example.com\nc@example.com\n");
    wait_list(&t, &d, |l| l.contains("c@example.com"), "picked up the fast source");
    std::thread::sleep(Duration::from_millis(1500));
    let list = t.read("out/list");
    assert!(!list.contains("later@"), "the slow source is not due: its last good copy is used:\n{list}");
    assert!(list.contains("a@example.com"), "{list}");
    assert!(d.log().contains("not due at this tick: using its last good copy"), "{}", d.log());
}

#[test]
fn daemon_feeds_real_postfix_from_openldap_and_a_file() {
    if !crate::ldap::enabled("daemon_feeds_real_postfix_from_openldap_and_a_file")
        || !crate::postfix::enabled("daemon_feeds_real_postfix_from_openldap_and_a_file")
    {
        return;
    }
    use crate::postfix::Postfix;
    use crate::smtp::rcpt_replies;
    use crate::support::slapd::{SYNC_DN, SYNC_PASSWORD, Slapd, person};
    let t = TestDir::new();
    let s = Slapd::start(&t.join("slapd"), &person("alice", &["alice@example.test"], &[]));
    let pw = t.write("ldap-password", SYNC_PASSWORD);
    t.write("extra.txt", "postmaster@example.test\n");
    std::fs::create_dir_all(t.join("maps")).unwrap();
    let map = t.join("maps/relay_recipients");
    t.config(&format!(
        "state_dir = \"state\"\n[daemon]\nschedule = \"* * * * * *\"\n\
         [[source]]\nname = \"dir\"\nkind = \"ldap\"\nprofile = \"openldap\"\nurl = \"{}\"\nca_file = \"{}\"\n\
         bind_dn = \"{SYNC_DN}\"\nbind_password_file = \"{}\"\nbase_dn = \"ou=people,dc=example,dc=test\"\n\
         [[source]]\nname = \"extra\"\nkind = \"file\"\npath = \"extra.txt\"\n\
         [[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"{}\"\npostmap = \"lmdb\"\n",
        s.ldaps_url(),
        s.ca.display(),
        pw.display(),
        map.display()
    ));
    let etc = Postfix::configure(&t.join("pf"), "example.test", &format!("lmdb:{}", map.display()));
    // The first sync by hand so that Postfix starts with a map; then the daemon.
    crate::postfix::sync_for(&t, &etc, &[]).expect(0);
    let pf = Postfix::run(etc.clone());
    let d = Daemon::start_with(&t, &[("MAIL_CONFIG", etc.to_str().unwrap())]);
    let r = rcpt_replies(pf.port, &["alice@example.test", "bob@example.test", "postmaster@example.test"]);
    assert!(r[0].starts_with("250") && r[1].starts_with("550 5.1.1") && r[2].starts_with("250"), "{r:?}");
    // Several ticks with changes between them; Postfix follows without a manual step.
    s.add(&person("bob", &["bob@example.test"], &[]));
    let ok = wait_for(Duration::from_secs(15), || {
        rcpt_replies(pf.port, &["bob@example.test"])[0].starts_with("250").then_some(())
    });
    assert!(ok.is_some(), "bob never accepted\n{}\n{}", d.log(), pf.log_tail());
    t.write("extra.txt", "postmaster@example.test\nabuse@example.test\n");
    let ok = wait_for(Duration::from_secs(15), || {
        rcpt_replies(pf.port, &["abuse@example.test"])[0].starts_with("250").then_some(())
    });
    assert!(ok.is_some(), "abuse never accepted\n{}", d.log());
    assert!(d.log().contains("run complete"), "{}", d.log());
}

/// A run that hangs (a source that never answers, within a long
/// fetch_timeout) must not keep a stale list answering 550: the daemon checks
/// the list's age on its own timer and runs on_stale while the run hangs.
#[test]
fn the_stale_defence_fires_while_a_run_hangs() {
    let t = TestDir::new();
    t.write("recipients.txt", "a@example.com\n");
    std::fs::create_dir_all(t.join("out")).unwrap();
    let guard = "[guard]\nmax_staleness = \"2s\"\non_stale = [\"sh\", \"-c\", \"touch on-stale-ran\"]";
    t.config(&crate::util::config_with(
        "[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
        guard,
    ));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    // Now the source is a pipe nobody writes to: the daemon's first run hangs.
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(t.join("recipients.txt")).status().unwrap().success());
    let text = t
        .read("rcptsync.toml")
        .replace("path = \"recipients.txt\"", "path = \"recipients.txt\"\nfetch_timeout = \"1h\"");
    t.config(&format!("{text}\n[daemon]\nschedule = \"0 0 1 1 *\"\n"));
    let d = Daemon::start(&t);
    let ran = wait_for(Duration::from_secs(15), || t.join("on-stale-ran").exists().then_some(()));
    assert!(ran.is_some(), "on_stale did not run while the run hung:\n{}", d.log());
    assert!(d.log().contains("the published list is stale"), "{}", d.log());
    assert_eq!(t.read("out/list"), "a@example.com\n");
}
