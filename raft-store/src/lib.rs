//! lbfleet-raft-store: the openraft type config and the storage it runs on.
//!
//! Layout:
//! - [`types`]: `TypeConfig` (node id, node address, entry payload) and common aliases.
//! - [`state`]: `ClusterState` and its pure, deterministic `apply(command)`.
//! - `engine`: the narrow seam over sled (the only module that names sled).
//! - `log_store`: `RaftLogStorage` (vote, log entries, purge) — flushed before it is reported durable.
//! - `state_machine`: `RaftStateMachine` (apply, snapshots with postcard).

pub mod state;
pub mod types;

pub use types::*;
