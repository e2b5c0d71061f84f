//! The attacks a root run must survive, each reproduced: links planted where
//! rcptsync writes, directories other users can write, a root run on the
//! daemon's state, and servers flooded with idle connections.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::{TestDir, config_with, say};

const PLAIN: &str = "[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/plain\"\n";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid/gid of `nobody`: an unprivileged user that exists on every Debian host.
const NOBODY: u32 = 65534;

fn root_only(test: &str) -> bool {
    if !is_root() {
        say(&format!("SKIPPED {test}: needs root (it plays an unprivileged user against a root run)"));
    }
    is_root()
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

fn setup() -> TestDir {
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.com\nbob@example.com\n");
    t.config(&config_with(PLAIN, ""));
    std::fs::create_dir_all(t.join("out")).unwrap();
    t
}

#[test]
fn a_lock_link_planted_in_the_state_dir_is_refused_and_the_victim_kept() {
    let t = setup();
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let victim = t.write("victim", "precious\n");
    std::fs::remove_file(t.join("state/lock")).unwrap();
    symlink(&victim, t.join("state/lock")).unwrap();
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("is a symbolic link; refusing to follow it"), "{}", r.stderr);
    assert_eq!(t.read("victim"), "precious\n");
}

#[test]
fn a_last_fresh_link_is_replaced_not_followed() {
    let t = setup();
    t.config(&config_with(PLAIN, "[guard]\nmax_staleness = \"1h\""));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let victim = t.write("victim", "precious\n");
    for name in ["last-fresh", "stale"] {
        let _ = std::fs::remove_file(t.join(&format!("state/{name}")));
        symlink(&victim, t.join(&format!("state/{name}"))).unwrap();
    }
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(t.read("victim"), "precious\n");
    assert!(!std::fs::symlink_metadata(t.join("state/last-fresh")).unwrap().file_type().is_symlink());
}

#[test]
fn a_state_dir_others_can_write_is_refused() {
    let t = setup();
    std::fs::create_dir_all(t.join("state/sources")).unwrap();
    std::fs::set_permissions(t.join("state"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(r.stderr.contains("is writable by everyone (mode 0777) without the sticky bit"), "{}", r.stderr);
    assert!(!t.join("out/plain").exists(), "nothing written");
}

#[test]
fn a_root_run_on_another_users_state_dir_names_the_user_to_run_as() {
    if !root_only("a_root_run_on_another_users_state_dir_names_the_user_to_run_as") {
        return;
    }
    let t = setup();
    std::fs::create_dir_all(t.join("state/sources")).unwrap();
    chown(&t.join("state"), NOBODY);
    chown(&t.join("state/sources"), NOBODY);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(
        r.stderr.contains("belongs to user nobody") && r.stderr.contains("sudo -u nobody rcptsync"),
        "{}",
        r.stderr
    );
    // Nothing root-owned was left for the daemon's user to trip over.
    let owned_by_root: Vec<_> =
        walk(&t.join("state")).into_iter().filter(|p| p.metadata().unwrap().uid() == 0).collect();
    assert!(owned_by_root.is_empty(), "{owned_by_root:?}");
    assert!(!t.join("out/plain").exists());
}

#[test]
fn an_output_directory_of_another_user_is_refused() {
    if !root_only("an_output_directory_of_another_user_is_refused") {
        return;
    }
    let t = setup();
    chown(&t.join("out"), NOBODY);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(
        r.stderr.contains("output plain: directory") && r.stderr.contains("is owned by user nobody"),
        "{}",
        r.stderr
    );
    assert!(!t.join("out/plain").exists());
}

#[test]
fn a_planted_output_link_is_not_followed_by_a_root_run() {
    if !root_only("a_planted_output_link_is_not_followed_by_a_root_run") {
        return;
    }
    let t = setup();
    let victim = t.write("victim", "precious\n");
    // The link in a directory an unprivileged user owns…
    symlink(&victim, t.join("out/plain")).unwrap();
    chown(&t.join("out/plain"), NOBODY);
    chown(&t.join("out"), NOBODY);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(r.stderr.contains("out/plain is a symbolic link, and the link belongs to user nobody"), "{}", r.stderr);
    assert_eq!(t.read("victim"), "precious\n");
    // …or a link the user made in a directory root owns (before it was locked down).
    chown(&t.join("out"), 0);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(r.stderr.contains("the link belongs to user nobody"), "{}", r.stderr);
    assert_eq!(t.read("victim"), "precious\n");
    // A link root made is followed, as before.
    std::fs::remove_file(t.join("out/plain")).unwrap();
    symlink(&victim, t.join("out/plain")).unwrap();
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(t.read("victim"), "alice@example.com\nbob@example.com\n");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// Starts a server of the binary with a normal per-process file limit (512),
/// so that a flood of connections shows whether the server caps them.
fn spawn_limited(t: &TestDir, args: &[&str]) -> Child {
    use std::os::unix::process::CommandExt as _;
    let mut c = t.cmd(args);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 512, rlim_max: 512 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().unwrap()
}

fn connect_when_up(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            return s;
        }
        assert!(Instant::now() < deadline, "server on port {port} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens `n` connections and leaves them idle.
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // A server that stops accepting leaves the backlog full: connects then time out.
    (0..n).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect()
}

use crate::util::Stopped as Killed;

#[test]
fn a_thousand_idle_socketmap_connections_do_not_stop_a_lookup() {
    let t = setup();
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let port = crate::support::db::free_port();
    let listen = format!("inet:127.0.0.1:{port}");
    let _server =
        Killed(spawn_limited(&t, &["socketmap", "-c", "rcptsync.toml", "--output", "plain", "--listen", &listen]));
    drop(connect_when_up(port));
    let idle = flood(port, 1000);
    assert!(idle.len() >= 900, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("the server accepts no connection");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"23:relay alice@example.com,").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("5:OK "), "the lookup was not answered: {reply:?}");
    drop(idle);
}

#[test]
fn a_thousand_idle_metrics_connections_do_not_stop_a_scrape() {
    let t = setup();
    let port = crate::support::db::free_port();
    t.config(&config_with(PLAIN, &format!("[daemon]\nschedule = \"0 0 1 1 *\"\nlisten = \"127.0.0.1:{port}\"")));
    let _daemon = Killed(spawn_limited(&t, &["daemon", "-c", "rcptsync.toml"]));
    drop(connect_when_up(port));
    let idle = flood(port, 1000);
    assert!(idle.len() >= 900, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let (status, body) = crate::util::http_get(addr, "/metrics", None);
    assert_eq!(status, 200, "scrape failed after {:?}", started.elapsed());
    assert!(body.contains("rcptsync_"), "{body}");
    drop(idle);
}

/// Hooks and postmap run without the variables that hold rcptsync's secrets,
/// and a secret file others can read draws a warning that names the fix.
#[test]
fn hooks_do_not_inherit_secrets_and_readable_secret_files_are_named() {
    let t = setup();
    let hashed = "[[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\n\
                  hash_salt_env = \"RCPTSYNC_TEST_SALT\"\nreload = [\"sh\", \"-c\", \"env > hook-env\"]\n\
                  [[output]]\nname = \"other\"\ntemplate = \"exim-sha256\"\npath = \"out/other\"\n\
                  hash_salt_file = \"salt\"\n";
    t.config(&config_with(hashed, ""));
    let salt = t.write("salt", "Pepper-77\n");
    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = crate::util::Run::from(
        t.cmd(&["sync", "-c", "rcptsync.toml"]).env("RCPTSYNC_TEST_SALT", "Salt-Value-91").output().unwrap(),
    );
    r.expect(0);
    let env = t.read("hook-env");
    assert!(env.contains("PATH="), "the hook ran with an environment: {env}");
    assert!(!env.contains("RCPTSYNC_TEST_SALT") && !env.contains("Salt-Value-91"), "{env}");
    assert!(
        r.stderr.contains(&format!("hash_salt_file is readable by group or others: chmod 0600 {}", salt.display())),
        "{}",
        r.stderr
    );
    std::fs::set_permissions(&salt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = crate::util::Run::from(
        t.cmd(&["sync", "-c", "rcptsync.toml"]).env("RCPTSYNC_TEST_SALT", "Salt-Value-91").output().unwrap(),
    );
    assert!(!r.stderr.contains("readable by group or others"), "{}", r.stderr);
}
