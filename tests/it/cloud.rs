//! Microsoft Graph and Google Workspace sources against the in-process fakes in
//! `tests/support/cloud.rs`: exact recipient sets from datasets full of traps,
//! delta rounds, throttling, outages, expired tokens and refused credentials.
//! Whatever fails, the published list must never get shorter.

use std::time::Instant;

use crate::support::cloud::google::{FakeGoogle, GOOGLE_SCOPES, google_bulk, google_traps};
use crate::support::cloud::graph::{FakeGraph, graph_bulk, graph_traps};
use crate::support::cloud::{Fault, keypair};
use crate::util::{Run, TestDir, http_get};

const TENANT: &str = "contoso.onmicrosoft.com";
const APP: &str = "535fb089-9ff3-47b6-9bfb-4f1264799865";
/// A `[guard]` table that makes a failed source fail the run (exit 1).
const ABORT: &str = "[guard]\non_source_failure = \"abort\"\n";
const SECRET: &str = "Zq8~graph-client-secret-value-do-not-log";

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

fn graph_source(g: &FakeGraph, extra: &str) -> String {
    format!(
        r#"[[source]]
name = "m365"
kind = "graph"
tenant = "{TENANT}"
client_id = "{APP}"
authority_url = "{url}"
graph_url = "{url}"
allow_insecure_http = true
{extra}
"#,
        url = g.url()
    )
}

fn plain_output() -> &'static str {
    "[[output]]\nname = \"list\"\ntemplate = \"plain\"\npath = \"out/list\"\n"
}

/// A scratch dir with `out/`, and a Graph fake that accepts [`SECRET`] (also
/// written to `graph-secret`).
fn graph_case() -> (TestDir, FakeGraph) {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let g = graph_with_secret(&t);
    (t, g)
}

/// Writes rcptsync.toml: `head` (e.g. a `[guard]` table), the Graph source with
/// `extra` keys, and the plain output `out/list`.
fn graph_config(t: &TestDir, g: &FakeGraph, head: &str, extra: &str) {
    t.config(&format!("state_dir = \"state\"\n{head}{}{}", graph_source(g, extra), plain_output()));
}

fn graph_with_secret(t: &TestDir) -> FakeGraph {
    let g = FakeGraph::start(TENANT, APP);
    g.state().client_secret = Some(SECRET.into());
    t.write("graph-secret", &format!("{SECRET}\n"));
    g
}

#[test]
fn graph_exact_set_then_deltas_then_expired_delta_falls_back_to_full() {
    let (t, g) = graph_case();
    let want = graph_traps(&mut g.state());
    graph_config(&t, &g, "[guard]\nmax_removed_percent = 50\n", "client_secret_file = \"graph-secret\"");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(lines(&t.read("out/list")), want);
    // Hostile directory values are refused once each, with the object named.
    assert!(r.stderr.contains("user AdeleV@contoso.com proxyAddresses"), "{}", r.stderr);
    assert!(!t.read("out/list").contains("evil") && !t.read("out/list").contains("49"));
    {
        let s = g.state();
        let log = &s.common.log;
        let users = log.iter().find(|l| l.starts_with("GET /v1.0/users?")).expect("users listed");
        assert!(
            users.contains("$select=id,userPrincipalName,mail,proxyAddresses") && users.contains("$top=999"),
            "{users}"
        );
        assert!(
            log.iter().any(|l| l.starts_with("GET /v1.0/groups?") && l.contains("$filter=mailEnabled%20eq%20true")),
            "{log:#?}"
        );
        assert!(log.iter().any(|l| l.starts_with("GET /v1.0/contacts?")), "{log:#?}");
        assert!(log.iter().any(|l| l.starts_with("GET /v1.0/domains")), "{log:#?}");
        // One delta link per collection taken before the listing.
        assert_eq!(log.iter().filter(|l| l.contains("$deltatoken=latest")).count(), 3, "{log:#?}");
        assert_eq!(s.common.tokens_issued, 1, "one token for the whole run");
    }
    // The state file keeps delta links and objects, never a credential or token.
    let state = t.read("state/sources/m365.graph.json");
    assert!(!state.contains(SECRET) && !state.contains("graph-token"), "secret or token in state");
    assert!(!r.stderr.contains(SECRET) && !r.stderr.contains("graph-token"));

    // Changes: a new mailbox, a room mailbox removed, a group renamed.
    {
        let mut s = g.state();
        s.common.log.clear();
        s.put("users", serde_json::json!({"id": "u7", "userPrincipalName": "new@contoso.com", "mail": "New@Contoso.com", "proxyAddresses": ["SMTP:New@Contoso.com"]}));
        s.delete("users", "u2");
        s.put("groups", serde_json::json!({"id": "g2", "displayName": "Golf Discussion", "mail": "golf@contoso.com", "mailEnabled": true, "proxyAddresses": ["SMTP:golf@contoso.com"]}));
        s.put("groups", serde_json::json!({"id": "g5", "displayName": "Another SG", "mail": null, "mailEnabled": false, "proxyAddresses": []}));
    }
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let mut want2: Vec<String> = want
        .iter()
        .filter(|a| !a.starts_with("adams@") && **a != "golftalk@contoso.com")
        .map(|s| s.to_string())
        .chain(["new@contoso.com".to_string(), "golf@contoso.com".to_string()])
        .collect();
    want2.sort();
    assert_eq!(lines(&t.read("out/list")), want2);
    {
        let s = g.state();
        let log = &s.common.log;
        assert!(log.len() <= 6, "a delta run needs token + domains + 3 delta requests: {log:#?}");
        assert!(!log.iter().any(|l| l.starts_with("GET /v1.0/users?")), "no full listing on a delta run: {log:#?}");
        assert_eq!(log.iter().filter(|l| l.contains("/delta?$deltatoken=")).count(), 3, "{log:#?}");
    }

    // An expired delta token brings back a full pass, with the same result.
    {
        let mut s = g.state();
        s.expire_delta_tokens();
        s.delete("groups", "g4");
        s.common.log.clear();
    }
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stderr.contains("delta link rejected; falling back to a full sync"), "{}", r.stderr);
    assert!(g.state().common.log.iter().any(|l| l.starts_with("GET /v1.0/users?")));
    let want3: Vec<String> = want2.iter().filter(|a| *a != "sg-mail@contoso.com").cloned().collect();
    assert_eq!(lines(&t.read("out/list")), want3);

    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(
        r.stdout.contains("verified Email domains: contoso.com, contoso.onmicrosoft.com, sales.contoso.com"),
        "{}",
        r.stdout
    );

    // `why` explains a guest's external address.
    let r = t.run(&["why", "john@fabrikam.com", "-c", "rcptsync.toml"]);
    assert!(r.stdout.contains("not a verified Email domain"), "{}{}", r.stdout, r.stderr);
}

#[test]
fn graph_full_sync_every_forces_a_full_pass() {
    let (t, g) = graph_case();
    graph_traps(&mut g.state());
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"\nfull_sync_every = \"1s\"");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    g.state().common.log.clear();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stderr.contains("full_sync_every elapsed"), "{}", r.stderr);
    assert!(g.state().common.log.iter().any(|l| l.starts_with("GET /v1.0/users?")));
}

#[test]
fn graph_certificate_credential_is_verified_and_a_foreign_key_is_refused() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let g = FakeGraph::start(TENANT, APP);
    let registered = keypair(t.path(), "app");
    let foreign = keypair(t.path(), "other");
    g.state().cert = Some((registered.public_der.clone(), registered.x5t.clone(), registered.x5t_s256.clone()));
    let want = graph_traps(&mut g.state());
    let cfg = |k: &crate::support::cloud::KeyPair| {
        format!(
            "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n{}{}",
            graph_source(
                &g,
                &format!(
                    "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
                    k.cert_pem.display(),
                    k.key_pem.display()
                )
            ),
            plain_output()
        )
    };
    t.config(&cfg(&registered));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert_eq!(lines(&t.read("out/list")), want);
    {
        let s = g.state();
        let (header, claims) = &s.assertions[0];
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["x5t#S256"], registered.x5t_s256.as_str());
        assert_eq!(claims["aud"], format!("{}/{TENANT}/oauth2/v2.0/token", g.url()));
        assert_eq!((claims["iss"].as_str(), claims["sub"].as_str()), (Some(APP), Some(APP)));
    }
    // A key whose certificate is not on the app: refused, named, list intact.
    t.config(&cfg(&foreign));
    let before = t.read("out/list");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("certificate assertion was refused"), "{}", r.stderr);
    assert!(r.stderr.contains("m365"), "the error names the source: {}", r.stderr);
    assert_eq!(t.read("out/list"), before);
}

#[test]
fn graph_token_errors_name_the_remedy_and_never_the_secret() {
    let (t, g) = graph_case();
    graph_traps(&mut g.state());
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/list");
    let wrong = "wrong-secret-value-9f8e7d";
    t.write("graph-secret", wrong);
    let r = t.run(&["sync", "-c", "rcptsync.toml", "--format", "json"]);
    r.expect(0);
    let j = r.json();
    assert_eq!(j["sources"][0]["status"], "last_good", "{j}");
    let err = j["sources"][0]["error"].as_str().unwrap();
    assert!(err.contains("client secret is wrong or expired") && err.contains("AADSTS7000215"), "{err}");
    assert!(!r.stdout.contains(wrong) && !r.stderr.contains(wrong), "the secret leaked");
    assert_eq!(t.read("out/list"), before, "a failed source keeps its last good slice");

    // A tenant that does not exist.
    t.config(&format!(
        "state_dir = \"state\"\n{}{}",
        graph_source(&g, "client_secret_file = \"graph-secret\"").replace(TENANT, "nope.onmicrosoft.com"),
        plain_output()
    ));
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stdout.contains("tenant nope.onmicrosoft.com was not found")
            || r.stderr.contains("tenant nope.onmicrosoft.com was not found"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn graph_throttling_outages_and_token_expiry_never_shorten_the_list() {
    let (t, g) = graph_case();
    {
        let mut s = g.state();
        graph_bulk(&mut s, 2500, 30, 5);
        s.domains
            .push(serde_json::json!({"id": "partner.example", "isVerified": true, "supportedServices": ["Email"]}));
        s.common.faults.push(Fault::new("/v1.0/users", 1, 429, 2).retry_after("0.5"));
        s.common.faults.push(Fault::new("/v1.0/groups", 0, 503, 1));
        // Every token is revoked after 4 API requests: the run renews once.
        s.common.revoke_tokens_after = Some(4);
    }
    graph_config(&t, &g, ABORT, "client_secret_file = \"graph-secret\"\nmax_retries = 2");
    let start = Instant::now();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(start.elapsed().as_secs_f64() >= 1.0, "two Retry-After: 0.5 waits were honoured");
    let list = t.read("out/list");
    // 4 of the 30 groups are Microsoft 365 groups closed to outside senders.
    assert_eq!(list.lines().count(), 2500 * 2 + 30 - 4 + 5);
    assert!(list.contains("user2499@bulk.example\n") && list.contains("u.1000@bulk.example\n"));
    assert!(r.stderr.contains("request failed; retrying"), "{}", r.stderr);
    assert!(r.stderr.contains("renewing it once"), "{}", r.stderr);
    assert_eq!(g.state().common.tokens_issued, 2);

    // Page 2 of users is down for good: the run fails and nothing changes.
    std::fs::remove_dir_all(t.join("state/sources")).unwrap();
    {
        let mut s = g.state();
        s.put("users", serde_json::json!({"id": "z", "mail": "late@bulk.example", "proxyAddresses": []}));
        s.common.faults.push(Fault::new("/v1.0/users", 2, 503, 100));
    }
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("giving up after 3 attempts"), "{}", r.stderr);
    assert_eq!(t.read("out/list"), list, "an unreadable page never becomes a shorter list");
}

#[test]
fn redirects_are_never_followed() {
    let (t, g) = graph_case();
    graph_bulk(&mut g.state(), 10, 0, 0);
    // Another fake stands for the attacker the redirect points at.
    let attacker = FakeGraph::start(TENANT, APP);
    let to = format!("{}/v1.0/users?stolen=1", attacker.url());
    g.state().common.faults.push(Fault::new("/v1.0/users", 0, 302, 100).location(&to));
    graph_config(&t, &g, ABORT, "client_secret_file = \"graph-secret\"\nincremental = false");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("302"), "{}", r.stderr);
    assert!(attacker.state().common.log.is_empty(), "the redirect was followed: {:?}", attacker.state().common.log);
    assert!(!t.join("out/list").exists());
}

#[test]
fn plain_http_endpoints_need_the_lab_option() {
    let (t, g) = graph_case();
    graph_config(&t, &g, ABORT, "client_secret_file = \"graph-secret\"");
    let text = t.read("rcptsync.toml").replace("allow_insecure_http = true\n", "");
    t.config(&text);
    let r = t.run(&["check", "--offline", "-c", "rcptsync.toml"]);
    r.expect(78);
    assert!(r.stderr.contains("graph_url: ") && r.stderr.contains("is plain http://"), "{}", r.stderr);
    // Google: the key file's token_uri is checked too (the fake's is http://).
    let key = keypair(t.path(), "gw");
    let gw = FakeGoogle::start("svc@rcptsync-test.iam.gserviceaccount.com", &key);
    let key_file = gw.key_file(t.path(), &key);
    t.config(
        &google_config(&gw, &key_file, "")
            .replace("allow_insecure_http = true\n", "")
            .replace(gw.url(), "https://admin.googleapis.invalid"),
    );
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("token_uri") && r.stderr.contains("is plain http://"), "{}", r.stderr);
    assert!(gw.state().common.log.is_empty());
}

#[test]
fn graph_follows_next_links_only_on_its_own_host() {
    let (t, g) = graph_case();
    graph_bulk(&mut g.state(), 1200, 0, 0);
    // A nextLink to another host would carry the bearer token to a stranger.
    g.state().link_base = Some("http://attacker.invalid".into());
    graph_config(&t, &g, ABORT, "client_secret_file = \"graph-secret\"\nincremental = false");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(
        r.stderr.contains("Graph returned a link outside") && r.stderr.contains("refusing to follow it"),
        "{}",
        r.stderr
    );
    assert!(!t.join("out/list").exists());
}

#[test]
fn graph_fake_refuses_oversized_pages_as_graph_does() {
    let g = FakeGraph::start(TENANT, APP);
    g.state().client_secret = Some(SECRET.into());
    let (code, body) = http_get(g.server.addr, "/v1.0/users?$top=1000", None);
    assert_eq!(code, 401, "{body}");
    let tok = {
        let mut s = g.state();
        s.common.token_lifetime = 60;
        let (tok, _) = s.common.issue("graph-token");
        tok
    };
    let (code, body) = http_get(g.server.addr, "/v1.0/users?$top=1000", Some(&tok));
    assert_eq!(code, 400);
    assert!(body.contains("Invalid page size specified: '1000'. Must be between 1 and 999 inclusive."), "{body}");
    // Without $select, proxyAddresses is not returned (the default property set).
    graph_traps(&mut g.state());
    let (code, body) = http_get(g.server.addr, "/v1.0/users", Some(&tok));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"mail\"") && !body.contains("proxyAddresses"), "{body}");
    let (_, body) = http_get(g.server.addr, "/v1.0/users?$select=id,proxyAddresses", Some(&tok));
    assert!(body.contains("proxyAddresses") && !body.contains("\"mail\""), "{body}");
}

#[test]
fn tokens_are_renewed_before_they_expire() {
    let (t, g) = graph_case();
    {
        let mut s = g.state();
        graph_bulk(&mut s, 24_000, 0, 0);
        // Tokens live 2 s (renewed 0.2 s early); 25 pages at 100 ms take longer.
        s.common.token_lifetime = 2;
        s.common.latency = std::time::Duration::from_millis(100);
    }
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"\nincremental = false");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(t.read("out/list").lines().count(), 48_000);
    assert!(g.state().common.tokens_issued >= 2, "a new token was fetched during the run");
    assert!(!r.stderr.contains("access token refused"), "renewed before expiry, never after a 401: {}", r.stderr);
}

#[test]
fn a_server_that_never_answers_times_out_and_fails_the_source() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    // Accepts TCP connections (the kernel does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    t.write("graph-secret", SECRET);
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n[[source]]\nname = \"m365\"\nkind = \"graph\"\n\
         tenant = \"{TENANT}\"\nclient_id = \"{APP}\"\nclient_secret_file = \"graph-secret\"\nauthority_url = \"{url}\"\n\
         graph_url = \"{url}\"\nallow_insecure_http = true\ntimeout = \"1s\"\nmax_retries = 1\n{}",
        plain_output()
    ));
    let start = Instant::now();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("timed out") && r.stderr.contains("giving up after 2 attempts"), "{}", r.stderr);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    drop(silent);
}

#[test]
fn graph_over_https_trusts_only_what_ca_file_names() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let (ca, cert, key) = crate::support::slapd::test_ca(&t.join("ca"));
    let g = FakeGraph::start_on(TENANT, APP, Some((cert, key)));
    g.state().client_secret = Some(SECRET.into());
    t.write("graph-secret", SECRET);
    let want = graph_traps(&mut g.state());
    assert!(g.url().starts_with("https://"));
    let cfg = |extra: &str| {
        format!(
            "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n{}{}",
            graph_source(&g, &format!("client_secret_file = \"graph-secret\"\nmax_retries = 0\n{extra}")),
            plain_output()
        )
    };
    // The system trust store does not know the test CA: refused, with the fix.
    t.config(&cfg(""));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("set ca_file to the CA that issued it"), "{}", r.stderr);
    assert!(!t.join("out/list").exists());
    t.config(&cfg(&format!("ca_file = \"{}\"", ca.display())));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(lines(&t.read("out/list")), want);
    assert!(!r.stderr.contains("plain http://"), "no plaintext warning over https: {}", r.stderr);
}

#[test]
fn graph_goes_through_the_proxy_from_the_environment() {
    let (t, g) = graph_case();
    let want = graph_traps(&mut g.state());
    // Names that do not resolve: only the proxy can reach them.
    t.config(&format!(
        "state_dir = \"state\"\n[guard]\non_source_failure = \"abort\"\n{}{}",
        graph_source(&g, "client_secret_file = \"graph-secret\"")
            .replace(g.url(), "http://graph.rcptsync-test.invalid"),
        plain_output()
    ));
    let r = Run::from(
        t.cmd(&["sync", "-c", "rcptsync.toml"])
            .env("HTTP_PROXY", g.url())
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .output()
            .unwrap(),
    );
    r.expect(0);
    assert_eq!(lines(&t.read("out/list")), want);
    assert!(
        g.state().common.log.iter().any(|l| l.starts_with("GET http://graph.rcptsync-test.invalid/v1.0/users?")),
        "{:#?}",
        g.state().common.log
    );
}

#[test]
fn trace_logging_never_shows_secrets_or_tokens() {
    let (t, g) = graph_case();
    graph_traps(&mut g.state());
    let key = keypair(t.path(), "sa");
    let google = FakeGoogle::start("svc@rcptsync-test.iam.gserviceaccount.com", &key);
    google_traps(&mut google.state());
    let kf = google.key_file(t.path(), &key);
    let body = format!(
        "state_dir = \"state\"\n{}\n[[source]]\nname = \"workspace\"\nkind = \"google\"\ncredentials_file = \"{}\"\nsubject = \"admin@example.com\"\napi_url = \"{u}\"\nsettings_api_url = \"{u}\"\nallow_insecure_http = true\n{}",
        graph_source(&g, "client_secret_file = \"graph-secret\""),
        kf.display(),
        plain_output(),
        u = google.url(),
    );
    t.config(&body);
    let r = Run::from(
        t.cmd(&["sync", "-c", "rcptsync.toml", "--format", "json"]).env("RCPTSYNC_LOG", "trace").output().unwrap(),
    );
    r.expect(0);
    // And once more with a refused secret, so that error paths are traced too.
    t.write("graph-secret", "another-wrong-secret-77");
    let r2 = Run::from(
        t.cmd(&["sync", "-c", "rcptsync.toml", "--format", "json"]).env("RCPTSYNC_LOG", "trace").output().unwrap(),
    );
    let key_pem = std::fs::read_to_string(&key.key_pem).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    let tokens: Vec<String> =
        google.state().common.tokens.keys().chain(g.state().common.tokens.keys()).cloned().collect();
    assert!(!tokens.is_empty());
    let state_files: String = std::fs::read_dir(t.join("state/sources"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for text in [&r.stdout, &r.stderr, &r2.stdout, &r2.stderr, &state_files] {
        for secret in [SECRET, "another-wrong-secret-77", key_line] {
            assert!(!text.contains(secret), "secret {secret:?} leaked");
        }
        for tok in &tokens {
            assert!(!text.contains(tok.as_str()), "token leaked");
        }
    }
    assert!(r.stderr.contains("TRACE") || r.stderr.contains("DEBUG"), "trace logging was on");
}

// ----------------------------------------------------------------- Google --

fn google_config(g: &FakeGoogle, key_file: &std::path::Path, extra: &str) -> String {
    format!(
        r#"state_dir = "state"
[guard]
on_source_failure = "abort"
[[source]]
name = "workspace"
kind = "google"
credentials_file = "{kf}"
subject = "admin@example.com"
api_url = "{url}"
settings_api_url = "{url}"
allow_insecure_http = true
{extra}
{out}"#,
        kf = key_file.display(),
        url = g.url(),
        out = plain_output()
    )
}

#[test]
fn google_exact_set_with_a_verified_assertion() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let key = keypair(t.path(), "sa");
    let g = FakeGoogle::start("svc-recipients@rcptsync-test.iam.gserviceaccount.com", &key);
    let want = google_traps(&mut g.state());
    let kf = g.key_file(t.path(), &key);
    t.config(&google_config(&g, &kf, ""));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(lines(&t.read("out/list")), want);
    let s = g.state();
    let log = &s.common.log;
    let users = log.iter().find(|l| l.starts_with("GET /admin/directory/v1/users?")).unwrap();
    assert!(
        users.contains("customer=my_customer") && users.contains("maxResults=500") && users.contains("fields="),
        "{users}"
    );
    let groups = log.iter().find(|l| l.starts_with("GET /admin/directory/v1/groups?")).unwrap();
    assert!(groups.contains("maxResults=200"), "{groups}");
    assert!(log.iter().any(|l| l.starts_with("GET /admin/directory/v1/customer/my_customer/domains")));
    assert_eq!(s.common.tokens_issued, 2, "one directory token, one Groups Settings token");
    assert!(!r.stderr.contains("ya29."));
    drop(s);
    let r = t.run(&["check", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stdout.contains("verified domains: example-alias.com, example.com, example.org"), "{}", r.stdout);
    let r = t.run(&["why", "former.employee@example.com", "-c", "rcptsync.toml"]);
    assert!(r.stdout.contains("suspended"), "{}{}", r.stdout, r.stderr);
}

/// Groups whose whoCanPostMessage shuts out the internet are left out; a
/// missing scope, a disabled API or throttling keep the groups (one warning,
/// `why` tells); the admin's lists decide per group.
#[test]
fn google_groups_closed_to_outside_posts() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let key = keypair(t.path(), "sa");
    let g = FakeGoogle::start("svc@rcptsync-test.iam.gserviceaccount.com", &key);
    let want = google_traps(&mut g.state());
    g.state().settings_throttle = 2;
    let kf = g.key_file(t.path(), &key);
    t.config(&google_config(&g, &kf, ""));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(lines(&t.read("out/list")), want, "{}", r.stderr);
    let batches = g.state().common.log.iter().filter(|l| l.starts_with("POST /batch/groupssettings/v1")).count();
    assert_eq!(batches, 2, "the throttled lookups are asked again, once");
    let why = t.run(&["why", "-c", "rcptsync.toml", "all-staff@example.com"]);
    assert!(why.stdout.contains("whoCanPostMessage = ALL_IN_DOMAIN_CAN_POST"), "{}", why.stdout);
    let why = t.run(&["why", "-c", "rcptsync.toml", "board@example.com"]);
    assert!(why.stdout.contains("allowExternalMembers = true"), "{}", why.stdout);

    // Delegation lacks the settings scope: every group kept, one warning naming the scope.
    g.state().granted_scopes = GOOGLE_SCOPES.iter().map(|s| s.to_string()).collect();
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    let list = t.read("out/list");
    assert!(list.contains("staff@example.com\n") && list.contains("noreply-list@example.org\n"), "{list}");
    assert_eq!(r.stderr.matches("Google refuses to tell who may post to groups").count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("apps.groups.settings"), "{}", r.stderr);
    let why = t.run(&["why", "-c", "rcptsync.toml", "staff@example.com"]);
    assert!(why.stdout.contains("could not be read: Google refused it"), "{}", why.stdout);

    // The API is not enabled in the project: the same.
    {
        let mut s = g.state();
        s.granted_scopes.push(crate::support::cloud::google::SETTINGS_SCOPE.into());
        s.settings_disabled = true;
    }
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(t.read("out/list").contains("staff@example.com\n"));
    assert!(r.stderr.contains("accessNotConfigured"), "{}", r.stderr);
    g.state().settings_disabled = false;

    // The admin's lists: a group closed by hand (named by its alias), one opened by hand.
    t.config(&google_config(
        &g,
        &kf,
        "external_senders_refused = [\"Sales-All@example.com\"]\nexternal_senders_allowed = [\"staff@example.com\"]",
    ));
    // Closing the sales team removes four addresses: more than the guard lets through unasked.
    let r = t.run(&["sync", "--force", "-c", "rcptsync.toml"]);
    r.expect(0);
    let list = t.read("out/list");
    assert!(!list.contains("sales-team@") && !list.contains("sales-all@"), "{list}");
    assert!(list.contains("staff@example.com\n") && !list.contains("noreply-list@"), "{list}");
    let why = t.run(&["why", "-c", "rcptsync.toml", "sales-team@example.com"]);
    assert!(why.stdout.contains("external_senders_refused"), "{}", why.stdout);
}

#[test]
fn google_refusals_name_the_remedy_and_keep_the_list() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let key = keypair(t.path(), "sa");
    let g = FakeGoogle::start("svc@rcptsync-test.iam.gserviceaccount.com", &key);
    google_traps(&mut g.state());
    let kf = g.key_file(t.path(), &key);
    t.config(&google_config(&g, &kf, ""));
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    let before = t.read("out/list");

    // Delegation lacks the group scope.
    g.state().granted_scopes = vec![GOOGLE_SCOPES[0].into(), GOOGLE_SCOPES[2].into()];
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("domain-wide delegation is missing these scopes"), "{}", r.stderr);
    assert!(
        r.stderr.contains("admin.directory.group.readonly") && r.stderr.contains("109876543210987654321"),
        "{}",
        r.stderr
    );
    assert_eq!(t.read("out/list"), before);
    g.state().granted_scopes = GOOGLE_SCOPES.iter().map(|s| s.to_string()).collect();

    // A subject that is not an admin of the domain.
    t.config(&google_config(&g, &kf, "").replace("admin@example.com", "nobody@example.com"));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("check that subject nobody@example.com is an existing admin"), "{}", r.stderr);

    // A key the fake does not know: the signature really is checked.
    let other = keypair(t.path(), "other");
    let forged = std::fs::read_to_string(&kf).unwrap().replace(
        &serde_json::to_string(&std::fs::read_to_string(&key.key_pem).unwrap()).unwrap(),
        &serde_json::to_string(&std::fs::read_to_string(&other.key_pem).unwrap()).unwrap(),
    );
    assert_ne!(forged, std::fs::read_to_string(&kf).unwrap());
    let forged_file = t.write("forged.json", &forged);
    t.config(&google_config(&g, &forged_file, ""));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("Invalid JWT Signature"), "{}", r.stderr);
    assert!(!r.stderr.contains("BEGIN PRIVATE KEY"));
    assert_eq!(t.read("out/list"), before);
}

#[test]
fn google_rate_limits_and_outages() {
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let key = keypair(t.path(), "sa");
    let g = FakeGoogle::start("svc@rcptsync-test.iam.gserviceaccount.com", &key);
    {
        let mut s = g.state();
        google_bulk(&mut s, 1200, 250);
        s.common.faults.push(Fault::new("/admin/directory/v1/users", 1, 403, 1));
        s.common.faults.push(Fault::new("/admin/directory/v1/groups", 1, 429, 1).retry_after("0.5"));
        s.common.revoke_tokens_after = Some(3);
    }
    let kf = g.key_file(t.path(), &key);
    // The directory's own throttling alone (group settings are tested below).
    t.config(&google_config(&g, &kf, "max_retries = 2\ncheck_external_senders = false"));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    let list = t.read("out/list");
    assert_eq!(list.lines().count(), 1200 * 2 + 250);
    assert!(!list.contains("test-google-a.com"));
    assert!(r.stderr.contains("rateLimitExceeded"), "{}", r.stderr);
    assert_eq!(g.state().common.tokens_issued, 2, "revoked token renewed once");

    // Google's legacy envelope for a hard refusal is not retried, and is explained.
    g.state().common.faults.push(
        Fault::new("/admin/directory/v1/users", 0, 403, 1)
            .body(r#"{"error":{"errors":[{"domain":"global","reason":"forbidden","message":"Not Authorized to access this resource/api"}],"code":403,"message":"Not Authorized to access this resource/api"}}"#),
    );
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("forbidden: Not Authorized to access this resource/api"), "{}", r.stderr);
    assert!(r.stderr.contains("must be an admin"), "{}", r.stderr);
    // Persistent 503 on a middle page: fails after bounded retries.
    g.state().common.faults.push(Fault::new("/admin/directory/v1/users", 2, 503, 100));
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(1);
    assert!(r.stderr.contains("giving up after 3 attempts"), "{}", r.stderr);
    assert_eq!(t.read("out/list"), list);
}

// ------------------------------------------------------- real Postfix e2e --

#[test]
fn graph_and_google_feed_real_postfix() {
    if !crate::postfix::enabled("graph_and_google_feed_real_postfix") {
        return;
    }
    use crate::postfix::Postfix;
    use crate::smtp::rcpt_replies;
    let t = TestDir::new();
    std::fs::create_dir_all(t.join("out")).unwrap();
    let graph = graph_with_secret(&t);
    graph_traps(&mut graph.state());
    let key = keypair(t.path(), "sa");
    let google = FakeGoogle::start("svc@rcptsync-test.iam.gserviceaccount.com", &key);
    google_traps(&mut google.state());
    let kf = google.key_file(t.path(), &key);
    std::fs::create_dir_all(t.join("maps")).unwrap();
    let map = t.join("maps/relay_recipients");
    t.config(&format!(
        r#"state_dir = "state"
{}
[[source]]
name = "workspace"
kind = "google"
credentials_file = "{}"
subject = "admin@example.com"
api_url = "{url}"
settings_api_url = "{url}"
allow_insecure_http = true
[[output]]
name = "postfix"
template = "postfix"
path = "{}"
postmap = "lmdb"
"#,
        graph_source(&graph, "client_secret_file = \"graph-secret\""),
        kf.display(),
        map.display(),
        url = google.url(),
    ));
    let etc = Postfix::configure(
        &t.join("pf"),
        "contoso.com, example.com, example-alias.com",
        &format!("lmdb:{}", map.display()),
    );
    let sync = || crate::postfix::sync_for(&t, &etc, &[]);
    sync().expect(0);
    let pf = Postfix::run(etc.clone());
    let r = rcpt_replies(
        pf.port,
        &[
            "AdeleV@contoso.com",
            "adams@contoso.com",
            "liz@example-alias.com",
            "sales-team@example.com",
            "nobody@contoso.com",
            "former.employee@example.com",
            "erics@contoso.com",
        ],
    );
    assert!(r[..4].iter().all(|l| l.starts_with("250")), "{r:?}");
    assert!(r[4..].iter().all(|l| l.starts_with("550 5.1.1")), "{r:?}");
    // New people on both sides are accepted after one sync, with no manual step.
    graph.state().put("users", serde_json::json!({"id": "n1", "userPrincipalName": "hire@contoso.com", "mail": "hire@contoso.com", "proxyAddresses": ["SMTP:hire@contoso.com"]}));
    google.state().users.push(serde_json::json!({"primaryEmail": "newbie@example.com", "suspended": false}));
    sync().expect(0);
    let r = rcpt_replies(pf.port, &["hire@contoso.com", "newbie@example.com"]);
    assert!(r.iter().all(|l| l.starts_with("250")), "{r:?}\n{}", pf.log_tail());
}

/// A 410 Gone in the middle of a delta chain (not only on its first page)
/// means the delta session is lost: the same run starts a full pass instead
/// of failing the source.
#[test]
fn graph_410_in_the_middle_of_a_delta_chain_starts_a_full_pass() {
    let (t, g) = graph_case();
    graph_bulk(&mut g.state(), 50, 0, 0);
    graph_config(&t, &g, "[guard]\nmax_removed_percent = 50\n", "client_secret_file = \"graph-secret\"");
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    {
        let mut s = g.state();
        s.delta_page = 2;
        for i in 0..5 {
            let id = format!("late{i}");
            s.put("users", serde_json::json!({"id": id, "userPrincipalName": format!("late{i}@bulk.example"), "mail": format!("late{i}@bulk.example"), "proxyAddresses": [format!("SMTP:late{i}@bulk.example")]}));
        }
        // The second page of the users delta chain is gone.
        s.common.faults.push(Fault::new("/v1.0/users/delta", 1, 410, 1));
        s.common.log.clear();
    }
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(r.stderr.contains("delta link rejected; falling back to a full sync"), "{}", r.stderr);
    assert!(g.state().common.log.iter().any(|l| l.starts_with("GET /v1.0/users?")), "a full listing ran");
    let list = t.read("out/list");
    for i in 0..5 {
        assert!(list.contains(&format!("late{i}@bulk.example")), "{list}");
    }
}

/// Domain rules of Exchange Online: `*.onmicrosoft.com` addresses are left out
/// by default (their MX is Microsoft's), and a verified domain whose
/// supportedServices is EmailInternalRelayOnly (a shared address space) is
/// published as a catch-all, since the primary accepts any recipient there.
#[test]
fn graph_onmicrosoft_addresses_and_internal_relay_domains() {
    let (t, g) = graph_case();
    {
        let mut s = g.state();
        s.domains = vec![
            serde_json::json!({"id": "contoso.com", "isVerified": true, "supportedServices": ["Email"]}),
            serde_json::json!({"id": "contoso.onmicrosoft.com", "isVerified": true, "supportedServices": ["Email"]}),
            serde_json::json!({"id": "shared.contoso.com", "isVerified": true, "supportedServices": ["EmailInternalRelayOnly"]}),
        ];
        s.put(
            "users",
            serde_json::json!({"id": "u1", "userPrincipalName": "a@contoso.com", "mail": "a@contoso.com",
            "proxyAddresses": ["SMTP:a@contoso.com", "smtp:a@contoso.onmicrosoft.com", "smtp:a@shared.contoso.com"]}),
        );
    }
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"");
    let r = t.run(&["list", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(lines(&r.stdout), ["a@contoso.com", "a@shared.contoso.com", "@shared.contoso.com"], "{}", r.stderr);
    assert!(
        r.stderr.contains("internal relay domain (EmailInternalRelayOnly): published as a catch-all"),
        "{}",
        r.stderr
    );
    let why = t.run(&["why", "-c", "rcptsync.toml", "a@contoso.onmicrosoft.com"]);
    assert!(why.stdout.contains("*.onmicrosoft.com address, whose MX is Microsoft's own"), "{}", why.stdout);
    let why = t.run(&["why", "-c", "rcptsync.toml", "unknown@shared.contoso.com"]);
    why.expect(0);
    assert!(why.stdout.contains("supportedServices EmailInternalRelayOnly"), "{}", why.stdout);
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"\nkeep_onmicrosoft = true");
    let r = t.run(&["list", "-c", "rcptsync.toml"]);
    assert!(lines(&r.stdout).contains(&"a@contoso.onmicrosoft.com".to_string()), "{}", r.stdout);
}

/// Microsoft 365 groups with allowExternalSenders = false (Graph's default)
/// refuse outside mail, so they are left out; the setting is read through
/// `$batch` and kept by the delta state; a refusal of the property keeps the
/// groups and says why; the admin's lists decide where Graph cannot.
#[test]
fn graph_groups_closed_to_outside_senders() {
    let (t, g) = graph_case();
    let want = graph_traps(&mut g.state());
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"");
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert_eq!(lines(&t.read("out/list")), want);
    {
        let s = g.state();
        let batches = s.common.log.iter().filter(|l| l.starts_with("POST /v1.0/$batch")).count();
        assert_eq!(batches, 1, "{:#?}", s.common.log);
        assert_eq!(s.lookups, 2, "both Microsoft 365 groups were asked about, nothing else");
    }
    let why = t.run(&["why", "-c", "rcptsync.toml", "project@contoso.com"]);
    assert!(why.stdout.contains("allowExternalSenders = false"), "{}", why.stdout);
    let why = t.run(&["why", "-c", "rcptsync.toml", "golfassist@contoso.com"]);
    assert!(why.stdout.contains("allowExternalSenders = true"), "{}", why.stdout);

    // A delta run: unchanged groups keep their cached setting (no lookup);
    // a group that changed is asked again, and opening it publishes it.
    {
        let mut s = g.state();
        s.common.log.clear();
        s.put("users", serde_json::json!({"id": "u9", "userPrincipalName": "n@contoso.com", "mail": "n@contoso.com", "proxyAddresses": []}));
    }
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(!g.state().common.log.iter().any(|l| l.contains("$batch")), "{:#?}", g.state().common.log);
    {
        let mut s = g.state();
        s.common.log.clear();
        s.put("groups", serde_json::json!({"id": "g6", "displayName": "Project Team", "groupTypes": ["Unified"], "mail": "project@contoso.com",
            "mailEnabled": true, "proxyAddresses": ["SMTP:project@contoso.com"], "allowExternalSenders": true}));
        s.batch_throttle = 1;
    }
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(t.read("out/list").contains("project@contoso.com\n"), "{}", r.stderr);
    let batches = g.state().common.log.iter().filter(|l| l.starts_with("POST /v1.0/$batch")).count();
    assert_eq!(batches, 2, "a throttled member is asked again after its Retry-After");

    // Graph refuses the property (app-only token): groups are kept, one warning, `why` tells.
    std::fs::remove_dir_all(t.join("state/sources")).unwrap();
    {
        let mut s = g.state();
        s.put("groups", serde_json::json!({"id": "g6", "displayName": "Project Team", "groupTypes": ["Unified"], "mail": "project@contoso.com",
            "mailEnabled": true, "proxyAddresses": ["SMTP:project@contoso.com"], "allowExternalSenders": false}));
        s.external_refusal = Some((403, "ErrorAccessDenied", "Access is denied. Check credentials and try again."));
        s.common.log.clear();
    }
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    assert!(t.read("out/list").contains("project@contoso.com\n"));
    assert_eq!(
        r.stderr.matches("Graph refuses to tell whether Microsoft 365 groups take outside mail").count(),
        1,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("ErrorAccessDenied"), "{}", r.stderr);
    let why = t.run(&["why", "-c", "rcptsync.toml", "project@contoso.com"]);
    assert!(why.stdout.contains("could not be read: Graph refused it"), "{}", why.stdout);

    // The admin's lists: a distribution list closed by hand, a group opened by hand.
    graph_config(
        &t,
        &g,
        "",
        "client_secret_file = \"graph-secret\"\nexternal_senders_refused = [\"GolfTalk@contoso.com\"]\n\
         external_senders_allowed = [\"project@contoso.com\", \"nobody@contoso.com\"]",
    );
    g.state().external_refusal = None;
    let r = t.run(&["sync", "-c", "rcptsync.toml"]);
    r.expect(0);
    let list = t.read("out/list");
    assert!(list.contains("project@contoso.com\n") && !list.contains("golftalk@"), "{list}");
    assert!(
        r.stderr.contains("matches no mail-enabled group") && r.stderr.contains("nobody@contoso.com"),
        "{}",
        r.stderr
    );
    let why = t.run(&["why", "-c", "rcptsync.toml", "golftalk@contoso.com"]);
    assert!(why.stdout.contains("external_senders_refused"), "{}", why.stdout);

    // Turned off: no lookups, Microsoft 365 groups kept.
    std::fs::remove_dir_all(t.join("state/sources")).unwrap();
    graph_config(&t, &g, "", "client_secret_file = \"graph-secret\"\ncheck_external_senders = false");
    g.state().common.log.clear();
    t.run(&["sync", "-c", "rcptsync.toml"]).expect(0);
    assert!(!g.state().common.log.iter().any(|l| l.contains("$batch")));
    assert!(t.read("out/list").contains("project@contoso.com\n"));
}
