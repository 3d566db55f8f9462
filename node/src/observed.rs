//! Events this node saw happen that the replicated event log does not record: a leader elected (a new
//! term with a leader) and a backend drained or undrained. The dashboard shows them beside the log's
//! events, merged over the nodes that saw them (see `crate::admin::dashboard`).
//!
//! [`Observer::observe`] is called once per sample of [`crate::traffic`] with what the node knows then;
//! it is pure and keeps at most [`MAX_OBSERVED`] events, oldest dropped first. Known limits: the events
//! live in memory (a restarted node remembers only the leader it finds), and a drain that is undone
//! between two samples (one second) is not seen.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use lbfleet_api::NodeId;

/// Most events a node remembers.
pub const MAX_OBSERVED: usize = 50;

/// One event seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// When this node saw it (ms since the Unix epoch).
    pub at_ms: u64,
    /// The applied index of this node then.
    pub index: u64,
    pub term: u64,
    pub leader: Option<NodeId>,
    /// [`ELECTION`] or [`DRAIN`].
    pub kind: &'static str,
    pub what: String,
}

/// The kind of an event that names the leader of a term (one per term).
pub const ELECTION: &str = "election";
/// The kind of an event that tells a backend's drain started or ended.
pub const DRAIN: &str = "drain";

/// What a node knows at one sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub applied_index: u64,
    /// (pool, backend) of every draining backend in the committed state.
    pub draining: BTreeSet<(String, String)>,
}

/// The events seen so far and the facts of the last sample.
#[derive(Debug, Default)]
pub struct Observer {
    last: Option<Facts>,
    events: VecDeque<Observed>,
}

/// A node's observer, shared by the sampler and the admin servers.
pub type SharedObserver = Arc<Mutex<Observer>>;

impl Observer {
    /// Record what changed since the last call. The first call records the leader it finds (so a
    /// node that just started still tells who leads), not the drains already in place.
    pub fn observe(&mut self, at_ms: u64, now: Facts) {
        let mut push = |kind: &'static str, what: String| {
            if self.events.len() >= MAX_OBSERVED {
                self.events.pop_front();
            }
            self.events.push_back(Observed {
                at_ms,
                index: now.applied_index,
                term: now.term,
                leader: now.leader,
                kind,
                what,
            });
        };
        let new_leader = match &self.last {
            None => now.leader.is_some(),
            Some(l) => now.leader.is_some() && (l.leader, l.term) != (now.leader, now.term),
        };
        if let (true, Some(leader)) = (new_leader, now.leader) {
            push(ELECTION, format!("node {leader} is the leader of term {}", now.term));
        }
        if let Some(last) = &self.last {
            for (pool, backend) in now.draining.difference(&last.draining) {
                push(DRAIN, format!("backend {backend} of pool \"{pool}\" is draining"));
            }
            for (pool, backend) in last.draining.difference(&now.draining) {
                push(DRAIN, format!("backend {backend} of pool \"{pool}\" is no longer draining"));
            }
        }
        self.last = Some(now);
    }

    /// The events, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Observed> {
        self.events.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(leader: Option<NodeId>, term: u64, draining: &[&str]) -> Facts {
        Facts {
            leader,
            term,
            applied_index: term * 10,
            draining: draining.iter().map(|b| ("web".to_string(), b.to_string())).collect(),
        }
    }

    fn whats(o: &Observer) -> Vec<&str> {
        o.events().map(|e| e.what.as_str()).collect()
    }

    #[test]
    fn elections_and_drains_are_recorded_on_change_only() {
        let mut o = Observer::default();
        o.observe(1, facts(Some(1), 1, &["a"]));
        o.observe(2, facts(Some(1), 1, &["a"]));
        assert_eq!(
            whats(&o),
            ["node 1 is the leader of term 1"],
            "the drain already in place is not an event"
        );
        o.observe(3, facts(None, 2, &["a"]));
        o.observe(4, facts(Some(2), 2, &["b"]));
        assert_eq!(
            whats(&o)[1..],
            [
                "node 2 is the leader of term 2",
                "backend b of pool \"web\" is draining",
                "backend a of pool \"web\" is no longer draining"
            ]
        );
        assert_eq!(o.events().last().map(|e| (e.at_ms, e.index, e.term)), Some((4, 20, 2)));
    }

    #[test]
    fn the_number_of_events_is_bounded() {
        let mut o = Observer::default();
        for t in 1..=(MAX_OBSERVED as u64 + 7) {
            o.observe(t, facts(Some(1), t, &[]));
        }
        assert_eq!(o.events().count(), MAX_OBSERVED);
        assert_eq!(o.events().next().map(|e| e.term), Some(8), "the oldest were dropped");
    }
}
