//! The Raft runtime of an lbnode: openraft configuration, the tonic network between nodes, the
//! service that receives Raft RPCs, and the one-time bootstrap of a new cluster.
//!
//! - [`network`]: `RaftNetworkFactory`/`RaftNetwork` over gRPC, one cached channel per peer.
//! - [`service`]: the `Raft` gRPC service; decodes postcard payloads, checks them against
//!   [`bounds`] and hands them to openraft, and answers followers' forwarded proposals and
//!   read-index requests.
//! - [`bounds`]: what a peer's message may carry (terms, indexes, snapshot chunks, memberships),
//!   pure.
//! - [`proposer`]: the one write path ([`Proposer`]: `propose`, `read_linearizable`, typed errors).
//! - [`handle`]: [`RaftNode`], what the rest of the node uses of its Raft member (metrics, the applied
//!   model as `Arc<ClusterState>`, the local view, the proposer). Only this module names the storage
//!   crate.
//!
//! # Bootstrap (exactly once per cluster)
//!
//! A cluster is formed by the node whose id is the **lowest** in `--peers`, and only when its store
//! holds no membership yet (no vote, no log, no applied membership). It calls `Raft::initialize` with
//! every listed peer as a voter; "already initialized" is treated as success, so restarting that node
//! with the same flags is harmless. Every other node (not lowest, or started without `--peers`)
//! initializes nothing: it waits until a leader contacts it, which happens either because it is in the
//! bootstrap membership or because an operator added it (`lbctl nodes add`, i.e. `AddNode`).
//! Known limit: if the lowest node's data is wiped while the others keep theirs, restarting it with
//! `--peers` would try to form a fresh cluster; it is refused by the others (their term and log are
//! ahead) but the wiped node should be re-added with `RemoveNode` + `AddNode` instead.

pub mod bounds;
pub mod handle;
pub mod network;
pub mod proposer;
pub mod service;

pub use handle::{leads, RaftNode};
pub use lbfleet_raft_store::{Raft, RaftMetrics};

/// What a membership change on the leader answers.
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<lbfleet_raft_store::TypeConfig>;
pub use proposer::{Leader, ProposeError, Proposed, Proposer};

use std::collections::BTreeMap;
use std::sync::Arc;

use lbfleet_api::NodeId;
use lbfleet_raft_store::LbNode;
use openraft::error::{InitializeError, RaftError};
use openraft::{Config, SnapshotPolicy};

use crate::config::{NodeConfig, RaftTiming};

/// Largest snapshot chunk sent in one `InstallSnapshot` RPC.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Timeout of one snapshot chunk (openraft's default of 200 ms is too short for a 4 MiB chunk).
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 3_000;
/// Log entries kept after a snapshot, so that slightly lagging followers need no snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 50;
/// Largest gRPC message accepted by the Raft service and client (a chunk plus its envelope, or a
/// batch of entries).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// openraft configuration for the given timing. Fails with a message naming the bad field.
pub fn raft_config(timing: &RaftTiming) -> Result<Config, String> {
    let config = Config {
        cluster_name: "lbfleet".into(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_min_ms,
        election_timeout_max: timing.election_max_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_logs),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        purge_batch_size: 16,
        ..Config::default()
    };
    config.validate().map_err(|e| format!("invalid Raft timing: {e}"))
}

/// The voters to initialize the cluster with, if this node is the one that bootstraps: `--peers`
/// is given, lists this node, and this node has the lowest id in it.
pub fn bootstrap_members(config: &NodeConfig) -> Option<BTreeMap<NodeId, LbNode>> {
    let lowest = config.peers.iter().map(|p| p.id).min()?;
    if lowest != config.id {
        return None;
    }
    Some(config.peers.iter().map(|p| (p.id, p.node())).collect())
}

/// What bootstrap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// This node is not the bootstrapping node; it waits to be contacted.
    Waiting,
    /// The store already holds a membership (or a vote or log); nothing to do.
    AlreadyInitialized,
    /// A new cluster was initialized with these voters.
    Initialized(Vec<NodeId>),
}

/// Form the cluster if this node is the one that must (see the module docs).
pub async fn bootstrap(
    node: &RaftNode,
    config: &NodeConfig,
) -> Result<Bootstrap, RaftError<NodeId, InitializeError<NodeId, LbNode>>> {
    let Some(members) = bootstrap_members(config) else {
        return Ok(Bootstrap::Waiting);
    };
    let raft = node.raft();
    let has_membership = !node.members().is_empty();
    if has_membership || raft.is_initialized().await? {
        return Ok(Bootstrap::AlreadyInitialized);
    }
    let ids = members.keys().copied().collect();
    match raft.initialize(members).await {
        Ok(()) => Ok(Bootstrap::Initialized(ids)),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(Bootstrap::AlreadyInitialized),
        Err(e) => Err(e),
    }
}

/// Open the store in `config.data_dir`, start Raft over it, and make the node's Raft handle (with
/// its proposer, which forwards over `channels`).
pub async fn start(config: &NodeConfig, channels: crate::channels::ChannelCache) -> anyhow::Result<RaftNode> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data_dir {}: {e}", config.data_dir.display()))?;
    let (log_store, sm_store) = lbfleet_raft_store::open(&config.data_dir)?;
    let committed = log_store.committed_index();
    let raft = new_raft(config, log_store, sm_store.clone(), channels.fresh()).await?;
    let proposer = Proposer::new(config.id, raft.clone(), config.write_timeout, channels);
    Ok(RaftNode::new(config.id, config.advertised(), raft, (sm_store, committed), proposer))
}

/// Create the openraft instance over the given storage and a gRPC network on `channels`.
pub async fn new_raft(
    config: &NodeConfig,
    log_store: lbfleet_raft_store::LogStore,
    sm_store: lbfleet_raft_store::StateMachineStore,
    channels: crate::channels::ChannelCache,
) -> anyhow::Result<Raft> {
    let raft_config = Arc::new(raft_config(&config.raft).map_err(anyhow::Error::msg)?);
    let network = network::GrpcNetworkFactory::new(config.id, channels);
    let raft = Raft::new(config.id, raft_config, network, log_store, sm_store)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start Raft for node {}: {e}", config.id))?;
    Ok(raft)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, FileConfig};
    use clap::Parser;

    fn node(args: &[&str]) -> NodeConfig {
        let mut all = vec!["lbnode", "--ca-file", "ca.pem", "--cert-file", "n.pem", "--key-file", "n.key"];
        all.extend_from_slice(args);
        NodeConfig::resolve(FileConfig::default(), &Cli::try_parse_from(all).unwrap()).unwrap()
    }

    const PEERS: &str = "3=127.0.0.13:7400,1=127.0.0.11:7400,2=127.0.0.12:7400";

    #[test]
    fn only_the_lowest_listed_node_bootstraps() {
        let m = bootstrap_members(&node(&["--id", "1", "--peers", PEERS])).expect("node 1 bootstraps");
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(m[&2], LbNode { addr: "127.0.0.12:7400".into(), http_addr: "127.0.0.12:7401".into() });
        assert!(bootstrap_members(&node(&["--id", "2", "--peers", PEERS])).is_none());
        assert!(bootstrap_members(&node(&["--id", "3", "--peers", PEERS])).is_none());
    }

    #[test]
    fn a_node_without_peers_or_not_listed_waits() {
        assert!(bootstrap_members(&node(&["--id", "1"])).is_none());
        // Node 4 is lower than nobody in the list and is not in it: it must not form its own cluster.
        assert!(bootstrap_members(&node(&["--id", "4", "--peers", PEERS])).is_none());
    }

    #[test]
    fn a_listed_node_that_is_lowest_but_absent_never_bootstraps() {
        // Node 1 is not in the list; the lowest listed id is 2, which is not node 1.
        assert!(bootstrap_members(&node(&["--id", "1", "--peers", "2=a:7400,3=b:7400"])).is_none());
    }

    #[test]
    fn raft_config_uses_the_timing_and_keeps_few_logs() {
        let c = raft_config(&RaftTiming::default()).unwrap();
        assert_eq!(c.heartbeat_interval, 50);
        assert_eq!(c.election_timeout_min, 250);
        assert_eq!(c.election_timeout_max, 400);
        assert!(matches!(c.snapshot_policy, SnapshotPolicy::LogsSinceLast(500)));
        assert_eq!(c.max_in_snapshot_log_to_keep, LOGS_KEPT_AFTER_SNAPSHOT);
        assert!(c.install_snapshot_timeout >= 1000);
    }

    #[test]
    fn raft_config_rejects_inconsistent_timing() {
        let t =
            RaftTiming { heartbeat_ms: 100, election_min_ms: 500, election_max_ms: 400, snapshot_logs: 10 };
        let err = raft_config(&t).unwrap_err();
        assert!(err.contains("election"), "{err}");
    }
}
