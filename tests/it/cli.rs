//! Command-line behaviour: config errors, usage errors, reports, list and why.

use crate::util::{TestDir, config_with};

const POSTFIX_OUT: &str = "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n";

fn setup(recipients: &str) -> TestDir {
    let t = TestDir::new();
    t.write("recipients.txt", recipients);
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&config_with(POSTFIX_OUT, ""));
    t
}

#[test]
fn sync_json_report_has_the_documented_shape() {
    let t = setup("alice@example.com\nBob@Example.com\nb@d@example.com\n@example.org\n");
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(0);
    let v = r.json();
    // Keys in the documented order, and no others.
    let pos: Vec<usize> = ["changed", "recipients", "added", "removed", "guard", "sources", "outputs"]
        .iter()
        .map(|k| r.stdout.find(&format!("\"{k}\":")).unwrap_or_else(|| panic!("no key {k}")))
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{}", r.stdout);
    assert_eq!(v.as_object().unwrap().len(), 7);
    assert_eq!(v["changed"], true);
    assert_eq!(v["recipients"], 3);
    assert_eq!(v["added"], 3);
    assert_eq!(v["removed"], 0);
    assert_eq!(v["guard"], serde_json::json!({"ok": true, "reason": null}));
    assert_eq!(
        v["sources"],
        serde_json::json!([{"name": "list", "kind": "file", "status": "ok", "recipients": 3, "error": null}])
    );
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "postfix");
    assert_eq!(out["changed"], true);
    assert_eq!(out["reloaded"], false);
    assert!(out["path"].as_str().unwrap().ends_with("out/relay_recipients"));
    // The invalid line is reported once, with source and line, on stderr.
    assert_eq!(r.stderr.matches("dropped invalid entry").count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("source=list") && r.stderr.contains("object=line 3"), "{}", r.stderr);
    assert!(r.stderr.contains("value=\"b@d@example.com\""), "{}", r.stderr);
}

#[test]
fn text_summary_names_sources_outputs_and_counts() {
    let t = setup("alice@example.com\n");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("source  list     file    ok"), "{}", r.stdout);
    assert!(r.stdout.contains("list    1 entries (+1 -0)"), "{}", r.stdout);
    assert!(r.stdout.contains("output  postfix") && r.stdout.contains("changed"), "{}", r.stdout);
}

#[test]
fn config_path_from_env_and_default() {
    let t = setup("alice@example.com\n");
    let r = crate::util::Run::from(
        t.cmd(&["check", "--offline"]).env("RCPTSYNC_CONFIG", t.join("rcptsync.toml")).output().unwrap(),
    );
    r.expect(0);
    assert!(r.stdout.contains("configuration is valid (1 source, 1 output)"), "{}", r.stdout);
    // Without -c or the variable, the default path is used (and named when missing).
    let r = t.run(&["check", "--offline"]);
    if !std::path::Path::new("/etc/rcptsync/rcptsync.toml").exists() {
        r.expect(78);
        assert!(r.stderr.contains("/etc/rcptsync/rcptsync.toml: 1 configuration error"), "{}", r.stderr);
    }
}

#[test]
fn invalid_config_exits_78_listing_every_error() {
    let t = TestDir::new();
    t.config(
        r#"
        [guard]
        min_recipients = -1
        [[source]]
        name = "a"
        kind = "file"
        [[output]]
        name = "x"
        template = "postfx"
        path = "/tmp/x"
        "#,
    );
    for cmd in [&["check", "--offline", "-c", "rcptsync.toml"][..], &["sync", "-c", "rcptsync.toml"]] {
        let r = t.run(cmd);
        r.expect(78);
        assert!(r.stderr.contains("3 configuration errors"), "{}", r.stderr);
        assert!(r.stderr.contains("guard: invalid value"), "{}", r.stderr);
        assert!(r.stderr.contains("source[0]: missing field `path`"), "{}", r.stderr);
        assert!(r.stderr.contains("output[0].template: unknown template \"postfx\""), "{}", r.stderr);
        assert!(r.stdout.is_empty());
    }
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    let t = TestDir::new();
    t.run(&["sync", "--frobnicate"]).expect(64);
    t.run(&["frobnicate"]).expect(64);
    t.run(&["why"]).expect(64);
    t.run(&["sync", "--format", "yaml"]).expect(64);
    let r = t.run(&["sync", "--help"]);
    r.expect(0);
    assert!(r.stdout.contains("--detailed-exitcode") && r.stdout.contains("78  invalid configuration"), "{}", r.stdout);
    t.run(&["--version"]).expect(0);
}

#[test]
fn check_online_reports_sources_outputs_and_state() {
    let t = setup("alice@example.com\n");
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("ok      source list: ") && r.stdout.contains("1 entries, 0 refused"), "{}", r.stdout);
    assert!(r.stdout.contains("ok      output postfix"), "{}", r.stdout);
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    std::fs::remove_dir(t.join("out")).unwrap();
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("FAILED  source list (file): cannot read"), "{}", r.stdout);
    assert!(r.stdout.contains("FAILED  output postfix"), "{}", r.stdout);
    // --offline never touches the sources.
    t.run(&["check", "--offline", "-c", "rcptsync.toml"]).expect(0);
}

#[test]
fn list_prints_final_list_and_writes_nothing() {
    let t = setup("B@example.com\na@example.com\n@example.org\na@example.com\n");
    let r = t.run(&["list", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(r.stdout, "a@example.com\nb@example.com\n@example.org\n");
    assert!(!t.join("out/relay_recipients").exists());
    assert!(!t.join("state").exists());
    let v = t.run(&["list", "-c", "rcptsync.toml", "--format", "json"]).json();
    assert_eq!(v["count"], 3);
    assert_eq!(v["catchall_domains"], serde_json::json!(["example.org"]));
    assert_eq!(v["recipients"][0], serde_json::json!({"address": "a@example.com", "sources": ["list"]}));
}

#[test]
fn why_explains_source_policy_and_invalid_values() {
    let t = TestDir::new();
    t.write(
        "recipients.txt",
        "Alice@Example.com\nold-bob@example.com\nx@elsewhere.net\n@example.org\nbad\tline@example.com\n",
    );
    t.write("second.txt", "alice@example.com\n");
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&format!(
        "{}\n[[source]]\nname = \"second\"\nkind = \"file\"\npath = \"second.txt\"\n",
        config_with(POSTFIX_OUT, "[policy]\ndomains = [\"example.com\", \"example.org\"]\nexclude = [\"old-*\"]\ninclude = [\"postmaster@example.com\"]\n")
    ));
    let r = t.run(&["why", "ALICE@example.com", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.starts_with("ACCEPTED alice@example.com\n"), "{}", r.stdout);
    assert!(r.stdout.contains("from source list (file), line 1"), "{}", r.stdout);
    assert!(r.stdout.contains("from source second (file), line 1"), "{}", r.stdout);

    let r = t.run(&["why", "old-bob@example.com", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("REJECTED old-bob@example.com"), "{}", r.stdout);
    assert!(r.stdout.contains("dropped by policy.exclude[0] = \"old-*\""), "{}", r.stdout);

    let r = t.run(&["why", "x@elsewhere.net", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("elsewhere.net is not in policy.domains"), "{}", r.stdout);

    let r = t.run(&["why", "anyone@example.org", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("ACCEPTED anyone@example.org by the catch-all @example.org"), "{}", r.stdout);

    let r = t.run(&["why", "postmaster@example.com", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("from source policy.include (config), policy.include[0]"), "{}", r.stdout);

    let r = t.run(&["why", "nobody@example.com", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("no source lists it, and no catch-all covers example.com"), "{}", r.stdout);

    let r = t.run(&["why", "a b@example.com", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("it contains whitespace"), "{}", r.stdout);

    // After a sync, why also says whether the published list has it.
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let r = t.run(&["why", "alice@example.com", "-c", "rcptsync.toml"]);
    assert!(r.stdout.contains("the last published list contains it"), "{}", r.stdout);
}

#[test]
fn dry_run_diff_writes_nothing_and_shows_changes() {
    let t = setup("alice@example.com\nbob@example.com\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--dry-run", "--diff", "--detailed-exitcode"]);
    r.expect(2);
    assert!(r.stdout.contains("--- postfix") && r.stdout.contains("+ carol@example.com OK"), "{}", r.stdout);
    assert!(r.stdout.contains("would change"), "{}", r.stdout);
    assert_eq!(t.read("out/relay_recipients"), before);
    // JSON on stdout stays parseable; the diff goes to stderr.
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--dry-run", "--diff", "--format", "json"]);
    r.expect(0);
    assert_eq!(r.json()["changed"], true);
    assert!(r.stderr.contains("+ carol@example.com OK"));
    assert_eq!(t.read("out/relay_recipients"), before);
}

#[test]
fn log_format_json_gives_json_lines() {
    let t = setup("alice@example.com\nbad value@example.com\n");
    let r = t.run(&["--log-format", "json", "sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    for line in r.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string());
    }
    assert!(r.stderr.contains("\"source\":\"list\""), "{}", r.stderr);
}

#[test]
fn literal_secret_in_a_readable_config_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"db\"\nkind = \"sql\"\nurl = \"postgres://u@127.0.0.1:1/x\"\nquery = \"SELECT 1\"\npassword = \"Literal-Pw-99\"\n[[output]]\nname = \"o\"\ntemplate = \"plain\"\npath = \"out/o\"\n",
    );
    std::fs::set_permissions(t.join("rcptsync.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(
        r.stderr.contains("holds a literal secret and is readable by group or others")
            && r.stderr.contains("mode=0644"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Literal-Pw-99") && !r.stdout.contains("Literal-Pw-99"));
    std::fs::set_permissions(t.join("rcptsync.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    assert!(!r.stderr.contains("literal secret"), "{}", r.stderr);
}

#[test]
fn long_fetch_shows_progress_on_a_terminal_only() {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&config_with(POSTFIX_OUT, ""));
    let slow_source = |t: &TestDir| {
        let fifo = t.join("recipients.txt");
        let _ = std::fs::remove_file(&fifo);
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        // The "directory" answers after 2.5 s.
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(2500));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
                if let Ok(mut f) = f {
                    let _ = f.write_all(b"alice@example.com\n");
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    // On a terminal (script allocates a pty): a progress line, then the summary.
    let writer = slow_source(&t);
    let cmd = format!("{} sync -c {}", env!("CARGO_BIN_EXE_rcptsync"), t.join("rcptsync.toml").display());
    let out =
        std::process::Command::new("script").args(["-qefc", &cmd, "/dev/null"]).current_dir(t.path()).output().unwrap();
    writer.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("fetching list: 1s, 0 of 1 sources done")
            || text.contains("fetching list: 2s, 0 of 1 sources done"),
        "{text}"
    );
    assert!(text.contains("list    1 entries"), "{text}");
    // Not a terminal (pipelines, cron): no progress line.
    let writer = slow_source(&t);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    writer.join().unwrap();
    r.expect(0);
    assert!(!r.stderr.contains("fetching") && !r.stdout.contains("fetching"), "{}", r.stderr);
}

/// `rcptsync init` prints a starting config for every source kind, profile
/// and MTA it offers, and `rcptsync check --offline` passes on each as printed.
#[test]
fn init_prints_a_config_that_checks_for_every_combination() {
    let t = TestDir::new();
    let sources: [(&str, &[&str]); 6] = [
        ("file", &[]),
        ("ldap", &["openldap", "iredmail-ldap"]),
        ("ad", &[]),
        ("graph", &[]),
        ("google", &[]),
        ("sql", &["postfixadmin", "iredmail", "mailcow", "modoboa", "mailu"]),
    ];
    let mut checked = 0;
    for (source, profiles) in sources {
        let mut choices: Vec<Option<&str>> = vec![None];
        choices.extend(profiles.iter().map(|p| Some(*p)));
        for profile in choices {
            for mta in ["postfix", "exim", "opensmtpd", "sendmail", "none"] {
                let mut args = vec!["init", "--source", source, "--mta", mta];
                if let Some(p) = profile {
                    args.extend(["--profile", p]);
                }
                let r = t.run(&args);
                r.expect(0);
                assert!(r.stdout.starts_with("# rcptsync configuration"), "{}", r.stdout);
                t.write("init.toml", &r.stdout);
                let c = t.run(&["check", "--offline", "-c", "init.toml"]);
                assert_eq!(c.code, 0, "{args:?}:\n{}\n{}", c.stderr, r.stdout);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * (1 + 3 + 1 + 1 + 1 + 6));
    let r = t.run(&["init", "--source", "sql", "--profile", "nosuch"]);
    r.expect(64);
    assert!(r.stderr.contains("choose one of: postfixadmin"), "{}", r.stderr);
}
