//! Commands replicated through the Raft log, and what applying one returns.
//!
//! Commands are encoded with postcard on disk and on the wire, so every field type here must be
//! postcard-friendly: no `skip_serializing_if`, no untagged or flattened enums.

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::NodeId;

/// One change of the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Replace the whole cluster config. Validated once, by the node that proposes it (a rejected
    /// config is never proposed and leaves the previous one in force); `apply` puts it in force as
    /// committed, whatever the rules of the binary that replays it.
    ApplyConfig { config: ClusterConfig },
    /// A node's view of one backend changed.
    HealthVote {
        node: NodeId,
        pool: String,
        backend: String,
        healthy: bool,
        /// Milliseconds since the Unix epoch on the voting node (informational; `apply` never reads a clock).
        observed_at_ms: u64,
    },
    /// Stop (or resume) sending new flows to a backend on every node.
    SetDrain { pool: String, backend: String, draining: bool },
    /// Activate or deactivate a standby backend.
    SetStandby { pool: String, backend: String, active: bool },
    /// Retired tag 4 (once `NodeJoined`, never proposed: members come from Raft membership entries).
    /// Kept so that every later variant keeps the postcard tag stored logs hold; `apply` refuses it.
    #[doc(hidden)]
    Retired4,
    /// Retired tag 5 (once `NodeLeft`, never proposed). See [`Command::Retired4`].
    #[doc(hidden)]
    Retired5,
    /// A decision of the leader (autoscaling, node liveness, hook results). `apply` refuses it when a
    /// leader of a later term has already decided something, so a deposed leader cannot act twice.
    /// Every accepted decision is recorded in the replicated event log with `why`.
    Leader { term: u64, leader: NodeId, at_ms: u64, action: LeaderAction, why: String },
}

/// What a leader decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderAction {
    /// Activate or deactivate a standby backend.
    SetStandby { pool: String, backend: String, active: bool },
    /// Mark an lbnode down (it stopped answering) or up again. A down node's health votes are dropped.
    SetNodeDown { id: NodeId, down: bool },
    /// Outcome of a scale hook run by the leader. `command` is the hook's name (the hooks themselves
    /// are defined in each node's local config).
    HookResult { pool: String, backend: String, command: String, exit_code: Option<i32>, output: String },
    /// The config names a scale hook that the leader's local config does not define: nothing ran.
    HookMissing { pool: String, backend: String, hook: String },
}

impl Command {
    /// Short name for logs and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::ApplyConfig { .. } => "apply_config",
            Command::HealthVote { .. } => "health_vote",
            Command::SetDrain { .. } => "set_drain",
            Command::SetStandby { .. } => "set_standby",
            Command::Retired4 => "retired_4",
            Command::Retired5 => "retired_5",
            Command::Leader { .. } => "leader",
        }
    }
}

/// What applying a command produced. Returned to the client that proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Applied; nothing more to say (also the result of blank and membership entries).
    #[default]
    Ok,
    /// A new config is in force with this version number.
    ConfigApplied { version: u64 },
    /// The command was refused; the state did not change. One message per problem.
    Rejected { errors: Vec<String> },
}
