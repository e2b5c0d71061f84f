//! Benchmark of the LDAP connector on a real Samba AD DC (`cargo bench --bench
//! ldap`, as root with Samba installed, as scripts/test-deps.sh does).
//!
//! Loads 20,000 users (RCPTSYNC_BENCH_N to change) into a private Samba AD DC, then
//! measures, in the same run: `ldapsearch -E pr=1000/noprompt` with the profile's
//! filter and attributes; a full `rcptsync sync` with the active-directory profile;
//! and an incremental sync after 10 changes. Targets (issue #4): full sync within
//! 1.2 × ldapsearch, incremental under 10 % of the full sync.

#[path = "../tests/support/mod.rs"]
mod fixtures;
#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use fixtures::samba;
use support::median;

fn measure(cmd: &mut Command) -> std::time::Duration {
    support::measure(cmd).0
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench --bench ldap`");
        return;
    }
    let n: usize = std::env::var("RCPTSYNC_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-ldap-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    let t = Instant::now();
    // With the Exchange schema and an organisation's accepted domains, as the
    // active-directory profile expects (it reads them on every run).
    let dc = samba::Samba::start(&dir.join("dc"), true);
    let mut ldif = String::new();
    for i in 0..n {
        ldif.push_str(&format!(
            "dn: CN=u{i:06},CN=Users,{b}\nobjectClass: user\nsAMAccountName: u{i:06}\nuserAccountControl: 512\nmail: u{i:06}@example.test\nproxyAddresses: SMTP:u{i:06}@example.test\nproxyAddresses: smtp:alias{i:06}@example.test\n\n",
            b = samba::BASE
        ));
    }
    dc.add(&ldif);
    println!("provisioned Samba AD and added {n} users in {:.1?}", t.elapsed());

    let profile: toml::Table = toml::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/active-directory.toml"),
        )
        .unwrap(),
    )
    .unwrap();
    let filter = profile["defaults"]["filter"].as_str().unwrap().to_string();
    let attrs = [
        "mail",
        "proxyAddresses",
        "userAccountControl",
        "msExchRecipientTypeDetails",
        "msExchRequireAuthToSendTo",
        "homeMDB",
        "targetAddress",
        "mailNickname",
        "objectClass",
    ];
    let runs = 3;
    let ldapsearch = median((0..runs).map(|_| {
        measure(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ldapsearch -LLL -x -H ldaps://127.0.0.1 -D '{}' -y {} -E pr=1000/noprompt -b '{}' \"$F\" {} > {}",
                    samba::ADMIN,
                    dc.password_file.display(),
                    samba::BASE,
                    attrs.join(" "),
                    dir.join("ldapsearch.out").display()
                ))
                .env("F", &filter)
                .env("LDAPTLS_CACERT", &dc.ca),
        )
    }));
    let config = |incremental: bool| {
        std::fs::write(
            dir.join("rcptsync.toml"),
            format!(
                "state_dir = \"state\"\n[guard]\nmax_removed_percent = 100\n[[source]]\nname = \"ad\"\nkind = \"ldap\"\nprofile = \"active-directory\"\nurl = \"ldaps://127.0.0.1\"\nca_file = \"{}\"\nbind_dn = \"{}\"\nbind_password_file = \"{}\"\nbase_dn = \"{}\"\nincremental = {incremental}\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n",
                dc.ca.display(),
                samba::ADMIN,
                dc.password_file.display(),
                samba::BASE
            ),
        )
        .unwrap();
    };
    let sync = || support::sync_command(&dir);
    config(false);
    let full = median((0..runs).map(|_| {
        let _ = std::fs::remove_dir_all(dir.join("state"));
        measure(&mut sync())
    }));
    config(true);
    let _ = std::fs::remove_dir_all(dir.join("state"));
    measure(&mut sync());
    let mut incr = Vec::new();
    for round in 0..runs {
        let mut changes = String::new();
        for k in 0..10 {
            changes.push_str(&format!(
                "dn: CN=u{:06},CN=Users,{}\nchangetype: modify\nadd: proxyAddresses\nproxyAddresses: smtp:r{round}c{k}@example.test\n-\n\n",
                k * 97,
                samba::BASE
            ));
        }
        dc.modify(&changes);
        incr.push(measure(&mut sync()));
    }
    let incr = median(incr.into_iter());
    let published = std::fs::read_to_string(dir.join("out/relay_recipients"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    println!("entries published                          {published}");
    println!("ldapsearch -E pr=1000 (same filter, attrs)  {:>8.3} s", ldapsearch.as_secs_f64());
    println!(
        "rcptsync full sync                          {:>8.3} s  = {:.2}x ldapsearch (target <= 1.20x)",
        full.as_secs_f64(),
        full.as_secs_f64() / ldapsearch.as_secs_f64()
    );
    println!(
        "rcptsync incremental sync, 10 changes       {:>8.3} s  = {:.1}% of full (target < 10%)",
        incr.as_secs_f64(),
        100.0 * incr.as_secs_f64() / full.as_secs_f64()
    );
    println!("(median of {runs} runs each)");
}
