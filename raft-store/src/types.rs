//! openraft type configuration shared by every lbfleet crate.

use std::io::Cursor;

pub use lbfleet_api::command::{Command, CommandResult};
pub use lbfleet_api::state::LbNode;
pub use lbfleet_api::NodeId;

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
