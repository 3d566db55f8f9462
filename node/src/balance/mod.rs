//! Pure balancing: which backend of a pool gets a request, and which backends this node may use.
//!
//! Layout (each file plain data in, decision out; nothing here opens a socket or waits):
//! - [`hash`]: fixed-seed hashing of request keys (bytes, client IP, client address, flow) and digests.
//! - [`backend_set`]: backend sets as the hash structures take them (keys distinct, sorted by key).
//! - [`maglev`]: the Maglev lookup table; [`ketama`]: the Ketama-style hash ring.
//! - [`backend`]: [`BackendHandle`] (address, weight, this node's in-flight count) and the
//!   [`InFlight`] guard.
//! - [`policy`]: the [`Selection`] trait and the eight policies behind [`PolicySelector`].
//! - [`eligible`]: which backends of a pool serve, from committed state alike on every node.
//! - [`pool`]: [`PoolSelector`], a pool's immutable selection snapshot, and its fallback sequence.
//! - [`routing`]: [`Routing`], the whole node's snapshot (pools and listeners) built after every
//!   applied change and swapped atomically ([`SharedRouting`]); its digest is what each node publishes.
//! - [`key`]: request keys for HTTP ([`key::request_key`]) and L4 ([`key::l4_key`]), routes, the sticky
//!   cookie, the bounded list of backends to try.
//! - [`local_check`]: the rise/fall state machine of one active check and its local view.
//! - [`ejection`]: passive outlier ejection rules (the ejection book).
//! - [`usability`]: [`OutlierTracker`], the node-local usability table the proxies consult per pick.
//! - [`rate`]: token buckets of the rate limits, the bounded per-source table, a node's share of a
//!   fleet-wide budget.
//!
//! Data enters as the committed model (`lbfleet_api::state::ClusterState` and its config) and, for
//! node-local usability, as outcomes the proxies and checkers report; it leaves as ordered fallback
//! sequences of [`BackendHandle`]s. This module imports only the model (`lbfleet_api`).

pub mod backend;
pub mod backend_set;
pub mod ejection;
pub mod eligible;
pub mod hash;
pub mod ketama;
pub mod key;
pub mod local_check;
pub mod maglev;
pub mod policy;
pub mod pool;
pub mod rate;
pub mod routing;
pub mod usability;

pub use backend::{BackendHandle, InFlight};
pub use eligible::{is_serving, EligibleBackend, EligibleSet, Tier};
pub use hash::{hash_flow, hash_ip, hash_key_bytes, hash_socket_addr};
pub use local_check::LocalState;
pub use policy::{BuildError, BuildParams, PolicyPick, PolicySelector, Selection};
pub use pool::{Picks, PoolError, PoolSelector};
pub use routing::{Routing, SharedRouting};
pub use usability::OutlierTracker;
