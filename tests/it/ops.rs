//! What operators install next to the binary: the systemd units, the
//! config-management examples, shell completions and the man page. Each test
//! fails if the shipped file stops matching the binary it describes.

use std::path::Path;
use std::process::Command;

use crate::util::{Run, TestDir};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rcptsync")
}

#[test]
fn systemd_units_verify_cleanly() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        crate::util::say(
            "SKIPPED systemd_units_verify_cleanly: systemd-analyze is missing (scripts/test-deps.sh installs systemd)",
        );
        return;
    }
    let t = TestDir::new();
    let mut units = Vec::new();
    for name in [
        "rcptsync.service",
        "rcptsync-sync.service",
        "rcptsync-sync.timer",
        "rcptsync-socketmap.service",
        "rcptsync-socketmap.socket",
        "rcptsync-stale.path",
        "rcptsync-stale.service",
        "rcptsync-opensmtpd.path",
        "rcptsync-opensmtpd.service",
    ] {
        let text = std::fs::read_to_string(repo("dist/systemd").join(name)).unwrap();
        // The units name the installed paths; verify against the built binary
        // and the extracted smtpctl (OpenSMTPD is not installed beside Postfix).
        let smtpctl = std::env::var("RCPTSYNC_TEST_OPENSMTPD_ROOT")
            .map(|r| format!("{r}/usr/sbin/smtpctl"))
            .unwrap_or_else(|_| "/bin/true".into());
        units.push(t.write(name, &text.replace("/usr/bin/rcptsync", bin()).replace("/usr/sbin/smtpctl", &smtpctl)));
    }
    let service = std::fs::read_to_string(repo("dist/systemd/rcptsync.service")).unwrap();
    for key in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "StateDirectory=rcptsync",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(service.contains(key), "rcptsync.service lacks {key}");
    }
    for name in ["rcptsync.service", "rcptsync-sync.service", "rcptsync-socketmap.service"] {
        let unit = std::fs::read_to_string(repo("dist/systemd").join(name)).unwrap();
        for key in [
            "SystemCallFilter=@system-service",
            "SystemCallErrorNumber=EPERM",
            "ProtectProc=invisible",
            "MemoryMax=",
            "LimitCORE=0",
        ] {
            assert!(unit.contains(key), "{name} lacks {key}");
        }
    }
    let oneshot = std::fs::read_to_string(repo("dist/systemd/rcptsync-sync.service")).unwrap();
    assert!(oneshot.contains("TimeoutStartSec="), "the oneshot must be bounded");
    let r = Run::from(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg("--man=no")
            .args(&units)
            .current_dir(t.path())
            .output()
            .unwrap(),
    );
    let socketmap = std::fs::read_to_string(repo("dist/systemd/rcptsync-socketmap.service")).unwrap();
    for key in [
        "Requires=rcptsync-socketmap.socket",
        "SystemCallFilter=@system-service",
        "ProtectProc=invisible",
        "MemoryMax=",
        "LimitCORE=0",
    ] {
        assert!(socketmap.contains(key), "rcptsync-socketmap.service lacks {key}");
    }
    assert!(!socketmap.contains("--listen"), "the socket comes from the .socket unit");
    // verify exits 0 on mere warnings (e.g. an unknown Type=): require silence.
    assert!(r.code == 0 && r.stdout.trim().is_empty() && r.stderr.trim().is_empty(), "{}\n{}", r.stdout, r.stderr);
}

/// Every `rcptsync …` invocation in the shipped examples and units parses.
#[test]
fn example_command_lines_parse() {
    let files = [
        "examples/ansible/rcptsync.yml",
        "examples/puppet/rcptsync.pp",
        "examples/cron/rcptsync",
        "dist/systemd/rcptsync.service",
        "dist/systemd/rcptsync-sync.service",
        "dist/systemd/rcptsync-socketmap.service",
    ];
    let mut seen = 0;
    for f in files {
        let text = std::fs::read_to_string(repo(f)).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let commands = ["rcptsync sync", "rcptsync check", "rcptsync daemon", "rcptsync socketmap"];
            let Some(at) = commands.iter().find_map(|c| line.find(c)) else {
                continue;
            };
            let args: Vec<&str> = line[at..]
                .split_whitespace()
                .skip(1)
                .take_while(|w| !matches!(*w, ">/dev/null" | "||" | "|" | ";") && !w.starts_with("2>"))
                .map(|w| w.trim_matches(|c| c == '\'' || c == '"' || c == ',' || c == ':'))
                .collect();
            let r = Run::from(Command::new(bin()).args(&args).arg("--help").output().unwrap());
            assert_eq!(r.code, 0, "{f}: `rcptsync {}` does not parse: {}", args.join(" "), r.stderr);
            seen += 1;
        }
    }
    assert!(seen >= 8, "found only {seen} command lines");
}

/// A root sync on the daemon's state directory is refused, so every shipped way
/// of running a sync runs it as the rcptsync user.
#[test]
fn example_syncs_run_as_the_rcptsync_user() {
    let read = |f: &str| std::fs::read_to_string(repo(f)).unwrap();
    assert!(read("examples/ansible/rcptsync.yml").contains("become_user: rcptsync"));
    assert!(read("examples/puppet/rcptsync.pp").contains("user    => 'rcptsync'"));
    let cron = read("examples/cron/rcptsync");
    let line = cron.lines().find(|l| l.contains("rcptsync sync")).unwrap();
    assert_eq!(line.split_whitespace().nth(5), Some("rcptsync"), "{line}");
    for unit in ["dist/systemd/rcptsync.service", "dist/systemd/rcptsync-sync.service"] {
        assert!(read(unit).lines().any(|l| l.trim() == "User=rcptsync"), "{unit}");
    }
    // The oneshot has a last-resort limit besides every source's fetch_timeout.
    assert!(read("dist/systemd/rcptsync-sync.service").lines().any(|l| l.starts_with("TimeoutStartSec=")));
}

/// What the Ansible and Puppet examples rely on: exit 2 = changed, 0 = nothing
/// to do, and a dry run that says so without writing.
#[test]
fn detailed_exit_codes_drive_config_management() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("recipients.txt", "a@example.com\n");
    t.config(&crate::util::config_with("[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"out/list\"\n", ""));
    let dry = ["sync", "--dry-run", "--detailed-exitcode", "-c", "rcptsync.toml"];
    t.run(&dry).expect(2);
    assert!(!t.join("out/list").exists(), "a dry run writes nothing");
    t.run(&["sync", "--detailed-exitcode", "-c", "rcptsync.toml"]).expect(2);
    t.run(&dry).expect(0);
    t.run(&["sync", "--detailed-exitcode", "-c", "rcptsync.toml"]).expect(0);
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let t = TestDir::new();
    let bash = t.run(&["completions", "bash"]);
    bash.expect(0);
    assert!(
        bash.stdout.contains("complete -F")
            && bash.stdout.contains("daemon")
            && bash.stdout.contains("--detailed-exitcode")
    );
    for shell in ["zsh", "fish"] {
        let r = t.run(&["completions", shell]);
        r.expect(0);
        assert!(r.stdout.contains("why") && r.stdout.contains("completions"), "{shell}");
    }
    let r = t.run(&["completions", "tcsh"]);
    r.expect(64);
    let man = t.run(&["man"]);
    man.expect(0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH rcptsync"),
        "{}",
        &man.stdout[..200.min(man.stdout.len())]
    );
    for word in ["daemon", "sync", "check", "Keeps a backup MX"] {
        assert!(man.stdout.contains(word), "man page lacks {word}");
    }
    // The bash script really loads.
    let f = t.write("rcptsync.bash", &bash.stdout);
    let r = Run::from(
        Command::new("bash").arg("-c").arg(format!("source {} && complete -p rcptsync", f.display())).output().unwrap(),
    );
    assert!(r.code == 0 && r.stdout.contains("rcptsync"), "{}", r.stderr);
}

/// The way systemd hands a socket over (`LISTEN_FDS=1`, `LISTEN_PID` = the
/// server's pid, the socket at descriptor 3): `rcptsync socketmap` serves on it
/// without `--listen`, and refuses what it cannot serve safely.
#[test]
fn socketmap_takes_its_listening_socket_from_systemd() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("recipients.txt", "alice@example.test\n");
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/plain\"\n",
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    // Start the server as systemd would: descriptor 3, LISTEN_PID of the exec'd process.
    let spawn = |fd: std::os::fd::RawFd, fds: &str| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!("LISTEN_PID=$$ LISTEN_FDS={fds} exec \"$0\" \"$@\""))
            .arg(bin())
            .args(["socketmap", "-c", "rcptsync.toml", "--output", "plain"])
            .current_dir(t.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child
        // before exec. dup2 onto itself keeps close-on-exec, so that case
        // clears the flag instead.
        unsafe {
            c.pre_exec(move || {
                let r = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
                if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
        c.spawn().unwrap()
    };
    let sock = t.join("map.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut server = spawn(listener.as_raw_fd(), "1");
    drop(listener);
    let ask = |key: &str| -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let q = format!("relay {key}");
            s.write_all(format!("{}:{q},", q.len()).as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            // Until the list is loaded the server answers TEMP.
            if !reply.contains("TEMP") || std::time::Instant::now() > deadline {
                return reply;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assert_eq!(ask("alice@example.test"), "5:OK OK,");
    assert_eq!(ask("bob@example.test"), "9:NOTFOUND ,");
    let _ = server.kill();
    let _ = server.wait();
    assert!(sock.exists(), "a socket systemd made is not removed by the server");

    // Two sockets, or a descriptor that is not a listening socket: refused, exit 64.
    let listener = std::os::unix::net::UnixListener::bind(t.join("two.sock")).unwrap();
    let out = spawn(listener.as_raw_fd(), "2").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one ListenStream="));
    let file = std::fs::File::open(t.join("recipients.txt")).unwrap();
    let out = spawn(file.as_raw_fd(), "1").wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without systemd and without --listen: told what to do.
    let r = t.run(&["socketmap", "-c", "rcptsync.toml", "--output", "plain"]);
    r.expect(64);
    assert!(r.stderr.contains("give --listen"), "{}", r.stderr);
}

/// The privileged half of the stale-list defence as shipped: the root oneshot
/// that rcptsync-stale.path starts switches Postfix to 450 while the daemon's
/// marker exists and back to 550 when it is gone. Its command line is run
/// here with stand-ins for postconf and postfix, in a scratch state dir.
#[test]
fn the_stale_units_switch_postfix_by_the_daemons_marker() {
    let unit = std::fs::read_to_string(repo("dist/systemd/rcptsync-stale.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let path_unit = std::fs::read_to_string(repo("dist/systemd/rcptsync-stale.path")).unwrap();
    assert!(path_unit.contains("PathChanged=/var/lib/rcptsync/stale"), "{path_unit}");
    let t = TestDir::new();
    let state = t.join("state");
    std::fs::create_dir_all(&state).unwrap();
    t.script("postconf", &format!("echo \"postconf $*\" >> {}", t.join("calls").display()));
    t.script("postfix", &format!("echo \"postfix $*\" >> {}", t.join("calls").display()));
    // systemd turns $$ into $; the argument after `sh -c` is one quoted string.
    let script = exec
        .strip_prefix("/bin/sh -c '")
        .and_then(|s| s.strip_suffix('\''))
        .expect("ExecStart=/bin/sh -c '...'")
        .replace("$$", "$")
        .replace("/var/lib/rcptsync", &state.display().to_string());
    let run = || {
        let out = Command::new("sh").arg("-c").arg(&script).env("PATH", t.path_env()).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let calls = t.read("calls");
        std::fs::remove_file(t.join("calls")).unwrap();
        calls
    };
    std::fs::write(state.join("stale"), "1796400000").unwrap();
    assert_eq!(run(), "postconf -e unknown_relay_recipient_reject_code=450\npostfix reload\n");
    std::fs::remove_file(state.join("stale")).unwrap();
    assert_eq!(run(), "postconf -e unknown_relay_recipient_reject_code=550\npostfix reload\n");

    // And the daemon keeps that marker with no hooks configured: a stale run makes it.
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("recipients.txt", "a@example.com\n");
    t.config(
        "state_dir = \"state\"\n[guard]\nmax_staleness = \"1s\"\n[[source]]\nname = \"list\"\nkind = \"file\"\n\
         path = \"recipients.txt\"\n[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(!state.join("stale").exists());
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    // Ages are whole seconds: more than max_staleness means at least 2.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let _ = t.run(&["sync", "-c", "rcptsync.toml"]);
    assert!(state.join("stale").exists(), "a stale run leaves the marker the path unit watches");
    t.write("recipients.txt", "a@example.com\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(!state.join("stale").exists(), "a fresh run removes it");
}
