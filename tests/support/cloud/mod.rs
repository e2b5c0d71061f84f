//! In-process fakes of Microsoft Graph (with the v2.0 token endpoint) and of the
//! Google Admin SDK Directory API (with Google's token endpoint), built from the
//! documented shapes: absolute nextLinks with opaque skiptokens, `$select`
//! honoured, `$top` > 999 refused, delta rounds with `@removed`, Google's
//! `fields` partial responses and legacy error envelope, tokens that expire,
//! and JWT assertions whose signatures are really verified.
//!
//! Each fake is an axum server on 127.0.0.1 in its own thread and runtime,
//! stopped on drop. Tests change data and inject faults through `state()`.
//!
//! `graph` and `google` hold one fake each; this module holds what both share
//! (the server, TLS, faults, keys, JWT checks, counters).

pub mod google;
pub mod graph;

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
    /// `Location` header (a redirect).
    pub location: Option<String>,
}

impl Fault {
    pub fn new(path: &str, page: usize, status: u16, times: usize) -> Fault {
        Fault { path: path.into(), page, status, retry_after: None, body: None, times, location: None }
    }
    pub fn retry_after(mut self, v: &str) -> Fault {
        self.retry_after = Some(v.into());
        self
    }
    pub fn location(mut self, url: &str) -> Fault {
        self.location = Some(url.into());
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

/// Both fakes' state: what every request touches.
pub(crate) trait HasCommon {
    fn common(&mut self) -> &mut Common;
}

/// Logs a request and waits the added latency (without holding the lock).
pub(crate) async fn arrive<S: HasCommon>(st: &Mutex<S>, method: &Method, uri: &Uri) {
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

pub(crate) fn fault_response(f: &Fault, graph: bool) -> Response {
    if let Some(to) = &f.location {
        let mut r = StatusCode::from_u16(f.status).unwrap().into_response();
        r.headers_mut().insert("location", to.parse().unwrap());
        return r;
    }
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
        graph::graph_error(f.status, code, "Injected fault.", f.retry_after.as_deref())
    } else {
        google::google_error(
            f.status,
            if f.status == 403 { "rateLimitExceeded" } else { "backendError" },
            "Injected fault.",
            f.retry_after.as_deref(),
        )
    }
}
