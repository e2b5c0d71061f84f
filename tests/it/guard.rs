//! The guard and the source-failure rules, end to end through the binary.

use crate::util::{TestDir, config_with};

const OUT: &str = "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n";

fn addrs(n: usize) -> String {
    (0..n).map(|i| format!("user{i}@example.com\n")).collect()
}

fn setup(extra: &str, recipients: &str) -> TestDir {
    let t = TestDir::new();
    t.write("recipients.txt", recipients);
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&config_with(OUT, extra));
    t
}

#[test]
fn shrink_over_the_limit_is_refused_and_outputs_stay() {
    let t = setup("[guard]\nmax_removed_percent = 10\n", &addrs(100));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    // 10 % removed is allowed ...
    t.write("recipients.txt", &addrs(90));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let after_ten = t.read("out/relay_recipients");
    assert_ne!(before, after_ten);
    // ... 11 of 90 (12.2 %) is not.
    t.write("recipients.txt", &addrs(79));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(3);
    let v = r.json();
    assert_eq!(v["guard"]["ok"], false);
    let reason = v["guard"]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("11 of 90 entries (12.2%) would be removed, more than guard.max_removed_percent = 10; "),
        "{reason}"
    );
    assert_eq!(v["removed"], 11);
    assert_eq!(v["changed"], false);
    assert_eq!(t.read("out/relay_recipients"), after_ten);
    // The baseline did not move: the same list is refused again.
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(3);
    // --force publishes it and says so.
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--force", "--format", "json"]);
    r.expect(0);
    assert!(r.json()["guard"]["reason"].as_str().unwrap().starts_with("overridden by --force"));
    assert_eq!(t.read("out/relay_recipients").lines().count(), 80);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
}

#[test]
fn empty_result_is_refused_even_on_first_run() {
    let t = setup("[guard]\nmin_recipients = 0\n", "# nothing here\n");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(3);
    assert!(r.stdout.contains("guard   REFUSED: the new list is empty"), "{}", r.stdout);
    assert!(!t.join("out/relay_recipients").exists());
}

#[test]
fn all_invalid_entries_never_make_an_empty_map() {
    let t = setup("", &addrs(3));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    t.write("recipients.txt", "evil@example.com OK\t\n\"x y\"@example.com\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(3);
    assert_eq!(t.read("out/relay_recipients"), before);
}

#[test]
fn min_recipients() {
    let t = setup("[guard]\nmin_recipients = 5\n", &addrs(4));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(3);
    assert!(r.stdout.contains("fewer than guard.min_recipients = 5"), "{}", r.stdout);
    t.write("recipients.txt", &addrs(5));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
}

#[test]
fn failed_source_keeps_last_good_slice() {
    let t = setup("", &addrs(5));
    t.write("second.txt", "second@example.com\n");
    t.config(&format!(
        "{}\n[[source]]\nname = \"second\"\nkind = \"file\"\npath = \"second.txt\"\n",
        config_with(OUT, "")
    ));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    std::fs::remove_file(t.join("second.txt")).unwrap();
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json", "--detailed-exitcode"]);
    r.expect(0);
    let v = r.json();
    assert_eq!(v["sources"][1]["status"], "last_good");
    assert_eq!(v["sources"][1]["recipients"], 1);
    assert!(v["sources"][1]["error"].as_str().unwrap().contains("source second (file): cannot read"), "{v}");
    assert_eq!(v["changed"], false);
    assert_eq!(t.read("out/relay_recipients"), before);
    // The other source still contributes its changes.
    t.write("recipients.txt", &addrs(6));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(t.read("out/relay_recipients").contains("second@example.com OK"));
    assert!(t.read("out/relay_recipients").contains("user5@example.com OK"));
}

#[test]
fn failed_source_without_last_good_fails_the_run() {
    let t = setup("", &addrs(5));
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(1);
    let v = r.json();
    assert_eq!(v["sources"][0]["status"], "failed");
    assert!(v["sources"][0]["error"].as_str().unwrap().contains("no last-known-good copy exists yet"), "{v}");
    assert!(!t.join("out/relay_recipients").exists());
}

#[test]
fn abort_policy_fails_the_run_and_writes_nothing() {
    let t = setup("[guard]\non_source_failure = \"abort\"\n", &addrs(5));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    std::fs::remove_file(t.join("recipients.txt")).unwrap();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stdout.contains("FAILED: nothing written: source list (file): cannot read"), "{}", r.stdout);
    assert_eq!(t.read("out/relay_recipients"), before);
    // --force overrides the guard, never a failed source.
    t.run(&["sync", "-c", "rcptsync.toml", "--force"]).expect(1);
}

#[test]
fn corrupt_baseline_refuses_until_forced() {
    let t = setup("", &addrs(5));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let p = t.join("state/applied.list");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, &text[..text.len() - 5]).unwrap();
    t.write("recipients.txt", &addrs(6));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(3);
    assert!(r.stdout.contains("applied.list is corrupt: truncated"), "{}", r.stdout);
    t.run(&["sync", "-c", "rcptsync.toml", "--force"]).expect(0);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
}

#[test]
fn two_runs_never_overlap() {
    let t = setup("lock_timeout = \"1s\"", &addrs(5));
    std::fs::create_dir_all(t.join("state")).unwrap();
    // Hold the lock from this process, as a running sync would.
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(t.join("state/lock")).unwrap();
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on our own descriptor.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    std::fs::write(t.join("state/lock"), "4242\n").unwrap();
    let started = std::time::Instant::now();
    let r = crate::util::Run::from(t.cmd(&["sync", "-c", "rcptsync.toml"]).output().unwrap());
    r.expect(1);
    assert!(
        r.stderr.contains("another rcptsync run holds the lock") && r.stderr.contains("(pid 4242)"),
        "{}",
        r.stderr
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert!(!t.join("out/relay_recipients").exists());
    drop(f);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
}

#[test]
fn a_missing_canary_is_refused_like_a_guard_trip() {
    let t = setup(
        "[guard]\ncanaries = [\"CEO@Example.com\", \"boss@catch.example.org\"]",
        &format!("{}ceo@example.com\n@catch.example.org\n", addrs(50)),
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    let why = t.run(&["why", "ceo@example.com", "-c", "rcptsync.toml"]);
    assert!(why.stdout.contains("it is a guard canary"), "{}", why.stdout);
    // The CEO vanishes (1 of 52 entries: far below max_removed_percent).
    t.write("recipients.txt", &format!("{}@catch.example.org\n", addrs(50)));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(3);
    let reason = r.json()["guard"]["reason"].as_str().unwrap().to_string();
    assert_eq!(reason, "guard.canaries missing from the new list: ceo@example.com");
    assert_eq!(t.read("out/relay_recipients"), before);
    // --force publishes anyway, and says what it overrode.
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--force"]);
    r.expect(0);
    assert!(r.stderr.contains("overridden by --force: guard.canaries missing"), "{}", r.stderr);
    // A canary refused by validation is a config error with its path.
    t.config(&config_with(OUT, "[guard]\ncanaries = [\"not an address\"]"));
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(r.stderr.contains("guard.canaries[0]: \"not an address\""), "{}", r.stderr);
}

#[test]
fn a_domain_losing_too_much_is_refused_even_when_the_global_share_is_small() {
    let small: String = (0..10).map(|i| format!("u{i}@small.example\n")).collect();
    let t = setup("[guard]\nmax_removed_percent_per_domain = 30", &format!("{}{small}", addrs(200)));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/relay_recipients");
    // small.example loses 5 of 10 (50 %), which is 2.4 % of the whole list.
    let half: String = (0..5).map(|i| format!("u{i}@small.example\n")).collect();
    t.write("recipients.txt", &format!("{}{half}", addrs(200)));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(3);
    let reason = r.json()["guard"]["reason"].as_str().unwrap().to_string();
    assert_eq!(
        reason,
        "domain small.example would lose 5 of 10 entries (50.0%), more than guard.max_removed_percent_per_domain = 30"
    );
    assert_eq!(t.read("out/relay_recipients"), before);
    let why = t.run(&["why", "u9@small.example", "-c", "rcptsync.toml"]);
    assert!(why.stdout.contains("the last published list contains it"), "{}", why.stdout);
    assert!(why.stdout.contains("refused if domain small.example loses more than 30%"), "{}", why.stdout);
    // A domain dropping to zero is refused whatever its share.
    t.write(
        "recipients.txt",
        &format!("{}{}", addrs(200), (0..10).map(|i| format!("u{i}@small.example\n")).collect::<String>()),
    );
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    t.config(&config_with(OUT, "[guard]\nmax_removed_percent_per_domain = 100"));
    t.write("recipients.txt", &format!("{}{}", addrs(200), "x@other.example\n"));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(3);
    assert!(
        r.json()["guard"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("domain small.example would lose all 10 of its entries")
    );
}

#[test]
fn removal_grace_keeps_a_vanished_entry_until_it_expires() {
    let t = setup("[guard]\nremoval_grace = \"3s\"", &format!("{}gone@example.com\n", addrs(50)));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    // gone@ leaves every source: it stays published, with a tombstone.
    t.write("recipients.txt", &addrs(50));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(t.read("out/relay_recipients").contains("gone@example.com OK"), "kept during the grace");
    assert!(r.stderr.contains("removal grace: entries absent from every source kept=1 expired=0"), "{}", r.stderr);
    assert!(t.read("state/tombstones.json").contains("gone@example.com"));
    let why = t.run(&["why", "gone@example.com", "-c", "rcptsync.toml"]);
    why.expect(0);
    assert!(why.stdout.contains("kept by removal grace until"), "{}", why.stdout);
    // Nothing changes at the source, yet the grace runs out: the next run drops it.
    std::thread::sleep(std::time::Duration::from_millis(3200));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(!t.read("out/relay_recipients").contains("gone@"), "dropped after the grace");
    assert!(r.stderr.contains("expired=1"), "{}", r.stderr);
    assert!(!t.read("state/tombstones.json").contains("gone@"));

    // --no-grace drops at once; an entry that comes back loses its tombstone.
    t.write("recipients.txt", &format!("{}back@example.com\n", addrs(49)));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(t.read("out/relay_recipients").contains("user49@example.com"), "user49 kept in grace");
    t.write("recipients.txt", &addrs(50));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(!t.read("state/tombstones.json").contains("user49@"), "back in a source: no tombstone");
    assert!(t.read("state/tombstones.json").contains("back@"));
    t.run(&["sync", "-c", "rcptsync.toml", "--no-grace"]).expect(0);
    assert!(!t.read("out/relay_recipients").contains("back@"), "--no-grace drops at once");
    assert_eq!(t.read("state/tombstones.json"), "{}");
}

/// A source that shrinks a little at every run used to pass for ever (100
/// entries became 54 in 7 accepted runs of 9 %): the largest list applied
/// within guard.shrink_window is a second baseline, so the staircase trips
/// the guard once the cuts add up. --force makes the new list the baseline.
#[test]
fn a_staircase_of_small_cuts_trips_the_guard() {
    let t = setup("[guard]\nmax_removed_percent = 10\n", &addrs(100));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    t.write("recipients.txt", &addrs(91));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = t.read("out/relay_recipients");
    // 9 of 91 is under 10 % of the last list, but 17 % fewer than the 100.
    t.write("recipients.txt", &addrs(83));
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(3);
    let reason = r.json()["guard"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("the new list has 83 entries, 17.0% fewer than the 100 applied at"), "{reason}");
    assert!(!reason.contains("of 91 entries"), "the step itself is small: {reason}");
    assert_eq!(t.read("out/relay_recipients"), published);
    // Forced, the 83 are the new baseline; later small steps pass again.
    t.run(&["sync", "-c", "rcptsync.toml", "--force"]).expect(0);
    t.write("recipients.txt", &addrs(80));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    // With the window off, the old rule alone applies.
    let t = setup("[guard]\nmax_removed_percent = 10\nshrink_window = \"0s\"\n", &addrs(100));
    for n in [91, 83, 76] {
        t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
        t.write("recipients.txt", &addrs(n));
    }
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
}

/// One small source emptied "successfully" stays under the global share; it is
/// now checked against its own last good copy.
#[test]
fn a_small_source_that_empties_is_refused() {
    let t = setup("[guard]\nmax_removed_percent = 10\n", &addrs(100));
    t.write("small.txt", "ceo@example.org\ncfo@example.org\n");
    let cfg = t
        .read("rcptsync.toml")
        .replace("[[output]]", "[[source]]\nname = \"small\"\nkind = \"file\"\npath = \"small.txt\"\n\n[[output]]");
    t.config(&cfg);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    t.write("small.txt", "# emptied by a broken export\n");
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(3);
    let reason = r.json()["guard"]["reason"].as_str().unwrap().to_string();
    assert_eq!(
        reason,
        "source small would shrink from 2 to 0 entries (100.0%), more than guard.max_removed_percent_per_source = 10"
    );
    assert!(t.read("out/relay_recipients").contains("ceo@example.org"));
}

/// Without min_recipients, a list under half the largest recent one is
/// refused even when max_removed_percent allows any shrink.
#[test]
fn min_recipients_defaults_to_half_the_largest_recent_list() {
    let t = setup("[guard]\nmax_removed_percent = 100\nmax_removed_percent_per_source = 100\n", &addrs(10));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    t.write("recipients.txt", &addrs(4));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(3);
    assert!(
        r.stdout.contains("fewer than guard.min_recipients = 5 (by default half the largest recent list)"),
        "{}",
        r.stdout
    );
    t.write("recipients.txt", &addrs(5));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
}
