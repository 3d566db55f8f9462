//! lbfleet-raft-store: the openraft type config and the storage it runs on.
//!
//! Layout:
//! - [`types`]: `TypeConfig` (node id, node address, entry payload) and common aliases.
//! - [`engine`]: the narrow seam over sled (the only module that names sled): one database per
//!   node, two trees, postcard values, big-endian keys, explicit flushes.
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` (vote, committed, log entries,
//!   truncate, purge). Nothing is reported durable before it is flushed to disk.
//! - [`state_machine`]: [`StateMachineStore`], openraft's `RaftStateMachine` (apply, snapshots with
//!   postcard), and [`AppliedState`], the applied state published to the rest of the node.
//!
//! The replicated model itself (`ClusterState` and its deterministic `apply`) is pure and lives in
//! `lbfleet_api::state`; this crate only stores it.
//!
//! Data enters through [`open`] (one directory, one sled database) and through openraft calling
//! the storage traits; it leaves through the same traits and through
//! [`StateMachineStore::current`] / [`StateMachineStore::subscribe`], which hand out the latest
//! [`AppliedState`] as an `Arc` swapped after every apply batch and snapshot install, and
//! [`StateMachineStore::subscribe_model`], which hands out only the model (`lbfleet_api::state::Committed`),
//! republished when it changed.
//!
//! On disk (`dir/` is a sled database, see [`engine`] for the exact keys):
//! - tree `log`: log entries under `L` + big-endian index, and the vote, committed log id and
//!   last purged log id under `M` + name. One tree, so a purge (new last-purged id + removed
//!   entries) is one atomic batch.
//! - tree `sm`: the applied state (`AppliedState`), the current snapshot (meta + data) and the
//!   snapshot counter.

pub mod engine;
pub mod log_store;
pub mod state_machine;
pub mod types;

use std::path::{Path, PathBuf};

pub use log_store::LogStore;
pub use state_machine::{AppliedState, StateMachineStore};
pub use types::*;

/// Failures of the on-disk store. Each names what failed and the store's directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory is already open: sled holds an exclusive lock on `dir/db` for as long as the
    /// database is open, so a second open (from another process, or from this one while the first
    /// handle is alive) is refused.
    #[error(
        "raft store {path} is already in use (another lbnode process, or an earlier handle in this \
         one, holds its lock): {reason}"
    )]
    Locked { path: PathBuf, reason: String },
    /// The database could not be opened or created.
    #[error("cannot open raft store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A read, write or flush of the database failed.
    #[error("raft store {path}: {op} failed: {source}")]
    Io {
        path: PathBuf,
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// A stored value could not be encoded.
    #[error("raft store {path}: cannot encode {what}: {source}")]
    Encode {
        path: PathBuf,
        what: String,
        #[source]
        source: postcard::Error,
    },
    /// A stored value (or received snapshot) could not be decoded.
    #[error("raft store {path}: cannot decode {what}: {source}")]
    Decode {
        path: PathBuf,
        what: String,
        #[source]
        source: postcard::Error,
    },
}

/// Open (or create) the store in `dir` (one sled database).
///
/// Fails with [`StoreError::Locked`] if the directory is already open, by another process or by a
/// handle of this process that is still alive: sled takes an exclusive `flock` on `dir/db`, and
/// `flock` conflicts between separate opens of the file even within one process (both cases are
/// tested in `tests/durability.rs`). The lock is released when the last handle is dropped.
///
/// The returned [`LogStore`] and [`StateMachineStore`] are cheap to clone and share the database;
/// it closes when the last clone is dropped.
pub fn open(dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let engine = engine::Engine::open(dir)?;
    let log = LogStore::new(engine.clone());
    let sm = StateMachineStore::open(engine)?;
    Ok((log, sm))
}
