//! The views every surface shows, defined once: the admin gRPC service converts them to and from
//! protobuf, the admin HTTP server renders them as JSON, and `lbctl --json` prints them.
//!
//! Pure data (serde) and pure functions of the replicated model; the protobuf conversions are here so
//! that a field added to a view is added to every surface in one place. Events are sent as protobuf
//! straight from the model's [`Event`] and read back as an [`EventView`].

use serde::{Deserialize, Serialize};

use crate::pb;
use crate::state::{ClusterState, Event};
use crate::NodeId;

/// One node as it sees itself (or, with `reachable = false`, a member that did not answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// gRPC address (Raft and admin).
    pub addr: String,
    /// Admin HTTP address.
    pub http_addr: String,
    /// `leader | follower | candidate | learner | shutdown | unknown`.
    pub role: String,
    pub reachable: bool,
    pub voter: bool,
    pub applied_index: u64,
    pub ring_digest: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub config_version: u64,
    /// Why the node could not be asked; `None` when it answered.
    pub error: Option<String>,
    /// Marked down by the leader (its health votes do not count).
    pub down: bool,
    /// Drained by an operator (`lbctl drain-node`): it withdrew its share of the VIP.
    #[serde(default)]
    pub drained: bool,
    pub last_log_index: u64,
    /// Last log index covered by this node's latest snapshot (0 when none).
    pub snapshot_index: u64,
    /// Log entries up to this index were purged from this node's log (0 when none).
    pub purged_index: u64,
}

impl NodeStatus {
    /// A member that did not answer.
    pub fn unreachable(m: &Member, error: String) -> NodeStatus {
        NodeStatus {
            id: m.id,
            addr: m.addr.clone(),
            http_addr: m.http_addr.clone(),
            role: "unknown".into(),
            reachable: false,
            voter: m.voter,
            applied_index: 0,
            ring_digest: String::new(),
            term: 0,
            leader: None,
            config_version: 0,
            error: Some(error),
            down: false,
            drained: false,
            last_log_index: 0,
            snapshot_index: 0,
            purged_index: 0,
        }
    }
}

/// A member of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub http_addr: String,
    pub voter: bool,
}

/// One backend with its committed runtime state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub pool: String,
    pub addr: String,
    pub weight: u32,
    pub healthy: bool,
    pub draining: bool,
    pub active: bool,
    pub backup: bool,
    pub standby: bool,
}

/// Every backend of every pool in config order, with its runtime state.
pub fn backend_views(state: &ClusterState) -> Vec<BackendView> {
    let Some(config) = &state.config else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pool in &config.pool {
        for b in &pool.backend {
            let key = b.key();
            let st = state.backend(&pool.name, &key);
            out.push(BackendView {
                pool: pool.name.clone(),
                addr: key,
                weight: b.weight,
                healthy: st.is_none_or(|s| s.healthy),
                draining: st.is_some_and(|s| s.draining),
                active: st.map_or(!b.standby, |s| s.active),
                backup: b.backup,
                standby: b.standby,
            });
        }
    }
    out
}

/// One entry of the replicated event log, with its time spelled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Log index of the entry that produced the event.
    pub index: u64,
    /// Milliseconds since the Unix epoch as stamped by the proposer (0 when unknown).
    pub at_ms: u64,
    /// `at_ms` as RFC 3339 UTC (to the millisecond); `None` when unknown.
    pub time: Option<String>,
    pub term: u64,
    /// The leader that decided; `None` for events that are not leader decisions (health changes).
    pub leader: Option<NodeId>,
    pub what: String,
    pub why: String,
}

impl EventView {
    fn new(index: u64, at_ms: u64, leader: Option<NodeId>, term: u64, what: &str, why: &str) -> EventView {
        EventView {
            index,
            at_ms,
            time: time_of(at_ms),
            term,
            leader,
            what: what.to_string(),
            why: why.to_string(),
        }
    }
}

/// RFC 3339 UTC (to the millisecond) of a Unix time in milliseconds; `None` for 0, and for a time
/// after the year 9999, which RFC 3339 cannot write (the stamp comes from the proposer, e.g. a health
/// vote's `observed_at_ms`, so it may be anything).
fn time_of(at_ms: u64) -> Option<String> {
    use std::fmt::Write;
    if at_ms == 0 {
        return None;
    }
    let t = std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(at_ms))?;
    let mut text = String::new();
    // humantime's Display returns an error past 9999-12-31, which `to_string()` turns into a panic.
    write!(text, "{}", humantime::format_rfc3339_millis(t)).ok()?;
    Some(text)
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView::new(e.index, e.at_ms, e.leader, e.term, &e.what, &e.why)
    }
}

impl From<&pb::EventRecord> for EventView {
    fn from(e: &pb::EventRecord) -> Self {
        EventView::new(e.index, e.at_ms, e.leader, e.term, &e.what, &e.why)
    }
}

impl From<&Event> for pb::EventRecord {
    fn from(e: &Event) -> Self {
        pb::EventRecord {
            index: e.index,
            at_ms: e.at_ms,
            leader: e.leader,
            term: e.term,
            what: e.what.clone(),
            why: e.why.clone(),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl From<&NodeStatus> for pb::NodeStatus {
    fn from(v: &NodeStatus) -> Self {
        pb::NodeStatus {
            id: v.id,
            addr: v.addr.clone(),
            http_addr: v.http_addr.clone(),
            role: v.role.clone(),
            reachable: v.reachable,
            applied_index: v.applied_index,
            ring_digest: v.ring_digest.clone(),
            term: v.term,
            leader: v.leader,
            voter: v.voter,
            config_version: v.config_version,
            error: v.error.clone().unwrap_or_default(),
            down: v.down,
            drained: v.drained,
            snapshot_index: v.reachable.then_some(v.snapshot_index),
            purged_index: v.reachable.then_some(v.purged_index),
            last_log_index: v.reachable.then_some(v.last_log_index),
        }
    }
}

impl From<&pb::NodeStatus> for NodeStatus {
    fn from(n: &pb::NodeStatus) -> Self {
        NodeStatus {
            id: n.id,
            addr: n.addr.clone(),
            http_addr: n.http_addr.clone(),
            role: if n.role.is_empty() { "unknown".to_string() } else { n.role.clone() },
            reachable: n.reachable,
            voter: n.voter,
            applied_index: n.applied_index,
            ring_digest: n.ring_digest.clone(),
            term: n.term,
            leader: n.leader,
            config_version: n.config_version,
            error: non_empty(&n.error),
            down: n.down,
            drained: n.drained,
            last_log_index: n.last_log_index.unwrap_or(0),
            snapshot_index: n.snapshot_index.unwrap_or(0),
            purged_index: n.purged_index.unwrap_or(0),
        }
    }
}

impl From<&Member> for pb::NodeInfo {
    fn from(m: &Member) -> Self {
        pb::NodeInfo { id: m.id, addr: m.addr.clone(), http_addr: m.http_addr.clone(), voter: m.voter }
    }
}

impl From<&pb::NodeInfo> for Member {
    fn from(m: &pb::NodeInfo) -> Self {
        Member { id: m.id, addr: m.addr.clone(), http_addr: m.http_addr.clone(), voter: m.voter }
    }
}

impl From<&BackendView> for pb::BackendStatus {
    fn from(b: &BackendView) -> Self {
        pb::BackendStatus {
            pool: b.pool.clone(),
            addr: b.addr.clone(),
            weight: b.weight,
            healthy: b.healthy,
            draining: b.draining,
            active: b.active,
            backup: b.backup,
            standby: b.standby,
        }
    }
}

impl From<&pb::BackendStatus> for BackendView {
    fn from(b: &pb::BackendStatus) -> Self {
        BackendView {
            pool: b.pool.clone(),
            addr: b.addr.clone(),
            weight: b.weight,
            healthy: b.healthy,
            draining: b.draining,
            active: b.active,
            backup: b.backup,
            standby: b.standby,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_survive_protobuf() {
        let n = NodeStatus {
            id: 2,
            addr: "127.0.0.12:7400".into(),
            http_addr: "127.0.0.12:7401".into(),
            role: "follower".into(),
            reachable: true,
            voter: true,
            applied_index: 9,
            ring_digest: "abc".into(),
            term: 3,
            leader: Some(1),
            config_version: 2,
            error: None,
            down: false,
            drained: false,
            last_log_index: 11,
            snapshot_index: 4,
            purged_index: 1,
        };
        assert_eq!(NodeStatus::from(&pb::NodeStatus::from(&n)), n);
        let m = Member { id: 1, addr: "a".into(), http_addr: "h".into(), voter: false };
        assert_eq!(Member::from(&pb::NodeInfo::from(&m)), m);
        let u = NodeStatus::unreachable(&m, "timed out".into());
        let back = NodeStatus::from(&pb::NodeStatus::from(&u));
        assert_eq!(
            (back.reachable, back.role.as_str(), back.error.as_deref()),
            (false, "unknown", Some("timed out"))
        );
    }

    #[test]
    fn events_survive_protobuf_and_spell_out_their_time() {
        let (what, why) = ("node 3 marked down".to_string(), "no answer".to_string());
        let e = Event { index: 7, at_ms: 1_700_000_000_123, leader: Some(2), term: 3, what, why };
        let v = EventView::from(&e);
        assert_eq!(v.time.as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(EventView::from(&pb::EventRecord::from(&e)), v, "the admin service loses nothing");
        let unknown = EventView::from(&Event { at_ms: 0, leader: None, ..e });
        assert_eq!((unknown.time, unknown.leader), (None, None));
    }

    /// Found by the `apply` fuzz target: an event stamped after the year 9999 (a health vote may
    /// carry any `observed_at_ms`) made every view of the event log panic.
    #[test]
    fn an_event_stamped_after_the_year_9999_has_no_time_instead_of_a_panic() {
        let last_ms_of_9999 = 253_402_300_799_999;
        let at = |at_ms| EventView::from(&pb::EventRecord { at_ms, ..Default::default() }).time;
        assert_eq!(at(last_ms_of_9999).as_deref(), Some("9999-12-31T23:59:59.999Z"));
        assert_eq!(at(last_ms_of_9999 + 1), None);
        assert_eq!(at(u64::MAX), None);
    }
}
