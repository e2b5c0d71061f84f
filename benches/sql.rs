//! Benchmark of the SQL connector (`cargo bench --bench sql`, as root with the
//! PostgreSQL server binaries installed, as scripts/test-deps.sh does).
//!
//! Loads 1,000,000 PostfixAdmin mailboxes (every 50th inactive) with their
//! self-aliases, 100,000 extra aliases and an alias domain into a private
//! PostgreSQL, then syncs with the `postfixadmin` profile to the `postfix` output.
//! Target (issue #3): the sync takes at most 1.3 × the sum of `psql -Atc` running
//! the same query into a file and the spine's floor (`LC_ALL=C sort -u | awk`) on
//! its rows, all measured in this run; peak RSS ≤ 400 MB.

#[path = "../tests/support/mod.rs"]
mod fixtures;
#[path = "support/mod.rs"]
mod support;

use fixtures::db;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use support::{measure, median};

fn main() {
    // `cargo test --all-targets` runs benchmark binaries too; only `cargo bench`
    // (which passes --bench) does the real, minutes-long measurement.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench --bench sql`");
        return;
    }
    let n: usize = std::env::var("RCPTSYNC_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-sql-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let t = Instant::now();
    let pg = db::Pg::start(&dir.join("pg"));
    let schema = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sql/postfixadmin/schema.postgres.sql"),
    )
    .unwrap();
    pg.database("postfixadmin", &schema);
    pg.psql(
        "postfixadmin",
        &format!(
            "INSERT INTO domain (domain) SELECT 'd' || i || '.example.test' FROM generate_series(0, 9) i;
             INSERT INTO domain (domain) VALUES ('alias.example.test');
             INSERT INTO mailbox (username, local_part, domain, active)
               SELECT 'user' || i || '@d' || (i % 10) || '.example.test', 'user' || i, 'd' || (i % 10) || '.example.test', i % 50 <> 0
               FROM generate_series(1, {n}) i;
             INSERT INTO alias (address, goto, domain, active) SELECT username, username, domain, active FROM mailbox;
             INSERT INTO alias (address, goto, domain)
               SELECT 'alias' || i || '@d' || (i % 10) || '.example.test', 'user' || i || '@d' || (i % 10) || '.example.test', 'd' || (i % 10) || '.example.test'
               FROM generate_series(1, {}) i;
             INSERT INTO alias_domain (alias_domain, target_domain) VALUES ('alias.example.test', 'd0.example.test');
             ANALYZE;",
            n / 10
        ),
    );
    println!("loaded {n} mailboxes, {n} self-aliases, {} aliases into PostgreSQL in {:.1?}", n / 10, t.elapsed());

    let profile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("connectors/postfixadmin.toml")).unwrap();
    let query: String = toml::from_str::<toml::Table>(&profile).unwrap()["defaults"]["queries"]["postgres"]
        .as_str()
        .unwrap()
        .to_string();
    let pw = dir.join("pw");
    std::fs::write(&pw, db::PG_PASSWORD).unwrap();
    std::fs::write(
        dir.join("rcptsync.toml"),
        format!(
            "state_dir = \"state\"\n[guard]\nmax_removed_percent = 100\n[[source]]\nname = \"pfa\"\nkind = \"sql\"\nprofile = \"postfixadmin\"\nurl = \"{}\"\npassword_file = \"{}\"\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n",
            pg.url("postfixadmin"),
            pw.display()
        ),
    )
    .unwrap();

    let runs = 3;
    let psql_out = dir.join("psql.out");
    let psql = median((0..runs).map(|_| {
        measure(
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "psql -h 127.0.0.1 -p {} -U rcptsync -d postfixadmin -Atc \"$Q\" > {}",
                    pg.port,
                    psql_out.display()
                ))
                .env("Q", &query)
                .env("PGPASSWORD", db::PG_PASSWORD),
        )
        .0
    }));
    let rows = std::fs::read_to_string(&psql_out).unwrap().lines().count();
    let floor = median((0..runs).map(|_| {
        measure(
            Command::new("sh")
                .arg("-c")
                .arg("LC_ALL=C sort -u psql.out | awk '{print $0\" OK\"}' > floor.out")
                .current_dir(&dir),
        )
        .0
    }));
    let mut cold = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        let _ = std::fs::remove_dir_all(dir.join("state"));
        let _ = std::fs::remove_file(dir.join("out/relay_recipients"));
        let (d, r) = measure(&mut support::sync_command(&dir));
        cold.push(d);
        rss = rss.max(r);
    }
    let cold = median(cold.into_iter());
    let published = std::fs::read_to_string(dir.join("out/relay_recipients"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    let bound = psql + floor;
    println!("rows returned by the profile query     {rows}");
    println!("entries published                      {published}");
    println!("psql -Atc <query> > file               {:>8.3} s", psql.as_secs_f64());
    println!("spine floor (sort -u | awk) on output  {:>8.3} s", floor.as_secs_f64());
    println!(
        "rcptsync sync (postfixadmin profile)   {:>8.3} s  = {:.2}x (psql + floor) (target <= 1.30x)  peak RSS {} MB (target <= 400)",
        cold.as_secs_f64(),
        cold.as_secs_f64() / bound.as_secs_f64(),
        rss / 1024
    );
    println!("(median of {runs} runs each)");
}
