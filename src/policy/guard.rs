//! The guard: the last check before anything is written.
//!
//! It compares the new list with the last applied one and refuses lists that are
//! empty, below `min_recipients`, or that remove more than `max_removed_percent` of
//! what was published. A refusal leaves every output as it was. `--force` overrides
//! these checks (never the address validation, which happens long before).

use crate::config::GuardConfig;

/// How the new list differs from the last applied one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: usize,
    pub removed: usize,
}

/// Counts entries only in `new` (added) and only in `old` (removed). Both inputs
/// must be sorted and free of duplicates.
pub fn delta<'a>(old: impl IntoIterator<Item = &'a str>, new: impl IntoIterator<Item = &'a str>) -> Delta {
    let mut d = Delta::default();
    let mut old = old.into_iter().peekable();
    let mut new = new.into_iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return d,
            (Some(_), None) => {
                d.removed += 1;
                old.next();
            }
            (None, Some(_)) => {
                d.added += 1;
                new.next();
            }
            (Some(o), Some(n)) => match o.cmp(n) {
                std::cmp::Ordering::Less => {
                    d.removed += 1;
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    d.added += 1;
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    old.next();
                    new.next();
                }
            },
        }
    }
}

/// What the guard knows about the previous run.
#[derive(Debug, Clone)]
pub enum Baseline {
    /// No list was ever applied (first run).
    None,
    /// The last applied list had this many entries.
    Applied { count: usize },
    /// The state file exists but cannot be trusted.
    Unreadable(String),
}

/// The guard's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ok: bool,
    /// Why the list was refused (or, when forced, why it would have been).
    pub reason: Option<String>,
    pub forced: bool,
}

/// Decides whether a list of `count` entries, differing from the baseline by
/// `delta`, may be published.
pub fn evaluate(cfg: &GuardConfig, count: usize, baseline: &Baseline, delta: Delta, force: bool) -> Verdict {
    let reason = refusal(cfg, count, baseline, delta);
    match reason {
        None => Verdict { ok: true, reason: None, forced: false },
        Some(r) if force => Verdict { ok: true, reason: Some(format!("overridden by --force: {r}")), forced: true },
        Some(r) => Verdict { ok: false, reason: Some(r), forced: false },
    }
}

fn refusal(cfg: &GuardConfig, count: usize, baseline: &Baseline, delta: Delta) -> Option<String> {
    if count == 0 {
        return Some("the new list is empty".into());
    }
    if (count as u64) < cfg.min_recipients {
        return Some(format!(
            "the new list has {count} entries, fewer than guard.min_recipients = {}",
            cfg.min_recipients
        ));
    }
    match baseline {
        Baseline::None => None,
        Baseline::Unreadable(why) => Some(format!(
            "the last applied list cannot be read ({why}), so a shrink cannot be measured; \
             check the new list with `rcptsync list`, then run `rcptsync sync --force` to make it the new baseline"
        )),
        Baseline::Applied { count: old } if *old > 0 => {
            let pct = delta.removed as f64 * 100.0 / *old as f64;
            (pct > cfg.max_removed_percent).then(|| {
                format!(
                    "{} of {old} entries ({pct:.1}%) would be removed, more than guard.max_removed_percent = {}",
                    delta.removed, cfg.max_removed_percent
                )
            })
        }
        Baseline::Applied { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(min: u64, pct: f64) -> GuardConfig {
        GuardConfig { min_recipients: min, max_removed_percent: pct, ..GuardConfig::default() }
    }

    #[test]
    fn delta_counts_both_sides() {
        let d = delta(["a", "b", "c", "e"], ["b", "c", "d", "f", "g"]);
        assert_eq!(d, Delta { added: 3, removed: 2 });
        assert_eq!(delta([], ["a"]), Delta { added: 1, removed: 0 });
        assert_eq!(delta(["a"], []), Delta { added: 0, removed: 1 });
    }

    #[test]
    fn empty_list_is_refused_even_on_first_run() {
        let v = evaluate(&cfg(0, 100.0), 0, &Baseline::None, Delta::default(), false);
        assert!(!v.ok);
        assert_eq!(v.reason.as_deref(), Some("the new list is empty"));
    }

    #[test]
    fn min_recipients() {
        let v = evaluate(&cfg(5, 100.0), 4, &Baseline::None, Delta::default(), false);
        assert!(!v.ok && v.reason.unwrap().contains("fewer than guard.min_recipients = 5"));
        assert!(evaluate(&cfg(5, 100.0), 5, &Baseline::None, Delta::default(), false).ok);
    }

    #[test]
    fn shrink_over_limit_is_refused_at_the_boundary() {
        let base = Baseline::Applied { count: 100 };
        assert!(evaluate(&cfg(1, 10.0), 90, &base, Delta { added: 0, removed: 10 }, false).ok);
        let v = evaluate(&cfg(1, 10.0), 89, &base, Delta { added: 0, removed: 11 }, false);
        assert!(!v.ok);
        assert_eq!(
            v.reason.as_deref(),
            Some("11 of 100 entries (11.0%) would be removed, more than guard.max_removed_percent = 10")
        );
        // Growth elsewhere does not hide removals.
        assert!(!evaluate(&cfg(1, 10.0), 200, &base, Delta { added: 111, removed: 11 }, false).ok);
    }

    #[test]
    fn force_overrides_but_says_why() {
        let base = Baseline::Applied { count: 100 };
        let v = evaluate(&cfg(1, 10.0), 50, &base, Delta { added: 0, removed: 50 }, true);
        assert!(v.ok && v.forced);
        assert!(v.reason.unwrap().starts_with("overridden by --force: 50 of 100"));
        assert!(evaluate(&cfg(1, 10.0), 0, &base, Delta { added: 0, removed: 100 }, true).ok);
    }

    #[test]
    fn unreadable_baseline_refuses_until_forced() {
        let base = Baseline::Unreadable("bad header".into());
        let v = evaluate(&cfg(1, 10.0), 10, &base, Delta::default(), false);
        assert!(!v.ok && v.reason.unwrap().contains("bad header"));
        assert!(evaluate(&cfg(1, 10.0), 10, &base, Delta::default(), true).ok);
    }
}
