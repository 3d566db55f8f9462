//! The rise/fall state machine of one active check (one pool, one backend, on this node). Pure: it
//! takes probe results and says when this node's view of the backend changes.
//!
//! Initial state: [`LocalState::Unknown`]. A backend this node has not yet concluded anything about is
//! *usable* locally (the fleet-wide committed state decides, as it did before this node started
//! probing) and no vote is sent for it. It becomes `Up` after `rise` consecutive successes or `Down`
//! after `fall` consecutive failures, like any other transition. This avoids both a false "down" vote
//! at start-up (a pessimistic start would have every restarting node vote every backend down) and a
//! false "up" vote for a backend that is in fact dead (an optimistic start would vote it up at once).

use serde::Serialize;

/// This node's view of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalState {
    /// Not enough consecutive results yet; usable locally, no vote.
    Unknown,
    Up,
    Down,
}

impl LocalState {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalState::Unknown => "unknown",
            LocalState::Up => "up",
            LocalState::Down => "down",
        }
    }

    /// The vote this state stands for (`None` while unknown).
    pub fn healthy(self) -> Option<bool> {
        match self {
            LocalState::Unknown => None,
            LocalState::Up => Some(true),
            LocalState::Down => Some(false),
        }
    }
}

/// Consecutive-result counter of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    state: LocalState,
    successes: u32,
    failures: u32,
}

impl RiseFall {
    /// `rise`/`fall` of 0 are treated as 1 (one result decides).
    pub fn new(rise: u32, fall: u32) -> RiseFall {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            state: LocalState::Unknown,
            successes: 0,
            failures: 0,
        }
    }

    pub fn state(&self) -> LocalState {
        self.state
    }

    /// Record one probe result; returns the new state when it changed.
    pub fn record(&mut self, success: bool) -> Option<LocalState> {
        if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.state != LocalState::Up && self.successes >= self.rise {
                self.state = LocalState::Up;
                return Some(LocalState::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.state != LocalState::Down && self.failures >= self.fall {
                self.state = LocalState::Down;
                return Some(LocalState::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(rf: &mut RiseFall, results: &[bool]) -> Vec<Option<LocalState>> {
        results.iter().map(|r| rf.record(*r)).collect()
    }

    #[test]
    fn starts_unknown_and_rises_after_rise_successes() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.state(), LocalState::Unknown);
        assert_eq!(feed(&mut rf, &[true, true, true]), [None, Some(LocalState::Up), None]);
        assert_eq!(rf.state(), LocalState::Up);
    }

    #[test]
    fn falls_only_after_fall_consecutive_failures() {
        let mut rf = RiseFall::new(2, 3);
        feed(&mut rf, &[true, true]);
        // A success in between resets the failure count.
        assert_eq!(feed(&mut rf, &[false, false, true, false, false]), [None; 5]);
        assert_eq!(rf.state(), LocalState::Up);
        assert_eq!(rf.record(false), Some(LocalState::Down));
        assert_eq!(rf.record(false), None, "already down: no second transition");
    }

    #[test]
    fn comes_back_after_rise_consecutive_successes() {
        let mut rf = RiseFall::new(3, 1);
        feed(&mut rf, &[true, true, true]);
        assert_eq!(rf.record(false), Some(LocalState::Down));
        assert_eq!(feed(&mut rf, &[true, true, false, true, true]), [None; 5]);
        assert_eq!(rf.record(true), Some(LocalState::Up));
    }

    #[test]
    fn unknown_goes_straight_to_down_after_fall_failures() {
        let mut rf = RiseFall::new(2, 2);
        assert_eq!(feed(&mut rf, &[false, false]), [None, Some(LocalState::Down)]);
        assert_eq!(rf.state().healthy(), Some(false));
    }

    #[test]
    fn zero_thresholds_mean_one_result_decides() {
        let mut rf = RiseFall::new(0, 0);
        assert_eq!(rf.record(true), Some(LocalState::Up));
        assert_eq!(rf.record(false), Some(LocalState::Down));
        assert_eq!(LocalState::Unknown.healthy(), None);
    }
}
