//! Golden files for every built-in template and a user template. Output is
//! deterministic, so any byte change here is a visible, reviewed change.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test golden`.

use std::path::Path;

use crate::util::{TestDir, assert_text_eq};

fn golden_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden"))
}

#[test]
fn every_template_matches_its_golden_file() {
    let t = TestDir::new();
    std::fs::copy(golden_dir().join("recipients.txt"), t.join("recipients.txt")).unwrap();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let mut cfg = String::from(
        r#"state_dir = "state"
[policy]
exclude = ["old-*", "*@legacy.example.com"]
include = ["postmaster@example.com"]
[[source]]
name = "fixture"
kind = "file"
path = "recipients.txt"
"#,
    );
    let names = [
        "postfix",
        "postfix-domains",
        "exim",
        "json",
        "plain",
        "opensmtpd",
        "opensmtpd-domains",
        "sendmail-access",
        "sendmail-domains",
        "exim-sha256",
        "json-sha256",
    ];
    for n in names {
        // The hashed ones with a fixed salt: their digests are as stable as any output.
        let salt = if n.ends_with("-sha256") { "hash_salt = \"golden\"\n" } else { "" };
        cfg.push_str(&format!("[[output]]\nname = \"{n}\"\ntemplate = \"{n}\"\npath = \"out/{n}\"\n{salt}"));
    }
    cfg.push_str(&format!(
        "[[output]]\nname = \"custom\"\ntemplate_file = \"{}\"\npath = \"out/custom\"\n",
        golden_dir().join("custom.j2").display()
    ));
    t.config(&cfg);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    // Each hostile line was dropped with a warning naming the line.
    for line in [13, 14, 16, 17] {
        assert!(r.stderr.contains(&format!("object=line {line} ")), "line {line} not reported:\n{}", r.stderr);
    }
    for n in names.iter().chain(&["custom"]) {
        let got = t.read(&format!("out/{n}"));
        let golden = golden_dir().join(format!("{n}.out"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        assert_text_eq(&want, &got, &format!("output {n}"));
    }
}
