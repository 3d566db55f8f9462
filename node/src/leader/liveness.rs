//! Node liveness as the leader sees it: pure bookkeeping of status probes and the decisions they lead to.
//!
//! The leader probes every other member's `LocalStatus` once a second and feeds each outcome to
//! [`Liveness::observe`]. [`Liveness::decide`] compares what it saw with the committed `down_nodes`:
//! - a member that failed [`FAILURES_TO_MARK_DOWN`] probes in a row and is not marked down yet → down;
//! - a member marked down that answered its latest probe → up again;
//! - the leader never marks itself down; if the committed state says it is down (a predecessor lost
//!   sight of it), it marks itself up: it is evidently alive.
//!
//! A new leader starts with empty counters: it decides from the committed state plus its own fresh
//! probes, never from a predecessor's memory.

use std::collections::{BTreeMap, BTreeSet};

use lbfleet_api::NodeId;

/// Consecutive failed probes after which a member is marked down.
pub const FAILURES_TO_MARK_DOWN: u32 = 3;

/// What the leader saw of one member.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    /// Failed probes in a row (0 after an answer).
    failures: u32,
    /// Whether at least one probe finished.
    probed: bool,
    /// Why the latest probe failed.
    last_error: String,
}

/// Probe outcomes per member, kept by the leader for its term.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    seen: BTreeMap<NodeId, Seen>,
}

/// Mark a node down or up, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDecision {
    pub id: NodeId,
    pub down: bool,
    pub why: String,
}

impl Liveness {
    /// Record one probe of `id`: `Ok(())` if it answered, `Err(reason)` if not.
    pub fn observe(&mut self, id: NodeId, outcome: Result<(), String>) {
        let s = self.seen.entry(id).or_default();
        s.probed = true;
        match outcome {
            Ok(()) => {
                s.failures = 0;
                s.last_error.clear();
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                s.last_error = e;
            }
        }
    }

    /// Forget members that left.
    pub fn retain(&mut self, members: &BTreeSet<NodeId>) {
        self.seen.retain(|id, _| members.contains(id));
    }

    /// The changes to propose, given the current `members` and the committed `down` set, in id order.
    pub fn decide(
        &self,
        me: NodeId,
        members: &BTreeSet<NodeId>,
        down: &BTreeSet<NodeId>,
    ) -> Vec<NodeDecision> {
        let mut out = Vec::new();
        for &id in members {
            let is_down = down.contains(&id);
            if id == me {
                if is_down {
                    out.push(NodeDecision { id, down: false, why: "the leader itself is alive".into() });
                }
                continue;
            }
            let Some(s) = self.seen.get(&id) else { continue };
            if !s.probed {
                continue;
            }
            if !is_down && s.failures >= FAILURES_TO_MARK_DOWN {
                out.push(NodeDecision {
                    id,
                    down: true,
                    why: format!(
                        "no answer to {} status probes of the leader in a row (last: {})",
                        s.failures, s.last_error
                    ),
                });
            } else if is_down && s.failures == 0 {
                out.push(NodeDecision {
                    id,
                    down: false,
                    why: "answers the leader's status probes again".into(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(l: &mut Liveness, id: NodeId, times: u32) {
        for _ in 0..times {
            l.observe(id, Err("connection refused".into()));
        }
    }

    #[test]
    fn a_member_is_marked_down_after_three_failures_in_a_row_only() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let mut l = Liveness::default();
        fail(&mut l, 2, 2);
        assert!(l.decide(1, &members, &BTreeSet::new()).is_empty());
        l.observe(2, Ok(()));
        fail(&mut l, 2, 2);
        assert!(l.decide(1, &members, &BTreeSet::new()).is_empty(), "an answer resets the count");
        fail(&mut l, 2, 1);
        let d = l.decide(1, &members, &BTreeSet::new());
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].id, d[0].down), (2, true));
        assert!(
            d[0].why.contains("3 status probes") && d[0].why.contains("connection refused"),
            "{}",
            d[0].why
        );
    }

    #[test]
    fn nothing_is_proposed_again_once_the_committed_state_agrees() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let mut l = Liveness::default();
        fail(&mut l, 3, 5);
        assert!(l.decide(1, &members, &[3].into()).is_empty(), "already down");
        l.observe(3, Ok(()));
        let d = l.decide(1, &members, &[3].into());
        assert_eq!(
            d,
            vec![NodeDecision { id: 3, down: false, why: "answers the leader's status probes again".into() }]
        );
        assert!(l.decide(1, &members, &BTreeSet::new()).is_empty(), "already up");
    }

    #[test]
    fn the_leader_never_marks_itself_down_and_clears_a_stale_mark() {
        let members: BTreeSet<NodeId> = [1, 2].into();
        let mut l = Liveness::default();
        fail(&mut l, 1, 10);
        assert!(l.decide(1, &members, &BTreeSet::new()).is_empty());
        let d = l.decide(1, &members, &[1].into());
        assert_eq!((d[0].id, d[0].down), (1, false));
    }

    #[test]
    fn a_new_leader_decides_nothing_before_its_own_probes() {
        let members: BTreeSet<NodeId> = [1, 2, 3].into();
        let l = Liveness::default();
        // Node 2 is marked down by a predecessor; without a probe this leader leaves it so.
        assert!(l.decide(3, &members, &[2].into()).is_empty());
    }

    #[test]
    fn departed_members_are_forgotten_and_never_decided_on() {
        let mut l = Liveness::default();
        fail(&mut l, 4, 3);
        assert!(l.decide(1, &[1, 2].into(), &BTreeSet::new()).is_empty(), "4 is not a member");
        l.retain(&[1, 2].into());
        assert!(l.decide(1, &[1, 2, 4].into(), &BTreeSet::new()).is_empty(), "forgotten");
    }
}
