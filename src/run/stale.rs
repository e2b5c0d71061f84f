//! After the run, `guard.max_staleness`: when the last fresh run is older than
//! the limit, `on_stale` runs once (e.g. make Postfix tempfail unknown
//! recipients instead of rejecting them on stale data); after the next fresh
//! run, `on_fresh` runs once. A marker in `state_dir` remembers which.

use super::fresh;
use crate::config::Config;
use crate::report::Report;
use crate::state::StateDir;
use crate::writer::{self, config::DEFAULT_HOOK_TIMEOUT};

/// One defence at a time: the daemon's timer and a run ending may meet.
static DEFENCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(super) fn defence(cfg: &Config, state: &StateDir, report: &Report) {
    let Some(max) = cfg.guard.max_staleness else { return };
    let _one = DEFENCE.lock();
    let now = crate::state::unix_now();
    if fresh(report) {
        state.set_last_fresh(now);
        if state.is_marked_stale() {
            tracing::info!("the list is fresh again: running guard.on_fresh");
            if hook(&cfg.guard.on_fresh, "on_fresh") {
                state.clear_stale();
            }
        }
        return;
    }
    when_not_fresh(cfg, state, max, now);
}

/// The daemon's own check, on a timer: a run that hangs (or keeps failing
/// without ending) must not keep a stale list answering 550.
pub fn check_staleness(cfg: &Config) {
    let Some(max) = cfg.guard.max_staleness else { return };
    let _one = DEFENCE.lock();
    when_not_fresh(cfg, &StateDir::at(&cfg.state_dir), max, crate::state::unix_now());
}

fn when_not_fresh(cfg: &Config, state: &StateDir, max: std::time::Duration, now: u64) {
    let Some(since) = state.last_fresh() else { return };
    let age = now.saturating_sub(since);
    if age <= max.as_secs() {
        return;
    }
    if state.is_marked_stale() {
        tracing::warn!(age_s = age, "the published list is still stale");
        return;
    }
    tracing::error!(
        age_s = age,
        max_staleness_s = max.as_secs(),
        "the published list is stale (no fresh run for longer than guard.max_staleness): running guard.on_stale"
    );
    if hook(&cfg.guard.on_stale, "on_stale") {
        state.mark_stale(now);
    }
}

/// Runs a hook; false when it failed (it runs again after the next run).
fn hook(argv: &[String], what: &str) -> bool {
    if argv.is_empty() {
        return true;
    }
    match writer::hook::run(argv, DEFAULT_HOOK_TIMEOUT) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "{what} hook failed; it runs again after the next run");
            false
        }
    }
}
