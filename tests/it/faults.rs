//! Faults on every side of a run: a full or read-only disk, a symlinked output,
//! an unwritable state dir, servers that hang, cut bodies short, answer garbage
//! or enormous bodies, and a `kill -9` at random instants. Every test checks
//! the same promise: the published outputs stay byte-identical or become the
//! complete new version, never partial and never empty.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cloud::Fault;
use crate::support::cloud::graph::{FakeGraph, graph_bulk, graph_traps};
use crate::util::{Run, TestDir, run_measured, say};

/// A small tmpfs mounted for one test (root only), unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            say(&format!("SKIPPED {test}: cannot mount a tmpfs (needs root, as scripts/test.sh runs)"));
            return None;
        }
        Some(Tmpfs { dir: dir.to_path_buf() })
    }

    fn read_only(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        assert!(Command::new("mount").args(["-o", opt]).arg(&self.dir).status().unwrap().success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn addresses(n: usize, tag: &str) -> String {
    (0..n).map(|i| format!("{tag}{i:06}@example.com\n")).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn plain_config(t: &TestDir, out: &str, extra: &str) {
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\nmax_removed_percent = 100\n{extra}\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"{out}\"\n"
    ));
}

#[test]
fn a_full_disk_fails_the_run_and_keeps_the_previous_output() {
    let t = TestDir::new();
    let Some(fs) = Tmpfs::mount(&t.join("out"), "64k", "a_full_disk_fails_the_run_and_keeps_the_previous_output")
    else {
        return;
    };
    t.write("recipients.txt", &addresses(100, "small"));
    plain_config(&t, "out/list", "");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/list");
    // 10,000 addresses (~230 kB) cannot fit in 64 kB.
    t.write("recipients.txt", &addresses(10_000, "big"));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert_eq!(t.read("out/list"), before, "the previous output is intact");
    assert_eq!(files_in(&fs.dir), ["list"], "no temp file left behind");
    // Room again: the next run publishes the complete new list.
    t.write("recipients.txt", &addresses(1000, "mid"));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(t.read("out/list").lines().count(), 1000);
}

#[test]
fn a_read_only_output_dir_and_an_unwritable_state_dir_fail_cleanly() {
    let t = TestDir::new();
    let test = "a_read_only_output_dir_and_an_unwritable_state_dir_fail_cleanly";
    let Some(out) = Tmpfs::mount(&t.join("out"), "1m", test) else { return };
    let Some(state) = Tmpfs::mount(&t.join("state"), "1m", test) else { return };
    t.write("recipients.txt", &addresses(10, "a"));
    plain_config(&t, "out/list", "");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/list");
    t.write("recipients.txt", &addresses(12, "a"));

    out.read_only(true);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("Read-only file system"), "{}", r.stderr);
    assert_eq!(t.read("out/list"), before);
    out.read_only(false);

    state.read_only(true);
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("state") && r.stderr.contains("Read-only file system"), "{}", r.stderr);
    assert_eq!(t.read("out/list"), before, "nothing is published without its state");
    state.read_only(false);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(t.read("out/list").lines().count(), 12);
}

#[test]
fn a_symlinked_output_is_written_through_and_stays_a_link() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    std::fs::create_dir_all(t.join("real")).unwrap();
    std::os::unix::fs::symlink("../real/list", t.join("out/list")).unwrap();
    t.write("recipients.txt", &addresses(5, "a"));
    plain_config(&t, "out/list", "");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(std::fs::symlink_metadata(t.join("out/list")).unwrap().file_type().is_symlink(), "the link is kept");
    assert_eq!(t.read("real/list").lines().count(), 5, "its target holds the list");
    assert_eq!(files_in(&t.join("real")), ["list"]);
    // With postmap the database would land beside the target: refused, named.
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n\
         [[output]]\nname = \"pf\"\ntemplate = \"postfix\"\npath = \"{}\"\npostmap = \"lmdb\"\n",
        t.join("out/list").display()
    ));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(text.contains("is a symbolic link") && text.contains("point path at the real file"), "{text}");
    assert_eq!(t.read("real/list").lines().count(), 5);
}

/// `kill -9` at random instants of hundreds of runs that flip between two
/// lists: after every kill each output is one complete version, and the next
/// run repairs whatever is left.
#[test]
fn kill_9_at_random_instants_never_leaves_a_partial_output() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let a = addresses(3000, "a");
    let b = format!("{a}{}", addresses(200, "b"));
    let mut outputs = "[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/plain\"\n\
                   [[output]]\nname = \"json\"\ntemplate = \"json\"\npath = \"out/list.json\"\n\
                   [[output]]\nname = \"exim\"\ntemplate = \"exim\"\npath = \"out/exim\"\n"
        .to_string();
    // With the real Postfix tools, a postmap'd map joins the outputs under test.
    let postfix = crate::util::real_mta_required();
    let mut etc = t.join("pf");
    if postfix {
        etc = crate::postfix::Postfix::configure(&etc, "example.com", "lmdb:/dev/null");
        outputs.push_str(
            "[[output]]\nname = \"postfix\"\ntemplate = \"postfix\"\npath = \"out/relay\"\npostmap = \"lmdb\"\n",
        );
    } else {
        say("kill_9_at_random_instants: no real Postfix (RCPTSYNC_TEST_REAL_MTA), the lmdb map is left out");
    }
    t.config(&format!(
        "state_dir = \"state\"\n[[source]]\nname = \"list\"\nkind = \"file\"\npath = \"recipients.txt\"\n{outputs}"
    ));
    let sync =
        |t: &TestDir| Run::from(t.cmd(&["sync", "-c", "rcptsync.toml"]).env("MAIL_CONFIG", &etc).output().unwrap());
    // The two complete versions of each output.
    let mut versions: Vec<(String, [String; 2])> = Vec::new();
    for name in ["plain", "list.json", "exim"].into_iter().chain(postfix.then_some("relay")) {
        versions.push((name.to_string(), [String::new(), String::new()]));
    }
    for (i, list) in [&a, &b].into_iter().enumerate() {
        t.write("recipients.txt", list);
        sync(&t).expect(0);
        for v in versions.iter_mut() {
            v.1[i] = t.read(&format!("out/{}", v.0));
        }
    }
    let start = Instant::now();
    sync(&t).expect(0);
    let run_time = start.elapsed().max(Duration::from_millis(5));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ std::process::id() as u64;
    let mut killed_mid_run = 0;
    for i in 0..200 {
        t.write("recipients.txt", if i % 2 == 0 { &a } else { &b });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = run_time.mul_f64((seed % 1000) as f64 / 1000.0 * 1.2);
        let mut child = t
            .cmd(&["sync", "-c", "rcptsync.toml"])
            .env("MAIL_CONFIG", &etc)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        for (name, [va, vb]) in &versions {
            let got = t.read(&format!("out/{name}"));
            assert!(
                got == *va || got == *vb,
                "iteration {i}: out/{name} is neither complete version ({} bytes)",
                got.len()
            );
        }
        if name_json_is_invalid(&t) {
            panic!("iteration {i}: out/list.json does not parse");
        }
        if postfix && i % 10 == 0 {
            // The map answers and holds one complete version.
            let dump = Command::new("postmap")
                .arg("-s")
                .arg(format!("lmdb:{}", t.join("out/relay").display()))
                .env("MAIL_CONFIG", &etc)
                .output()
                .unwrap();
            let n = String::from_utf8_lossy(&dump.stdout).lines().count();
            assert!(dump.status.success() && (n == 3000 || n == 3200), "iteration {i}: the map holds {n} keys");
        }
    }
    assert!(killed_mid_run >= 50, "only {killed_mid_run} kills landed during a run");
    // The next run completes and repairs: the current list everywhere, no leftovers.
    t.write("recipients.txt", &b);
    sync(&t).expect(0);
    for (name, [_, vb]) in &versions {
        assert_eq!(t.read(&format!("out/{name}")), *vb, "{name} after the repairing run");
    }
    let want: &[&str] =
        if postfix { &["exim", "list.json", "plain", "relay", "relay.lmdb"] } else { &["exim", "list.json", "plain"] };
    assert_eq!(files_in(&t.join("out")), want, "temp files were cleaned up");
}

fn name_json_is_invalid(t: &TestDir) -> bool {
    serde_json::from_str::<serde_json::Value>(&t.read("out/list.json")).is_err()
}

// ------------------------------------------------------------ network side --

/// A TCP server whose every connection is handed to `serve` on its own thread.
fn raw_server(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(s));
        }
    });
    addr
}

/// Reads one request's head (enough for these tests).
fn read_head(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A Graph source whose token comes from the fake and whose API is `api`.
fn graph_against(t: &TestDir, g: &FakeGraph, api: &str) {
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("graph-secret", "s3cret");
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n[[source]]\nname = \"m365\"\nkind = \"graph\"\n\
         tenant = \"t.onmicrosoft.com\"\nclient_id = \"app\"\nclient_secret_file = \"graph-secret\"\n\
         authority_url = \"{}\"\ngraph_url = \"{api}\"\nallow_insecure_http = true\nincremental = false\nmax_retries = 1\ntimeout = \"5s\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n",
        g.url()
    ));
}

fn token_fake() -> FakeGraph {
    let g = FakeGraph::start("t.onmicrosoft.com", "app");
    g.state().client_secret = Some("s3cret".into());
    g
}

#[test]
fn an_http_body_cut_short_fails_the_source() {
    let t = TestDir::new();
    let g = token_fake();
    let api = raw_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50000\r\n\r\n{\"value\":[{\"id\":\"1\",");
        // Connection reset mid-body.
    });
    graph_against(&t, &g, &format!("http://{api}"));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("connection broke while reading the body"), "{}", r.stderr);
    assert!(r.stderr.contains("giving up after 2 attempts"), "{}", r.stderr);
    assert!(!t.join("out/list").exists());
}

#[test]
fn garbage_and_wrong_content_fail_the_source_and_keep_the_list() {
    let t = TestDir::new();
    let g = token_fake();
    graph_traps(&mut g.state());
    graph_against(&t, &g, g.url());
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/list");
    for body in
        ["<html><body>Service Unavailable</body></html>", "{\"value\": [{\"id\": \"1\", \"mail\": ", "{\"value\": 42}"]
    {
        g.state().common.faults.push(Fault::new("/v1.0/users", 0, 200, 1).body(body));
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(1);
        assert!(r.stderr.contains("is not the expected JSON"), "{body}: {}", r.stderr);
        assert_eq!(t.read("out/list"), before);
    }
}

#[test]
fn an_enormous_body_is_refused_with_bounded_memory() {
    let t = TestDir::new();
    let g = token_fake();
    // 200 MB of JSON whitespace, chunked (no Content-Length to refuse up front).
    let api = raw_server(|mut s| {
        read_head(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..200 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || s.write_all(&chunk).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
    });
    graph_against(&t, &g, &format!("http://{api}"));
    let mut cmd = t.cmd(&["sync", "-c", "rcptsync.toml"]);
    let (code, rss_kb, stderr) = run_measured(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("exceeds the 16 MiB limit"), "{stderr}");
    assert!(rss_kb < 250 * 1024, "peak RSS {} MB", rss_kb / 1024);
    // A declared length over the limit is refused before reading.
    let api = raw_server(|mut s| {
        read_head(&mut s);
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{");
    });
    graph_against(&t, &g, &format!("http://{api}"));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("exceeds the 16 MiB limit"), "{}", r.stderr);
}

#[test]
fn servers_that_accept_but_never_answer_time_out() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    // The kernel completes the handshake; nobody ever answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    t.write("pw", "secret");
    for (kind, keys, want) in [
        (
            "ldap",
            format!(
                "url = \"ldap://127.0.0.1:{port}\"\nbase_dn = \"dc=x\"\nfilter = \"(mail=*)\"\naddress_attributes = [\"mail\"]\nconnect_timeout = \"1s\"\nop_timeout = \"1s\""
            ),
            "timeout",
        ),
        (
            "sql",
            format!(
                "url = \"postgres://u@127.0.0.1:{port}/db\"\npassword_file = \"pw\"\nquery = \"SELECT 1\"\nconnect_timeout = \"1s\"\nquery_timeout = \"2s\""
            ),
            "",
        ),
    ] {
        t.config(&format!(
            "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n[[source]]\nname = \"hang\"\nkind = \"{kind}\"\n{keys}\n\
             [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
        ));
        let start = Instant::now();
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(1);
        assert!(start.elapsed() < Duration::from_secs(30), "{kind} took {:?}", start.elapsed());
        assert!(r.stderr.contains("source failed") && r.stderr.contains("hang"), "{kind}: {}", r.stderr);
        assert!(r.stderr.to_lowercase().contains(want), "{kind}: {}", r.stderr);
        assert!(!t.join("out/list").exists());
    }
    drop(silent);
}

/// Directory values crafted to inject map lines, catch-alls or template syntax,
/// or simply enormous: none reaches an output, each is reported once, naming
/// its source and object, in a log line of bounded length.
#[test]
fn hostile_directory_values_never_reach_an_output() {
    let t = TestDir::new();
    let g = token_fake();
    let hostile = [
        "smtp:x@contoso.com\r\nevil@contoso.com OK".to_string(),
        "smtp:@contoso.com".to_string(),
        "smtp:{% for r in recipients %}{{ r }}{% endfor %}@contoso.com".to_string(),
        "smtp:tab\there@contoso.com".to_string(),
        format!("smtp:{}@contoso.com", "a".repeat(1 << 20)),
    ];
    {
        let mut s = g.state();
        s.domains = vec![serde_json::json!({"id": "contoso.com", "isVerified": true, "supportedServices": ["Email"]})];
        let mut proxies = vec![serde_json::json!("SMTP:good@contoso.com")];
        proxies.extend(hostile.iter().map(|h| serde_json::json!(h)));
        s.put("users", serde_json::json!({"id": "u1", "userPrincipalName": "mallory@contoso.com", "mail": "good@contoso.com", "proxyAddresses": proxies}));
    }
    graph_against(&t, &g, g.url());
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(t.read("out/list"), "good@contoso.com\n");
    let reports: Vec<&str> = r.stderr.lines().filter(|l| l.contains("dropped invalid entry")).collect();
    assert_eq!(reports.len(), hostile.len(), "each hostile value reported once:\n{}", reports.join("\n"));
    assert!(reports.iter().all(|l| l.contains("source=m365") && l.contains("user mallory@contoso.com proxyAddresses")));
    let longest = r.stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1000, "a log line of {longest} bytes");
    assert!(r.stderr.contains("bytes in all"), "{}", &r.stderr[..2000.min(r.stderr.len())]);
}

/// A connector's incremental cache that is truncated or garbage is only a
/// cache: the next run is a full pass with the same, complete result.
#[test]
fn a_corrupt_incremental_cache_means_a_full_pass() {
    let t = TestDir::new();
    let g = token_fake();
    let want = graph_traps(&mut g.state());
    graph_against(&t, &g, g.url());
    // graph_against turns incremental off; this test needs it on.
    let cfg = t.read("rcptsync.toml").replace("incremental = false\n", "");
    t.config(&cfg);
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let cache = t.join("state/sources/m365.graph.json");
    let full = std::fs::read(&cache).unwrap();
    for (what, bytes) in
        [("truncated", full[..full.len() / 2].to_vec()), ("garbage", b"\x00\xff{]".to_vec()), ("empty", Vec::new())]
    {
        std::fs::write(&cache, &bytes).unwrap();
        g.state().common.log.clear();
        let r = t.run(&["sync", "-c", "rcptsync.toml"]);
        r.expect(0);
        assert!(r.stderr.contains("full sync") && r.stderr.contains("no previous sync state"), "{what}: {}", r.stderr);
        assert!(g.state().common.log.iter().any(|l| l.starts_with("GET /v1.0/users?")), "{what}: a full listing");
        let got: Vec<String> = t.read("out/list").lines().map(str::to_string).collect();
        assert_eq!(got, want, "{what}");
    }
}

/// An LDAP "server" that answers with bytes that are not LDAP fails the source.
#[test]
fn an_ldap_server_answering_garbage_fails_the_source() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let addr = raw_server(|mut s| {
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        // A truncated BER sequence, then the connection closes.
        let _ = s.write_all(&[0x30, 0x84, 0x00, 0x00, 0x10, 0x00, 0x02, 0x01]);
    });
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n[[source]]\nname = \"dir\"\nkind = \"ldap\"\n\
         url = \"ldap://{addr}\"\nbase_dn = \"dc=x\"\nfilter = \"(mail=*)\"\naddress_attributes = [\"mail\"]\nop_timeout = \"3s\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
    ));
    let start = Instant::now();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("source failed") && r.stderr.contains("source=dir"), "{}", r.stderr);
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(!t.join("out/list").exists());
}

/// An LDAP "server" whose answer is one enormous message (a 1.5 GB BER
/// sequence, streamed). The driver buffers a whole message before rcptsync sees
/// it, so the process's memory is what is bounded: past RCPTSYNC_MEMORY_LIMIT
/// the fetch is stopped, the source fails with a message that says so, the
/// peak stays near the limit, and the published list is untouched.
#[test]
fn an_enormous_ldap_message_is_stopped_at_the_memory_limit() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("out/list", "kept@example.com\n");
    let addr = raw_server(|mut s| {
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        // SEQUENCE, length 0x5F5E1000 (1.6 GB), then its body, a megabyte at a time.
        if s.write_all(&[0x30, 0x84, 0x5F, 0x5E, 0x10, 0x00, 0x02, 0x01, 0x01]).is_err() {
            return;
        }
        let chunk = vec![0x04u8; 1 << 20];
        for _ in 0..1500 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n[[source]]\nname = \"dir\"\nkind = \"ldap\"\n\
         url = \"ldap://{addr}\"\nbase_dn = \"dc=x\"\nfilter = \"(mail=*)\"\naddress_attributes = [\"mail\"]\nop_timeout = \"60s\"\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
    ));
    let mut cmd = t.cmd(&["sync", "-c", "rcptsync.toml"]);
    cmd.env("RCPTSYNC_MEMORY_LIMIT", "200");
    let start = Instant::now();
    let (code, rss_kb, stderr) = run_measured(&mut cmd);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("memory passed its limit of 200 MiB") && stderr.contains("source=dir"), "{stderr}");
    assert!(rss_kb < 320 * 1024, "peak RSS {} MB", rss_kb / 1024);
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert_eq!(t.read("out/list"), "kept@example.com\n");
}

/// Runs `cmd` but gives up after `limit`: a run that hangs fails the test
/// instead of hanging it.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (Option<i32>, String, Duration) {
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, reader.join().unwrap_or_default(), started.elapsed())
}

/// The whole-fetch deadline: a pipe nobody writes to, an LDAP server that
/// trickles one entry every half second for ever, and a Graph chain of
/// endless distinct nextLinks each end as a failed source with the previous
/// list kept, never a run that hangs.
#[test]
fn slow_or_endless_sources_end_at_fetch_timeout() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("out/list", "kept@example.com\n");
    let output = "[[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n";
    let head = "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n";
    let check = |what: &str, limit_s: u64| {
        let (code, stderr, took) = run_bounded(&mut t.cmd(&["sync", "-c", "rcptsync.toml"]), Duration::from_secs(60));
        assert_eq!(code, Some(1), "{what}: the run did not end ({took:?}): {stderr}");
        assert!(stderr.contains("fetch_timeout"), "{what}: {stderr}");
        assert!(took < Duration::from_secs(limit_s + 10), "{what}: took {took:?}");
        assert_eq!(t.read("out/list"), "kept@example.com\n", "{what}");
    };

    let fifo = t.join("pipe");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    t.config(&format!(
        "{head}[[source]]\nname = \"pipe\"\nkind = \"file\"\npath = \"pipe\"\nfetch_timeout = \"1s\"\n{output}"
    ));
    check("a pipe nobody writes to", 1);

    let addr = raw_server(|mut s| {
        let mut req = [0u8; 1024];
        let n = s.read(&mut req).unwrap_or(0);
        // The request's message id: 30 LEN 02 01 ID (short forms, as ldap3 sends).
        let id = if n > 4 && req[2] == 0x02 && req[3] == 0x01 { req[4] } else { 1 };
        for i in 0.. {
            let dn = format!("cn=u{i}");
            let mail = format!("u{i}@example.com");
            let values = ber(0x31, &ber(0x04, mail.as_bytes()));
            let attr = ber(0x30, &[ber(0x04, b"mail"), values].concat());
            let entry = ber(0x64, &[ber(0x04, dn.as_bytes()), ber(0x30, &attr)].concat());
            let msg = ber(0x30, &[vec![0x02, 0x01, id], entry].concat());
            if s.write_all(&msg).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    t.config(&format!(
        "{head}[[source]]\nname = \"dir\"\nkind = \"ldap\"\nurl = \"ldap://{addr}\"\nbase_dn = \"dc=x\"\nfilter = \"(mail=*)\"\n\
         address_attributes = [\"mail\"]\nop_timeout = \"60s\"\nfetch_timeout = \"2s\"\n{output}"
    ));
    check("an LDAP server that trickles", 2);

    let g = token_fake();
    graph_bulk(&mut g.state(), 5, 0, 0);
    g.state().endless = true;
    graph_against(&t, &g, g.url());
    let cfg = t.read("rcptsync.toml").replace("[[source]]\n", "[[source]]\nfetch_timeout = \"2s\"\n");
    t.config(&cfg);
    check("an endless Graph chain", 2);
    assert!(g.state().common.log.len() > 10, "the chain was followed for a while");
}

/// BER: tag, short-form length, content.
fn ber(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    [vec![tag, content.len() as u8], content.to_vec()].concat()
}

/// Reads one LDAP message; returns (message id, operation tag).
fn read_ldap_message(s: &mut TcpStream) -> Option<(u8, u8)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).ok()?;
    let len = if head[1] & 0x80 == 0 {
        usize::from(head[1])
    } else {
        let mut n = vec![0u8; usize::from(head[1] & 0x7f)];
        s.read_exact(&mut n).ok()?;
        n.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b))
    };
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    // 02 01 ID, then the operation's tag.
    (body.len() > 3 && body[0] == 0x02 && body[1] == 0x01).then(|| (body[2], body[3]))
}

/// A paged search whose middle page fails (result 3, timeLimitExceeded) but
/// still carries a cookie: the library's adapter followed the cookie and the
/// run succeeded with a list missing what that page did not return. Every
/// page's result is checked now.
#[test]
fn an_ldap_page_that_fails_in_the_middle_fails_the_source() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    t.write("out/list", "kept@example.com\n");
    let addr = raw_server(|mut s| {
        let mut page = 0u8;
        while let Some((id, op)) = read_ldap_message(&mut s) {
            if op != 0x63 {
                return; // unbind
            }
            page += 1;
            let mail = format!("p{page}@example.com");
            let values = ber(0x31, &ber(0x04, mail.as_bytes()));
            let attr = ber(0x30, &[ber(0x04, b"mail"), values].concat());
            let entry = ber(0x64, &[ber(0x04, format!("cn=p{page}").as_bytes()), ber(0x30, &attr)].concat());
            let (rc, cookie): (u8, &[u8]) = match page {
                1 => (0, b"c2"),
                2 => (3, b"c3"),
                _ => (0, b""),
            };
            let done = ber(0x65, &[vec![0x0a, 0x01, rc], ber(0x04, b""), ber(0x04, b"time limit exceeded")].concat());
            let value = ber(0x30, &[vec![0x02, 0x01, 0x00], ber(0x04, cookie)].concat());
            let control = ber(0x30, &[ber(0x04, b"1.2.840.113556.1.4.319"), ber(0x04, &value)].concat());
            let id = vec![0x02, 0x01, id];
            let msgs = [ber(0x30, &[id.clone(), entry].concat()), ber(0x30, &[id, done, ber(0xa0, &control)].concat())];
            if s.write_all(&msgs.concat()).is_err() {
                return;
            }
        }
    });
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n[[source]]\nname = \"dir\"\nkind = \"ldap\"\n\
         url = \"ldap://{addr}\"\nbase_dn = \"dc=x\"\nfilter = \"(mail=*)\"\naddress_attributes = [\"mail\"]\npage_size = 1\n\
         [[output]]\nname = \"plain\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
    ));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("ended with result 3 on page 2: time limit exceeded"), "{}", r.stderr);
    assert_eq!(t.read("out/list"), "kept@example.com\n");
}
