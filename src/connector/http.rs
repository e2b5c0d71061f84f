//! The HTTP layer shared by the cloud connectors (Microsoft Graph, Google Admin
//! SDK): one reqwest client with timeouts and verified TLS, OAuth2 access tokens
//! cached until shortly before they expire, and a retry loop that honours
//! `Retry-After` and backs off with jitter.
//!
//! The rule that protects mail lives here: a request that still fails after
//! the bounded retries is an error of the whole source. Nothing in this module
//! returns "no more pages" for a page it could not read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::de::DeserializeOwned;

use super::SourceError;
use crate::secret::Secret;
use crate::section::Checker;

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Trust only these CA certificates (a private CA or a TLS-inspecting proxy);
    /// None = the system's trust store.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included.
    pub timeout: Duration,
    /// Retries of one request after throttling, 5xx or a broken connection.
    pub max_retries: u32,
}

impl HttpSettings {
    /// The settings with their defaults filled in.
    pub fn new(
        ca_file: &Option<PathBuf>,
        connect: Option<Duration>,
        timeout: Option<Duration>,
        retries: Option<u32>,
    ) -> HttpSettings {
        HttpSettings {
            ca_file: ca_file.clone(),
            connect_timeout: connect.unwrap_or(Duration::from_secs(10)),
            timeout: timeout.unwrap_or(Duration::from_secs(120)),
            max_retries: retries.unwrap_or(6),
        }
    }
}

/// Validates an endpoint URL key: `https://`; `http://` only with the lab
/// option `allow_insecure_http`, and then with a loud warning.
pub fn check_url(c: &mut Checker, at: &str, key: &str, url: &str, allow_insecure_http: bool) {
    if let Err(e) = endpoint_allowed(url, allow_insecure_http) {
        c.push(format!("{at}.{key}"), e);
    } else if url.starts_with("http://") {
        tracing::warn!(source = %at, key, url, "allow_insecure_http: plain http:// endpoint, tokens cross the network unencrypted (test labs only)");
    }
}

/// Whether a token or API endpoint may be used: HTTPS, or plain HTTP in a lab
/// that said so.
pub fn endpoint_allowed(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    if url.starts_with("https://") || (allow_insecure_http && url.starts_with("http://")) {
        return Ok(());
    }
    if url.starts_with("http://") {
        return Err(format!(
            "{url:?} is plain http://: credentials and tokens would cross the network unencrypted; use https:// \
             (a test lab can set allow_insecure_http = true)"
        ));
    }
    Err(format!("{url:?} must start with https://"))
}

/// Largest response body read. A page of 999 Graph users or 500 Google users
/// is 1–3 MB, so a bigger body is a broken or hostile server, not data; with
/// the concurrent page chains this bounds the memory a server can make us use.
pub const MAX_BODY: usize = 16 << 20;
/// Longest `Retry-After` honoured; a server asking for more is treated as down.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// First backoff step without `Retry-After` (doubles per retry, capped).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(32);

/// One HTTP client for one source.
#[derive(Debug)]
pub struct Http {
    client: reqwest::Client,
    max_retries: u32,
    requests: AtomicU64,
    /// Largest body read ([`MAX_BODY`] unless [`Http::with_max_body`]).
    max_body: usize,
}

/// No credentials: for public files such as a hub's signed bundle.
pub struct NoAuth;

impl TokenSource for NoAuth {
    fn token_request(&self) -> Result<TokenRequest, String> {
        Err("this request carries no credentials".into())
    }
    fn explain(&self, status: u16, _error: &str, _description: &str) -> String {
        format!("HTTP {status}")
    }
}

/// A response the retry loop let through: success, or an error the caller
/// must interpret (it knows what a 403 on its endpoint means).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
    /// Scheme, host and path of the request (no query): safe to print.
    pub what: String,
    /// The `Content-Type` header (a multipart answer names its boundary there).
    pub content_type: Option<String>,
    /// The validators for a later conditional GET (`ETag`, `Last-Modified`).
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Response {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// Decodes a successful JSON body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!("{} answered {} with a body that is not the expected JSON: {e}", self.what, self.status.as_u16())
        })
    }

    /// A short, printable excerpt of the body for error messages.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]);
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_string()
    }
}

/// A token endpoint and the form to post to it (holds secrets: never logged).
pub type TokenRequest = (String, Vec<(&'static str, String)>);

/// How the cloud connector obtains an access token.
pub trait TokenSource: Send + Sync {
    /// The token endpoint and the form to post to it. Built for every request
    /// (a signed assertion is valid for minutes only). The form holds secrets:
    /// it is never logged.
    fn token_request(&self) -> Result<TokenRequest, String>;
    /// Plain words for a refused token request (`error`, `error_description`).
    fn explain(&self, status: u16, error: &str, description: &str) -> String;
}

#[derive(Clone)]
struct Token {
    value: Secret,
    renew_at: Instant,
}

/// An access token cache in front of a [`TokenSource`]. Concurrent page chains
/// share one token; a token the API refused is renewed once, by whichever chain
/// notices first.
pub struct Auth<T: TokenSource> {
    pub source: T,
    cached: tokio::sync::Mutex<Option<Token>>,
}

impl<T: TokenSource> Auth<T> {
    pub fn new(source: T) -> Auth<T> {
        Auth { source, cached: tokio::sync::Mutex::new(None) }
    }

    /// A valid token: the cached one unless it is due for renewal or is `stale`
    /// (the one the API just refused).
    pub async fn token(&self, http: &Http, stale: Option<&Secret>) -> Result<Secret, String> {
        let mut cached = self.cached.lock().await;
        if let Some(t) = cached.as_ref()
            && t.renew_at > Instant::now()
            && stale.is_none_or(|s| s.expose() != t.value.expose())
        {
            return Ok(t.value.clone());
        }
        let (url, form) = self.source.token_request()?;
        let resp = http.send::<T>(|c| c.post(&url).form(&form), None).await?;
        #[derive(serde::Deserialize)]
        struct Ok {
            access_token: String,
            expires_in: Option<f64>,
        }
        #[derive(serde::Deserialize, Default)]
        struct Err {
            #[serde(default)]
            error: String,
            #[serde(default)]
            error_description: String,
        }
        if !resp.ok() {
            let e: Err = serde_json::from_slice(&resp.body).unwrap_or_default();
            if e.error.is_empty() {
                return Err(format!(
                    "token endpoint {} answered {}: {}",
                    resp.what,
                    resp.status.as_u16(),
                    resp.excerpt()
                ));
            }
            return Err(self.source.explain(resp.status.as_u16(), &e.error, &e.error_description));
        }
        let ok: Ok = resp.json()?;
        if ok.access_token.is_empty() {
            return Err(format!("token endpoint {} returned an empty access_token", resp.what));
        }
        // Renew a little before expiry so that a page request never carries a
        // token that expires in flight.
        let life = Duration::from_secs_f64(ok.expires_in.unwrap_or(3600.0).clamp(0.0, 86_400.0));
        let margin = (life / 10).min(Duration::from_secs(300));
        let token = Token { value: Secret::new(ok.access_token), renew_at: Instant::now() + life - margin };
        tracing::debug!(endpoint = %resp.what, expires_in = life.as_secs(), "access token obtained");
        *cached = Some(token.clone());
        Ok(token.value)
    }
}

impl Http {
    pub fn new(settings: &HttpSettings) -> Result<Http, SourceError> {
        let mut tls = super::tls::client_config(settings.ca_file.as_deref()).map_err(SourceError::new)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("rcptsync/", env!("CARGO_PKG_VERSION")))
            // A redirect would carry the bearer token (or the token request)
            // wherever the server points; the APIs never redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SourceError::new(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Http { client, max_retries: settings.max_retries, requests: AtomicU64::new(0), max_body: MAX_BODY })
    }

    /// The same client reading bodies up to `limit` bytes (a bundle holds the
    /// whole list, far more than an API page).
    pub fn with_max_body(mut self, limit: usize) -> Http {
        self.max_body = limit;
        self
    }

    /// GET without credentials, with extra request headers (e.g. the
    /// validators of a conditional GET); retried like every request. A 304 is
    /// returned to the caller as it is.
    pub async fn get_plain(
        &self,
        url: &str,
        headers: &[(reqwest::header::HeaderName, String)],
    ) -> Result<Response, String> {
        self.send(
            |c| {
                let mut r = c.get(url);
                for (k, v) in headers {
                    r = r.header(k.clone(), v.as_str());
                }
                r
            },
            None::<&Auth<NoAuth>>,
        )
        .await
    }

    /// HTTP requests sent so far (retries included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// GET `url` with a bearer token from `auth`, retrying as the module says.
    pub async fn get<T: TokenSource>(
        &self,
        url: &str,
        auth: &Auth<T>,
        headers: &[(&'static str, &'static str)],
    ) -> Result<Response, String> {
        self.send(
            |c| {
                let mut r = c.get(url).header("Accept", "application/json");
                for (k, v) in headers {
                    r = r.header(*k, *v);
                }
                r
            },
            Some(auth),
        )
        .await
    }

    /// POST `body` (of `content_type`) to `url` with a bearer token from
    /// `auth`, retrying as the module says: the batch endpoints (Graph's
    /// `$batch`, Google's multipart batches) answer the whole batch's throttling
    /// on the outer request.
    pub async fn post<T: TokenSource>(
        &self,
        url: &str,
        auth: &Auth<T>,
        content_type: &str,
        body: Bytes,
    ) -> Result<Response, String> {
        self.send(
            |c| {
                c.post(url)
                    .header("Accept", "application/json")
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(body.clone())
            },
            Some(auth),
        )
        .await
    }

    /// Sends the request `build` makes, retrying throttling (429, Google's 403
    /// rate-limit reasons), 5xx and broken connections up to `max_retries` times.
    /// With `auth`, adds a bearer token and renews it once after a 401.
    async fn send<T: TokenSource>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        auth: Option<&Auth<T>>,
    ) -> Result<Response, String> {
        let mut attempt = 0u32;
        let mut renewed = false;
        // The token the API refused (401), to be renewed past.
        let mut refused: Option<Secret> = None;
        let mut used: Option<Secret> = None;
        loop {
            let mut req = build(&self.client);
            if let Some(auth) = auth {
                // Boxed: obtaining a token sends a request itself.
                let token = Box::pin(auth.token(self, refused.as_ref())).await?;
                req = req.bearer_auth(token.expose());
                used = Some(token);
            }
            let req = req.build().map_err(|e| format!("cannot build request: {}", e.without_url()))?;
            let what = describe_url(req.url());
            self.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = match self.client.execute(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    let header = |name: reqwest::header::HeaderName| {
                        resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
                    };
                    let content_type = header(reqwest::header::CONTENT_TYPE);
                    let validators = (header(reqwest::header::ETAG), header(reqwest::header::LAST_MODIFIED));
                    match read_body(resp, self.max_body).await {
                        Ok(body) => Ok((status, retry_after, body, (content_type, validators))),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(describe_transport(&e)),
            };
            let (why, wait) = match outcome {
                Ok((status, retry_after, body, (content_type, (etag, last_modified)))) => {
                    let resp = Response { status, body, what: what.clone(), content_type, etag, last_modified };
                    if status == StatusCode::UNAUTHORIZED && auth.is_some() && !renewed {
                        // Expired or revoked mid-run: one new token, then the same request.
                        tracing::info!(url = %what, "access token refused (401); renewing it once");
                        renewed = true;
                        refused = used.take();
                        continue;
                    }
                    if !retryable(&resp) {
                        return Ok(resp);
                    }
                    (format!("{} {}", status.as_u16(), resp.excerpt()), retry_after)
                }
                Err(e) => (e, None),
            };
            if attempt >= self.max_retries {
                return Err(format!("{what}: giving up after {} attempts; last answer: {why}", attempt + 1));
            }
            let wait = match wait {
                Some(w) if w > MAX_RETRY_AFTER => {
                    return Err(format!("{what}: the server asks to retry after {} s; giving up", w.as_secs()));
                }
                Some(w) => w,
                None => backoff(attempt),
            };
            tracing::warn!(
                url = %what,
                attempt = attempt + 1,
                wait_ms = wait.as_millis() as u64,
                reason = %why,
                "request failed; retrying"
            );
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

/// Reads a body up to `limit` bytes. The chunks are kept as they arrive and
/// joined once at the end: growing one buffer by doubling would leave a trail
/// of freed blocks the allocator keeps, several times the body's size.
async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!(
            "response body of {} bytes exceeds the {} MiB limit",
            resp.content_length().unwrap_or(0),
            limit >> 20
        ));
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                total += chunk.len();
                if total > limit {
                    return Err(format!("response body exceeds the {} MiB limit", limit >> 20));
                }
                chunks.push(chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(describe_transport(&e)),
        }
    }
    if chunks.len() == 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut buf = bytes::BytesMut::with_capacity(total);
    for c in chunks {
        buf.extend_from_slice(&c);
    }
    Ok(buf.freeze())
}

/// Whether an answer is worth asking again: throttling, a server error, or
/// Google's rate-limit reasons on a 403.
fn retryable(resp: &Response) -> bool {
    let s = resp.status.as_u16();
    if s == 429 || (500..600).contains(&s) && s != 501 {
        return true;
    }
    s == 403 && ApiError::parse(&resp.body).throttled()
}

/// The error body of both APIs: Graph's `{"error": {"code": "…", "message":
/// "…"}}` and Google's `{"error": {"code": 403, "message": "…", "status":
/// "…", "errors": [{"reason": "…"}]}}`. Missing parts are empty.
#[derive(Debug, Default, PartialEq)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub status: String,
    pub reasons: Vec<String>,
}

impl ApiError {
    pub fn parse(body: &[u8]) -> ApiError {
        ApiError::from_value(&serde_json::from_slice(body).unwrap_or_default())
    }

    /// The same, from a body already decoded (a `$batch` member's).
    pub fn from_value(v: &serde_json::Value) -> ApiError {
        let e = &v["error"];
        let text = |x: &serde_json::Value| match x {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        ApiError {
            code: text(&e["code"]),
            message: text(&e["message"]),
            status: text(&e["status"]),
            reasons: e["errors"].as_array().map(|a| a.iter().map(|r| text(&r["reason"])).collect()).unwrap_or_default(),
        }
    }

    /// Google's first `reason`, or "".
    pub fn reason(&self) -> &str {
        self.reasons.first().map_or("", String::as_str)
    }

    /// Google's ways of saying "slow down" on a 403.
    pub fn throttled(&self) -> bool {
        self.status == "RESOURCE_EXHAUSTED"
            || self
                .reasons
                .iter()
                .any(|r| matches!(r.as_str(), "rateLimitExceeded" | "userRateLimitExceeded" | "quotaExceeded"))
    }
}

/// `Retry-After` in (possibly fractional) seconds. An HTTP-date is rare from
/// these APIs and falls back to the backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v: &HeaderValue = headers.get(RETRY_AFTER)?;
    let secs: f64 = v.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e6)))
}

/// How long to wait before asking again for the members of a batch the
/// service throttled: their largest `Retry-After` in seconds (capped at the
/// longest honoured), else the backoff for `attempt`.
pub fn member_wait(retry_after: Option<f64>, attempt: u32) -> Duration {
    match retry_after {
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s).min(MAX_RETRY_AFTER),
        _ => backoff(attempt),
    }
}

/// Exponential backoff with jitter: a random point in the upper half of
/// `base · 2^attempt`, capped.
fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE.saturating_mul(1u32 << attempt.min(10)).min(BACKOFF_MAX);
    let half = full / 2;
    half + half.mul_f64(jitter_fraction())
}

/// A number in [0, 1) that differs between processes and calls, for spreading
/// retries and scheduled ticks; not for crypto.
pub fn jitter_fraction() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    (xxhash_rust::xxh3::xxh3_64(&seed.to_le_bytes()) >> 11) as f64 / (1u64 << 53) as f64
}

/// Scheme, host and path of a URL: printable (no query, so no opaque tokens).
fn describe_url(url: &reqwest::Url) -> String {
    match url.port() {
        Some(port) => format!("{}://{}:{port}{}", url.scheme(), url.host_str().unwrap_or(""), url.path()),
        None => format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or(""), url.path()),
    }
}

fn describe_transport(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading the body".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = e.source();
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    if text.contains("UnknownIssuer") || text.contains("invalid peer certificate") {
        text.push_str(" (the server's certificate is not trusted: set ca_file to the CA that issued it)");
    }
    text
}

/// Most pages one chain may have: 20,000 pages of 500–999 objects is tens of
/// millions, far past any directory; a chain that long is a server that never
/// says "last page".
pub const MAX_PAGES: usize = 20_000;

/// Follows a chain of pages, for Graph (`@odata.nextLink`) and Google
/// (`nextPageToken`) alike. `first` is the first page; `next` reads a page's
/// continuation (a link or a token; None on the last page); `request` fetches
/// the page a continuation names; `decode` takes each page's objects. The next
/// page is requested as soon as its continuation is known, and this page is
/// decoded while that request travels.
///
/// The one loop protection: every continuation seen in the chain (and `start`,
/// the first page's own link) is remembered, and a repeat fails the chain, as
/// does a chain of more than [`MAX_PAGES`] pages. Returns the last page.
pub async fn follow<Fut, E: From<String>>(
    what: &str,
    start: Option<String>,
    first: Response,
    mut next: impl FnMut(&Response) -> Result<Option<String>, E>,
    request: impl Fn(String) -> Fut,
    mut decode: impl FnMut(&Response) -> Result<(), E>,
) -> Result<Response, E>
where
    Fut: std::future::Future<Output = Result<Response, E>>,
{
    let mut seen: std::collections::HashSet<String> = start.into_iter().collect();
    let mut resp = first;
    loop {
        let Some(continuation) = next(&resp)?.filter(|c| !c.is_empty()) else {
            decode(&resp)?;
            return Ok(resp);
        };
        if seen.len() >= MAX_PAGES {
            return Err(
                format!("{what}: more than {MAX_PAGES} pages; the server never says which page is the last").into()
            );
        }
        if !seen.insert(continuation.clone()) {
            return Err(format!("{what}: the server returned the same page link or token twice").into());
        }
        // The yield lets the connection task write the request before the
        // decoding occupies this worker.
        let (fetched, decoded) = tokio::join!(request(continuation), async {
            tokio::task::yield_now().await;
            decode(&resp)
        });
        decoded?;
        resp = fetched?;
    }
}

#[cfg(test)]
mod tests {

    /// A page as a fake server would send it: `{"items": [...], "next": ...}`.
    fn page(items: &[&str], next: Option<&str>) -> Response {
        let body = serde_json::json!({ "items": items, "next": next });
        Response {
            status: StatusCode::OK,
            body: Bytes::from(body.to_string()),
            what: "test".into(),
            content_type: None,
            etag: None,
            last_modified: None,
        }
    }

    async fn walk(pages: Vec<(&'static str, Response)>, first: Response) -> Result<Vec<String>, String> {
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<String>,
            next: Option<String>,
        }
        let pages = std::sync::Mutex::new(pages.into_iter().collect::<std::collections::HashMap<_, _>>());
        let mut got = Vec::new();
        follow(
            "users",
            Some("start".into()),
            first,
            |r| Ok(r.json::<Page>()?.next),
            |c| {
                let r = pages.lock().unwrap().remove(c.as_str()).ok_or(format!("no page {c}"));
                async move { r }
            },
            |r| {
                got.extend(r.json::<Page>()?.items);
                Ok(())
            },
        )
        .await?;
        Ok(got)
    }

    #[tokio::test]
    async fn a_chain_is_followed_to_its_last_page_in_order() {
        let got = walk(vec![("b", page(&["3"], Some("c"))), ("c", page(&["4"], None))], page(&["1", "2"], Some("b")))
            .await
            .unwrap();
        assert_eq!(got, ["1", "2", "3", "4"]);
    }

    #[tokio::test]
    async fn any_repeated_link_fails_the_chain() {
        // a -> b -> c -> a: not the previous link, but seen before.
        let pages =
            vec![("a", page(&["1"], Some("b"))), ("b", page(&["2"], Some("c"))), ("c", page(&["3"], Some("a")))];
        let e = walk(pages, page(&["0"], Some("a"))).await.unwrap_err();
        assert!(e.contains("users: the server returned the same page link or token twice"), "{e}");
        // The first page's own link counts too.
        let e = walk(vec![], page(&["0"], Some("start"))).await.unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[tokio::test]
    async fn a_chain_of_endless_distinct_links_stops_at_the_page_cap() {
        let n = std::sync::atomic::AtomicUsize::new(0);
        let e: String = follow(
            "users",
            None,
            page(&[], Some("0")),
            |r| Ok(r.json::<serde_json::Value>()?["next"].as_str().map(str::to_string)),
            |_| {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                async move { Ok(page(&[], Some(&i.to_string()))) }
            },
            |_| Ok(()),
        )
        .await
        .unwrap_err();
        assert!(e.contains(&format!("more than {MAX_PAGES} pages")), "{e}");
    }

    #[tokio::test]
    async fn a_failed_page_fails_the_chain() {
        let e = walk(vec![], page(&["0"], Some("gone"))).await.unwrap_err();
        assert_eq!(e, "no page gone");
    }
    use super::*;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status: StatusCode::from_u16(status).unwrap(),
            body: Bytes::from(body.to_string()),
            what: "x".into(),
            content_type: None,
            etag: None,
            last_modified: None,
        }
    }

    #[test]
    fn retry_classification_follows_the_documented_rules() {
        assert!(retryable(&resp(429, "")));
        assert!(retryable(&resp(503, "")));
        assert!(retryable(&resp(500, "")));
        assert!(!retryable(&resp(501, "")), "501 is a query Graph cannot answer, not an outage");
        assert!(!retryable(&resp(400, "")));
        assert!(!retryable(&resp(404, "")));
        let rate = r#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"m"}],"code":403,"message":"m"}}"#;
        assert!(retryable(&resp(403, rate)));
        let quota = r#"{"error":{"errors":[{"reason":"quotaExceeded"}],"code":403,"message":"m"}}"#;
        assert!(retryable(&resp(403, quota)));
        let denied = r#"{"error":{"errors":[{"domain":"global","reason":"forbidden","message":"Not Authorized to access this resource/api"}],"code":403,"message":"Not Authorized to access this resource/api"}}"#;
        assert!(!retryable(&resp(403, denied)));
        let graph = r#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges to complete the operation."}}"#;
        assert!(!retryable(&resp(403, graph)));
    }

    #[test]
    fn retry_after_accepts_integer_and_fractional_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("10"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(10)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.249"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(249)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..12 {
            let full = BACKOFF_BASE.saturating_mul(1 << attempt.min(10)).min(BACKOFF_MAX);
            for _ in 0..20 {
                let d = backoff(attempt);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
        let spread: std::collections::HashSet<u128> = (0..50).map(|_| backoff(3).as_micros()).collect();
        assert!(spread.len() > 10, "jitter must vary: {spread:?}");
    }

    #[test]
    fn printed_urls_carry_no_query() {
        let u = reqwest::Url::parse("https://graph.microsoft.com/v1.0/users?$skiptoken=SECRETISH&$top=999").unwrap();
        assert_eq!(describe_url(&u), "https://graph.microsoft.com/v1.0/users");
    }
}
