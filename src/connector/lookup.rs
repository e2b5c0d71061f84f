//! Per-object lookups through a batch endpoint (Graph's `$batch`, Google's
//! multipart batches): the driver both cloud connectors use to read a setting
//! that list pages do not carry.
//!
//! A lookup refines what a source publishes; it never fails the source. Ids
//! go out in batches, a few in flight; members the service throttled are asked
//! again after their `Retry-After`, for a bounded number of rounds; a refusal
//! (missing permission or scope) or a whole batch that fails after the HTTP
//! layer's retries stops the lookup, since every further batch would meet the
//! same. What is left unread is reported, and the caller keeps those objects.

use std::collections::HashMap;
use std::future::Future;

use futures_util::stream::{self, StreamExt};

use super::http::member_wait;

/// What the service said about one object.
#[derive(Debug, PartialEq)]
pub enum Outcome<V> {
    Value(V),
    /// Deleted since it was listed.
    Gone,
    /// Throttled or a passing outage, with its `Retry-After` in seconds.
    Again(Option<f64>),
    /// The service will not tell (a permission or scope): stop asking.
    Refused(String),
    /// This object's answer was an error.
    Failed(String),
}

/// The answers of one lookup.
#[derive(Debug)]
pub struct Lookup<V> {
    pub values: HashMap<String, V>,
    /// Why the service would not tell (its first refusal).
    pub refused: Option<String>,
    /// Objects left unread otherwise, and the first reason.
    pub failed: Option<(usize, String)>,
}

/// Pairs each id of a batch with its answer: `answers` are (index in `ids`,
/// outcome) in whatever order the service sent them; an index out of range is
/// ignored, and an id without an answer failed.
pub fn match_answers<V>(
    ids: &[String],
    answers: impl IntoIterator<Item = (usize, Outcome<V>)>,
) -> Vec<(String, Outcome<V>)> {
    let mut by_index: HashMap<usize, Outcome<V>> = answers.into_iter().filter(|(i, _)| *i < ids.len()).collect();
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let o = by_index.remove(&i).unwrap_or_else(|| Outcome::Failed("no answer in the batch response".into()));
            (id.clone(), o)
        })
        .collect()
}

/// Rounds for throttled members before they are left unread.
pub const ROUNDS: u32 = 5;

/// Asks `batch` about `ids`, `per_batch` at a time with `in_flight` batches
/// concurrently. `batch` answers each id of its batch, or fails the batch
/// (with `Refused` or `Failed`).
pub async fn run<V, F, Fut>(ids: Vec<String>, per_batch: usize, in_flight: usize, batch: F) -> Lookup<V>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<Vec<(String, Outcome<V>)>, Outcome<V>>>,
{
    let asked = ids.len();
    let mut values = HashMap::new();
    let mut refused: Option<String> = None;
    let mut first_failure: Option<String> = None;
    let mut gone = 0usize;
    let mut pending = ids;
    let mut round = 0;
    'rounds: while !pending.is_empty() {
        let mut again = Vec::new();
        let mut wait: Option<f64> = None;
        let batches: Vec<Vec<String>> = pending.chunks(per_batch.max(1)).map(<[String]>::to_vec).collect();
        let mut answers = stream::iter(batches).map(&batch).buffer_unordered(in_flight.max(1));
        while let Some(answer) = answers.next().await {
            let members = match answer {
                Ok(m) => m,
                Err(Outcome::Refused(why)) => {
                    refused = Some(why);
                    break 'rounds;
                }
                Err(Outcome::Failed(why)) => {
                    first_failure.get_or_insert(why);
                    break 'rounds;
                }
                Err(_) => break 'rounds,
            };
            for (id, o) in members {
                match o {
                    Outcome::Value(v) => {
                        values.insert(id, v);
                    }
                    Outcome::Gone => gone += 1,
                    Outcome::Again(after) => {
                        wait = match (wait, after) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        };
                        again.push(id);
                    }
                    Outcome::Refused(why) => {
                        refused = Some(why);
                        break 'rounds;
                    }
                    Outcome::Failed(why) => {
                        first_failure.get_or_insert(why);
                    }
                }
            }
        }
        round += 1;
        if again.is_empty() {
            break;
        }
        if round >= ROUNDS {
            first_failure.get_or_insert(format!("still throttled after {ROUNDS} rounds"));
            break;
        }
        tokio::time::sleep(member_wait(wait, round - 1)).await;
        pending = again;
    }
    let unread = asked.saturating_sub(values.len() + gone);
    let failed = match (unread, first_failure) {
        (0, _) => None,
        (n, Some(why)) if refused.is_none() => Some((n, why)),
        _ => None,
    };
    Lookup { values, refused, failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test(start_paused = true)]
    async fn throttled_members_are_asked_again_and_a_refusal_stops_the_lookup() {
        let calls = Mutex::new(0usize);
        let ids: Vec<String> = (0..7).map(|i| i.to_string()).collect();
        // First round: id 3 throttled, id 5 gone, id 6 failed.
        let l = run(ids.clone(), 3, 2, |batch: Vec<String>| {
            let first = {
                let mut c = calls.lock().unwrap();
                *c += 1;
                *c <= 3
            };
            async move {
                Ok(batch
                    .into_iter()
                    .map(|id| {
                        let o = match id.as_str() {
                            "3" if first => Outcome::Again(Some(2.0)),
                            "5" => Outcome::Gone,
                            "6" => Outcome::Failed("boom".into()),
                            _ => Outcome::Value(id.len()),
                        };
                        (id, o)
                    })
                    .collect())
            }
        })
        .await;
        assert_eq!(l.values.len(), 5, "{l:?}");
        assert!(l.values.contains_key("3"), "asked again after Retry-After");
        assert_eq!(l.failed, Some((1, "boom".to_string())));
        assert!(l.refused.is_none());

        let batches = Mutex::new(0usize);
        let l: Lookup<bool> = run(ids, 2, 1, |_batch: Vec<String>| {
            *batches.lock().unwrap() += 1;
            async { Err(Outcome::Refused("403 no scope".into())) }
        })
        .await;
        assert_eq!(l.refused.as_deref(), Some("403 no scope"));
        assert!(l.values.is_empty() && l.failed.is_none());
        assert_eq!(*batches.lock().unwrap(), 1, "nothing more is asked after a refusal");
    }

    #[test]
    fn answers_are_matched_by_index_whatever_their_order() {
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let got = match_answers(&ids, [(2, Outcome::Value(2)), (0, Outcome::Gone), (9, Outcome::Value(9))]);
        assert_eq!(got[0], ("a".to_string(), Outcome::Gone));
        assert!(matches!(&got[1], (b, Outcome::Failed(_)) if b == "b"), "no answer for b");
        assert_eq!(got[2], ("c".to_string(), Outcome::Value(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_stops_the_lookup_and_throttling_is_bounded() {
        let batches = Mutex::new(0usize);
        let ids: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let l: Lookup<bool> = run(ids.clone(), 2, 1, |_b: Vec<String>| {
            *batches.lock().unwrap() += 1;
            async { Err(Outcome::Failed("503 after retries".into())) }
        })
        .await;
        assert_eq!(l.failed, Some((10, "503 after retries".to_string())));
        assert_eq!(*batches.lock().unwrap(), 1);

        let l: Lookup<bool> =
            run(
                ids,
                5,
                2,
                |b: Vec<String>| async move { Ok(b.into_iter().map(|id| (id, Outcome::Again(None))).collect()) },
            )
            .await;
        assert_eq!(l.failed, Some((10, format!("still throttled after {ROUNDS} rounds"))));
    }
}
