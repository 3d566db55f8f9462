//! openraft's own storage conformance suite, run against a fresh on-disk store per case.

use lbfleet_raft_store::{open, LogStore, NodeId, StateMachineStore, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use tempfile::TempDir;

/// Opens a store in a new temporary directory; the directory is removed when the guard drops.
struct TempDirStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempDirStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open(dir.path()).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(TempDirStore).expect("openraft storage suite");
}
