//! Which Google groups take mail from the internet.
//!
//! Who may post to a group (`whoCanPostMessage`) is only in the Groups
//! Settings API (`GET {settings_api_url}/groups/v1/groups/{email}`, scope
//! `apps.groups.settings`), not in the Directory API's group list. A group
//! that only its domain, its members, its managers or nobody may post to
//! refuses mail from the internet, so the backup MX must refuse it too;
//! members-only groups that admit outside members (`allowExternalMembers`)
//! are kept, since an outside member's post arrives from the internet.
//!
//! The settings are read through the API's multipart batch endpoint
//! (`POST {settings_api_url}/batch/groupssettings/v1`, 100 calls per batch, a
//! few in flight) with a token of its own: domain-wide delegation may grant
//! the directory scopes without this one. A missing scope, a disabled API or
//! a failed batch never fails the source: the groups left unread are kept,
//! the run warns once, and `why` says so.

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;

use super::Session;
use crate::connector::lookup::{self, Lookup, Outcome};

/// Calls per batch (the API takes up to 1,000; smaller batches keep a retry small).
pub const PER_BATCH: usize = 100;
/// Batches in flight at once.
const IN_FLIGHT: usize = 4;
/// The scope the settings token asks for.
pub const SETTINGS_SCOPE: &str = "https://www.googleapis.com/auth/apps.groups.settings";

/// A group's posting settings, as the API spells them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Posting {
    #[serde(rename = "whoCanPostMessage", default)]
    pub who: String,
    /// The API's booleans are strings ("true" / "false").
    #[serde(rename = "allowExternalMembers", default)]
    pub external_members: String,
}

impl Posting {
    /// Ok(note for `why`) when mail from the internet reaches the group,
    /// Err(reason) when Google refuses it.
    pub fn verdict(&self) -> Result<String, String> {
        let external_members = self.external_members.eq_ignore_ascii_case("true");
        match self.who.as_str() {
            "ANYONE_CAN_POST" => Ok(" (whoCanPostMessage = ANYONE_CAN_POST)".into()),
            "ALL_MEMBERS_CAN_POST" | "ALL_MANAGERS_CAN_POST" | "ALL_OWNERS_CAN_POST" if external_members => {
                Ok(format!(
                    " (whoCanPostMessage = {}, allowExternalMembers = true: an outside member's post comes from the internet)",
                    self.who
                ))
            }
            who @ ("ALL_IN_DOMAIN_CAN_POST"
            | "ALL_MEMBERS_CAN_POST"
            | "ALL_MANAGERS_CAN_POST"
            | "ALL_OWNERS_CAN_POST"
            | "NONE_CAN_POST") => Err(format!(
                "is an address of a group with whoCanPostMessage = {who}: Google Groups refuses posts from outside the \
                 organisation (external_senders_allowed publishes it)"
            )),
            other => Ok(format!(
                " (whoCanPostMessage = {:?}, a value rcptsync does not know: kept)",
                other.escape_debug().to_string()
            )),
        }
    }
}

/// One part of a multipart answer: its Content-ID and the HTTP response inside.
#[derive(Debug, PartialEq)]
pub struct Part {
    pub content_id: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The boundary parameter of a `multipart/mixed` Content-Type.
fn boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"')).filter(|b| !b.is_empty())
    })
}

/// Splits `text` at its first blank line (CRLF or LF).
fn split_head(text: &str) -> (&str, &str) {
    match (text.find("\r\n\r\n"), text.find("\n\n")) {
        (Some(a), Some(b)) if b < a => (&text[..b], &text[b + 2..]),
        (Some(a), _) => (&text[..a], &text[a + 4..]),
        (None, Some(b)) => (&text[..b], &text[b + 2..]),
        (None, None) => (text, ""),
    }
}

fn header_lines(head: &str) -> impl Iterator<Item = (String, String)> + '_ {
    head.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
}

/// Parses a `multipart/mixed` batch answer into its parts.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let b = boundary(content_type)
        .ok_or_else(|| format!("a batch answer of type {content_type:?}, not multipart/mixed"))?;
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{b}");
    let mut parts = Vec::new();
    let mut chunks = text.split(delimiter.as_str());
    chunks.next(); // the preamble
    for chunk in chunks {
        if chunk.starts_with("--") {
            break; // the closing delimiter
        }
        let chunk = chunk.trim_start_matches(['\r', '\n']);
        let (part_head, http) = split_head(chunk);
        let content_id = header_lines(part_head)
            .find(|(k, _)| k == "content-id")
            .map(|(_, v)| v.trim_matches(['<', '>']).to_string())
            .unwrap_or_default();
        let (response_head, payload) = split_head(http);
        let mut lines = response_head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("batch part {content_id:?} holds no HTTP status line"))?;
        let headers =
            header_lines(&response_head[response_head.find('\n').map_or(response_head.len(), |i| i + 1)..]).collect();
        parts.push(Part { content_id, status, headers, body: payload.trim_end_matches(['\r', '\n']).to_string() });
    }
    Ok(parts)
}

/// What one part's answer means.
fn outcome(p: &Part) -> Outcome<Posting> {
    if p.status == 200 {
        return match serde_json::from_str::<Posting>(&p.body) {
            Ok(posting) if !posting.who.is_empty() => Outcome::Value(posting),
            Ok(_) => Outcome::Failed("the answer holds no whoCanPostMessage".into()),
            Err(e) => Outcome::Failed(format!("the answer is not the expected JSON: {e}")),
        };
    }
    let e = crate::connector::http::ApiError::parse(p.body.as_bytes());
    let text: String =
        format!("{} {}: {}", p.status, e.reason(), e.message).chars().filter(|c| !c.is_control()).take(300).collect();
    let throttled = e.throttled();
    match p.status {
        404 => Outcome::Gone,
        429 | 500 | 502..=504 => Outcome::Again(retry_after(p)),
        403 if throttled => Outcome::Again(retry_after(p)),
        401 | 403 => Outcome::Refused(text),
        _ => Outcome::Failed(text),
    }
}

fn retry_after(p: &Part) -> Option<f64> {
    p.headers.iter().find(|(k, _)| k == "retry-after").and_then(|(_, v)| v.parse().ok())
}

/// A random multipart boundary (never in a group address: they have no `=`).
fn new_boundary() -> String {
    format!("=_rcptsync_{}", crate::secure_fs::random_suffix())
}

impl Session {
    /// Reads the posting settings of the groups `emails`.
    pub(super) async fn postings(&self, emails: Vec<String>) -> Lookup<Posting> {
        // A token of its own: delegation may lack this scope, and that is a
        // refusal of the lookup, not a failure of the source.
        if let Err(why) = self.settings_auth.token(&self.http, None).await {
            return Lookup { values: HashMap::new(), refused: Some(why), failed: None };
        }
        lookup::run(emails, PER_BATCH, IN_FLIGHT, |batch| async move { self.settings_batch(&batch).await }).await
    }

    /// One batch: each group's outcome, or the whole batch's.
    async fn settings_batch(&self, emails: &[String]) -> Result<Vec<(String, Outcome<Posting>)>, Outcome<Posting>> {
        let b = new_boundary();
        let mut body = String::new();
        for (i, email) in emails.iter().enumerate() {
            // The address as one path segment, percent-encoded.
            let mut u =
                reqwest::Url::parse("https://x/groups/v1/groups/").map_err(|e| Outcome::Failed(e.to_string()))?;
            u.path_segments_mut().map_err(|_| Outcome::Failed("url".into()))?.pop_if_empty().push(email);
            body.push_str(&format!(
                "--{b}\r\nContent-Type: application/http\r\nContent-ID: <item{i}>\r\n\r\nGET {}?alt=json&fields=whoCanPostMessage,allowExternalMembers\r\nAccept: application/json\r\n\r\n",
                u.path()
            ));
        }
        body.push_str(&format!("--{b}--\r\n"));
        let url = format!("{}/batch/groupssettings/v1", self.settings_api);
        let r = self
            .http
            .post(&url, &self.settings_auth, &format!("multipart/mixed; boundary={b}"), Bytes::from(body))
            .await
            .map_err(Outcome::Failed)?;
        if matches!(r.status.as_u16(), 401 | 403) {
            return Err(Outcome::Refused(self.api_error(&r, "group settings")));
        }
        if !r.ok() {
            return Err(Outcome::Failed(self.api_error(&r, "group settings")));
        }
        let parts = parse_multipart(r.content_type.as_deref().unwrap_or(""), &r.body).map_err(Outcome::Failed)?;
        // Parts are named by the Content-IDs we gave (`<response-itemN>`).
        let answers = parts.iter().filter_map(|p| {
            let id = p.content_id.strip_prefix("response-").unwrap_or(&p.content_id);
            id.strip_prefix("item").and_then(|n| n.parse::<usize>().ok()).map(|i| (i, outcome(p)))
        });
        Ok(lookup::match_answers(emails, answers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "--batch_abc\r\nContent-Type: application/http\r\nContent-ID: <response-item1>\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n\
        {\"whoCanPostMessage\": \"ALL_IN_DOMAIN_CAN_POST\", \"allowExternalMembers\": \"false\"}\r\n\
        --batch_abc\r\nContent-Type: application/http\r\nContent-ID: <response-item0>\r\n\r\n\
        HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\n\r\n\
        {\"error\": {\"code\": 429, \"message\": \"Quota exceeded\", \"errors\": [{\"reason\": \"rateLimitExceeded\"}]}}\r\n\
        --batch_abc\nContent-Type: application/http\nContent-ID: <response-item2>\n\n\
        HTTP/1.1 403 Forbidden\n\n\
        {\"error\": {\"code\": 403, \"message\": \"Groups Settings API has not been used in project 1 before or it is disabled.\", \"errors\": [{\"reason\": \"accessNotConfigured\"}]}}\n\
        --batch_abc--\r\n";

    #[test]
    fn multipart_answers_are_split_into_their_http_responses() {
        let parts = parse_multipart("multipart/mixed; boundary=\"batch_abc\"", ANSWER.as_bytes()).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].content_id, "response-item1");
        assert_eq!(parts[0].status, 200);
        assert_eq!(
            outcome(&parts[0]),
            Outcome::Value(Posting { who: "ALL_IN_DOMAIN_CAN_POST".into(), external_members: "false".into() })
        );
        assert_eq!(outcome(&parts[1]), Outcome::Again(Some(3.0)));
        assert!(matches!(outcome(&parts[2]), Outcome::Refused(t) if t.contains("accessNotConfigured")));
        assert!(parse_multipart("application/json", b"{}").is_err());
        assert!(parse_multipart("multipart/mixed; boundary=x", b"--x\r\n\r\nnot http\r\n--x--").is_err());
    }

    #[test]
    fn only_groups_open_to_the_internet_take_outside_mail() {
        let p = |who: &str, ext: &str| Posting { who: who.into(), external_members: ext.into() };
        assert!(p("ANYONE_CAN_POST", "false").verdict().is_ok());
        assert!(p("ALL_MEMBERS_CAN_POST", "true").verdict().is_ok(), "an outside member may post");
        assert!(p("ALL_MEMBERS_CAN_POST", "false").verdict().is_err());
        assert!(p("ALL_IN_DOMAIN_CAN_POST", "true").verdict().is_err());
        assert!(p("NONE_CAN_POST", "true").verdict().is_err());
        let unknown = p("SOMETHING_NEW", "false").verdict().unwrap();
        assert!(unknown.contains("SOMETHING_NEW"), "{unknown}");
    }
}
