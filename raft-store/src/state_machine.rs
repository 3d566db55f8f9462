//! openraft's `RaftStateMachine` on the engine: applies committed entries to [`ClusterState`],
//! builds and installs snapshots, and publishes every new [`AppliedState`].
//!
//! Persistence and restart: after every apply batch the whole [`AppliedState`] (state, last
//! applied log id, membership) is written to the `sm` tree under `applied`, without a flush of its
//! own (it reaches disk with the next log flush or sled's background flush). Snapshots (meta +
//! data) are written under `snapshot` and flushed before `build_snapshot` / `install_snapshot`
//! return. On open the state machine starts from whichever of the two is newer. A crash can
//! therefore leave the applied state behind the committed log, never ahead of it and never past a
//! hole: entries after the persisted `last_applied` are not purged unless a flushed snapshot covers
//! them, and openraft re-applies the rest (at start-up up to the saved committed id, then as the
//! leader's commit index arrives). The same log gives the same bytes, so the restarted state equals
//! the state before the crash once it has caught up.
//!
//! Known limit: the whole state is re-encoded and rewritten once per apply batch. That is cheap
//! for the sizes here (a config and per-backend runtime state, kilobytes) but grows with the
//! config; a per-pool key layout would cut it if configs get large.
//!
//! Snapshot data is the postcard encoding of [`AppliedState`]. Snapshot ids are
//! `{term}-{index}-{counter}`, with the counter persisted so ids stay unique across restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Mutex};

use lbfleet_api::state::{ClusterState, Committed};

use crate::engine::{Engine, Space};
use crate::types::{CommandResult, Entry, LbNode, LogId, NodeId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::StoreError;

const APPLIED: &[u8] = b"applied";
const SNAPSHOT: &[u8] = b"snapshot";
const SNAPSHOT_SEQ: &[u8] = b"snapshot_seq";

/// The state machine as of one applied log id. Also the content of a snapshot.
///
/// The model is held in an `Arc` (encoded as the value itself, so the bytes are those of a plain
/// `ClusterState`): an apply batch of blank entries does not copy it, and readers of the model
/// ([`StateMachineStore::subscribe_model`]) share it without a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub state: Arc<ClusterState>,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A snapshot as stored: its meta and the postcard bytes of an [`AppliedState`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The state machine of one node. Cheap to clone (shares the database and the published state).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    /// The latest applied state; the sender keeps it, receivers are handed out by `subscribe`.
    current: watch::Sender<Arc<AppliedState>>,
    /// The latest model alone, sent only when it changed (not on blank or no-op batches).
    model: watch::Sender<Committed>,
    /// Serializes snapshot writes (a build racing an install must not overwrite a newer snapshot)
    /// and the snapshot counter.
    snapshot_lock: Mutex<()>,
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn sm_err(verb: ErrorVerb, e: StoreError) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snapshot_err(meta: Option<&SnapshotMeta>, verb: ErrorVerb, e: StoreError) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(meta.map(|m| m.signature())), verb, AnyError::new(&e)).into()
}

impl StateMachineStore {
    /// Load the persisted state (the newer of the applied state and the current snapshot).
    pub(crate) fn open(engine: Engine) -> std::result::Result<Self, StoreError> {
        let applied: Option<AppliedState> = engine.get(Space::StateMachine, APPLIED, "applied state")?;
        let snapshot: Option<StoredSnapshot> =
            engine.get(Space::StateMachine, SNAPSHOT, "current snapshot")?;
        let mut state = applied.unwrap_or_default();
        if let Some(s) = snapshot {
            if s.meta.last_log_id > state.last_applied {
                state = decode_snapshot_data(&engine, &s.meta, &s.data)?;
            }
        }
        let (model, _) = watch::channel(committed(&state));
        let (current, _) = watch::channel(Arc::new(state));
        Ok(StateMachineStore {
            inner: Arc::new(Inner { engine, current, model, snapshot_lock: Mutex::new(()) }),
        })
    }

    /// Publish a new applied state; the model channel only if the model changed.
    fn publish(&self, st: AppliedState) {
        let model = committed(&st);
        self.inner.current.send_replace(Arc::new(st));
        self.inner.model.send_if_modified(|m| {
            let changed = !Arc::ptr_eq(&m.state, &model.state);
            if changed {
                *m = model;
            }
            changed
        });
    }

    /// The latest applied model.
    pub fn current_model(&self) -> Arc<ClusterState> {
        self.inner.model.borrow().state.clone()
    }

    /// Notified when the applied model changes (an apply batch that changed it, a snapshot install),
    /// with the log index of that batch's last entry.
    pub fn subscribe_model(&self) -> watch::Receiver<Committed> {
        self.inner.model.subscribe()
    }

    /// Latest applied state; updated (Arc swapped) after every apply batch and snapshot install.
    pub fn current(&self) -> Arc<AppliedState> {
        self.inner.current.borrow().clone()
    }

    /// Notified after every apply batch / snapshot install.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AppliedState>> {
        self.inner.current.subscribe()
    }

    /// The directory of the store.
    pub fn path(&self) -> &std::path::Path {
        self.inner.engine.path()
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    fn read_snapshot(&self) -> std::result::Result<Option<StoredSnapshot>, StoreError> {
        self.engine().get(Space::StateMachine, SNAPSHOT, "current snapshot")
    }
}

fn committed(st: &AppliedState) -> Committed {
    Committed { index: st.last_applied.map_or(0, |l| l.index), state: st.state.clone() }
}

/// Decode snapshot bytes; the meta is authoritative for the applied log id and membership.
fn decode_snapshot_data(
    engine: &Engine,
    meta: &SnapshotMeta,
    data: &[u8],
) -> std::result::Result<AppliedState, StoreError> {
    let mut st: AppliedState = engine.decode(&format!("data of snapshot {}", meta.snapshot_id), data)?;
    st.last_applied = meta.last_log_id;
    st.membership = meta.last_membership.clone();
    Ok(st)
}

/// Apply one entry to `st`.
pub fn apply_entry(st: &mut AppliedState, entry: &Entry) -> CommandResult {
    st.last_applied = Some(entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => CommandResult::Ok,
        EntryPayload::Normal(cmd) => Arc::make_mut(&mut st.state).apply(cmd, entry.log_id.index),
        EntryPayload::Membership(m) => {
            let voters: BTreeSet<NodeId> = m.voter_ids().collect();
            let nodes: BTreeMap<NodeId, LbNode> = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
            Arc::make_mut(&mut st.state).apply_membership(voters, nodes);
            st.membership = StoredMembership::new(Some(entry.log_id), m.clone());
            CommandResult::Ok
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let st = self.current();
        let engine = self.engine().clone();
        let _guard = self.inner.snapshot_lock.lock().await;

        let write = |e| sm_err(ErrorVerb::Write, e);
        let seq: u64 =
            engine.get(Space::StateMachine, SNAPSHOT_SEQ, "snapshot counter").map_err(write)?.unwrap_or(0)
                + 1;
        let (term, index) = match &st.last_applied {
            Some(l) => (l.leader_id.term, l.index),
            None => (0, 0),
        };
        let meta = SnapshotMeta {
            last_log_id: st.last_applied,
            last_membership: st.membership.clone(),
            snapshot_id: format!("{term}-{index}-{seq}"),
        };
        let err = |e| snapshot_err(Some(&meta), ErrorVerb::Write, e);
        let data = engine.encode("snapshot data", st.as_ref()).map_err(err)?;

        let mut b = engine.batch(Space::StateMachine);
        b.put_bytes(SNAPSHOT_SEQ, engine.encode("snapshot counter", &seq).map_err(err)?);
        // A concurrent install may have stored a newer snapshot: keep it, return ours.
        let stored = self.read_snapshot().map_err(err)?;
        if stored.is_none_or(|s| s.meta.last_log_id <= meta.last_log_id) {
            let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
            b.put_bytes(SNAPSHOT, engine.encode("snapshot", &stored).map_err(err)?);
        }
        engine.commit(b, &format!("writing snapshot {}", meta.snapshot_id)).map_err(err)?;
        engine.flush(&format!("snapshot {}", meta.snapshot_id)).await.map_err(err)?;
        tracing::debug!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership)> {
        let st = self.current();
        Ok((st.last_applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut st = AppliedState::clone(&self.current());
        let results: Vec<CommandResult> = entries.into_iter().map(|e| apply_entry(&mut st, &e)).collect();
        if results.is_empty() {
            return Ok(results);
        }
        let engine = self.engine();
        let write = |e| sm_err(ErrorVerb::Write, e);
        let mut b = engine.batch(Space::StateMachine);
        b.put_bytes(APPLIED, engine.encode("applied state", &st).map_err(write)?);
        engine.commit(b, "writing the applied state").map_err(write)?;
        self.publish(st);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<()> {
        let engine = self.engine().clone();
        let data = snapshot.into_inner();
        let st = decode_snapshot_data(&engine, meta, &data)
            .map_err(|e| snapshot_err(Some(meta), ErrorVerb::Read, e))?;

        let _guard = self.inner.snapshot_lock.lock().await;
        let err = |e| snapshot_err(Some(meta), ErrorVerb::Write, e);
        let mut b = engine.batch(Space::StateMachine);
        let stored = StoredSnapshot { meta: meta.clone(), data };
        b.put_bytes(SNAPSHOT, engine.encode("snapshot", &stored).map_err(err)?);
        b.put_bytes(APPLIED, engine.encode("applied state", &st).map_err(err)?);
        engine.commit(b, &format!("installing snapshot {}", meta.snapshot_id)).map_err(err)?;
        engine.flush(&format!("installed snapshot {}", meta.snapshot_id)).await.map_err(err)?;
        self.publish(st);
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let stored = self.read_snapshot().map_err(|e| snapshot_err(None, ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbfleet_api::command::Command;
    use openraft::Membership;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::testing::log_id(term, 1, index)
    }

    fn membership_entry(index: u64, voters: &[u64], learners: &[u64]) -> Entry {
        let set: BTreeSet<u64> = voters.iter().copied().collect();
        let nodes: BTreeMap<u64, LbNode> = voters
            .iter()
            .chain(learners)
            .map(|&i| (i, LbNode { addr: format!("a{i}"), http_addr: format!("h{i}") }))
            .collect();
        Entry {
            log_id: log_id(1, index),
            payload: EntryPayload::Membership(Membership::new(vec![set], nodes)),
        }
    }

    #[test]
    fn membership_entries_set_voters_and_every_member() {
        let mut st = AppliedState::default();
        assert_eq!(apply_entry(&mut st, &membership_entry(1, &[1, 2], &[3])), CommandResult::Ok);
        assert_eq!(st.state.voters, BTreeSet::from([1, 2]));
        assert_eq!(st.state.nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(st.state.nodes[&3], LbNode { addr: "a3".into(), http_addr: "h3".into() });
        assert_eq!(st.membership.log_id(), &Some(log_id(1, 1)));
        assert_eq!(st.last_applied, Some(log_id(1, 1)));

        let blank = Entry { log_id: log_id(1, 2), payload: EntryPayload::Blank };
        assert_eq!(apply_entry(&mut st, &blank), CommandResult::Ok);
        assert_eq!(st.last_applied, Some(log_id(1, 2)));
        assert_eq!(st.membership.log_id(), &Some(log_id(1, 1)));

        let vote = Command::HealthVote {
            node: 3,
            pool: "web".into(),
            backend: "b".into(),
            healthy: false,
            observed_at_ms: 0,
        };
        let before = st.state.clone();
        let refused = Entry { log_id: log_id(1, 3), payload: EntryPayload::Normal(vote) };
        assert!(matches!(apply_entry(&mut st, &refused), CommandResult::Rejected { .. }));
        assert_eq!(st.state, before, "a refused command changes nothing");
        assert_eq!(st.last_applied, Some(log_id(1, 3)));
    }

    #[test]
    fn the_model_is_shared_and_encoded_as_a_plain_cluster_state() {
        let mut st = AppliedState::default();
        apply_entry(&mut st, &membership_entry(1, &[1, 2], &[3]));
        let shared = st.state.clone();
        apply_entry(&mut st, &Entry { log_id: log_id(1, 2), payload: EntryPayload::Blank });
        assert!(Arc::ptr_eq(&shared, &st.state), "a blank entry does not copy the model");
        let plain = (ClusterState::clone(&st.state), st.last_applied, st.membership.clone());
        assert_eq!(postcard::to_allocvec(&st).unwrap(), postcard::to_allocvec(&plain).unwrap());
    }

    #[tokio::test]
    async fn the_model_is_published_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachineStore::open(Engine::open(dir.path()).unwrap()).unwrap();
        let mut model = sm.subscribe_model();
        model.borrow_and_update();
        sm.apply([Entry { log_id: log_id(1, 1), payload: EntryPayload::Blank }]).await.unwrap();
        assert!(!model.has_changed().unwrap(), "a blank entry changes no state");
        assert_eq!(sm.current().last_applied, Some(log_id(1, 1)));
        sm.apply([membership_entry(2, &[1, 2], &[])]).await.unwrap();
        assert!(model.has_changed().unwrap());
        let seen = model.borrow_and_update().clone();
        assert_eq!((seen.index, seen.state.voters.len()), (2, 2));
        assert!(Arc::ptr_eq(&seen.state, &sm.current_model()));
    }

    #[test]
    fn open_starts_from_the_snapshot_when_it_is_newer_than_the_applied_state() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut old = AppliedState::default();
        apply_entry(&mut old, &membership_entry(1, &[1], &[]));
        let mut new = old.clone();
        apply_entry(&mut new, &membership_entry(2, &[1, 2], &[]));
        let meta = SnapshotMeta {
            last_log_id: new.last_applied,
            last_membership: new.membership.clone(),
            snapshot_id: "1-2-1".into(),
        };
        let stored = StoredSnapshot { meta, data: engine.encode("snapshot data", &new).unwrap() };
        let mut b = engine.batch(Space::StateMachine);
        b.put_bytes(APPLIED, engine.encode("applied state", &old).unwrap());
        b.put_bytes(SNAPSHOT, engine.encode("snapshot", &stored).unwrap());
        engine.commit(b, "test setup").unwrap();

        let sm = StateMachineStore::open(engine.clone()).unwrap();
        assert_eq!(*sm.current(), new);

        // And the applied state wins when it is the newer one.
        let mut newer = new.clone();
        apply_entry(&mut newer, &Entry { log_id: log_id(1, 3), payload: EntryPayload::Blank });
        let mut b = engine.batch(Space::StateMachine);
        b.put_bytes(APPLIED, engine.encode("applied state", &newer).unwrap());
        engine.commit(b, "test setup").unwrap();
        let sm = StateMachineStore::open(engine).unwrap();
        assert_eq!(*sm.current(), newer);
    }
}
