//! openraft type configuration shared by every lbfleet crate.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use lbfleet_api::command::{Command, CommandResult};
pub use lbfleet_api::NodeId;

/// Where an lbnode can be reached. Stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbNode {
    /// gRPC address (Raft and admin), `host:port`.
    pub addr: String,
    /// Admin HTTP address, `host:port`.
    pub http_addr: String,
}

impl fmt::Display for LbNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

openraft::declare_raft_types!(
    /// openraft types of lbfleet.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = LbNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, LbNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, LbNode>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, LbNode>;
