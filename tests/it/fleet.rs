//! Fleets, the hub's half: `rcptsync keygen`, the signed `bundle` output and
//! `rcptsync bundle verify`, checked against the real `minisign -V`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::util::{TestDir, config_with};

/// A hub: a key pair, a file source and a bundle output (clear or hashed).
fn hub(salt: Option<&str>) -> TestDir {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let r = t.run(&["keygen", "--out", "hub"]);
    r.expect(0);
    assert!(r.stdout.contains("hub.key") && r.stdout.contains("hub.pub"), "{}", r.stdout);
    let salt = salt.map(|s| format!("hash_salt = \"{s}\"\n")).unwrap_or_default();
    t.write("recipients.txt", "alice@example.test\nBob@Example.TEST\n@other.test\n");
    t.config(&config_with(
        &format!(
            "[[output]]\nname = \"bundle\"\ntemplate = \"bundle\"\npath = \"out/bundle\"\nsigning_key_file = \"hub.key\"\n\
             publisher = \"hub1\"\n{salt}"
        ),
        "",
    ));
    t
}

fn minisign_verify(t: &TestDir) -> std::process::Output {
    Command::new("minisign")
        .args(["-V", "-q", "-m"])
        .arg(t.join("out/bundle"))
        .arg("-p")
        .arg(t.join("hub.pub"))
        .output()
        .expect("minisign (scripts/test-deps.sh installs it)")
}

#[test]
fn keygen_writes_minisign_keys_and_never_overwrites_one() {
    let t = TestDir::new();
    t.run(&["keygen", "--out", "k"]).expect(0);
    let key = std::fs::metadata(t.join("k.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    let public = t.read("k.pub");
    assert!(public.starts_with("untrusted comment: minisign public key"), "{public}");
    assert!(t.read("k.key").starts_with("untrusted comment: "), "minisign's secret key format");
    let before = t.read("k.key");
    let r = t.run(&["keygen", "--out", "k"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("never overwrites"), "{}", r.stderr);
    assert_eq!(t.read("k.key"), before);
}

#[test]
fn the_hub_writes_a_bundle_that_minisign_and_rcptsync_verify() {
    let t = hub(None);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let bundle = t.read("out/bundle");
    let (header, entries) = bundle.split_once('\n').unwrap();
    let header: serde_json::Value = serde_json::from_str(header).unwrap();
    assert_eq!(header["format"], "rcptsync-bundle");
    assert_eq!(header["publisher"], "hub1");
    assert_eq!(header["addresses"], 2);
    assert_eq!(header["catchalls"], 1);
    // Each line names the hub's sources that listed it (by index into "sources").
    assert_eq!(entries, "@other.test 0\nalice@example.test 0\nbob@example.test 0\n");
    assert_eq!(header["sources"], serde_json::json!(["list", "policy.include"]));
    assert!(t.read("out/bundle.minisig").contains("trusted comment: rcptsync-bundle serial:"));

    if crate::util::real_mta_required() {
        let out = minisign_verify(&t);
        assert!(out.status.success(), "minisign -V: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r = t.run(&["bundle", "verify", "out/bundle", "--public-key", "hub.pub"]);
    r.expect(0);
    assert!(
        r.stdout.contains("valid") && r.stdout.contains("from hub1") && r.stdout.contains("2 addresses"),
        "{}",
        r.stdout
    );
    // The key itself works as well as the file.
    let key_line = t.read("hub.pub").lines().nth(1).unwrap().to_string();
    t.run(&["bundle", "verify", "out/bundle", "--public-key", &key_line]).expect(0);

    // Unchanged list: nothing rewritten (an edge's conditional GET stays a 304).
    let mtime = |p: &str| std::fs::metadata(t.join(p)).unwrap().modified().unwrap();
    let (b, s) = (mtime("out/bundle"), mtime("out/bundle.minisig"));
    std::thread::sleep(std::time::Duration::from_millis(20));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!((mtime("out/bundle"), mtime("out/bundle.minisig")), (b, s));

    // A change: a new serial, larger than the last.
    let serial = |t: &TestDir| -> u64 {
        let text = t.read("out/bundle");
        let h: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        h["serial"].as_u64().unwrap()
    };
    let first = serial(&t);
    t.write("recipients.txt", "alice@example.test\nbob@example.test\ncarol@example.test\n@other.test\n");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(serial(&t) > first);
    t.run(&["bundle", "verify", "out/bundle", "--public-key", "hub.pub"]).expect(0);

    // Tampered: both minisign and rcptsync refuse it.
    let good = t.read("out/bundle");
    t.write("out/bundle", &good.replace("carol@example.test", "mallory@example.test"));
    let r = t.run(&["bundle", "verify", "out/bundle", "--public-key", "hub.pub"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("refused") && r.stderr.contains("signature"), "{}", r.stderr);
    if crate::util::real_mta_required() {
        assert!(!minisign_verify(&t).status.success(), "minisign accepted a tampered bundle");
    }
    // Another key: refused, naming both keys.
    t.run(&["keygen", "--out", "other"]).expect(0);
    t.write("out/bundle", &good);
    let r = t.run(&["bundle", "verify", "out/bundle", "--public-key", "other.pub"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not the configured key"), "{}", r.stderr);
}

#[test]
fn a_hashed_bundle_carries_digests_and_the_guard_stops_a_bad_list() {
    let t = hub(Some("pepper"));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let bundle = t.read("out/bundle");
    assert!(!bundle.contains("alice"), "a hashed bundle holds no address in clear text");
    assert!(bundle.lines().next().unwrap().contains("\"hash\":\"sha256\""));
    t.run(&["bundle", "verify", "out/bundle", "--public-key", "hub.pub"]).expect(0);

    // The guard refuses an empty list: bundle and signature stay as they were.
    let sig = t.read("out/bundle.minisig");
    t.write("recipients.txt", "");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(t.read("out/bundle"), bundle);
    assert_eq!(t.read("out/bundle.minisig"), sig);
}

#[test]
fn a_bundle_output_needs_a_private_signing_key() {
    let t = hub(None);
    std::fs::set_permissions(t.join("hub.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("hub.key") && all.contains("chmod 600"), "{all}");
    assert!(!t.join("out/bundle").exists());
    let t = TestDir::new();
    t.config(&config_with("[[output]]\nname = \"b\"\ntemplate = \"bundle\"\npath = \"out/b\"\n", ""));
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("signing_key_file") && r.stderr.contains("rcptsync keygen"), "{}", r.stderr);
}

/// An edge reading the hub's bundle from `hub/out/bundle` (copied there by
/// config management, as far as the edge knows), publishing a Postfix map.
fn edge(hub: &TestDir, key: &str, extra: &str) -> TestDir {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\npath = \"{}\"\npublic_key_file = \"{}\"\n{extra}\n\
         [[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n",
        hub.join("out/bundle").display(),
        hub.join(key).display()
    ));
    t
}

/// The hub with a Postfix output too, to compare with the edge's.
fn hub_with_postfix() -> TestDir {
    let t = hub(None);
    let cfg = t.read("rcptsync.toml");
    t.config(&format!(
        "{cfg}\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n[guard]\nmax_removed_percent = 100\n\
         [policy]\ninclude = [\"postmaster@example.test\"]\n"
    ));
    t
}

#[test]
fn an_edge_publishes_the_hubs_list_and_refuses_rollbacks_and_other_keys() {
    let h = hub_with_postfix();
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let e = edge(&h, "hub.pub", "");
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(e.read("out/relay_recipients"), h.read("out/relay_recipients"));
    let r = e.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("from hub1"), "{}", r.stdout);
    // why names the bundle, its serial, the hub and the hub's source.
    let r = e.run(&["why", "bob@example.test", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(
        r.stdout.contains("source hub (bundle), bundle serial ")
            && r.stdout.contains(" from hub1, line 4, from the hub's source list\n"),
        "{}",
        r.stdout
    );
    let r = e.run(&["why", "postmaster@example.test", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("from the hub's source policy.include\n"), "{}", r.stdout);

    // Keep a copy of this bundle, publish a newer one: the edge follows.
    let (old, old_sig) = (h.read("out/bundle"), h.read("out/bundle.minisig"));
    h.write("recipients.txt", "alice@example.test\nbob@example.test\ncarol@example.test\n@other.test\n");
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let published = e.read("out/relay_recipients");
    assert_eq!(published, h.read("out/relay_recipients"));
    assert!(published.contains("carol@example.test"));

    // The old copy comes back (a stale mirror, an attacker): refused, output kept.
    h.write("out/bundle", &old);
    h.write("out/bundle.minisig", &old_sig);
    // (A failed source: its last good copy is published, as for any source.)
    let r = e.run(&["sync", "-c", "rcptsync.toml"]);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("last_good") || r.stdout.contains("last good"), "{all}");
    assert!(all.contains("lower than the last accepted") && all.contains("rollback"), "{all}");
    assert_eq!(e.read("out/relay_recipients"), published);

    // Signed by another key: refused, nothing published.
    let other = TestDir::new();
    other.run(&["keygen", "--out", "other"]).expect(0);
    let e2 = TestDir::new();
    std::fs::create_dir_all(e2.join("out")).unwrap();
    e2.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\npath = \"{}\"\npublic_key_file = \"{}\"\n\
         [[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n",
        h.join("out/bundle").display(),
        other.join("other.pub").display()
    ));
    let r = e2.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("not the configured key"), "{}", r.stderr);
    assert!(!e2.join("out/relay_recipients").exists(), "nothing published from a foreign bundle");

    // Tampered: refused, output kept.
    h.write("out/bundle", &old.replace("alice@example.test", "mallory@example.test"));
    let r = e.run(&["sync", "-c", "rcptsync.toml"]);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("bad signature"), "{}", r.stdout);
    assert_eq!(e.read("out/relay_recipients"), published);
}

#[test]
fn an_edge_refuses_an_expired_bundle() {
    let h = hub_with_postfix();
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let e = edge(&h, "hub.pub", "max_age = \"1s\"");
    // Generated at a whole second: two seconds later it is older than 1s.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = e.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("more than max_age") && all.contains("is the hub publishing"), "{all}");
    assert!(!e.join("out/relay_recipients").exists());
}

#[test]
fn a_bundle_source_needs_the_hubs_public_key() {
    let t = TestDir::new();
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\npath = \"in/bundle\"\nmax_age = \"0s\"\n\
         [[output]]\nname = \"p\"\ntemplate = \"plain\"\npath = \"out/p\"\n",
    );
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("source[0].public_key: is required"), "{}", r.stderr);
    assert!(r.stderr.contains("source[0].max_age: must be longer than 0s"), "{}", r.stderr);
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\npath = \"in/bundle\"\npublic_key = \"RWnope\"\n\
         [[output]]\nname = \"p\"\ntemplate = \"plain\"\npath = \"out/p\"\n",
    );
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("source[0].public_key: not a minisign public key"), "{}", r.stderr);
    t.config(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\nurl = \"http://hub.example/bundle\"\n\
         public_key_file = \"hub.pub\"\n[[source]]\nname = \"both\"\nkind = \"bundle\"\nurl = \"https://hub.example/b\"\n\
         path = \"b\"\npublic_key_file = \"hub.pub\"\n[[output]]\nname = \"p\"\ntemplate = \"plain\"\npath = \"out/p\"\n",
    );
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 78);
    assert!(r.stderr.contains("source[0].url") && r.stderr.contains("plain http://"), "{}", r.stderr);
    assert!(r.stderr.contains("source[1].url: set url (https://…) or path"), "{}", r.stderr);
}

/// A private nginx (Debian's, extracted) serving `root` over TLS on
/// 127.0.0.1, with a certificate from a test CA; stopped on drop.
struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl Nginx {
    fn start(dir: &std::path::Path, root: &std::path::Path) -> Nginx {
        let bin = std::env::var("RCPTSYNC_TEST_NGINX").expect("RCPTSYNC_TEST_NGINX (scripts/test-deps.sh)");
        let ca = crate::support::db::test_ca(&dir.join("tls"), "root");
        for d in ["tmp", "logs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let port = crate::postfix::free_port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n  log_format edge '$remote_addr \"$request\" $status $http_user_agent';\n  access_log {d}/logs/access.log edge;\n\
               client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
               uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  default_type application/octet-stream;\n\
               server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {d}/tls/server.pem;\n    ssl_certificate_key {d}/tls/server.key;\n\
                 root {root};\n  }}\n}}\n",
            root = root.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .args(["-g", "daemon off;"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx { child, port, dir: dir.to_path_buf(), ca };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
                );
            }
            assert!(std::time::Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        n
    }

    fn url(&self, file: &str) -> String {
        format!("https://127.0.0.1:{}/{file}", self.port)
    }

    /// The access log's lines: `ADDR "REQUEST" STATUS USER-AGENT`.
    fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        crate::util::terminate(&mut self.child);
    }
}

/// An edge fetching `url` over HTTPS, trusting `ca`.
fn https_edge(hub: &TestDir, url: &str, ca: &std::path::Path, extra: &str) -> TestDir {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\nurl = \"{url}\"\nca_file = \"{}\"\n\
         public_key_file = \"{}\"\n{extra}\n[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n",
        ca.display(),
        hub.join("hub.pub").display()
    ));
    t
}

#[test]
fn twenty_edges_follow_a_hub_through_a_real_web_server() {
    if !crate::postfix::enabled("twenty_edges_follow_a_hub_through_a_real_web_server") {
        return;
    }
    let h = hub_with_postfix();
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let web = TestDir::new();
    let nginx = Nginx::start(web.path(), &h.join("out"));
    let edges: Vec<TestDir> = (0..20).map(|_| https_edge(&h, &nginx.url("bundle"), &nginx.ca, "")).collect();
    for e in &edges {
        e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
        assert_eq!(e.read("out/relay_recipients"), h.read("out/relay_recipients"));
    }
    let first_round = nginx.access_log().len();
    assert_eq!(first_round, 40, "a bundle and its signature per edge: {:#?}", nginx.access_log());

    // One more edge feeds a real Postfix: its lmdb map answers for the hub's list.
    let pf_edge = https_edge(&h, &nginx.url("bundle"), &nginx.ca, "");
    std::fs::create_dir_all(pf_edge.join("maps")).unwrap();
    let map = pf_edge.join("maps/relay_recipients");
    let cfg = pf_edge
        .read("rcptsync.toml")
        .replace("path = \"out/relay_recipients\"\n", &format!("path = \"{}\"\npostmap = \"lmdb\"\n", map.display()));
    pf_edge.config(&cfg);
    let etc = crate::postfix::Postfix::configure(
        &pf_edge.join("pf"),
        "example.test, other.test",
        &format!("lmdb:{}", map.display()),
    );
    crate::postfix::sync_for(&pf_edge, &etc, &[]).expect(0);
    let pf = crate::postfix::Postfix::run(etc);
    let r = crate::smtp::rcpt_replies(pf.port, &["alice@example.test", "nobody@example.test", "anyone@other.test"]);
    assert!(r[0].starts_with("250"), "{r:?}\n{}", pf.log_tail());
    assert!(r[1].starts_with("550 5.1.1"), "{r:?}");
    assert!(r[2].starts_with("250"), "catch-all: {r:?}");
    let first_round = nginx.access_log().len();

    // An unchanged hub costs each edge one request answered 304, and nothing is written.
    let mtime = |e: &TestDir| std::fs::metadata(e.join("out/relay_recipients")).unwrap().modified().unwrap();
    let before: Vec<_> = edges.iter().map(mtime).collect();
    for e in &edges {
        e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    }
    let log = nginx.access_log();
    let second: Vec<&String> = log[first_round..].iter().collect();
    assert_eq!(second.len(), 20, "{second:#?}");
    assert!(second.iter().all(|l| l.contains("\"GET /bundle HTTP/1.1\" 304 rcptsync/")), "{second:#?}");
    assert_eq!(edges.iter().map(mtime).collect::<Vec<_>>(), before);

    // The hub publishes a change: every edge follows.
    let (old, old_sig) = (h.read("out/bundle"), h.read("out/bundle.minisig"));
    h.write("recipients.txt", "alice@example.test\nbob@example.test\ncarol@example.test\n@other.test\n");
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    for e in &edges {
        e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
        assert_eq!(e.read("out/relay_recipients"), h.read("out/relay_recipients"));
    }
    crate::postfix::sync_for(&pf_edge, &pf.etc, &[]).expect(0);
    let r = crate::smtp::rcpt_replies(pf.port, &["carol@example.test", "mallory@example.test"]);
    assert!(r[0].starts_with("250"), "the real Postfix follows the hub: {r:?}");
    assert!(r[1].starts_with("550 5.1.1"), "{r:?}");
    drop(pf);
    let published = h.read("out/relay_recipients");
    let (new, new_sig) = (h.read("out/bundle"), h.read("out/bundle.minisig"));

    // Refused, with the edge's map untouched: tampered, truncated, rolled back.
    let e = &edges[0];
    let refused = |why: &str, want: &str| {
        let r = e.run(&["sync", "-c", "rcptsync.toml"]);
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(all.contains(want), "{why}: {all}");
        assert_eq!(e.read("out/relay_recipients"), published, "{why}: the map changed");
    };
    h.write("out/bundle", &new.replace("carol@example.test", "mallory@example.test"));
    refused("tampered", "bad signature");
    h.write("out/bundle", &new[..new.len() - 10]);
    refused("truncated", "bad signature");
    h.write("out/bundle", &old);
    h.write("out/bundle.minisig", &old_sig);
    refused("rolled back", "lower than the last accepted");
    h.write("out/bundle", &new);
    h.write("out/bundle.minisig", &new_sig);

    // Signed by another key (this edge trusts another hub): nothing published.
    let other = TestDir::new();
    other.run(&["keygen", "--out", "other"]).expect(0);
    let stranger = https_edge(&h, &nginx.url("bundle"), &nginx.ca, "");
    let cfg = stranger
        .read("rcptsync.toml")
        .replace(&h.join("hub.pub").display().to_string(), &other.join("other.pub").display().to_string());
    stranger.config(&cfg);
    let r = stranger.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("not the configured key"));
    assert!(!stranger.join("out/relay_recipients").exists());

    // Expired: the hub stopped re-signing; the edge refuses and keeps its map.
    let late = https_edge(&h, &nginx.url("bundle"), &nginx.ca, "max_age = \"1s\"");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = late.run(&["sync", "-c", "rcptsync.toml"]);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("more than max_age"), "{}", r.stdout);
    assert!(!late.join("out/relay_recipients").exists());

    // TLS is verified: without the private CA the edge does not fetch.
    let untrusting = TestDir::new();
    untrusting.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\nurl = \"{}\"\npublic_key_file = \"{}\"\n\
         [[output]]\nname = \"p\"\ntemplate = \"plain\"\npath = \"p\"\n",
        nginx.url("bundle"),
        h.join("hub.pub").display()
    ));
    let r = untrusting.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    assert!(!untrusting.join("p").exists());
}

/// A hub publishing a hashed bundle (salt "pepper") with its own `exim-sha256`
/// and `json-sha256` lists, synced; and an edge holding the hub's salt that
/// reads the bundle, writing the same two lists. Shared with the Exim and
/// Postfix tests, which put the edge's list in front of the real MTAs.
pub fn hashed_hub_and_edge(edge_extra: &str) -> (TestDir, TestDir) {
    let h = hub(Some("pepper"));
    let cfg = h.read("rcptsync.toml");
    h.config(&format!(
        "{cfg}\n[[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\nhash_salt = \"pepper\"\n\
         [[output]]\nname = \"json\"\ntemplate = \"json-sha256\"\npath = \"out/hashed.json\"\nhash_salt = \"pepper\"\n\
         [guard]\nmax_removed_percent = 100\n"
    ));
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let e = TestDir::new();
    std::fs::create_dir_all(e.join("out")).unwrap();
    e.write("salt", "pepper\n");
    e.config(&hashed_edge_config(&h, "salt", edge_extra));
    (h, e)
}

fn hashed_edge_config(h: &TestDir, salt_file: &str, extra: &str) -> String {
    format!(
        "state_dir = \"state\"\n{extra}\n[[source]]\nname = \"hub\"\nkind = \"bundle\"\npath = \"{}\"\n\
         public_key_file = \"{}\"\nhash_salt_file = \"{salt_file}\"\n\
         [[output]]\nname = \"hashed\"\ntemplate = \"exim-sha256\"\npath = \"out/hashed\"\n\
         [[output]]\nname = \"json\"\ntemplate = \"json-sha256\"\npath = \"out/hashed.json\"\n",
        h.join("out/bundle").display(),
        h.join("hub.pub").display()
    )
}

#[test]
fn a_hashed_edge_passes_the_hubs_digests_through() {
    let (h, e) = hashed_hub_and_edge("[guard]\ncanaries = [\"alice@example.test\"]\nmax_removed_percent = 100\n");
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    // The hub's digests, byte for byte, in both lists: never hashed again.
    assert_eq!(e.read("out/hashed"), h.read("out/hashed"));
    assert_eq!(e.read("out/hashed.json"), h.read("out/hashed.json"));
    // The edge's own state holds digests too (its applied list, its copy).
    let applied = e.read("state/applied.list");
    assert!(applied.contains("@sha256.rcptsync.invalid"), "{applied}");
    let all = format!("{}{applied}", e.read("out/hashed"));
    assert!(!all.contains("alice") && !all.contains("example"), "no clear text on the edge");
    // why hashes the question with the hub's salt and names the bundle.
    let r = e.run(&["why", "Bob@example.test", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(
        r.stdout.contains("ACCEPTED bob@example.test (as its salted SHA-256 digest ")
            && r.stdout.contains("source hub (bundle), bundle serial ")
            && r.stdout.contains(" from hub1, line ")
            && r.stdout.contains(", from the hub's source list\n"),
        "{}",
        r.stdout
    );
    let r = e.run(&["why", "anyone@other.test", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("by the catch-all @other.test"), "{}", r.stdout);
    let r = e.run(&["why", "nobody@example.test", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("REJECTED nobody@example.test"), "{}", r.stdout);

    // The hub drops the edge's canary: the edge's guard sees it missing among
    // the digests and keeps its lists.
    let before = e.read("out/hashed");
    h.write("recipients.txt", "bob@example.test\n@other.test\n");
    h.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let r = e.run(&["sync", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("canaries missing"), "{}", r.stderr);
    assert_eq!(e.read("out/hashed"), before);
    // Without the canary it follows the hub.
    e.config(&hashed_edge_config(&h, "salt", ""));
    e.run(&["sync", "-c", "rcptsync.toml", "--force"]).expect(0);
    assert_eq!(e.read("out/hashed"), h.read("out/hashed"));
}

#[test]
fn a_hashed_bundle_needs_the_hubs_salt_and_hashed_outputs() {
    let (h, e) = hashed_hub_and_edge("");
    // Another salt: the source fails (Exim and the socketmap would refuse
    // everyone), nothing is published.
    e.write("salt", "paprika\n");
    let r = e.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("not the salt the hub hashed with") && !all.contains("paprika"), "{all}");
    assert!(!e.join("out/hashed").exists());
    // An edge without the salt: told how to read it.
    let clear = edge(&h, "hub.pub", "");
    let r = clear.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(all.contains("salted SHA-256 digests") && all.contains("set hash_salt"), "{all}");
    assert!(!clear.join("out/relay_recipients").exists());
    // A salt for a clear bundle: refused too.
    let c = hub(None);
    c.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let e2 = TestDir::new();
    e2.write("salt", "pepper\n");
    e2.config(&hashed_edge_config(&c, "salt", ""));
    let r = e2.run(&["sync", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    assert!(format!("{}{}", r.stdout, r.stderr).contains("holds addresses in clear text"), "{}", r.stderr);

    // check refuses what a hashed edge cannot do, naming each key.
    let bad = format!(
        "{}[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay_recipients\"\n\
         [[output]]\nname = \"salted\"\ntemplate = \"exim-sha256\"\npath = \"out/salted\"\nhash_salt = \"x\"\n\
         [[source]]\nname = \"local\"\nkind = \"file\"\npath = \"local.txt\"\n[policy]\nexclude = [\"a*\"]\n",
        hashed_edge_config(&h, "salt", "")
    );
    e.config(&bad);
    let r = e.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    assert_eq!(r.code, 78, "{}", r.stderr);
    for want in [
        "output[2].template: output postfix would write addresses",
        "output[3].hash_salt: on an edge of a hashed bundle the salt is source hub's hash_salt",
        "source[0].hash_salt: source hub reads a hashed bundle, so it must be the only source",
        "policy: policy.domains, exclude and include cannot apply",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in\n{}", r.stderr);
    }
}

/// The hashed pair over HTTPS: the real nginx serves a hashed bundle; the
/// edge publishes the hub's digests, and an unchanged hub costs one 304.
#[test]
fn a_hashed_edge_fetches_the_hubs_digests_through_a_real_web_server() {
    if !crate::postfix::enabled("a_hashed_edge_fetches_the_hubs_digests_through_a_real_web_server") {
        return;
    }
    let (h, e) = hashed_hub_and_edge("");
    let web = TestDir::new();
    let nginx = Nginx::start(web.path(), &h.join("out"));
    let cfg = e.read("rcptsync.toml").replace(
        &format!("path = \"{}\"\n", h.join("out/bundle").display()),
        &format!("url = \"{}\"\nca_file = \"{}\"\n", nginx.url("bundle"), nginx.ca.display()),
    );
    assert!(cfg.contains("url = "), "{cfg}");
    e.config(&cfg);
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(e.read("out/hashed"), h.read("out/hashed"));
    assert_eq!(e.read("out/hashed.json"), h.read("out/hashed.json"));
    let first = nginx.access_log().len();
    assert_eq!(first, 2, "{:#?}", nginx.access_log());
    e.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let log = nginx.access_log();
    assert_eq!(log.len(), 3, "{log:#?}");
    assert!(log[2].contains("\"GET /bundle HTTP/1.1\" 304 rcptsync/"), "{log:#?}");
}
