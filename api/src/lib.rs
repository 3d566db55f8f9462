//! lbfleet-api: everything nodes and tools agree on, with no I/O.
//!
//! Layout:
//! - [`pb`]: the protobuf messages and tonic services (`Raft` between nodes, `Admin` for `lbctl`),
//!   generated at build time from `proto/lbfleet.proto`.
//! - [`config`]: the cluster config model (TOML and JSON share one schema), parsing and validation that
//!   reports every problem at once, each naming its place.
//! - [`command`]: the commands replicated through the Raft log and the result of applying one.
//! - [`state`]: [`state::ClusterState`], the replicated state, and its deterministic `apply`; the
//!   member address record [`state::LbNode`].
//! - [`auth`]: the trust boundary as data: node identities in certificates, operators' roles and
//!   hashed tokens, and what each gRPC method requires.
//! - [`view`]: the views (node status, members, backends, events) every surface shows, with their protobuf
//!   conversions.
//!
//! Data enters as text (`config::parse`, the one place a config is validated) or as protobuf messages
//! and leaves as typed values; nothing here opens a socket or a file.

pub mod auth;
pub mod command;
pub mod config;
pub mod state;
pub mod view;

/// Generated protobuf and gRPC code.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("lbfleet.v1");
}

/// Identifier of an lbnode inside the Raft group.
pub type NodeId = u64;
