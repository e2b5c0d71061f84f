//! Test helpers: a scratch directory, a config writer, and a way to run the
//! `rcptsync` binary and look at what it did.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory (mode 0755, so that a Postfix started inside can traverse it).
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new().prefix("rcptsync-it-").tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, text).expect("write");
        p
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// Writes `rcptsync.toml` and returns its path.
    pub fn config(&self, text: &str) -> PathBuf {
        self.write("rcptsync.toml", text)
    }

    /// A command running the binary with `-c rcptsync.toml` style args.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rcptsync"));
        c.args(args).current_dir(self.path()).env_remove("RCPTSYNC_CONFIG").env("RCPTSYNC_LOG", "info");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("spawn rcptsync"))
    }

    /// Puts an executable script on a private PATH directory (`bin/NAME`).
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.write(&format!("bin/{name}"), &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }

    /// PATH with this dir's `bin/` first.
    pub fn path_env(&self) -> String {
        format!("{}:{}", self.join("bin").display(), std::env::var("PATH").unwrap_or_default())
    }
}

/// The result of one run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Prints a line that `cargo test` shows even when output is captured.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Whether the real-MTA tests must run (the project's test script sets this).
pub fn real_mta_required() -> bool {
    std::env::var("RCPTSYNC_TEST_REAL_MTA").is_ok_and(|v| v == "1")
}

/// Asserts that two texts are equal, with a readable line diff.
#[track_caller]
pub fn assert_text_eq(want: &str, got: &str, what: &str) {
    if want == got {
        return;
    }
    let mut msg = format!("{what} differs (- want, + got):\n");
    let w: Vec<&str> = want.lines().collect();
    let g: Vec<&str> = got.lines().collect();
    for l in &w {
        if !g.contains(l) {
            msg.push_str(&format!("- {l}\n"));
        }
    }
    for l in &g {
        if !w.contains(l) {
            msg.push_str(&format!("+ {l}\n"));
        }
    }
    if want.ends_with('\n') != got.ends_with('\n') {
        msg.push_str("(final newline differs)\n");
    }
    panic!("{msg}");
}

/// A basic config: one file source `list` reading `recipients.txt`, outputs given.
pub fn config_with(outputs: &str, extra: &str) -> String {
    format!(
        r#"state_dir = "state"
{extra}
[[source]]
name = "list"
kind = "file"
path = "recipients.txt"

{outputs}
"#
    )
}

impl TestDir {
    /// Runs the binary with this dir's `bin/` first on PATH.
    pub fn run_with_path(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).env("PATH", self.path_env()).output().expect("spawn rcptsync"))
    }
}

/// A bare HTTP/1.1 GET (no client library): status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::Read as _;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10)) else {
        return (0, String::new());
    };
    // Bounded: a server that never answers fails the test instead of hanging it.
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Exit code, peak RSS (KiB) and stderr of one run.
pub fn run_measured(cmd: &mut Command) -> (i32, i64, String) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let child = cmd.stdout(std::process::Stdio::null()).stderr(err.reopen().unwrap()).spawn().unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; we wait for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(rc > 0);
    std::mem::forget(child);
    (libc::WEXITSTATUS(status), usage.ru_maxrss, std::fs::read_to_string(err.path()).unwrap())
}

/// A process a test started, stopped (with [`terminate`]) when the guard goes.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// Stops a server a test started: SIGTERM, up to 10 s to exit, then SIGKILL.
pub fn terminate(child: &mut std::process::Child) {
    // SAFETY: signalling a child process this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
