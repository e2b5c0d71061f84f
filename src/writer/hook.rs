//! Running `postmap`, `check` and `reload`: argv only (never a shell), with a
//! timeout, the environment inherited (so `MAIL_CONFIG` and friends reach Postfix),
//! and stderr captured so a failure says why.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use wait_timeout::ChildExt;

/// How much of a hook's stderr is kept for the error message.
const STDERR_KEEP: usize = 4096;

/// Why a hook failed. The message includes the command and its stderr.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot run {cmd}: {err}")]
    Spawn { cmd: String, err: std::io::Error },
    #[error("{cmd} exited with {status}{stderr}")]
    Failed { cmd: String, status: String, stderr: String },
    #[error("{cmd} did not finish within {timeout:?} and was killed{stderr}")]
    Timeout { cmd: String, timeout: Duration, stderr: String },
}

fn show(argv: &[String]) -> String {
    argv.join(" ")
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text.len().saturating_sub(STDERR_KEEP);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    format!(": {}", text[start..].replace('\n', " | "))
}

/// Runs `argv` and waits up to `timeout`. On timeout the whole process group is
/// killed, so a hook's children cannot outlive it.
pub fn run(argv: &[String], timeout: Duration) -> Result<(), HookError> {
    run_with_stdin(argv, None, timeout)
}

/// [`run`] with the file `stdin` (if any) as the command's standard input
/// (Sendmail's `makemap` reads the map's text there).
pub fn run_with_stdin(argv: &[String], stdin: Option<&std::path::Path>, timeout: Duration) -> Result<(), HookError> {
    let cmd = show(argv);
    let Some((prog, args)) = argv.split_first() else {
        return Err(HookError::Spawn { cmd, err: std::io::Error::other("empty command") });
    };
    let mut command = Command::new(prog);
    // Hooks and postmap never see the variables that hold rcptsync's secrets.
    for name in crate::secret::env_names() {
        command.env_remove(name);
    }
    let input = match stdin {
        None => Stdio::null(),
        Some(path) => Stdio::from(std::fs::File::open(path).map_err(|err| HookError::Spawn { cmd: cmd.clone(), err })?),
    };
    let mut child = command
        .args(args)
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|err| HookError::Spawn { cmd: cmd.clone(), err })?;
    let mut stderr_pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(p) = stderr_pipe.as_mut() {
            // Keep reading to the end so the child never blocks on a full pipe.
            let mut chunk = [0u8; 8192];
            while let Ok(n) = p.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > 4 * STDERR_KEEP {
                    buf.drain(..buf.len() - STDERR_KEEP);
                }
            }
        }
        buf
    });
    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) | Err(_) => {
            let pid = child.id() as i32;
            // SAFETY: sending a signal to the process group we created.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            let stderr = reader.join().map(|b| tail(&b)).unwrap_or_default();
            return Err(HookError::Timeout { cmd, timeout, stderr });
        }
    };
    let stderr = reader.join().map(|b| tail(&b)).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let status = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
        (Some(c), _) => format!("status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown status".to_string(),
    };
    Err(HookError::Failed { cmd, status, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn success_and_failure_with_stderr() {
        run(&sh("exit 0"), Duration::from_secs(5)).unwrap();
        let e = run(&sh("echo 'postmap: fatal: bad' >&2; exit 3"), Duration::from_secs(5)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/bin/sh -c echo 'postmap: fatal: bad' >&2; exit 3 exited with status 3: postmap: fatal: bad"
        );
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let t = std::time::Instant::now();
        let e = run(&sh(&script), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "a child of the hook outlived the timeout");
    }

    #[test]
    fn missing_program() {
        let e = run(&["/nonexistent/reload".to_string()], Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().starts_with("cannot run /nonexistent/reload: "), "{e}");
    }
}
