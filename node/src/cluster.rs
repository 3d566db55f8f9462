//! This node's handle on the cluster: the Raft instance, the applied state, and plain views of
//! both that the admin gRPC and HTTP servers render.
//!
//! [`Cluster`] is cheap to clone and shared by every server task. The view functions
//! ([`local_view`], [`members`], [`role_name`]) are pure: they read a metrics value and an applied
//! state and return plain data.

use std::sync::Arc;
use std::time::Duration;

use lbfleet_api::NodeId;
use lbfleet_raft_store::state::ClusterState;
use lbfleet_raft_store::{AppliedState, LbNode, Raft, RaftMetrics, StateMachineStore, StoredMembership};
use openraft::ServerState;

/// openraft membership with lbfleet's node type.
pub type Membership = openraft::Membership<NodeId, LbNode>;
use serde::Serialize;
use tokio::sync::watch;

use crate::channels::ChannelCache;
use crate::dataplane::listeners::{ListenerStatus, ListenerStatuses};
use crate::dataplane::ProxyContext;

/// Everything the servers of one node share.
#[derive(Clone)]
pub struct Cluster {
    pub id: NodeId,
    /// How other nodes reach this one.
    pub me: LbNode,
    pub raft: Raft,
    pub store: StateMachineStore,
    /// Bound on how long a write (or a linearizable read) waits for a quorum.
    pub write_timeout: Duration,
    /// Channels to other nodes' admin services (forwarding, status fan-out).
    pub admin_channels: ChannelCache,
    /// Becomes `true` when the node shuts down; long-lived streams end on it.
    pub shutdown: watch::Receiver<bool>,
    /// The data plane's shared context (routing snapshot).
    pub dataplane: Arc<ProxyContext>,
    /// What the listener manager last reported about each listener.
    pub listeners: ListenerStatuses,
    /// On the leader: the latest load report of each node (see [`crate::load`]).
    pub loads: crate::load::LoadBoard,
}

impl Cluster {
    /// Latest Raft metrics of this node.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The latest applied state.
    pub fn applied(&self) -> Arc<AppliedState> {
        self.store.current()
    }

    /// This node's view right now.
    pub fn local_view(&self) -> LocalView {
        let digest = self.dataplane.routing.load().ring_digest().to_string();
        local_view(&self.metrics(), &self.applied(), &self.me, digest)
    }

    /// The listeners as the listener manager last saw them.
    pub fn listener_statuses(&self) -> Vec<ListenerStatus> {
        self.listeners.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

/// Resolves once `shutdown` is (or becomes) `true`, or its sender is gone.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One node as it sees itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalView {
    pub id: NodeId,
    pub addr: String,
    pub http_addr: String,
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub applied_index: u64,
    pub last_log_index: u64,
    /// Last log index covered by this node's latest snapshot (0 when none).
    pub snapshot_index: u64,
    /// Log entries up to this index were purged from this node's log (0 when none).
    pub purged_index: u64,
    pub voter: bool,
    pub config_version: u64,
    pub ring_digest: String,
    /// Marked down by the leader (its health votes do not count).
    pub down: bool,
}

/// A member of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    pub http_addr: String,
    pub voter: bool,
}

/// One backend with its runtime state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// `leader | follower | candidate | learner | shutdown`. A node that is not a voter in the current
/// membership is reported as a learner whatever openraft's state says.
pub fn role_name(state: ServerState, voter: bool) -> &'static str {
    match state {
        ServerState::Shutdown => "shutdown",
        ServerState::Leader => "leader",
        _ if !voter => "learner",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Follower => "follower",
    }
}

/// Every member (voters and learners) of a stored membership, by id.
pub fn members(membership: &StoredMembership) -> Vec<Member> {
    members_of(membership.membership())
}

/// Every member (voters and learners) of a membership, by id.
pub fn members_of(m: &Membership) -> Vec<Member> {
    let voters: Vec<NodeId> = m.voter_ids().collect();
    m.nodes()
        .map(|(id, node)| Member {
            id: *id,
            addr: node.addr.clone(),
            http_addr: node.http_addr.clone(),
            voter: voters.contains(id),
        })
        .collect()
}

/// The view of a node from its metrics and applied state. `me` supplies the addresses when the
/// node is not (yet) in the membership; `ring_digest` is the data plane's routing digest.
pub fn local_view(
    metrics: &RaftMetrics,
    applied: &AppliedState,
    me: &LbNode,
    ring_digest: String,
) -> LocalView {
    let membership = metrics.membership_config.membership();
    let voter = membership.voter_ids().any(|v| v == metrics.id);
    let node = membership.get_node(&metrics.id).unwrap_or(me);
    LocalView {
        id: metrics.id,
        addr: node.addr.clone(),
        http_addr: node.http_addr.clone(),
        role: role_name(metrics.state, voter),
        term: metrics.current_term,
        leader: metrics.current_leader,
        applied_index: applied.last_applied.map(|l| l.index).unwrap_or(0),
        last_log_index: metrics.last_log_index.unwrap_or(0),
        snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
        voter,
        config_version: applied.state.config_version,
        ring_digest,
        down: applied.state.down_nodes.contains(&metrics.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn membership(voters: &[NodeId], learners: &[NodeId]) -> StoredMembership {
        let nodes: BTreeMap<NodeId, LbNode> = voters
            .iter()
            .chain(learners)
            .map(|id| {
                (*id, LbNode { addr: format!("127.0.0.{id}:7400"), http_addr: format!("127.0.0.{id}:7401") })
            })
            .collect();
        let config = vec![voters.iter().copied().collect::<BTreeSet<_>>()];
        let m = openraft::Membership::new(config, nodes);
        StoredMembership::new(None, m)
    }

    #[test]
    fn roles_follow_openraft_and_non_voters_are_learners() {
        assert_eq!(role_name(ServerState::Leader, true), "leader");
        assert_eq!(role_name(ServerState::Follower, true), "follower");
        assert_eq!(role_name(ServerState::Candidate, true), "candidate");
        assert_eq!(role_name(ServerState::Follower, false), "learner");
        assert_eq!(role_name(ServerState::Shutdown, false), "shutdown");
    }

    #[test]
    fn members_lists_voters_and_learners_with_addresses() {
        let m = members(&membership(&[1, 2], &[5]));
        assert_eq!(
            m.iter().map(|m| (m.id, m.voter)).collect::<Vec<_>>(),
            vec![(1, true), (2, true), (5, false)]
        );
        assert_eq!(m[2].addr, "127.0.0.5:7400");
    }

    #[test]
    fn local_view_reads_metrics_and_applied_state() {
        let mut metrics = RaftMetrics::new_initial(2);
        metrics.membership_config = Arc::new(membership(&[1, 2, 3], &[]));
        metrics.state = ServerState::Follower;
        metrics.current_term = 4;
        metrics.current_leader = Some(1);
        let mut applied = AppliedState::default();
        applied.state.config_version = 3;
        applied.last_applied = Some(openraft::LogId::new(openraft::CommittedLeaderId::new(4, 1), 17));
        let me = LbNode { addr: "ignored:1".into(), http_addr: "ignored:2".into() };
        let v = local_view(&metrics, &applied, &me, "d1".into());
        assert_eq!((v.id, v.role, v.term, v.leader, v.applied_index), (2, "follower", 4, Some(1), 17));
        assert!(v.voter);
        assert_eq!(v.addr, "127.0.0.2:7400");
        assert_eq!(v.config_version, 3);
        assert_eq!(v.ring_digest, "d1");
    }

    #[test]
    fn a_node_outside_the_membership_reports_its_own_addresses() {
        let metrics = RaftMetrics::new_initial(9);
        let me = LbNode { addr: "127.0.0.9:7400".into(), http_addr: "127.0.0.9:7401".into() };
        let v = local_view(&metrics, &AppliedState::default(), &me, String::new());
        assert_eq!((v.role, v.voter, v.addr.as_str()), ("learner", false, "127.0.0.9:7400"));
    }
}
