//! Real Exim: the `exim` output in an ACL (`recipients = lsearch*@;FILE`), tested
//! with `exim -bh`, a fake SMTP session on stdin that runs the real ACLs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::postfix::enabled;
use crate::util::{TestDir, config_with};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests through scripts/test.sh"))
}

fn exim_rcpt(dir: &Path, list: &Path, domains: &str, rcpts: &[&str]) -> Vec<String> {
    exim_rcpt_with(dir, list, domains, rcpts, "exim.conf.in", "")
}

fn exim_rcpt_with(dir: &Path, list: &Path, domains: &str, rcpts: &[&str], fixture: &str, salt: &str) -> Vec<String> {
    let exim = env("RCPTSYNC_TEST_EXIM");
    let conf = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/exim").join(fixture))
        .unwrap()
        .replace("@SALT@", salt)
        .replace("@EXIM@", &exim)
        .replace("@DIR@", &dir.display().to_string())
        .replace("@DOMAINS@", domains)
        .replace("@LIST@", &list.display().to_string());
    let conf_path = dir.join("exim.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut session = String::from("EHLO client.example.net\r\nMAIL FROM:<sender@example.net>\r\n");
    for r in rcpts {
        session.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    session.push_str("QUIT\r\n");
    let mut child = Command::new(&exim)
        .arg("-C")
        .arg(&conf_path)
        .args(["-bh", "192.0.2.1"])
        .env("LD_LIBRARY_PATH", env("RCPTSYNC_TEST_EXIM_LIBS"))
        .env("LD_PRELOAD", env("RCPTSYNC_TEST_NSS_WRAPPER"))
        .env("NSS_WRAPPER_PASSWD", env("RCPTSYNC_TEST_NSS_PASSWD"))
        .env("NSS_WRAPPER_GROUP", env("RCPTSYNC_TEST_NSS_GROUP"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run exim");
    child.stdin.take().unwrap().write_all(session.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Replies after the greeting: EHLO (multi-line), MAIL, RCPT..., QUIT.
    let finals: Vec<String> = stdout
        .lines()
        .filter(|l| l.len() >= 4 && l.as_bytes()[..3].iter().all(u8::is_ascii_digit) && l.as_bytes()[3] == b' ')
        .map(String::from)
        .collect();
    assert!(
        finals.len() >= 3 + rcpts.len(),
        "unexpected exim output:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    finals[3..3 + rcpts.len()].to_vec()
}

/// A scratch dir synced once from the same three-line list (two addresses in
/// mixed case and a catch-all) into `output`, with `files` written first.
fn synced(output: &str, files: &[(&str, &str)]) -> TestDir {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    std::fs::create_dir_all(t.join("exim")).unwrap();
    t.write("recipients.txt", "alice@example.test\nBob@Example.TEST\n@other.test\n");
    for (name, text) in files {
        t.write(name, text);
    }
    t.config(&config_with(&format!("{output}[guard]\nmax_removed_percent = 100\n"), ""));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    t
}

#[test]
fn exim_accepts_listed_rejects_unlisted_and_honours_catchall() {
    if !enabled("exim_accepts_listed_rejects_unlisted_and_honours_catchall") {
        return;
    }
    let t = synced("[[output]]\nname = \"exim\"\ntemplate = \"exim\"\npath = \"out/recipients\"\n", &[]);
    let list = t.join("out/recipients");
    let r = exim_rcpt(
        &t.join("exim"),
        &list,
        "example.test : other.test",
        &["alice@example.test", "BOB@example.test", "nobody@example.test", "Anyone@Other.TEST", "x@elsewhere.test"],
    );
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(r[1].starts_with("250"), "{r:?}");
    assert_eq!(r[2], "550 5.1.1 <nobody@example.test> User unknown in relay recipient table");
    assert!(r[3].starts_with("250"), "catch-all: {r:?}");
    assert!(r[4].starts_with("550 5.7.1"), "{r:?}");

    t.write("recipients.txt", "bob@example.test\ncarol@example.test\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let r = exim_rcpt(
        &t.join("exim"),
        &list,
        "example.test : other.test",
        &["carol@example.test", "alice@example.test", "anyone@other.test"],
    );
    assert!(r[0].starts_with("250"), "{r:?}");
    assert!(r[1].starts_with("550 5.1.1"), "{r:?}");
    assert!(r[2].starts_with("550 5.1.1"), "catch-all removed: {r:?}");
}

/// The shipped example ACL is the tested one (same lookups, same message).
#[test]
fn the_shipped_hashed_acl_matches_the_tested_fixture() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("examples/exim/acl-sha256.conf")).unwrap();
    let fixture = std::fs::read_to_string(root.join("tests/fixtures/exim/exim-sha256.conf.in")).unwrap();
    let norm = |s: &str| -> Vec<String> {
        s.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("{eq{${lookup") || l.starts_with("message") || l.starts_with("!condition"))
            .map(|l| {
                l.replace("@SALT@", "SALT")
                    .replace("@LIST@", "LIST")
                    .replace("/etc/exim4/rcptsync/relay_recipients.sha256", "LIST")
            })
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    let (a, b) = (norm(&shipped), norm(&fixture));
    assert!(a.len() >= 4, "{a:?}");
    assert!(a.iter().take(4).all(|l| b.contains(l)), "shipped:\n{a:#?}\ntested:\n{b:#?}");
}

#[test]
fn exim_checks_a_hashed_list_with_sha256() {
    if !enabled("exim_checks_a_hashed_list_with_sha256") {
        return;
    }
    let t = synced(
        "[[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\nhash_salt_file = \"salt\"\n",
        &[("salt", "s3cretPepper9\n")],
    );
    let list = t.join("out/hashed");
    let text = t.read("out/hashed");
    assert!(!text.contains("alice") && !text.contains("example") && !text.contains("other"), "clear text in {text}");
    let r = exim_rcpt_with(
        &t.join("exim"),
        &list,
        "example.test : other.test",
        &["alice@example.test", "BOB@example.test", "nobody@example.test", "Anyone@Other.TEST"],
        "exim-sha256.conf.in",
        "s3cretPepper9",
    );
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[3].starts_with("250"), "{r:?}");
    assert_eq!(r[2], "550 5.1.1 <nobody@example.test> User unknown in relay recipient table");
    // A new salt in the file is used by the next sync even though no source changed.
    t.write("salt", "Rotated77\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_ne!(t.read("out/hashed"), text, "re-hashed with the new salt");
    let r = exim_rcpt_with(
        &t.join("exim"),
        &list,
        "example.test : other.test",
        &["alice@example.test"],
        "exim-sha256.conf.in",
        "Rotated77",
    );
    assert!(r[0].starts_with("250"), "{r:?}");
    t.write("salt", "s3cretPepper9\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    // A different salt on the MTA side matches nothing: the salt really is used.
    let r = exim_rcpt_with(
        &t.join("exim"),
        &list,
        "example.test : other.test",
        &["alice@example.test"],
        "exim-sha256.conf.in",
        "other",
    );
    assert!(r[0].starts_with("550"), "{r:?}");
}

/// An edge of a hashed bundle (README, Fleets): its list holds the hub's
/// digests, and the real Exim checks them with the hub's salt.
#[test]
fn exim_on_a_hashed_edge_checks_the_hubs_digests() {
    if !enabled("exim_on_a_hashed_edge_checks_the_hubs_digests") {
        return;
    }
    let (_hub, e) = crate::fleet::hashed_hub_and_edge("");
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    std::fs::create_dir_all(e.join("exim")).unwrap();
    let rcpts = ["alice@example.test", "BOB@example.test", "nobody@example.test", "Anyone@Other.TEST"];
    let check = |salt: &str| {
        exim_rcpt_with(
            &e.join("exim"),
            &e.join("out/hashed"),
            "example.test : other.test",
            &rcpts,
            "exim-sha256.conf.in",
            salt,
        )
    };
    let r = check("pepper");
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[3].starts_with("250"), "{r:?}");
    assert_eq!(r[2], "550 5.1.1 <nobody@example.test> User unknown in relay recipient table");
    let r = check("paprika");
    assert!(r[0].starts_with("550") && r[3].starts_with("550"), "another salt matches nothing: {r:?}");
}

/// `policy.recipient_delimiter = "+"` on the Exim side: the ACL also looks
/// `user+tag@domain` up as `user@domain` (the part before the first `+`, when
/// not empty, as Postfix and `local_part_suffix = +*` split it), in the plain
/// list and in the hashed one.
#[test]
fn exim_accepts_address_extensions_with_the_delimiter_recipe() {
    if !enabled("exim_accepts_address_extensions_with_the_delimiter_recipe") {
        return;
    }
    let rcpts = [
        "alice+news@example.test",
        "Bob+a+b@Example.TEST",
        "nobody+x@example.test",
        "+alice@example.test",
        "alice@example.test",
    ];
    let t = synced("[[output]]\nname = \"exim\"\ntemplate = \"exim\"\npath = \"out/recipients\"\n", &[]);
    // Without the recipe an extension is unknown.
    let r = exim_rcpt(&t.join("exim"), &t.join("out/recipients"), "example.test : other.test", &rcpts[..1]);
    assert!(r[0].starts_with("550 5.1.1"), "{r:?}");
    let r = exim_rcpt_with(
        &t.join("exim"),
        &t.join("out/recipients"),
        "example.test : other.test",
        &rcpts,
        "exim-delimiter.conf.in",
        "",
    );
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[4].starts_with("250"), "{r:?}");
    assert!(r[2].starts_with("550 5.1.1") && r[3].starts_with("550 5.1.1"), "{r:?}");

    let t = synced(
        "[[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\nhash_salt_file = \"salt\"\n",
        &[("salt", "s3cretPepper9\n")],
    );
    let r = exim_rcpt_with(
        &t.join("exim"),
        &t.join("out/hashed"),
        "example.test : other.test",
        &rcpts,
        "exim-sha256-delimiter.conf.in",
        "s3cretPepper9",
    );
    assert!(r[0].starts_with("250") && r[1].starts_with("250") && r[4].starts_with("250"), "{r:?}");
    assert!(r[2].starts_with("550 5.1.1") && r[3].starts_with("550 5.1.1"), "{r:?}");
}
