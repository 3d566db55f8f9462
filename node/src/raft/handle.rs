//! [`RaftNode`]: this node's handle on its Raft member, what the rest of the node may use of it:
//! metrics, the applied model, the local view, and the one write path ([`super::proposer`]).
//! Nothing outside `crate::raft` names the storage crate; the model leaves as
//! `Arc<lbfleet_api::state::ClusterState>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lbfleet_api::state::{ClusterState, Committed, LbNode};
use lbfleet_api::view::{Member, NodeStatus};
use lbfleet_api::NodeId;
use lbfleet_raft_store::{Raft, RaftMetrics, StateMachineStore, StoredMembership};
use openraft::ServerState;
use tokio::sync::watch;

use super::proposer::Proposer;

/// openraft membership with lbfleet's node type.
pub type Membership = openraft::Membership<NodeId, LbNode>;

/// This node's Raft member. Cheap to clone.
#[derive(Clone)]
pub struct RaftNode {
    pub id: NodeId,
    /// How other nodes reach this one.
    pub me: LbNode,
    raft: Raft,
    store: StateMachineStore,
    proposer: Proposer,
    /// The log store's committed index (see [`Self::committed_index`]).
    committed: Arc<AtomicU64>,
}

impl RaftNode {
    /// `committed`: the log store's committed index, shared.
    pub fn new(
        id: NodeId,
        me: LbNode,
        raft: Raft,
        (store, committed): (StateMachineStore, Arc<AtomicU64>),
        proposer: Proposer,
    ) -> Self {
        RaftNode { id, me, raft, store, proposer, committed }
    }

    /// Index of the latest committed log entry this node knows (0 before any; openraft 0.9's metrics
    /// do not carry it, the log store sees it saved).
    pub fn committed_index(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }

    /// The openraft instance (membership changes, shutdown).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The one write path.
    pub fn proposer(&self) -> &Proposer {
        &self.proposer
    }

    /// Latest Raft metrics of this node.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// Raft metrics as they change.
    pub fn watch_metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.raft.metrics()
    }

    /// Resolves when openraft has stopped on its own: a fatal storage error, a panic of its core
    /// task, or its core gone (the metrics channel closed). Returns what happened. Such a node would
    /// serve frozen state forever; the caller should stop the process (see `Node::failed`).
    pub async fn fatal(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            let stopped = metrics.borrow_and_update().running_state.as_ref().err().map(|e| match e {
                openraft::error::Fatal::StorageError(e) => format!("storage error: {e}"),
                other => other.to_string(),
            });
            if let Some(e) = stopped {
                return e;
            }
            if metrics.changed().await.is_err() {
                return "the Raft core task ended (its metrics channel closed)".into();
            }
        }
    }

    /// Whether this node leads `term` now.
    pub fn leads(&self, term: u64) -> bool {
        leads(&self.metrics(), term)
    }

    /// The applied model.
    pub fn model(&self) -> Arc<ClusterState> {
        self.store.current_model()
    }

    /// The applied model as it changes.
    pub fn watch_model(&self) -> watch::Receiver<Committed> {
        self.store.subscribe_model()
    }

    /// Log index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.store.current().last_applied.map_or(0, |l| l.index)
    }

    /// Every member (voters and learners) of the applied membership.
    pub fn members(&self) -> Vec<Member> {
        members(&self.store.current().membership)
    }

    /// This node's view right now; `ring_digest` is the data plane's routing digest.
    pub fn local_view(&self, ring_digest: String) -> NodeStatus {
        local_view(&self.metrics(), self.applied_index(), &self.model(), &self.me, ring_digest)
    }
}

/// Whether these metrics say this node leads `term` (and may act for it).
pub fn leads(m: &RaftMetrics, term: u64) -> bool {
    m.state == ServerState::Leader && m.current_term == term
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
    applied_index: u64,
    model: &ClusterState,
    me: &LbNode,
    ring_digest: String,
) -> NodeStatus {
    let membership = metrics.membership_config.membership();
    let voter = membership.voter_ids().any(|v| v == metrics.id);
    let node = membership.get_node(&metrics.id).unwrap_or(me);
    NodeStatus {
        id: metrics.id,
        addr: node.addr.clone(),
        http_addr: node.http_addr.clone(),
        role: role_name(metrics.state, voter).to_string(),
        reachable: true,
        term: metrics.current_term,
        leader: metrics.current_leader,
        applied_index,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
        purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
        voter,
        config_version: model.config_version,
        ring_digest,
        down: model.down_nodes.contains(&metrics.id),
        drained: false,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

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
        let model = ClusterState { config_version: 3, ..ClusterState::default() };
        let me = LbNode { addr: "ignored:1".into(), http_addr: "ignored:2".into() };
        let v = local_view(&metrics, 17, &model, &me, "d1".into());
        assert_eq!(
            (v.id, v.role.as_str(), v.term, v.leader, v.applied_index),
            (2, "follower", 4, Some(1), 17)
        );
        assert!(v.voter);
        assert_eq!(v.addr, "127.0.0.2:7400");
        assert_eq!(v.config_version, 3);
        assert_eq!(v.ring_digest, "d1");
    }

    #[test]
    fn a_node_outside_the_membership_reports_its_own_addresses() {
        let metrics = RaftMetrics::new_initial(9);
        let me = LbNode { addr: "127.0.0.9:7400".into(), http_addr: "127.0.0.9:7401".into() };
        let v = local_view(&metrics, 0, &ClusterState::default(), &me, String::new());
        assert_eq!((v.role.as_str(), v.voter, v.addr.as_str()), ("learner", false, "127.0.0.9:7400"));
    }
}
