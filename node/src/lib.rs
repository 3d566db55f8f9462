//! lbfleet-node: the lbnode daemon's library (the binary is `src/main.rs`).
//!
//! Layout:
//! - [`config`]: `NodeConfig` from flags and an optional TOML file; peer list parsing.
//! - [`node`]: [`node::Node`], starting and stopping everything below.
//! - [`cluster`]: the shared handle (Raft, applied state, identity) and plain views of it.
//! - [`raft`]: openraft configuration, bootstrap, the gRPC network ([`raft::network`]) and the Raft
//!   service ([`raft::service`]).
//! - [`admin`]: the `Admin` gRPC service ([`admin::grpc`]), the admin HTTP server
//!   ([`admin::http`]) and its Prometheus metrics ([`admin::metrics`]).
//! - [`dataplane`]: the Maglev table, the selection policies, per-pool selectors, the routing snapshot
//!   (whose digest each node publishes), the listener manager and the HTTP, TCP and UDP proxies.
//! - [`health`]: active health checks from this node, health votes, passive outlier detection and the
//!   node-local usability of backends the proxies consult.
//! - [`channels`]: one cached gRPC channel per peer address.
//! - [`load`]: per-backend in-flight counts of this node, the report each node sends the leader every
//!   second, and the leader's board of the latest reports.
//! - [`leader`]: what only the leader does: node liveness probes and autoscaling of standby backends,
//!   with their pure decision functions.
//!
//! Where data enters and leaves:
//! - gRPC on `bind:grpc_port`: Raft RPCs from peers (postcard payloads, into openraft and from there
//!   into the sled store) and admin calls from `lbctl` (writes become Raft log entries on the leader;
//!   followers forward them).
//! - admin HTTP on `admin_http`: read-only views of this node (health, state JSON, metrics, dashboard).
//! - outgoing gRPC to peers: Raft replication and votes, forwarded admin calls, status fan-out, load
//!   reports to the leader and the leader's liveness probes.
//! - the applied state leaves through `StateMachineStore::subscribe` ([`node::Node::subscribe`]): an
//!   `Arc<AppliedState>` republished after every apply, which the data plane turns into its routing
//!   snapshot.

pub mod admin;
pub mod balance;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod health;
pub mod leader;
pub mod load;
pub mod net;
pub mod node;
pub mod proxy;
pub mod raft;
pub mod shutdown;
