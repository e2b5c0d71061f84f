//! Which Microsoft 365 groups take mail from the internet.
//!
//! A Microsoft 365 (Unified) group with `allowExternalSenders = false`, the
//! default for new groups, refuses mail from outside the organisation, so the
//! backup MX must refuse it too. Graph returns the property only on
//! `GET /groups/{id}` with `$select`, never in list or delta pages, so it is
//! read per group through JSON batching (`POST /v1.0/$batch`, 20 requests per
//! batch, a few batches in flight) and kept in the delta state until the next
//! full pass or the group's next change.
//!
//! Graph may refuse the property to an app-only token. A refusal never fails
//! the source: the groups left unread are kept, the run warns once, and `why`
//! says so. So does a batch that fails after the retries.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::Session;
use crate::connector::lookup::{self, Lookup, Outcome};

/// Requests per `$batch` (Graph's documented limit).
pub const PER_BATCH: usize = 20;
/// Batches in flight at once.
const IN_FLIGHT: usize = 4;

/// One member of a `$batch` answer.
#[derive(Debug, Deserialize)]
struct Member {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, Value>,
    #[serde(default)]
    body: Value,
}

/// What one member's answer means.
fn outcome(m: &Member) -> Outcome<bool> {
    let error = || {
        let e = crate::connector::http::ApiError::from_value(&m.body);
        let text = format!("{} {}: {}", m.status, e.code, e.message);
        (e.code, e.message.to_ascii_lowercase(), text.chars().filter(|c| !c.is_control()).take(300).collect::<String>())
    };
    match m.status {
        200 => match m.body.get("allowExternalSenders").and_then(Value::as_bool) {
            Some(v) => Outcome::Value(v),
            None => Outcome::Refused("Graph answered GET /groups/{id} without an allowExternalSenders value".into()),
        },
        404 => Outcome::Gone,
        429 | 500 | 502..=504 => {
            let after = m
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())));
            Outcome::Again(after)
        }
        401 | 403 => Outcome::Refused(error().2),
        _ => {
            let (code, message, text) = error();
            if code.contains("AccessDenied") || message.contains("not supported") {
                Outcome::Refused(text)
            } else {
                Outcome::Failed(text)
            }
        }
    }
}

/// A group id Graph hands out (a GUID); anything else is not put in a URL.
fn plain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Session {
    /// Reads `allowExternalSenders` of the groups `ids`.
    pub(super) async fn external_senders(&self, ids: Vec<String>) -> Lookup<bool> {
        let (ids, odd): (Vec<String>, Vec<String>) = ids.into_iter().partition(|id| plain_id(id));
        let mut l = lookup::run(ids, PER_BATCH, IN_FLIGHT, |batch| async move { self.batch(&batch).await }).await;
        if !odd.is_empty() && l.refused.is_none() {
            let n = l.failed.as_ref().map_or(0, |f| f.0) + odd.len();
            let why = l.failed.take().map_or_else(|| "a group id that is not a GUID".to_string(), |f| f.1);
            l.failed = Some((n, why));
        }
        l
    }

    /// One `$batch` of lookups: each group's outcome, or the whole batch's.
    async fn batch(&self, ids: &[String]) -> Result<Vec<(String, Outcome<bool>)>, Outcome<bool>> {
        let requests: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                serde_json::json!({"id": i.to_string(), "method": "GET",
                    "url": format!("/groups/{id}?$select=id,allowExternalSenders")})
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "requests": requests })).unwrap_or_default();
        let url = format!("{}/v1.0/$batch", self.root);
        let r = self.http.post(&url, &self.auth, "application/json", body.into()).await.map_err(Outcome::Failed)?;
        if matches!(r.status.as_u16(), 401 | 403) {
            return Err(Outcome::Refused(self.api_error(&r, "$batch", "Group.Read.All")));
        }
        if !r.ok() {
            return Err(Outcome::Failed(self.api_error(&r, "$batch", "Group.Read.All")));
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            responses: Vec<Member>,
        }
        let answer: Answer = r.json().map_err(Outcome::Failed)?;
        // Members come back in any order, named by the ids we gave.
        let answers = answer.responses.iter().filter_map(|m| m.id.parse::<usize>().ok().map(|i| (i, outcome(m))));
        Ok(lookup::match_answers(ids, answers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(status: u16, headers: Value, body: Value) -> Member {
        serde_json::from_value(serde_json::json!({"id": "0", "status": status, "headers": headers, "body": body}))
            .unwrap()
    }

    #[test]
    fn member_answers_are_read_as_graph_documents_them() {
        let ok = member(200, serde_json::json!({}), serde_json::json!({"id": "g", "allowExternalSenders": false}));
        assert_eq!(outcome(&ok), Outcome::Value(false));
        let ok = member(200, serde_json::json!({}), serde_json::json!({"allowExternalSenders": true}));
        assert_eq!(outcome(&ok), Outcome::Value(true));
        let throttled = member(429, serde_json::json!({"Retry-After": "7"}), serde_json::json!({}));
        assert_eq!(outcome(&throttled), Outcome::Again(Some(7.0)));
        assert_eq!(outcome(&member(503, serde_json::json!({}), Value::Null)), Outcome::Again(None));
        assert_eq!(outcome(&member(404, serde_json::json!({}), Value::Null)), Outcome::Gone);
        let denied = member(
            403,
            serde_json::json!({}),
            serde_json::json!({"error": {"code": "ErrorAccessDenied", "message": "Access is denied."}}),
        );
        assert!(matches!(outcome(&denied), Outcome::Refused(t) if t.contains("ErrorAccessDenied")));
        let unsupported = member(
            400,
            serde_json::json!({}),
            serde_json::json!({"error": {"code": "BadRequest", "message": "This operation is not supported for app-only."}}),
        );
        assert!(matches!(outcome(&unsupported), Outcome::Refused(_)));
        let other = member(400, serde_json::json!({}), serde_json::json!({"error": {"code": "X", "message": "Y"}}));
        assert!(matches!(outcome(&other), Outcome::Failed(_)));
        let silent = member(200, serde_json::json!({}), serde_json::json!({"id": "g"}));
        assert!(matches!(outcome(&silent), Outcome::Refused(_)), "an answer without the value is a refusal");
    }

    #[test]
    fn only_guid_like_ids_go_into_urls() {
        assert!(plain_id("02bd9fd6-8f93-4758-87c3-1fb73740a315"));
        assert!(!plain_id("../users"));
        assert!(!plain_id("g?$select=x"));
        assert!(!plain_id(""));
    }
}
