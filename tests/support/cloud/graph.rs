//! The Microsoft Graph fake (with the Microsoft identity platform's v2.0 token
//! endpoint): absolute nextLinks with opaque skiptokens, `$select` honoured,
//! `$top` > 999 refused, delta rounds with `@removed`, tokens that expire.

use super::*;

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
    /// A broken server: every users page links to yet another (distinct) page.
    pub endless: bool,
    /// What `$batch` members reading `allowExternalSenders` answer instead of
    /// the value (an app-only token refused it): status, code, message.
    pub external_refusal: Option<(u16, &'static str, &'static str)>,
    /// This many `$batch` members are answered 429 (Retry-After 1) first.
    pub batch_throttle: usize,
    /// Group lookups answered (members with a value).
    pub lookups: usize,
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
            endless: false,
            external_refusal: None,
            batch_throttle: 0,
            lookups: 0,
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

pub(crate) fn graph_error(status: u16, code: &str, message: &str, retry_after: Option<&str>) -> Response {
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

impl HasCommon for GraphState {
    fn common(&mut self) -> &mut Common {
        &mut self.common
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
    if rest == "$batch" && method == Method::POST {
        return graph_batch(s, &body).into();
    }
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
    let more = live.next().is_some() || (s.endless && collection == "users");
    let last = page.last().map(|(id, _)| id.clone()).or_else(|| after.clone()).or(Some(String::new()));
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

/// JSON batching: members `GET /groups/{id}?$select=...` only (what rcptsync
/// sends), answered in reverse order as Graph may; more than 20 is refused.
fn graph_batch(s: &mut GraphState, body: &[u8]) -> Response {
    if let Some(f) = s.common.fault("/v1.0/$batch", 0) {
        return fault_response(&f, true);
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return graph_error(400, "BadRequest", "Invalid batch payload format.", None);
    };
    let members = req["requests"].as_array().cloned().unwrap_or_default();
    if members.len() > 20 {
        return graph_error(400, "BadRequest", "The number of batch requests exceeds the limit of 20.", None);
    }
    let mut responses = Vec::new();
    for m in members.iter().rev() {
        let id = m["id"].clone();
        let url = m["url"].as_str().unwrap_or("");
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let group = path.strip_prefix("/groups/").unwrap_or("");
        let answer = if m["method"] != "GET" || group.is_empty() || group.contains('/') {
            json!({"id": id, "status": 400, "body": {"error": {"code": "BadRequest", "message": "Unsupported member."}}})
        } else if s.batch_throttle > 0 {
            s.batch_throttle -= 1;
            json!({"id": id, "status": 429, "headers": {"Retry-After": "1"},
                "body": {"error": {"code": "TooManyRequests", "message": "Too many requests."}}})
        } else if let Some((status, code, message)) = s.external_refusal {
            json!({"id": id, "status": status, "body": {"error": {"code": code, "message": message}}})
        } else {
            match s.coll("groups").objects.get(group).and_then(|(_, o)| o.clone()) {
                None => json!({"id": id, "status": 404, "body": {"error": {"code": "Request_ResourceNotFound",
                    "message": format!("Resource '{group}' does not exist or one of its queried reference-property objects are not present.")}}}),
                Some(o) => {
                    s.lookups += 1;
                    let select = query.strip_prefix("$select=").unwrap_or("");
                    let mut b = serde_json::Map::new();
                    for p in select.split(',') {
                        let v = match p {
                            // Graph's default for a new Microsoft 365 group.
                            "allowExternalSenders" => o.get(p).cloned().unwrap_or(json!(false)),
                            _ => o.get(p).cloned().unwrap_or(Value::Null),
                        };
                        b.insert(p.to_string(), v);
                    }
                    json!({"id": id, "status": 200, "headers": {"Content-Type": "application/json"}, "body": b})
                }
            }
        };
        responses.push(answer);
    }
    json_response(200, json!({ "responses": responses }), None)
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
        "proxyAddresses": ["smtp:golfassist@contoso.onmicrosoft.com", "SMTP:golfassist@contoso.com"], "securityEnabled": false, "allowExternalSenders": true}));
    // A Microsoft 365 group with Graph's default allowExternalSenders = false:
    // Exchange Online refuses outside mail to it (Graph group resource docs).
    s.put("groups", json!({"id": "g6", "displayName": "Project Team", "groupTypes": ["Unified"], "mail": "project@contoso.com", "mailEnabled": true,
        "proxyAddresses": ["SMTP:project@contoso.com", "smtp:project@contoso.onmicrosoft.com"], "securityEnabled": false}));
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
        "adele.vance@contoso.com",
        "adelev@contoso.com",
        "golfassist@contoso.com",
        "golftalk@contoso.com",
        "info@contoso.com",
        "info@sales.contoso.com",
        "partner-desk@contoso.com",
        "sg-mail@contoso.com",
    ]
}

/// `n` users, `g` mail-enabled groups (and as many security groups) and `c`
/// contacts. A quarter of the groups are Microsoft 365 groups, half of them
/// closed to outside senders.
pub fn graph_bulk(s: &mut GraphState, n: usize, g: usize, c: usize) {
    s.domains = vec![json!({"id": "bulk.example", "isVerified": true, "supportedServices": ["Email"]})];
    for i in 0..n {
        s.put("users", json!({"id": format!("u{i:07}"), "userPrincipalName": format!("user{i}@bulk.example"), "mail": format!("user{i}@bulk.example"),
            "proxyAddresses": [format!("SMTP:user{i}@bulk.example"), format!("smtp:u.{i}@bulk.example"), format!("SIP:user{i}@bulk.example")], "accountEnabled": true}));
    }
    for i in 0..g {
        // Every fourth is a Microsoft 365 group, half of those open to outside senders.
        let unified = i % 4 == 0;
        s.put("groups", json!({"id": format!("g{i:07}"), "displayName": format!("Group {i}"), "mail": format!("group{i}@bulk.example"), "mailEnabled": true,
            "groupTypes": if unified { json!(["Unified"]) } else { json!([]) }, "allowExternalSenders": i % 8 == 0,
            "proxyAddresses": [format!("SMTP:group{i}@bulk.example")]}));
        s.put("groups", json!({"id": format!("s{i:07}"), "displayName": format!("SG {i}"), "mail": null, "mailEnabled": false, "proxyAddresses": []}));
    }
    for i in 0..c {
        s.put("contacts", json!({"id": format!("c{i:07}"), "displayName": format!("Contact {i}"), "mail": format!("ext{i}@partner.example"),
            "proxyAddresses": [format!("SMTP:ext{i}@partner.example")]}));
    }
}
