//! openraft's `RaftLogStorage` on the engine: the vote, the committed log id and the log.
//!
//! Durability: `save_vote`, `truncate` and `purge` return only after their write is flushed to
//! disk; `append` reports `log_io_completed(Ok(()))` only after the entries are flushed (it flushes
//! inline, on sled's I/O thread, and then calls back before returning: openraft allows either
//! order, and inline keeps every write strictly serialized). `save_committed` is written without
//! its own flush: the committed id is a recovery hint, and a stale one after a crash only means
//! openraft re-applies fewer entries at start-up before the leader tells it more.
//!
//! All writes go through the one `LogStore` openraft owns; clones (the log readers) only read.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageError, StorageIOError,
};

use crate::engine::{log_key, meta_key, Engine, Space};
use crate::types::{Entry, LogId, NodeId, TypeConfig, Vote};
use crate::StoreError;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log and vote of one node. Cheap to clone (shares the database).
#[derive(Clone)]
pub struct LogStore {
    engine: Engine,
    /// Index of the last committed log id openraft saved (0 before any), shared by the clones.
    committed: Arc<AtomicU64>,
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: StoreError) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

impl LogStore {
    pub(crate) fn new(engine: Engine) -> Self {
        LogStore { engine, committed: Arc::default() }
    }

    /// Index of the latest committed log entry known to this node (0 before any), as openraft last
    /// saved it: it follows the commit as the leader advances it and tells this node.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.committed)
    }

    /// The directory of the store.
    pub fn path(&self) -> &std::path::Path {
        self.engine.path()
    }

    fn last_purged(&self) -> std::result::Result<Option<LogId>, StoreError> {
        self.engine.get(Space::Log, &meta_key(LAST_PURGED), "last purged log id")
    }

    async fn flush(&self, what: &str, subject: ErrorSubject<NodeId>) -> Result<()> {
        self.engine.flush(what).await.map_err(|e| io_err(subject, ErrorVerb::Write, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        self.engine.log_entries(range).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id =
            self.last_purged().map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last = self
            .engine
            .last_log_entry::<Entry>()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
            .map(|e| e.log_id);
        let last_log_id = match (last, last_purged_log_id) {
            (Some(l), _) => Some(l),
            (None, p) => p,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<()> {
        let err = |e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e);
        let mut b = self.engine.batch(Space::Log);
        b.put_bytes(&meta_key(VOTE), self.engine.encode("vote", vote).map_err(err)?);
        self.engine.commit(b, "writing the vote").map_err(err)?;
        self.flush("the vote", ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>> {
        self.engine
            .get(Space::Log, &meta_key(VOTE), "vote")
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        let err = |e| io_err(ErrorSubject::Store, ErrorVerb::Write, e);
        let mut b = self.engine.batch(Space::Log);
        b.put_bytes(&meta_key(COMMITTED), self.engine.encode("committed log id", &committed).map_err(err)?);
        self.engine.commit(b, "writing the committed log id").map_err(err)?;
        self.committed.store(committed.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>> {
        let got: Option<Option<LogId>> = self
            .engine
            .get(Space::Log, &meta_key(COMMITTED), "committed log id")
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let got = got.flatten();
        self.committed.store(got.map_or(0, |c| c.index), Ordering::Relaxed);
        Ok(got)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let err = |e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e);
        let mut b = self.engine.batch(Space::Log);
        let mut n = 0usize;
        for entry in entries {
            let index = entry.log_id.index;
            let bytes = self.engine.encode(&format!("log entry {index}"), &entry).map_err(err)?;
            b.put_bytes(&log_key(index), bytes);
            n += 1;
        }
        if n == 0 {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.engine.commit(b, "appending log entries").map_err(err)?;
        match self.engine.flush("appended log entries").await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<()> {
        let err = |e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let mut b = self.engine.batch(Space::Log);
        for i in self.engine.log_indexes(log_id.index..).map_err(err)? {
            b.remove(&log_key(i));
        }
        self.engine.commit(b, "truncating the log").map_err(err)?;
        self.flush("the truncated log", ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<()> {
        let err = |e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let prev = self.last_purged().map_err(err)?;
        if prev.as_ref().is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        // The new last-purged id and the removal of the entries up to it form one atomic batch.
        let mut b = self.engine.batch(Space::Log);
        b.put_bytes(&meta_key(LAST_PURGED), self.engine.encode("last purged log id", &log_id).map_err(err)?);
        for i in self.engine.log_indexes(..=log_id.index).map_err(err)? {
            b.remove(&log_key(i));
        }
        self.engine.commit(b, "purging the log").map_err(err)?;
        self.flush("the purged log", ErrorSubject::Logs).await
    }
}
