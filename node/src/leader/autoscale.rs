//! The autoscaler's decision, per pool: pure, no clock, no I/O.
//!
//! Active backends are the primaries plus the activated standbys that are healthy and not draining
//! (backups do not count). The average load per active backend is the fleet-wide load (in-flight
//! requests plus connections, summed over every node's fresh report) of those backends divided by
//! their number.
//!
//! - Average above `high_watermark` continuously for `window` → activate one inactive standby (the
//!   lowest key among the healthy, not draining ones) if fewer than `max_active` are active.
//! - Average below `low_watermark` continuously for `window` → deactivate one activated standby (the
//!   highest key: the last one the scale-out order would take) if more than `min_active` are active.
//!   Primaries are never deactivated.
//! - At most one step per window: the next window starts at the step, and no other step (in either
//!   direction) comes before a full window has passed.
//! - Without a complete, fresh picture (some live node's report is missing or stale) nothing is
//!   decided and the windows start again: "continuously" needs continuous observation.
//!
//! What is active comes from the committed state, never from memory, so a new leader (with a fresh
//! [`PoolTrack`]) cannot activate a standby its predecessor already activated.

use std::collections::BTreeMap;
use std::time::Duration;

use lbfleet_api::config::Pool;
use lbfleet_api::state::BackendState;

/// What the leader remembers about one pool between ticks (per term; a new leader starts empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolTrack {
    /// Since when (ms) the average has been above the high watermark, without interruption.
    above_since: Option<u64>,
    /// Since when (ms) the average has been below the low watermark, without interruption.
    below_since: Option<u64>,
    /// When (ms) this leader last took a step for the pool.
    last_step: Option<u64>,
}

/// One scaling step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub pool: String,
    pub backend: String,
    /// Activate (scale out) or deactivate (scale in).
    pub active: bool,
    /// For the event log, e.g. "avg load 37.0 > high watermark 20 for 5s".
    pub why: String,
}

/// Load of the pool's backends at one tick: fleet-wide load by backend key, or `None` when the
/// picture is incomplete (a live node's report is missing or stale).
pub type Observation<'a> = Option<&'a BTreeMap<String, u64>>;

/// Decide whether `pool` takes a step at `now_ms`, updating `track`. `states` are the pool's committed
/// backend states. Returns `None` for a pool without `scale`.
pub fn decide(
    pool: &Pool,
    states: &BTreeMap<String, BackendState>,
    load: Observation<'_>,
    now_ms: u64,
    track: &mut PoolTrack,
) -> Option<Step> {
    let scale = pool.scale.as_ref()?;
    let Some(load) = load else {
        *track = PoolTrack { last_step: track.last_step, ..PoolTrack::default() };
        return None;
    };
    let serving = |key: &str| states.get(key).is_some_and(|s| s.healthy && !s.draining && s.active);
    let active: Vec<String> =
        pool.backend.iter().filter(|b| !b.backup).map(|b| b.key()).filter(|k| serving(k)).collect();
    if active.is_empty() {
        *track = PoolTrack { last_step: track.last_step, ..PoolTrack::default() };
        return None;
    }
    let total: u64 = active.iter().map(|k| load.get(k).copied().unwrap_or(0)).sum();
    let avg = total as f64 / active.len() as f64;
    let window_ms = scale.window.as_millis() as u64;

    if avg > f64::from(scale.high_watermark) {
        track.below_since = None;
        let since = *track.above_since.get_or_insert(now_ms);
        if !window_passed(since, now_ms, window_ms) || !step_allowed(track, now_ms, window_ms) {
            return None;
        }
        if active.len() >= scale.max_active as usize {
            return None;
        }
        let candidate = pool
            .backend
            .iter()
            .filter(|b| b.standby)
            .map(|b| b.key())
            .filter(|k| states.get(k).is_some_and(|s| !s.active && s.healthy && !s.draining))
            .min()?;
        took_step(track, now_ms, true);
        return Some(Step {
            pool: pool.name.clone(),
            backend: candidate,
            active: true,
            why: format!(
                "avg load {avg:.1} > high watermark {} for {} ({} active backends)",
                scale.high_watermark,
                show(scale.window),
                active.len()
            ),
        });
    }
    if avg < f64::from(scale.low_watermark) {
        track.above_since = None;
        let since = *track.below_since.get_or_insert(now_ms);
        if !window_passed(since, now_ms, window_ms) || !step_allowed(track, now_ms, window_ms) {
            return None;
        }
        if active.len() <= scale.min_active as usize {
            return None;
        }
        let candidate = pool
            .backend
            .iter()
            .filter(|b| b.standby && !b.backup)
            .map(|b| b.key())
            .filter(|k| active.contains(k))
            .max()?;
        took_step(track, now_ms, false);
        return Some(Step {
            pool: pool.name.clone(),
            backend: candidate,
            active: false,
            why: format!(
                "avg load {avg:.1} < low watermark {} for {} ({} active backends)",
                scale.low_watermark,
                show(scale.window),
                active.len()
            ),
        });
    }
    track.above_since = None;
    track.below_since = None;
    None
}

fn window_passed(since: u64, now: u64, window: u64) -> bool {
    now.saturating_sub(since) >= window
}

fn step_allowed(track: &PoolTrack, now: u64, window: u64) -> bool {
    track.last_step.is_none_or(|t| now.saturating_sub(t) >= window)
}

/// After a step at `now`, the next window (in the same direction) starts at `now`.
fn took_step(track: &mut PoolTrack, now: u64, out: bool) {
    *track = PoolTrack {
        above_since: out.then_some(now),
        below_since: (!out).then_some(now),
        last_step: Some(now),
    };
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests;
