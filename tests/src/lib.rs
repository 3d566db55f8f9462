//! lbfleet-tests: the one process harness of the workspace. It starts, stops, kills and waits for real
//! `lbnode` and `lbctl demo-backend` processes on loopback, and talks to them over gRPC and HTTP. The
//! end-to-end tests of this crate (`tests/`), of `node/tests` and of `cli/tests` use it, and so does
//! `lbchaos`. It depends on no workspace crate but `lbfleet-api`: the binaries are run, not linked.
//!
//! Layout:
//! - [`wait`]: [`wait_until`], the one way to wait for a condition: poll with a deadline, fail naming what
//!   was awaited and what was seen last (tests never sleep and hope).
//! - [`bin`]: finds (and if needed builds) the workspace binaries; [`lbctl`] runs lbctl with a deadline
//!   ([`lbctl_on_terminal`]: on a pseudo-terminal, through `script`).
//! - [`process`]: liveness, signals and exits of processes.
//! - [`cluster`]: [`Cluster`] / [`NodeProc`], lbnode processes with their own data dirs and loopback IPs,
//!   killed on drop (their logs are printed when a test panics).
//! - [`backend`]: [`BackendProc`], a demo HTTP backend process.
//! - [`compose`]: the docker compose clusters: start and stop a project, exec, kill, pause, stop a
//!   service's container, the router's next hops for the front's VIP.
//! - [`creds`]: the cluster CA, node certificates and tokens every cluster of a test process uses (made
//!   once by `lbctl ca init`), and a foreign CA for refusals.
//! - [`admin`]: a thin gRPC client for the Admin service (TLS, the admin token), with deadlines.
//! - [`http`]: one HTTP/1.1 GET on a fresh connection, and response headers as text.
//! - [`config`]: small valid configs that carry a marker.
//!
//! Each test picks its own third octet (`127.0.<net>.1N`) so test binaries running at the same time
//! never share an address; ports are the contract's defaults (7400 gRPC, 7401 admin HTTP).

pub mod admin;
pub mod backend;
pub mod bin;
pub mod cluster;
pub mod compose;
pub mod config;
pub mod creds;
pub mod http;
pub mod process;
pub mod wait;

pub use backend::BackendProc;
pub use bin::{bin, lbctl, lbctl_bare, lbctl_on_terminal};
pub use cluster::{loopback_ok, Cluster, ClusterBuilder, NodeProc};
pub use config::{marked_config, marker_of};
pub use creds::creds;
pub use http::{header, http_get};
pub use lbfleet_api::pb;
pub use wait::wait_until;
