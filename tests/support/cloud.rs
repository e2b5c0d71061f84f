//! In-process fakes of Microsoft Graph (with the v2.0 token endpoint) and of the
//! Google Admin SDK Directory API (with Google's token endpoint), built from the
//! documented shapes: absolute nextLinks with opaque skiptokens, `$select`
//! honoured, `$top` > 999 refused, delta rounds with `@removed`, Google's
//! `fields` partial responses and legacy error envelope, tokens that expire,
//! and JWT assertions whose signatures are really verified.
//!
//! Each fake is an axum server on 127.0.0.1 in its own thread and runtime,
//! stopped on drop. Tests change data and inject faults through `state()`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

/// A running fake server.
pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// TLS server material: certificate chain and key (PEM files).
pub type Tls = (PathBuf, PathBuf);

/// A TCP listener that completes a TLS handshake before handing out a stream.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            // A client that refuses our certificate is simply dropped.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

fn tls_acceptor((cert, key): &Tls) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

fn serve(router: Router) -> Server {
    serve_on(router, None)
}

fn serve_on(router: Router, tls: Option<Tls>) -> Server {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let stopped = async move {
                let _ = stopped.await;
            };
            match tls {
                Some(tls) => {
                    let acceptor = tls_acceptor(&tls);
                    axum::serve(TlsListener { tcp: listener, acceptor }, router)
                        .with_graceful_shutdown(stopped)
                        .await
                        .unwrap()
                }
                None => axum::serve(listener, router).with_graceful_shutdown(stopped).await.unwrap(),
            }
        });
    });
    let addr = rx.recv().unwrap();
    Server { url: format!("{scheme}://{addr}"), addr, stop: Some(stop), thread: Some(thread) }
}

/// A fault injected on one page of one endpoint.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Request path, e.g. `/v1.0/users` or `/admin/directory/v1/users`.
    pub path: String,
    /// 0-based page index in the chain.
    pub page: usize,
    pub status: u16,
    /// `Retry-After` header value, if any.
    pub retry_after: Option<String>,
    /// Body; None = the service's usual envelope for the status.
    pub body: Option<String>,
    /// How many requests it hits before healing.
    pub times: usize,
}

impl Fault {
    pub fn new(path: &str, page: usize, status: u16, times: usize) -> Fault {
        Fault { path: path.into(), page, status, retry_after: None, body: None, times }
    }
    pub fn retry_after(mut self, v: &str) -> Fault {
        self.retry_after = Some(v.into());
        self
    }
    pub fn body(mut self, b: &str) -> Fault {
        self.body = Some(b.into());
        self
    }
}

/// An RSA key and self-signed certificate made with openssl, with what a
/// verifier needs: the PKCS#1 public key and both certificate thumbprints.
pub struct KeyPair {
    pub key_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub public_der: Vec<u8>,
    pub x5t: String,
    pub x5t_s256: String,
}

pub fn keypair(dir: &Path, name: &str) -> KeyPair {
    let (k, c, p, d) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.der")),
    );
    let sh = format!(
        "set -e
         openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out {k} 2>/dev/null
         openssl req -x509 -new -key {k} -subj /CN=rcptsync-test -days 2 -out {c} 2>/dev/null
         openssl rsa -in {k} -RSAPublicKey_out -outform DER -out {p} 2>/dev/null
         openssl x509 -in {c} -outform DER -out {d}",
        k = k.display(),
        c = c.display(),
        p = p.display(),
        d = d.display()
    );
    assert!(std::process::Command::new("sh").arg("-c").arg(sh).status().unwrap().success(), "openssl failed");
    let der = std::fs::read(&d).unwrap();
    KeyPair {
        public_der: std::fs::read(&p).unwrap(),
        x5t: B64.encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)),
        x5t_s256: B64.encode(ring::digest::digest(&ring::digest::SHA256, &der)),
        key_pem: k,
        cert_pem: c,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Verifies a JWT's signature; returns (header, claims) or why not.
fn verify_jwt(jwt: &str, public_der: &[u8]) -> Result<(Value, Value), String> {
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, UnparsedPublicKey};
    let mut parts = jwt.split('.');
    let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a JWT".into());
    };
    let header: Value =
        serde_json::from_slice(&B64.decode(h).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let claims: Value =
        serde_json::from_slice(&B64.decode(c).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let sig = B64.decode(s).map_err(|e| e.to_string())?;
    let alg: &dyn ring::signature::VerificationAlgorithm = match header["alg"].as_str() {
        Some("RS256") => &RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &RSA_PSS_2048_8192_SHA256,
        other => return Err(format!("unsupported alg {other:?}")),
    };
    UnparsedPublicKey::new(alg, public_der)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "signature does not verify".to_string())?;
    Ok((header, claims))
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::to_string)
}

fn host(headers: &HeaderMap) -> String {
    headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1").to_string()
}

fn json_response(status: u16, body: Value, retry_after: Option<&str>) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), [("content-type", "application/json")], body.to_string())
        .into_response();
    if let Some(ra) = retry_after {
        r.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    r
}

fn encode_token(v: &Value) -> String {
    B64.encode(v.to_string())
}

fn decode_token(t: &str) -> Option<Value> {
    serde_json::from_slice(&B64.decode(t).ok()?).ok()
}

/// Counters and knobs common to both fakes.
#[derive(Default)]
pub struct Common {
    pub latency: Duration,
    pub faults: Vec<Fault>,
    /// Every request: `METHOD path?query` (token requests included).
    pub log: Vec<String>,
    /// Valid tokens and when they expire.
    pub tokens: HashMap<String, Instant>,
    pub token_lifetime: u64,
    pub tokens_issued: usize,
    /// After this many more API requests every issued token is revoked.
    pub revoke_tokens_after: Option<usize>,
    /// Time spent building answers (after the added latency).
    pub busy: Duration,
}

impl Common {
    pub fn issue(&mut self, prefix: &str) -> (String, u64) {
        self.tokens_issued += 1;
        let t = format!("{prefix}-{}-{}", self.tokens_issued, B64.encode(crate_random()));
        let life = if self.token_lifetime == 0 { 3599 } else { self.token_lifetime };
        self.tokens.insert(t.clone(), Instant::now() + Duration::from_secs(life));
        (t, life)
    }

    fn token_ok(&mut self, headers: &HeaderMap) -> bool {
        if let Some(n) = self.revoke_tokens_after.as_mut() {
            if *n == 0 {
                self.tokens.clear();
                self.revoke_tokens_after = None;
            } else {
                *n -= 1;
            }
        }
        bearer(headers).and_then(|t| self.tokens.get(&t).copied()).is_some_and(|exp| exp > Instant::now())
    }

    fn fault(&mut self, path: &str, page: usize) -> Option<Fault> {
        let f = self.faults.iter_mut().find(|f| f.path == path && f.page == page && f.times > 0)?;
        f.times -= 1;
        Some(f.clone())
    }

    /// API requests logged whose line starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.log.iter().filter(|l| l.starts_with(prefix)).count()
    }
}

fn crate_random() -> [u8; 12] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

// ------------------------------------------------------------------ Graph --

/// One Graph collection: objects by id with the change sequence number of
/// their last change; `None` = deleted.
#[derive(Default)]
pub struct Collection {
    pub objects: BTreeMap<String, (u64, Option<Arc<Value>>)>,
}

pub struct GraphState {
    pub common: Common,
    pub tenant: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub cert: Option<(Vec<u8>, String, String)>,
    pub collections: BTreeMap<String, Collection>,
    pub domains: Vec<Value>,
    pub seq: u64,
    /// Delta tokens issued before this sequence number are expired.
    pub delta_valid_from: u64,
    /// Objects per delta page.
    pub delta_page: usize,
    /// Assertions seen (to check what the client signed).
    pub assertions: Vec<(Value, Value)>,
    /// Base of the links the fake returns (default: from the Host header).
    pub link_base: Option<String>,
    pub scheme: &'static str,
}

impl GraphState {
    fn coll(&mut self, name: &str) -> &mut Collection {
        self.collections.entry(name.to_string()).or_default()
    }

    /// Creates or replaces an object (`id` inside `obj`).
    pub fn put(&mut self, collection: &str, obj: Value) {
        self.seq += 1;
        let seq = self.seq;
        let id = obj["id"].as_str().unwrap().to_string();
        self.coll(collection).objects.insert(id, (seq, Some(Arc::new(obj))));
    }

    pub fn delete(&mut self, collection: &str, id: &str) {
        self.seq += 1;
        let seq = self.seq;
        self.coll(collection).objects.insert(id.to_string(), (seq, None));
    }

    /// Makes every delta token issued so far expired.
    pub fn expire_delta_tokens(&mut self) {
        self.seq += 1;
        self.delta_valid_from = self.seq;
    }
}

pub struct FakeGraph {
    pub server: Server,
    state: Arc<Mutex<GraphState>>,
}

impl FakeGraph {
    pub fn start(tenant: &str, client_id: &str) -> FakeGraph {
        FakeGraph::start_on(tenant, client_id, None)
    }

    /// Serves HTTPS with the given certificate and key.
    pub fn start_on(tenant: &str, client_id: &str, tls: Option<Tls>) -> FakeGraph {
        let state = Arc::new(Mutex::new(GraphState {
            common: Common::default(),
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: None,
            cert: None,
            collections: BTreeMap::new(),
            domains: Vec::new(),
            seq: 0,
            delta_valid_from: 0,
            delta_page: 200,
            assertions: Vec::new(),
            link_base: None,
            scheme: if tls.is_some() { "https" } else { "http" },
        }));
        let router = Router::new().fallback(graph_handle).with_state(state.clone());
        FakeGraph { server: serve_on(router, tls), state }
    }

    pub fn state(&self) -> MutexGuard<'_, GraphState> {
        self.state.lock().unwrap()
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }
}

fn graph_error(status: u16, code: &str, message: &str, retry_after: Option<&str>) -> Response {
    json_response(
        status,
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": "2026-11-28T06:00:00", "request-id": "7011ef39-854e-4236-b355-0c0a9d303bc2",
            "client-request-id": "7011ef39-854e-4236-b355-0c0a9d303bc2"}}}),
        retry_after,
    )
}

fn aad_error(status: u16, error: &str, code: u32, text: &str) -> Response {
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text}\r\nTrace ID: 255d1aef-8c98-452f-ac51-23d051240864\r\nCorrelation ID: fb3d2015-bc17-4bb9-bb85-30c5cf1aaaa7\r\nTimestamp: 2026-11-28 06:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-11-28 06:00:00Z",
            "trace_id": "255d1aef-8c98-452f-ac51-23d051240864",
            "correlation_id": "fb3d2015-bc17-4bb9-bb85-30c5cf1aaaa7",
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")
        }),
        None,
    )
}

/// Default properties of a collection when there is no `$select`.
fn default_props(collection: &str) -> &'static [&'static str] {
    match collection {
        "users" => &[
            "businessPhones",
            "displayName",
            "givenName",
            "id",
            "jobTitle",
            "mail",
            "mobilePhone",
            "officeLocation",
            "preferredLanguage",
            "surname",
            "userPrincipalName",
        ],
        "groups" => &[
            "id",
            "displayName",
            "mail",
            "mailEnabled",
            "mailNickname",
            "securityEnabled",
            "groupTypes",
            "proxyAddresses",
        ],
        _ => &["id", "displayName", "mail", "mailNickname", "proxyAddresses"],
    }
}

fn project(obj: &Value, select: Option<&str>, collection: &str) -> Value {
    let mut out = serde_json::Map::new();
    let props: Vec<&str> = match select {
        Some(s) => s.split(',').map(str::trim).collect(),
        None => default_props(collection).to_vec(),
    };
    out.insert("id".into(), obj["id"].clone());
    for p in props {
        let v = obj.get(p).cloned().unwrap_or_else(|| {
            if matches!(p, "proxyAddresses" | "otherMails" | "businessPhones" | "groupTypes") {
                json!([])
            } else {
                Value::Null
            }
        });
        out.insert(p.to_string(), v);
    }
    Value::Object(out)
}

/// Writes `project(obj)` as JSON text straight into `out` (the list pages'
/// hot path: no intermediate values).
fn write_projected(out: &mut Vec<u8>, obj: &Value, select: Option<&str>, collection: &str) {
    let props: Vec<&str> = match select {
        Some(s) => s.split(',').map(str::trim).collect(),
        None => default_props(collection).to_vec(),
    };
    out.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut *out, &obj["id"]).unwrap();
    for p in props.into_iter().filter(|p| *p != "id") {
        out.push(b',');
        serde_json::to_writer(&mut *out, p).unwrap();
        out.push(b':');
        match obj.get(p) {
            Some(v) => serde_json::to_writer(&mut *out, v).unwrap(),
            None if matches!(p, "proxyAddresses" | "otherMails" | "businessPhones" | "groupTypes") => {
                out.extend_from_slice(b"[]")
            }
            None => out.extend_from_slice(b"null"),
        }
    }
    out.push(b'}');
}

/// A list page whose objects are serialised after the state lock is released.
struct PageReply {
    head: serde_json::Map<String, Value>,
    objects: Vec<Arc<Value>>,
    select: Option<String>,
    collection: String,
}

impl PageReply {
    fn into_response(self) -> Response {
        let mut out = Vec::with_capacity(64 + self.objects.len() * 256);
        let head = serde_json::to_vec(&self.head).unwrap();
        out.extend_from_slice(&head[..head.len() - 1]);
        out.extend_from_slice(if self.head.is_empty() { b"\"value\":[" } else { b",\"value\":[" });
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_projected(&mut out, o, self.select.as_deref(), &self.collection);
        }
        out.extend_from_slice(b"]}");
        (StatusCode::OK, [("content-type", "application/json")], out).into_response()
    }
}

enum Reply {
    Done(Response),
    Page(PageReply),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Done(r)
    }
}

/// Both fakes' state: what every request touches.
trait HasCommon {
    fn common(&mut self) -> &mut Common;
}

impl HasCommon for GraphState {
    fn common(&mut self) -> &mut Common {
        &mut self.common
    }
}

impl HasCommon for GoogleState {
    fn common(&mut self) -> &mut Common {
        &mut self.common
    }
}

/// Logs a request and waits the added latency (without holding the lock).
async fn arrive<S: HasCommon>(st: &Mutex<S>, method: &Method, uri: &Uri) {
    let latency = {
        let mut s = st.lock().unwrap();
        // Origin-form as sent; absolute-form when it came through a proxy.
        s.common().log.push(format!("{method} {uri}"));
        s.common().latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

async fn graph_handle(
    State(st): State<Arc<Mutex<GraphState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    arrive(&st, &method, &uri).await;
    let started = Instant::now();
    let reply = graph_route(&mut st.lock().unwrap(), method, uri, headers, body);
    let r = match reply {
        Reply::Done(r) => r,
        Reply::Page(p) => p.into_response(),
    };
    st.lock().unwrap().common.busy += started.elapsed();
    r
}

fn graph_route(s: &mut GraphState, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Reply {
    let path = uri.path().to_string();
    if method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        return graph_token(s, &path, &headers, &body).into();
    }
    if !s.common.token_ok(&headers) {
        return graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", None)
            .into();
    }
    let q = query_pairs(&uri);
    let base = s.link_base.clone().unwrap_or_else(|| format!("{}://{}", s.scheme, host(&headers)));
    let Some(rest) = path.strip_prefix("/v1.0/") else {
        return graph_error(404, "Request_ResourceNotFound", "Resource not found", None).into();
    };
    if rest == "domains" {
        if let Some(f) = s.common.fault(&path, 0) {
            return fault_response(&f, true).into();
        }
        let select = param(&q, "$select");
        let v: Vec<Value> = s
            .domains
            .iter()
            .map(|d| match select {
                Some(sel) => {
                    let mut o = serde_json::Map::new();
                    for p in sel.split(',') {
                        o.insert(p.to_string(), d.get(p).cloned().unwrap_or(Value::Null));
                    }
                    Value::Object(o)
                }
                None => d.clone(),
            })
            .collect();
        return json_response(
            200,
            json!({"@odata.context": format!("{base}/v1.0/$metadata#domains"), "value": v}),
            None,
        )
        .into();
    }
    let (collection, delta) = match rest.strip_suffix("/delta") {
        Some(c) => (c.to_string(), true),
        None => (rest.to_string(), false),
    };
    if !["users", "groups", "contacts"].contains(&collection.as_str()) {
        return graph_error(400, "BadRequest", &format!("Resource not found for the segment '{collection}'."), None)
            .into();
    }
    if delta {
        graph_delta(s, &collection, &q, &base, &path).into()
    } else {
        graph_list(s, &collection, &q, &base, &path)
    }
}

fn fault_response(f: &Fault, graph: bool) -> Response {
    if let Some(b) = &f.body {
        let mut r = (StatusCode::from_u16(f.status).unwrap(), b.clone()).into_response();
        if let Some(ra) = &f.retry_after {
            r.headers_mut().insert("retry-after", ra.parse().unwrap());
        }
        return r;
    }
    if graph {
        let code = match f.status {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalServerError",
        };
        graph_error(f.status, code, "Injected fault.", f.retry_after.as_deref())
    } else {
        google_error(
            f.status,
            if f.status == 403 { "rateLimitExceeded" } else { "backendError" },
            "Injected fault.",
            f.retry_after.as_deref(),
        )
    }
}

fn graph_list(s: &mut GraphState, collection: &str, q: &[(String, String)], base: &str, path: &str) -> Reply {
    let top: usize = match param(q, "$top").map(|t| t.parse::<i64>()) {
        None => 100,
        Some(Ok(t)) if (1..=999).contains(&t) => t as usize,
        Some(_) => {
            let t = param(q, "$top").unwrap_or("");
            return graph_error(
                400,
                "Request_BadRequest",
                &format!("Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."),
                None,
            )
            .into();
        }
    };
    let filter = param(q, "$filter");
    if let Some(f) = filter
        && !(collection == "groups" && f == "mailEnabled eq true")
    {
        return graph_error(400, "Request_UnsupportedQuery", "Unsupported query.", None).into();
    }
    // Opaque to the client: the last id served and the page number.
    let (after, page_no) = match param(q, "$skiptoken") {
        None => (None, 0),
        Some(t) => match decode_token(t) {
            Some(v) if v["a"].is_string() => {
                (v["a"].as_str().map(str::to_string), v["p"].as_u64().unwrap_or(0) as usize)
            }
            _ => return graph_error(400, "Request_BadRequest", "Skip token is null or invalid.", None).into(),
        },
    };
    if let Some(f) = s.common.fault(path, page_no) {
        return fault_response(&f, true).into();
    }
    let select = param(q, "$select");
    let from = match &after {
        Some(a) => std::ops::Bound::Excluded(a.clone()),
        None => std::ops::Bound::Unbounded,
    };
    let mut live = s
        .coll(collection)
        .objects
        .range((from, std::ops::Bound::Unbounded))
        .filter_map(|(id, (_, o))| o.as_ref().map(|o| (id, o)))
        .filter(|(_, o)| filter.is_none() || o.get("mailEnabled").and_then(Value::as_bool) == Some(true));
    let page: Vec<(String, Arc<Value>)> = live.by_ref().take(top).map(|(id, o)| (id.clone(), o.clone())).collect();
    let more = live.next().is_some();
    let last = page.last().map(|(id, _)| id.clone());
    let mut head = serde_json::Map::new();
    head.insert("@odata.context".into(), json!(format!("{base}/v1.0/$metadata#{collection}")));
    if let (true, Some(last)) = (more, last) {
        let keep: Vec<(String, String)> = q.iter().filter(|(k, _)| k != "$skiptoken").cloned().collect();
        let mut qs = serde_urlencoded::to_string(&keep).unwrap();
        qs.push_str(&format!("&$skiptoken={}", encode_token(&json!({"a": last, "p": page_no + 1}))));
        head.insert("@odata.nextLink".into(), json!(format!("{base}/v1.0/{collection}?{qs}")));
    }
    Reply::Page(PageReply {
        head,
        objects: page.into_iter().map(|(_, o)| o).collect(),
        select: select.map(str::to_string),
        collection: collection.to_string(),
    })
}

fn graph_delta(s: &mut GraphState, collection: &str, q: &[(String, String)], base: &str, path: &str) -> Response {
    // A delta session: changes after `since` up to `upto`, from `off`, with `sel`.
    let (since, upto, off, sel) = if let Some(t) = param(q, "$deltatoken") {
        if t == "latest" {
            let tok = encode_token(&json!({"since": s.seq, "sel": param(q, "$select")}));
            return json_response(
                200,
                json!({
                "@odata.context": format!("{base}/v1.0/$metadata#{collection}"),
                "@odata.deltaLink": format!("{base}/v1.0/{collection}/delta?$deltatoken={tok}"),
                "value": []}),
                None,
            );
        }
        let Some(v) = decode_token(t) else {
            return graph_error(400, "Request_BadRequest", "Badly formed token.", None);
        };
        let since = v["since"].as_u64().unwrap_or(0);
        if since < s.delta_valid_from {
            return graph_error(410, "syncStateNotFound", "The delta token has expired; start a new sync.", None);
        }
        (since, s.seq, 0usize, v["sel"].as_str().map(str::to_string))
    } else if let Some(t) = param(q, "$skiptoken") {
        let Some(v) = decode_token(t) else {
            return graph_error(400, "Request_BadRequest", "Badly formed token.", None);
        };
        (
            v["since"].as_u64().unwrap_or(0),
            v["upto"].as_u64().unwrap_or(0),
            v["o"].as_u64().unwrap_or(0) as usize,
            v["sel"].as_str().map(str::to_string),
        )
    } else {
        (0, s.seq, 0, param(q, "$select").map(str::to_string))
    };
    if let Some(f) = s.common.fault(path, off / s.delta_page.max(1)) {
        return fault_response(&f, true);
    }
    let page_size = s.delta_page.max(1);
    let changed: Vec<Value> = s
        .coll(collection)
        .objects
        .iter()
        .filter(|(_, (seq, _))| *seq > since && *seq <= upto)
        .filter(|(_, (_, o))| since > 0 || o.is_some())
        .map(|(id, (_, o))| match o {
            Some(o) => project(o, sel.as_deref(), collection),
            None => json!({"id": id, "@removed": {"reason": "deleted"}}),
        })
        .collect();
    let page: Vec<Value> = changed.iter().skip(off).take(page_size).cloned().collect();
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#{collection}"), "value": page});
    if off + page_size < changed.len() {
        let tok = encode_token(&json!({"since": since, "upto": upto, "o": off + page_size, "sel": sel}));
        body["@odata.nextLink"] = json!(format!("{base}/v1.0/{collection}/delta?$skiptoken={tok}"));
    } else {
        let tok = encode_token(&json!({"since": upto, "sel": sel}));
        body["@odata.deltaLink"] = json!(format!("{base}/v1.0/{collection}/delta?$deltatoken={tok}"));
    }
    json_response(200, body, None)
}

fn graph_token(s: &mut GraphState, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let tenant = path.trim_start_matches('/').split('/').next().unwrap_or("");
    if tenant != s.tenant {
        return aad_error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.");
    }
    if !form.get("scope").is_some_and(|sc| sc.ends_with("/.default")) {
        return aad_error(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        );
    }
    if form.get("client_id") != Some(&s.client_id) {
        let id = form.get("client_id").cloned().unwrap_or_default();
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{id}' was not found in the directory '{}'.", s.tenant),
        );
    }
    if let Some(secret) = form.get("client_secret") {
        if s.client_secret.as_ref() != Some(secret) {
            return aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.",
            );
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return aad_error(400, "invalid_request", 90014, "The required field 'client_assertion_type' is missing.");
        }
        let Some((public, x5t, x5t_s256)) = s.cert.clone() else {
            return aad_error(401, "invalid_client", 700027, "Client assertion failed signature validation.");
        };
        let (header, claims) = match verify_jwt(assertion, &public) {
            Ok(x) => x,
            Err(_) => return aad_error(401, "invalid_client", 700027, "Client assertion failed signature validation."),
        };
        let thumb_ok =
            header["x5t#S256"].as_str() == Some(x5t_s256.as_str()) || header["x5t"].as_str() == Some(x5t.as_str());
        if !thumb_ok {
            return aad_error(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found.]",
            );
        }
        let aud = format!("{}://{}/{}/oauth2/v2.0/token", s.scheme, host(headers), s.tenant);
        let t = now();
        let (nbf, exp) = (claims["nbf"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0));
        if claims["aud"].as_str() != Some(aud.as_str())
            || claims["iss"].as_str() != Some(s.client_id.as_str())
            || claims["sub"].as_str() != Some(s.client_id.as_str())
            || claims["jti"].as_str().is_none_or(str::is_empty)
        {
            return aad_error(
                401,
                "invalid_client",
                700023,
                "Client assertion audience claim does not match Realm issuer.",
            );
        }
        if exp <= t || nbf > t + 300 || exp - nbf > 900 {
            return aad_error(401, "invalid_client", 700024, "Client assertion is not within its valid time range.");
        }
        s.assertions.push((header, claims));
    } else {
        return aad_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let (token, life) = s.common.issue("graph-token");
    json_response(
        200,
        json!({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": token}),
        None,
    )
}

/// A tenant with every trap: guests, disabled shared/room mailboxes, security
/// groups, non-SMTP prefixes, an unverified domain, mixed case, `otherMails`.
/// Returns the exact lowercased recipient set rcptsync must produce.
pub fn graph_traps(s: &mut GraphState) -> Vec<&'static str> {
    s.domains = vec![
        json!({"id": "contoso.com", "isVerified": true, "isDefault": true, "isInitial": false, "authenticationType": "Managed", "supportedServices": ["Email", "OfficeCommunicationsOnline"]}),
        json!({"id": "contoso.onmicrosoft.com", "isVerified": true, "isInitial": true, "authenticationType": "Managed", "supportedServices": ["Email"]}),
        json!({"id": "sales.contoso.com", "isVerified": true, "authenticationType": "Managed", "supportedServices": ["Email"]}),
        json!({"id": "pending.contoso.com", "isVerified": false, "authenticationType": "Managed", "supportedServices": ["Email"]}),
        json!({"id": "intranet.contoso.com", "isVerified": true, "authenticationType": "Managed", "supportedServices": ["OfficeCommunicationsOnline"]}),
    ];
    s.put("users", json!({"id": "u1", "displayName": "Adele Vance", "userPrincipalName": "AdeleV@contoso.com", "mail": "AdeleV@contoso.com",
        "proxyAddresses": ["SMTP:AdeleV@contoso.com", "smtp:adele.vance@contoso.com", "smtp:AdeleV@contoso.onmicrosoft.com", "SIP:AdeleV@contoso.com",
            "X500:/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients/cn=a1b2c3-AdeleV", "SPO:SPO_1@SPO_2", "smtp:adele@pending.contoso.com",
            // Hostile values: a map-line injection and a template expression.
            "smtp:inject@contoso.com OK\nevil@contoso.com", "smtp:{{ 7*7 }}@contoso.com"],
        "otherMails": ["adele.personal@gmail.com"], "accountEnabled": true, "userType": "Member"}));
    s.put("users", json!({"id": "u2", "displayName": "Conf Room Adams", "userPrincipalName": "Adams@contoso.com", "mail": "Adams@contoso.com",
        "proxyAddresses": ["SMTP:Adams@contoso.com", "smtp:Adams@contoso.onmicrosoft.com"], "otherMails": [], "accountEnabled": false, "userType": "Member"}));
    s.put("users", json!({"id": "u3", "displayName": "Shared Info", "userPrincipalName": "info@contoso.com", "mail": "Info@Sales.Contoso.com",
        "proxyAddresses": ["SMTP:Info@Sales.Contoso.com", "smtp:info@contoso.com"], "otherMails": [], "accountEnabled": false, "userType": "Member"}));
    s.put("users", json!({"id": "u4", "displayName": "MOD Administrator", "userPrincipalName": "admin@contoso.onmicrosoft.com", "mail": null,
        "proxyAddresses": [], "otherMails": ["it@fabrikam.com"], "accountEnabled": true, "userType": "Member"}));
    s.put("users", json!({"id": "u5", "displayName": "John Guest", "userPrincipalName": "john_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "mail": "john@fabrikam.com", "proxyAddresses": ["SMTP:john@fabrikam.com"], "otherMails": ["john@fabrikam.com"], "accountEnabled": true, "userType": "Guest"}));
    s.put("users", json!({"id": "u6", "displayName": "Lync Only", "userPrincipalName": "lync@intranet.contoso.com", "mail": "lync@intranet.contoso.com",
        "proxyAddresses": ["SIP:lync@contoso.com"], "accountEnabled": true, "userType": "Member"}));
    s.put("groups", json!({"id": "g1", "displayName": "Golf Assist", "groupTypes": ["Unified"], "mail": "golfassist@contoso.com", "mailEnabled": true,
        "proxyAddresses": ["smtp:golfassist@contoso.onmicrosoft.com", "SMTP:golfassist@contoso.com"], "securityEnabled": false}));
    s.put("groups", json!({"id": "g2", "displayName": "Golf Discussion", "groupTypes": [], "mail": "GolfTalk@contoso.com", "mailEnabled": true,
        "proxyAddresses": ["SMTP:GolfTalk@contoso.com"], "securityEnabled": false}));
    s.put(
        "groups",
        json!({"id": "g3", "displayName": "SG-FileServer-RW", "groupTypes": [], "mail": null, "mailEnabled": false,
        "proxyAddresses": [], "securityEnabled": true}),
    );
    s.put("groups", json!({"id": "g4", "displayName": "Mail-enabled SG", "groupTypes": [], "mail": "sg-mail@contoso.com", "mailEnabled": true,
        "proxyAddresses": ["SMTP:sg-mail@contoso.com", "X400:C=US;A= ;P=Contoso;O=Exchange;S=sg"], "securityEnabled": true}));
    s.put("contacts", json!({"id": "c1", "displayName": "Eric S", "mail": "erics@fabrikam.com", "proxyAddresses": ["SMTP:erics@fabrikam.com"]}));
    s.put("contacts", json!({"id": "c2", "displayName": "Partner Desk", "mail": "desk@partner.example", "proxyAddresses": ["SMTP:desk@partner.example", "smtp:partner-desk@contoso.com"]}));
    vec![
        "adams@contoso.com",
        "adams@contoso.onmicrosoft.com",
        "adele.vance@contoso.com",
        "adelev@contoso.com",
        "adelev@contoso.onmicrosoft.com",
        "golfassist@contoso.com",
        "golfassist@contoso.onmicrosoft.com",
        "golftalk@contoso.com",
        "info@contoso.com",
        "info@sales.contoso.com",
        "partner-desk@contoso.com",
        "sg-mail@contoso.com",
    ]
}

/// `n` users, `g` mail-enabled groups (and as many security groups) and `c` contacts.
pub fn graph_bulk(s: &mut GraphState, n: usize, g: usize, c: usize) {
    s.domains = vec![json!({"id": "bulk.example", "isVerified": true, "supportedServices": ["Email"]})];
    for i in 0..n {
        s.put("users", json!({"id": format!("u{i:07}"), "userPrincipalName": format!("user{i}@bulk.example"), "mail": format!("user{i}@bulk.example"),
            "proxyAddresses": [format!("SMTP:user{i}@bulk.example"), format!("smtp:u.{i}@bulk.example"), format!("SIP:user{i}@bulk.example")], "accountEnabled": true}));
    }
    for i in 0..g {
        s.put("groups", json!({"id": format!("g{i:07}"), "displayName": format!("Group {i}"), "mail": format!("group{i}@bulk.example"), "mailEnabled": true,
            "proxyAddresses": [format!("SMTP:group{i}@bulk.example")]}));
        s.put("groups", json!({"id": format!("s{i:07}"), "displayName": format!("SG {i}"), "mail": null, "mailEnabled": false, "proxyAddresses": []}));
    }
    for i in 0..c {
        s.put("contacts", json!({"id": format!("c{i:07}"), "displayName": format!("Contact {i}"), "mail": format!("ext{i}@partner.example"),
            "proxyAddresses": [format!("SMTP:ext{i}@partner.example")]}));
    }
}

// ----------------------------------------------------------------- Google --

pub struct GoogleState {
    pub common: Common,
    pub client_email: String,
    pub public_der: Vec<u8>,
    /// Scopes granted to the client ID by domain-wide delegation.
    pub granted_scopes: Vec<String>,
    /// Users the service account may impersonate (admins).
    pub admins: Vec<String>,
    pub customer_id: String,
    pub users: Vec<Value>,
    pub groups: Vec<Value>,
    pub domains: Vec<Value>,
}

pub struct FakeGoogle {
    pub server: Server,
    state: Arc<Mutex<GoogleState>>,
}

pub const GOOGLE_SCOPES: [&str; 3] = [
    "https://www.googleapis.com/auth/admin.directory.user.readonly",
    "https://www.googleapis.com/auth/admin.directory.group.readonly",
    "https://www.googleapis.com/auth/admin.directory.domain.readonly",
];

impl FakeGoogle {
    pub fn start(client_email: &str, key: &KeyPair) -> FakeGoogle {
        let state = Arc::new(Mutex::new(GoogleState {
            common: Common::default(),
            client_email: client_email.into(),
            public_der: key.public_der.clone(),
            granted_scopes: GOOGLE_SCOPES.iter().map(|s| s.to_string()).collect(),
            admins: vec!["admin@example.com".into()],
            customer_id: "C01i1u61m".into(),
            users: Vec::new(),
            groups: Vec::new(),
            domains: Vec::new(),
        }));
        let router = Router::new().fallback(google_handle).with_state(state.clone());
        FakeGoogle { server: serve(router), state }
    }

    pub fn state(&self) -> MutexGuard<'_, GoogleState> {
        self.state.lock().unwrap()
    }

    pub fn url(&self) -> &str {
        &self.server.url
    }

    /// A service-account key file for this fake (its token_uri points here).
    pub fn key_file(&self, dir: &Path, key: &KeyPair) -> PathBuf {
        let pem = std::fs::read_to_string(&key.key_pem).unwrap();
        let v = json!({
            "type": "service_account", "project_id": "rcptsync-test", "private_key_id": "0123456789abcdef",
            "private_key": pem, "client_email": self.state().client_email, "client_id": "109876543210987654321",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": format!("{}/token", self.url()),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/svc"
        });
        let p = dir.join("service-account.json");
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        p
    }
}

pub fn google_error(status: u16, reason: &str, message: &str, retry_after: Option<&str>) -> Response {
    let domain = if reason.contains("RateLimit") || reason.contains("quota") { "usageLimits" } else { "global" };
    json_response(
        status,
        json!({"error": {"errors": [{"domain": domain, "reason": reason, "message": message}], "code": status, "message": message}}),
        retry_after,
    )
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    json_response(status, json!({"error": error, "error_description": description}), None)
}

/// Keeps only the fields a `fields=nextPageToken,users(a,b)` parameter names.
fn partial(items: &[Value], fields: Option<&str>, list: &str) -> Vec<Value> {
    let Some(f) = fields else { return items.to_vec() };
    let open = format!("{list}(");
    let Some(start) = f.find(&open) else { return items.iter().map(|_| json!({})).collect() };
    let inner = &f[start + open.len()..];
    let inner = &inner[..inner.find(')').unwrap_or(inner.len())];
    let keep: Vec<&str> = inner.split(',').map(str::trim).collect();
    items
        .iter()
        .map(|o| {
            let mut m = serde_json::Map::new();
            for k in &keep {
                if let Some(v) = o.get(*k) {
                    m.insert(k.to_string(), v.clone());
                }
            }
            Value::Object(m)
        })
        .collect()
}

async fn google_handle(
    State(st): State<Arc<Mutex<GoogleState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    arrive(&st, &method, &uri).await;
    let mut s = st.lock().unwrap();
    let path = uri.path().to_string();
    if method == Method::POST && path == "/token" {
        return google_token(&mut s, &headers, &body);
    }
    if !s.common.token_ok(&headers) {
        return json_response(
            401,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError", "location": "Authorization", "locationType": "header"}], "status": "UNAUTHENTICATED"}}),
            None,
        );
    }
    let q = query_pairs(&uri);
    let Some(rest) = path.strip_prefix("/admin/directory/v1/") else {
        return google_error(404, "notFound", "Not Found", None);
    };
    if let Some(c) = rest.strip_prefix("customer/").and_then(|r| r.strip_suffix("/domains")) {
        if c != "my_customer" && c != s.customer_id {
            return google_error(400, "badRequest", "Bad Request", None);
        }
        if let Some(f) = s.common.fault(&path, 0) {
            return fault_response(&f, false);
        }
        return json_response(
            200,
            json!({"kind": "admin#directory#domains", "etag": "\"e1\"", "domains": s.domains}),
            None,
        );
    }
    let (list, max) = match rest {
        "users" => ("users", 500),
        "groups" => ("groups", 200),
        _ => return google_error(404, "notFound", "Not Found", None),
    };
    match (param(&q, "customer"), param(&q, "domain")) {
        (None, None) => return google_error(400, "badRequest", "Bad Request", None),
        (Some(c), _) if c != "my_customer" && c != s.customer_id => {
            return google_error(400, "badRequest", "Bad Request", None);
        }
        _ => {}
    }
    let page_size = match param(&q, "maxResults").map(|m| m.parse::<i64>()) {
        None => {
            if list == "users" {
                100
            } else {
                200
            }
        }
        Some(Ok(m)) if (1..=max).contains(&m) => m as usize,
        Some(_) => {
            let m = param(&q, "maxResults").unwrap_or("");
            return google_error(
                400,
                "invalid",
                &format!("Invalid value '{m}'. Values must be within the range: [1, {max}]"),
                None,
            );
        }
    };
    let offset = match param(&q, "pageToken") {
        None => 0,
        Some(t) => match decode_token(t).and_then(|v| v["o"].as_u64()) {
            Some(o) => o as usize,
            None => return google_error(400, "invalid", "Invalid Input: pageToken", None),
        },
    };
    if let Some(f) = s.common.fault(&path, offset / page_size) {
        return fault_response(&f, false);
    }
    let all = if list == "users" { &s.users } else { &s.groups };
    let page: Vec<Value> = all.iter().skip(offset).take(page_size).cloned().collect();
    let fields = param(&q, "fields");
    let mut body = serde_json::Map::new();
    if fields.is_none() {
        body.insert("kind".into(), json!(format!("admin#directory#{list}")));
        body.insert(
            "etag".into(),
            json!("\"nKI_a_ATnDsFhb0dhyn8Z4Jq6o7aHRNQgW412tKbwJQ/zZ2LrEFgJQnWzrxu3Sx2yQ8ZbXk\""),
        );
    }
    if !page.is_empty() {
        body.insert(list.into(), json!(partial(&page, fields, list)));
    }
    if offset + page_size < all.len() {
        body.insert("nextPageToken".into(), json!(encode_token(&json!({"o": offset + page_size}))));
    }
    json_response(200, Value::Object(body), None)
}

fn google_token(s: &mut GoogleState, headers: &HeaderMap, body: &[u8]) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error(400, "unsupported_grant_type", "Invalid grant_type: ");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(400, "invalid_request", "Missing required parameter: assertion");
    };
    let (header, claims) = match verify_jwt(assertion, &s.public_der) {
        Ok(x) => x,
        Err(_) => return oauth_error(400, "invalid_grant", "Invalid JWT Signature."),
    };
    if header["alg"] != "RS256" {
        return oauth_error(400, "invalid_grant", "Invalid JWT: unsupported algorithm.");
    }
    let aud = format!("http://{}/token", host(headers));
    let (iat, exp, t) = (claims["iat"].as_u64().unwrap_or(0), claims["exp"].as_u64().unwrap_or(0), now());
    if exp <= iat || exp - iat > 3600 || iat > t + 60 || exp < t {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    if claims["aud"].as_str() != Some(aud.as_str()) {
        return oauth_error(400, "invalid_grant", "Invalid JWT: Failed audience check.");
    }
    if claims["iss"].as_str() != Some(s.client_email.as_str()) {
        return oauth_error(401, "invalid_client", "The OAuth client was not found.");
    }
    let scopes: Vec<&str> = claims["scope"].as_str().unwrap_or("").split(' ').filter(|x| !x.is_empty()).collect();
    if scopes.is_empty() || scopes.iter().any(|sc| !s.granted_scopes.iter().any(|g| g == sc)) {
        return oauth_error(
            401,
            "unauthorized_client",
            "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
        );
    }
    let sub = claims["sub"].as_str().unwrap_or("");
    if !s.admins.iter().any(|a| a == sub) {
        return oauth_error(400, "invalid_grant", "Invalid email or User ID");
    }
    let (token, life) = s.common.issue("ya29.fake");
    json_response(200, json!({"access_token": token, "expires_in": life, "token_type": "Bearer"}), None)
}

/// A Workspace with suspended/archived users, routing aliases, alias domains,
/// external `emails` and mixed case. Returns the exact recipient set.
pub fn google_traps(s: &mut GoogleState) -> Vec<&'static str> {
    s.domains = vec![
        json!({"kind": "admin#directory#domain", "etag": "\"d1\"", "domainName": "example.com", "isPrimary": true, "verified": true, "creationTime": "1719368808000",
            "domainAliases": [
                {"kind": "admin#directory#domainAlias", "domainAliasName": "example-alias.com", "parentDomainName": "example.com", "verified": true, "creationTime": "1719369000000", "etag": "\"a1\""},
                {"kind": "admin#directory#domainAlias", "domainAliasName": "unverified-alias.com", "parentDomainName": "example.com", "verified": false, "creationTime": "1719369000000", "etag": "\"a2\""}]}),
        json!({"kind": "admin#directory#domain", "etag": "\"d2\"", "domainName": "example.org", "isPrimary": false, "verified": true, "creationTime": "1719370000000"}),
        json!({"kind": "admin#directory#domain", "etag": "\"d3\"", "domainName": "pending.example.net", "isPrimary": false, "verified": false, "creationTime": "1719370000000"}),
    ];
    let user = |id: &str, primary: &str, extra: Value| {
        let mut u = json!({"kind": "admin#directory#user", "id": id, "etag": "\"u\"", "primaryEmail": primary, "suspended": false, "archived": false,
            "isMailboxSetup": true, "customerId": "C01i1u61m", "orgUnitPath": "/"});
        for (k, v) in extra.as_object().unwrap() {
            u[k] = v.clone();
        }
        u
    };
    s.users = vec![
        user(
            "1",
            "Liz@Example.com",
            json!({"aliases": ["Sales@example.com"], "nonEditableAliases": ["liz@example-alias.com", "liz@example.com.test-google-a.com"],
            "emails": [{"address": "liz.personal@gmail.com", "type": "home"}, {"address": "liz@example.com", "primary": true}]}),
        ),
        user(
            "2",
            "former.employee@example.com",
            json!({"suspended": true, "suspensionReason": "ADMIN", "aliases": ["former@example.com"], "orgUnitPath": "/Leavers"}),
        ),
        user("3", "archived.user@example.org", json!({"archived": true})),
        user("4", "bob@example.org", json!({"aliases": ["bob@unverified-alias.com", "bob@pending.example.net"]})),
        user("5", "admin@example.com", json!({})),
    ];
    s.groups = vec![
        json!({"kind": "admin#directory#group", "id": "00z337ya1mm5j0v", "etag": "\"g\"", "email": "sales-team@example.com", "name": "Sales Team",
            "directMembersCount": "12", "description": "", "adminCreated": true, "aliases": ["Sales-All@example.com"],
            "nonEditableAliases": ["sales-team@example-alias.com", "sales-team@example.com.test-google-a.com"]}),
        json!({"kind": "admin#directory#group", "id": "01", "etag": "\"g\"", "email": "announce@example.org", "name": "Announce", "directMembersCount": "0", "adminCreated": true}),
    ];
    vec![
        "admin@example.com",
        "announce@example.org",
        "bob@example.org",
        "liz@example-alias.com",
        "liz@example.com",
        "sales-all@example.com",
        "sales-team@example-alias.com",
        "sales-team@example.com",
        "sales@example.com",
    ]
}

/// `n` users and `g` groups in one verified domain.
pub fn google_bulk(s: &mut GoogleState, n: usize, g: usize) {
    s.domains = vec![
        json!({"kind": "admin#directory#domain", "domainName": "bulk.example", "isPrimary": true, "verified": true, "creationTime": "1719368808000"}),
    ];
    s.users = (0..n)
        .map(|i| json!({"kind": "admin#directory#user", "id": format!("{i}"), "etag": "\"u\"", "primaryEmail": format!("user{i}@bulk.example"),
            "aliases": [format!("u.{i}@bulk.example")], "nonEditableAliases": [format!("user{i}@bulk.example.test-google-a.com")], "suspended": false, "archived": false}))
        .collect();
    s.groups = (0..g)
        .map(|i| json!({"kind": "admin#directory#group", "id": format!("g{i}"), "email": format!("group{i}@bulk.example"), "directMembersCount": "3"}))
        .collect();
}
