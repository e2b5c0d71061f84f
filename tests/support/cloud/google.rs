//! The Google Admin SDK Directory API fake (with Google's token endpoint):
//! `fields` partial responses, page tokens, the legacy error envelope, and JWT
//! assertions whose signatures are really verified.

use super::*;

impl HasCommon for GoogleState {
    fn common(&mut self) -> &mut Common {
        &mut self.common
    }
}

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
    /// Groups Settings by lowercased group address; a group without an entry
    /// answers ANYONE_CAN_POST.
    pub group_settings: HashMap<String, Value>,
    /// The Groups Settings API is not enabled in the project.
    pub settings_disabled: bool,
    /// This many settings lookups are answered 403 userRateLimitExceeded first.
    pub settings_throttle: usize,
    /// Time spent answering settings batches.
    pub settings_busy: Duration,
    /// Lowercased group addresses, rebuilt when the number of groups changes.
    group_index: (usize, std::collections::HashSet<String>),
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
/// The Groups Settings API's scope (granted by default too).
pub const SETTINGS_SCOPE: &str = "https://www.googleapis.com/auth/apps.groups.settings";

impl FakeGoogle {
    pub fn start(client_email: &str, key: &KeyPair) -> FakeGoogle {
        let state = Arc::new(Mutex::new(GoogleState {
            common: Common::default(),
            client_email: client_email.into(),
            public_der: key.public_der.clone(),
            granted_scopes: GOOGLE_SCOPES.iter().chain([&SETTINGS_SCOPE]).map(|s| s.to_string()).collect(),
            admins: vec!["admin@example.com".into()],
            customer_id: "C01i1u61m".into(),
            users: Vec::new(),
            groups: Vec::new(),
            domains: Vec::new(),
            group_settings: HashMap::new(),
            settings_disabled: false,
            settings_throttle: 0,
            group_index: (usize::MAX, Default::default()),
            settings_busy: Duration::ZERO,
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
    let settings = uri.path().starts_with("/batch/");
    let mut s = st.lock().unwrap();
    let started = Instant::now();
    let r = google_route(&mut s, method, uri, headers, body);
    s.common.busy += started.elapsed();
    if settings {
        s.settings_busy += started.elapsed();
    }
    r
}

fn google_route(s: &mut GoogleState, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    if method == Method::POST && path == "/token" {
        return google_token(s, &headers, &body);
    }
    if !s.common.token_ok(&headers) {
        return json_response(
            401,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError", "location": "Authorization", "locationType": "header"}], "status": "UNAUTHENTICATED"}}),
            None,
        );
    }
    if method == Method::POST && path == "/batch/groupssettings/v1" {
        return settings_batch(s, &headers, &body);
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
    // A token carries its scope set in its prefix, for the settings API to check.
    let prefix = if scopes.contains(&SETTINGS_SCOPE) { "ya29.settings" } else { "ya29.fake" };
    let (token, life) = s.common.issue(prefix);
    json_response(200, json!({"access_token": token, "expires_in": life, "token_type": "Bearer"}), None)
}

/// The Groups Settings API's multipart batch endpoint: each part
/// `GET /groups/v1/groups/{email}?alt=json...`, answered as Google does
/// (`Content-ID: <response-...>`, an HTTP response per part).
fn settings_batch(s: &mut GoogleState, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(f) = s.common.fault("/batch/groupssettings/v1", 0) {
        return fault_response(&f, false);
    }
    if !bearer(headers).is_some_and(|t| t.starts_with("ya29.settings")) {
        return json_response(
            403,
            json!({"error": {"code": 403, "message": "Request had insufficient authentication scopes.", "errors": [{"message": "Insufficient Permission", "domain": "global", "reason": "insufficientPermissions"}], "status": "PERMISSION_DENIED"}}),
            None,
        );
    }
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(boundary) = ct.split("boundary=").nth(1).map(|b| b.trim_matches('"').to_string()) else {
        return google_error(400, "badRequest", "Bad Request", None);
    };
    if s.group_index.0 != s.groups.len() {
        let index = s.groups.iter().filter_map(|g| g["email"].as_str()).map(str::to_ascii_lowercase).collect();
        s.group_index = (s.groups.len(), index);
    }
    let text = String::from_utf8_lossy(body).to_string();
    let mut out = String::new();
    let parts: Vec<&str> = text.split(&format!("--{boundary}")).skip(1).filter(|p| !p.starts_with("--")).collect();
    if parts.len() > 1000 {
        return google_error(400, "badRequest", "A batch request cannot contain more than 1000 requests", None);
    }
    for part in parts {
        let cid = part
            .lines()
            .find_map(|l| l.strip_prefix("Content-ID: "))
            .map(|v| v.trim().trim_matches(['<', '>']).to_string())
            .unwrap_or_default();
        let line = part.lines().find(|l| l.starts_with("GET ")).unwrap_or("");
        let target = line.split_whitespace().nth(1).unwrap_or("");
        let path = target.split('?').next().unwrap_or("");
        let (status, extra, answer) = match path.strip_prefix("/groups/v1/groups/") {
            None => (
                400,
                "",
                json!({"error": {"code": 400, "message": "Bad Request", "errors": [{"reason": "badRequest"}]}}),
            ),
            Some(enc) => {
                let email: Vec<(String, String)> = serde_urlencoded::from_str(&format!("e={enc}")).unwrap_or_default();
                let email = email.first().map(|(_, v)| v.to_ascii_lowercase()).unwrap_or_default();
                if !target.contains("alt=json") {
                    // Without alt=json the API answers Atom XML.
                    (200, "", json!("<?xml version='1.0'?><entry/>"))
                } else if s.settings_disabled {
                    (
                        403,
                        "",
                        json!({"error": {"code": 403, "message": "Groups Settings API has not been used in project 123456789 before or it is disabled. Enable it by visiting https://console.developers.google.com/apis/api/groupssettings.googleapis.com/overview?project=123456789 then retry.", "errors": [{"message": "Groups Settings API has not been used in project 123456789 before or it is disabled.", "domain": "usageLimits", "reason": "accessNotConfigured", "extendedHelp": "https://console.developers.google.com"}], "status": "PERMISSION_DENIED"}}),
                    )
                } else if s.settings_throttle > 0 {
                    s.settings_throttle -= 1;
                    (
                        403,
                        "Retry-After: 1\r\n",
                        json!({"error": {"code": 403, "message": "Rate Limit Exceeded", "errors": [{"message": "Rate Limit Exceeded", "domain": "usageLimits", "reason": "userRateLimitExceeded"}]}}),
                    )
                } else if !s.group_index.1.contains(&email) {
                    (
                        404,
                        "",
                        json!({"error": {"code": 404, "message": "Resource Not Found: groupUniqueId", "errors": [{"reason": "notFound"}]}}),
                    )
                } else {
                    let set = s.group_settings.get(&email).cloned().unwrap_or_else(|| json!({}));
                    (
                        200,
                        "",
                        json!({
                            "whoCanPostMessage": set.get("whoCanPostMessage").cloned().unwrap_or(json!("ANYONE_CAN_POST")),
                            "allowExternalMembers": set.get("allowExternalMembers").cloned().unwrap_or(json!("false")),
                        }),
                    )
                }
            }
        };
        let payload = match &answer {
            Value::String(x) => x.clone(),
            v => v.to_string(),
        };
        out.push_str(&format!(
            "--batch_fake\r\nContent-Type: application/http\r\nContent-ID: <response-{cid}>\r\n\r\nHTTP/1.1 {status} X\r\nContent-Type: application/json; charset=UTF-8\r\n{extra}\r\n{payload}\r\n"
        ));
    }
    out.push_str("--batch_fake--\r\n");
    (StatusCode::OK, [("content-type", "multipart/mixed; boundary=batch_fake")], out).into_response()
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
        // Posting settings (Groups Settings API, whoCanPostMessage): a group
        // only the domain may post to, one nobody may post to, and a
        // members-only group with outside members (their posts come from the internet).
        json!({"kind": "admin#directory#group", "id": "02", "email": "staff@example.com", "name": "Staff", "aliases": ["all-staff@example.com"]}),
        json!({"kind": "admin#directory#group", "id": "03", "email": "noreply-list@example.org", "name": "Closed"}),
        json!({"kind": "admin#directory#group", "id": "04", "email": "board@example.com", "name": "Board"}),
    ];
    s.group_settings = [
        ("staff@example.com", json!({"whoCanPostMessage": "ALL_IN_DOMAIN_CAN_POST", "allowExternalMembers": "false"})),
        ("noreply-list@example.org", json!({"whoCanPostMessage": "NONE_CAN_POST"})),
        ("board@example.com", json!({"whoCanPostMessage": "ALL_MEMBERS_CAN_POST", "allowExternalMembers": "true"})),
        ("sales-team@example.com", json!({"whoCanPostMessage": "ANYONE_CAN_POST"})),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    vec![
        "admin@example.com",
        "announce@example.org",
        "board@example.com",
        "bob@example.org",
        "liz@example-alias.com",
        "liz@example.com",
        "sales-all@example.com",
        "sales-team@example-alias.com",
        "sales-team@example.com",
        "sales@example.com",
    ]
}

/// `n` users and `g` groups in one verified domain; a quarter of the groups
/// are closed to outside posts.
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
    // Every fourth group takes posts from the domain only.
    s.group_settings = (0..g)
        .step_by(4)
        .map(|i| (format!("group{i}@bulk.example"), json!({"whoCanPostMessage": "ALL_IN_DOMAIN_CAN_POST"})))
        .collect();
}
