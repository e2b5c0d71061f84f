//! A fleet's costs at a million addresses (`cargo bench --bench fleet`).
//!
//! In one run, on the same generated list (1 % duplicates, mixed case):
//! - the file sync: a cold `rcptsync sync` from the file to a `postfix` output;
//! - the hub write: a cold sync from the file to a signed `bundle` output;
//! - the edge: a cold sync of a `bundle` source to a `postfix` output, over
//!   HTTPS from the real nginx when `RCPTSYNC_TEST_NGINX` is set (as
//!   `scripts/test-deps.sh` prints it), else from the copied file (`path`).
//!
//! - the hashed pair (no target, for the record): a hub writing a hashed bundle
//!   and its own `exim-sha256` list, and an edge with the hub's salt reading the
//!   copied bundle into `exim-sha256` (the hub's digests passed through).
//!
//! Target (issue #19): edge ≤ 1.3 × the file sync. Median of 5 runs each.

#[path = "support/mod.rs"]
mod support;
#[path = "../tests/support/mod.rs"]
mod test_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{generate, measure, median};

const RUNS: usize = 5;

fn sync(dir: &Path) -> Duration {
    // Cold: no state, no outputs.
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let _ = std::fs::remove_dir_all(dir.join("out"));
    std::fs::create_dir_all(dir.join("out")).unwrap();
    measure(&mut support::sync_command(dir)).0
}

fn config(dir: &Path, source: &str, output: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("rcptsync.toml"),
        format!("state_dir = \"state\"\n[guard]\nmax_removed_percent = 100\n[[source]]\nname = \"bench\"\n{source}\n{output}"),
    )
    .unwrap();
    // The hashed configs hold their salt: private, as rcptsync asks.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("rcptsync.toml"), std::fs::Permissions::from_mode(0o600)).unwrap();
}

const POSTFIX: &str = "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n";

/// nginx serving `root` over TLS on 127.0.0.1; returns it, its port and the CA.
fn nginx(bin: &str, dir: &Path, root: &Path) -> (Child, u16, PathBuf) {
    let ca = test_support::db::test_ca(&dir.join("tls"), "root");
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = test_support::db::free_port();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
           fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
           server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/tls/server.pem;\n\
             ssl_certificate_key {d}/tls/server.key;\n    root {};\n  }}\n}}\n",
        root.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port, ca)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped: run it with `cargo bench --bench fleet`");
        return;
    }
    let n: usize = std::env::var("RCPTSYNC_BENCH_SIZES")
        .ok()
        .and_then(|v| v.split(',').next().and_then(|x| x.trim().parse().ok()))
        .unwrap_or(1_000_000);
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bench-fleet");
    let _ = std::fs::remove_dir_all(&root);
    let (file, hub, edge, web) = (root.join("file"), root.join("hub"), root.join("edge"), root.join("web"));
    for d in [&file, &hub, &edge, &web] {
        std::fs::create_dir_all(d).unwrap();
    }
    generate(&file.join("recipients.txt"), n);
    std::fs::copy(file.join("recipients.txt"), hub.join("recipients.txt")).unwrap();
    let _ = Command::new("sync").status();

    // 1. The file sync.
    config(&file, "kind = \"file\"\npath = \"recipients.txt\"", POSTFIX);
    sync(&file);
    let file_sync = median((0..RUNS).map(|_| sync(&file)));

    // 2. The hub writes the signed bundle.
    let key = Command::new(env!("CARGO_BIN_EXE_rcptsync"))
        .args(["keygen", "--out", "hub"])
        .current_dir(&hub)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(key.success());
    config(
        &hub,
        "kind = \"file\"\npath = \"recipients.txt\"",
        "[[output]]\nname = \"bundle\"\ntemplate = \"bundle\"\npath = \"out/bundle\"\nsigning_key_file = \"hub.key\"\npublisher = \"bench\"\n",
    );
    sync(&hub);
    let hub_write = median((0..RUNS).map(|_| sync(&hub)));
    // The bundle the edge reads, kept outside the hub's out/ (re-created per run).
    let served = root.join("served");
    std::fs::create_dir_all(&served).unwrap();
    for f in ["bundle", "bundle.minisig"] {
        std::fs::copy(hub.join("out").join(f), served.join(f)).unwrap();
    }
    let size = std::fs::metadata(served.join("bundle")).unwrap().len();

    // 3. The edge: over HTTPS from nginx, or from the copied file.
    let public = hub.join("hub.pub");
    let mut server = None;
    let (how, source) = match std::env::var("RCPTSYNC_TEST_NGINX") {
        Ok(bin) => {
            let (child, port, ca) = nginx(&bin, &web, &served);
            server = Some(child);
            (
                "HTTPS from nginx",
                format!(
                    "kind = \"bundle\"\nurl = \"https://127.0.0.1:{port}/bundle\"\nca_file = \"{}\"\npublic_key_file = \"{}\"",
                    ca.display(),
                    public.display()
                ),
            )
        }
        Err(_) => (
            "copied file (set RCPTSYNC_TEST_NGINX for HTTPS)",
            format!(
                "kind = \"bundle\"\npath = \"{}\"\npublic_key_file = \"{}\"",
                served.join("bundle").display(),
                public.display()
            ),
        ),
    };
    config(&edge, &source, POSTFIX);
    sync(&edge);
    let edge_sync = median((0..RUNS).map(|_| sync(&edge)));
    let same =
        std::fs::read(edge.join("out/relay_recipients")).ok() == std::fs::read(file.join("out/relay_recipients")).ok();
    if let Some(mut c) = server {
        // SAFETY: signalling the nginx this benchmark started.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let _ = c.wait();
    }

    // 4. The hashed pair, from the copied file.
    let (hhub, hedge) = (root.join("hashed-hub"), root.join("hashed-edge"));
    std::fs::create_dir_all(&hhub).unwrap();
    std::fs::copy(file.join("recipients.txt"), hhub.join("recipients.txt")).unwrap();
    for f in ["hub.key", "hub.pub"] {
        std::fs::copy(hub.join(f), hhub.join(f)).unwrap();
    }
    const SALTED: &str = "hash_salt = \"BenchSalt1\"\n";
    config(
        &hhub,
        "kind = \"file\"\npath = \"recipients.txt\"",
        &format!(
            "[[output]]\nname = \"bundle\"\ntemplate = \"bundle\"\npath = \"out/bundle\"\nsigning_key_file = \"hub.key\"\n{SALTED}\
             [[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\n{SALTED}"
        ),
    );
    sync(&hhub);
    let hashed_hub = median((0..RUNS).map(|_| sync(&hhub)));
    let hserved = root.join("hashed-served");
    std::fs::create_dir_all(&hserved).unwrap();
    for f in ["bundle", "bundle.minisig", "hashed"] {
        std::fs::copy(hhub.join("out").join(f), hserved.join(f)).unwrap();
    }
    config(
        &hedge,
        &format!(
            "kind = \"bundle\"\npath = \"{}\"\npublic_key_file = \"{}\"\n{SALTED}",
            hserved.join("bundle").display(),
            public.display()
        ),
        "[[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\n",
    );
    sync(&hedge);
    let hashed_edge = median((0..RUNS).map(|_| sync(&hedge)));
    let hashed_same = std::fs::read(hedge.join("out/hashed")).ok() == std::fs::read(hserved.join("hashed")).ok();

    let ratio = edge_sync.as_secs_f64() / file_sync.as_secs_f64();
    println!("{n} addresses, bundle {} MB, median of {RUNS} cold runs", size / 1_000_000);
    println!("  file sync (file -> postfix)          {:>7.2} s", file_sync.as_secs_f64());
    println!("  hub write (file -> signed bundle)    {:>7.2} s", hub_write.as_secs_f64());
    println!("  edge ({how}) {:>7.2} s", edge_sync.as_secs_f64());
    println!("  edge / file sync: {ratio:.2}x (target <= 1.3x); edge map equals the file sync's: {same}");
    println!("  hashed hub (file -> hashed bundle + exim-sha256) {:>7.2} s", hashed_hub.as_secs_f64());
    println!("  hashed edge (copied bundle -> exim-sha256)       {:>7.2} s", hashed_edge.as_secs_f64());
    println!("  hashed edge's exim-sha256 equals the hub's: {hashed_same}");
    let _ = std::fs::remove_dir_all(&root);
}
