//! Writers on disk: write-only-on-change, hooks, modes, rollback.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::util::{Run, TestDir, config_with};

/// A stand-in for postmap that builds "TYPE:FILE" into FILE.SUFFIX (a copy with a
/// marker line), so map handling is tested without Postfix installed.
pub const FAKE_POSTMAP: &str = r#"t="${1%%:*}"; f="${1#*:}"
case "$t" in hash|btree) s=.db;; lmdb) s=.lmdb;; cdb) s=.cdb;; *) echo "bad type $t" >&2; exit 1;; esac
{ echo "MAP"; cat "$f"; } > "$f$s""#;

fn outputs(hooks: &str) -> String {
    format!(
        r#"[[output]]
name = "postfix"
template = "postfix"
path = "out/relay_recipients"
postmap = "hash"
{hooks}

[[output]]
name = "exim"
template = "exim"
path = "out/exim_recipients"
mode = "0640"
"#
    )
}

fn setup(hooks: &str) -> TestDir {
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.com\nbob@example.com\n");
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.script("postmap", FAKE_POSTMAP);
    t.config(&config_with(&outputs(hooks), ""));
    t
}

fn sync(t: &TestDir, extra: &[&str]) -> Run {
    let mut args = vec!["sync", "-c", "rcptsync.toml"];
    args.extend_from_slice(extra);
    Run::from(t.cmd(&args).env("PATH", t.path_env()).output().unwrap())
}

fn stat(t: &TestDir, name: &str) -> (u64, i64, i64) {
    let m = std::fs::metadata(t.join(name)).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn second_unchanged_run_rewrites_nothing_and_runs_no_hook() {
    let t = setup(&format!("reload = [\"sh\", \"-c\", \"echo reload >> {}\"]", "reloads.log"));
    sync(&t, &["--detailed-exitcode"]).expect(2);
    assert_eq!(t.read("reloads.log"), "reload\n");
    let files = [
        "out/relay_recipients",
        "out/relay_recipients.db",
        "out/exim_recipients",
        "state/applied.list",
        "state/sources/list.list",
    ];
    let before: Vec<_> = files.iter().map(|f| stat(&t, f)).collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = sync(&t, &["--detailed-exitcode", "--format", "json"]);
    r.expect(0);
    assert_eq!(r.json()["changed"], false);
    let after: Vec<_> = files.iter().map(|f| stat(&t, f)).collect();
    assert_eq!(before, after, "inode or mtime changed on an unchanged run");
    assert_eq!(t.read("reloads.log"), "reload\n", "hook ran without a change");
    // A change gives exit 2 again and one more reload.
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    sync(&t, &["--detailed-exitcode"]).expect(2);
    assert_eq!(t.read("reloads.log"), "reload\nreload\n");
    assert!(t.read("out/relay_recipients.db").contains("carol@example.com OK"));
}

#[test]
fn modes_new_default_configured_and_existing_kept() {
    let t = setup("");
    sync(&t, &[]).expect(0);
    let mode = |f: &str| std::fs::metadata(t.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("out/relay_recipients"), 0o644);
    assert_eq!(mode("out/exim_recipients"), 0o640);
    std::fs::set_permissions(t.join("out/exim_recipients"), std::fs::Permissions::from_mode(0o600)).unwrap();
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    sync(&t, &[]).expect(0);
    assert_eq!(mode("out/exim_recipients"), 0o600, "existing mode must be kept");
    assert_eq!(std::fs::metadata(t.join("state")).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn deleted_map_is_rebuilt_even_when_text_is_current() {
    let t = setup("");
    sync(&t, &[]).expect(0);
    std::fs::remove_file(t.join("out/relay_recipients.db")).unwrap();
    let r = sync(&t, &["--format", "json"]);
    r.expect(0);
    assert_eq!(r.json()["outputs"][0]["changed"], true);
    assert!(t.join("out/relay_recipients.db").exists());
}

#[test]
fn failed_check_restores_text_and_map_byte_for_byte() {
    let t = setup(
        "check = [\"sh\", \"-c\", \"grep -q carol out/relay_recipients.db && echo 'fatal: bad map' >&2 && exit 1; exit 0\"]",
    );
    sync(&t, &[]).expect(0);
    let files = ["out/relay_recipients", "out/relay_recipients.db", "out/exim_recipients"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(t.join(f)).unwrap()).collect();
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    let r = sync(&t, &["--format", "json"]);
    r.expect(1);
    let v = r.json();
    assert_eq!(v["changed"], false);
    assert!(
        r.stderr.contains("check failed, previous version restored") && r.stderr.contains("fatal: bad map"),
        "{}",
        r.stderr
    );
    let after: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(t.join(f)).unwrap()).collect();
    assert_eq!(before, after, "rollback did not restore every file");
    let names: Vec<String> = std::fs::read_dir(t.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "temp files or backups left: {names:?}");
    // The baseline did not move: the next run tries the same change again.
    let r = sync(&t, &["--format", "json"]);
    r.expect(1);
    assert_eq!(r.json()["added"], 1);
}

#[test]
fn failed_reload_restores_and_reloads_old_files() {
    let t = setup(
        "reload = [\"sh\", \"-c\", \"cat out/relay_recipients >> reloaded.log; grep -q carol out/relay_recipients && exit 7; exit 0\"]",
    );
    sync(&t, &[]).expect(0);
    let before = t.read("out/relay_recipients");
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    let r = sync(&t, &[]);
    r.expect(1);
    assert!(
        r.stdout.contains("reload failed, previous version restored") && r.stdout.contains("exited with status 7"),
        "{}",
        r.stdout
    );
    assert_eq!(t.read("out/relay_recipients"), before);
}

#[test]
fn postmap_failure_leaves_everything_untouched() {
    let t = setup("");
    sync(&t, &[]).expect(0);
    let before = (t.read("out/relay_recipients"), t.read("out/exim_recipients"));
    t.script("postmap", "echo 'postmap: fatal: out of memory' >&2; exit 1");
    t.write("recipients.txt", "alice@example.com\ncarol@example.com\nbob@example.com\n");
    let r = sync(&t, &[]);
    r.expect(1);
    assert!(r.stdout.contains("postmap failed") && r.stdout.contains("postmap: fatal: out of memory"), "{}", r.stdout);
    assert!(
        r.stdout.contains("output  exim") && r.stdout.contains("not written because another output failed"),
        "{}",
        r.stdout
    );
    assert_eq!((t.read("out/relay_recipients"), t.read("out/exim_recipients")), before);
}

#[test]
fn hook_timeout_is_enforced() {
    let t = setup("reload = [\"sleep\", \"30\"]\nhook_timeout = \"500ms\"");
    let started = std::time::Instant::now();
    let r = sync(&t, &[]);
    r.expect(1);
    assert!(r.stdout.contains("did not finish within 500ms"), "{}", r.stdout);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(!t.join("out/relay_recipients").exists(), "a new output must be removed on rollback");
}

#[test]
fn shared_reload_command_runs_once() {
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.com\n");
    std::fs::create_dir_all(t.join("out")).unwrap();
    let hook = "reload = [\"sh\", \"-c\", \"echo r >> reloads.log\"]";
    t.config(&config_with(
        &format!(
            "[[output]]\nname = \"a\"\ntemplate = \"postfix\"\npath = \"out/a\"\n{hook}\n[[output]]\nname = \"b\"\ntemplate = \"postfix-domains\"\npath = \"out/b\"\n{hook}\n"
        ),
        "",
    ));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(0);
    assert_eq!(t.read("reloads.log"), "r\n");
    let v = r.json();
    assert_eq!(v["outputs"][0]["reloaded"], true);
    assert_eq!(v["outputs"][1]["reloaded"], true);
}

#[test]
fn missing_output_directory_is_a_clear_failure() {
    let t = TestDir::new();
    t.write("recipients.txt", "alice@example.com\n");
    t.config(&config_with("[[output]]\nname = \"a\"\ntemplate = \"plain\"\npath = \"nodir/a\"\n", ""));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("output directory") && r.stdout.contains("nodir does not exist"), "{}", r.stdout);
}

#[test]
fn unchanged_inputs_still_repair_a_tampered_output() {
    // A run with unchanged sources and config skips the work only after verifying
    // every output's bytes; an output edited by hand (same size even) is rewritten.
    let t = setup("");
    sync(&t, &[]).expect(0);
    let good = t.read("out/exim_recipients");
    std::fs::write(t.join("out/exim_recipients"), good.replace("alice", "alicf")).unwrap();
    let r = sync(&t, &["--format", "json", "--detailed-exitcode"]);
    r.expect(2);
    assert_eq!(r.json()["outputs"][1]["changed"], true);
    assert_eq!(t.read("out/exim_recipients"), good);
    // A config change (here: a new include) is never skipped either.
    let cfg = t
        .read("rcptsync.toml")
        .replace("state_dir = \"state\"", "state_dir = \"state\"\n[policy]\ninclude = [\"abuse@example.com\"]");
    t.config(&cfg);
    sync(&t, &["--detailed-exitcode"]).expect(2);
    assert!(t.read("out/exim_recipients").contains("abuse@example.com"));
    // And a truly unchanged run reports the full counts without doing the work.
    let r = sync(&t, &["--format", "json", "--detailed-exitcode"]);
    r.expect(0);
    let v = r.json();
    assert_eq!(v["recipients"], 3);
    assert_eq!(v["sources"][0]["recipients"], 2);
    assert!(r.stderr.contains("nothing to do"), "{}", r.stderr);
}

#[test]
fn missing_postmap_is_named_and_nothing_changes() {
    let t = setup("");
    sync(&t, &[]).expect(0);
    let (before_txt, before_exim) = (t.read("out/relay_recipients"), t.read("out/exim_recipients"));
    t.write("recipients.txt", "alice@example.com\nbob@example.com\ncarol@example.com\n");
    // A PATH without postmap (and without anything else).
    std::fs::create_dir_all(t.join("empty-bin")).unwrap();
    let r = Run::from(t.cmd(&["sync", "-c", "rcptsync.toml"]).env("PATH", t.join("empty-bin")).output().unwrap());
    r.expect(1);
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(text.contains("postmap") && (text.contains("not found") || text.contains("No such file")), "{text}");
    assert_eq!(t.read("out/relay_recipients"), before_txt);
    assert_eq!(t.read("out/exim_recipients"), before_exim, "the transaction covers every output");
}
