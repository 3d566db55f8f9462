//! lbfleet-node: the lbnode daemon's library (the binary is `src/main.rs`).
//!
//! Layout, by layer (each imports only the layers below it; `tests/layers.rs` checks it):
//! - entry points:
//!   - [`node`]: [`node::Node`], starting and stopping everything below.
//!   - [`cluster`]: [`cluster::Cluster`], what the admin servers share.
//!   - [`admin`]: the `Admin` gRPC service ([`admin::grpc`]), the admin HTTP server ([`admin::http`])
//!     with its Prometheus metrics ([`admin::metrics`]) and the cluster dashboard's data
//!     ([`admin::dashboard`]).
//! - I/O:
//!   - [`proxy`]: the listener manager and the HTTP, TCP and UDP proxies, PROXY protocol, counters.
//!   - [`health`]: active health checks from this node and its health votes.
//!   - [`leader`]: what only the leader does: node liveness probes and autoscaling of standby
//!     backends, with their pure decision functions.
//!   - [`load`]: the report of per-backend in-flight counts each node sends the leader every second,
//!     and the leader's board of the latest reports.
//!   - [`traffic`]: this node's recent request and error rates and latency per backend and listener,
//!     sampled every second from its counters, for the dashboard.
//!   - [`front`]: the VIP of the front: BIRD beside the node (its child), announcing the VIP over
//!     BGP while the node can serve and withdrawing it first at shutdown.
//!   - [`raft`]: openraft configuration, bootstrap, the gRPC network, the Raft service, the one write
//!     path ([`raft::Proposer`]) and [`raft::RaftNode`], the only module that names the storage crate.
//! - pure: [`balance`]: hashing, Maglev, ketama, policies, eligibility, pool selectors, the routing
//!   snapshot (whose digest each node publishes), request keys, node-local usability.
//! - leaves: [`config`] (`NodeConfig` from flags and an optional TOML file), [`channels`] (one cached
//!   gRPC channel per peer), [`net`] (sockets to backends from the node's IP), [`shutdown`] (the one
//!   shutdown primitive), [`tls`] (the cluster CA, this node's certificate, the operators' hashed
//!   tokens), [`auth`] (the gate every gRPC call passes: who is calling, and may they), [`accept`]
//!   (the accept loop of every server: connection cap, back-off when out of descriptors) and
//!   [`limits`] (every limit of the gRPC and admin HTTP servers, with defaults), [`observed`] (the
//!   elections and drains a node saw, for the dashboard).
//!
//! The model itself (config, commands, `ClusterState` and its `apply`, views) is `lbfleet_api`.
//!
//! Where data enters and leaves:
//! - gRPC on `bind:grpc_port`, mutual TLS, every call through [`auth`]: Raft RPCs from peers (postcard payloads, into openraft and from there
//!   into the sled store), proposals and read-index requests forwarded by followers, and admin calls
//!   from `lbctl` (writes become Raft log entries through the proposer).
//! - admin HTTP on `admin_http`: read-only views of this node (health, state JSON, metrics, dashboard).
//! - outgoing gRPC to peers: Raft replication and votes, forwarded proposals, status fan-out, load
//!   reports to the leader and the leader's liveness probes.
//! - the committed model leaves the Raft runtime as `lbfleet_api::state::Committed` (an
//!   `Arc<ClusterState>` and its log index, republished when it changes,
//!   [`raft::RaftNode::watch_model`]), which the listener manager turns into the routing snapshot.

pub mod accept;
pub mod admin;
pub mod auth;
pub mod balance;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod front;
pub mod health;
pub mod leader;
pub mod limits;
pub mod load;
pub mod net;
pub mod node;
pub mod observed;
pub mod proxy;
pub mod raft;
pub mod shutdown;
pub mod tls;
pub mod traffic;
