//! The narrow seam over sled: the only module that names sled.
//!
//! One sled database per node directory, with two trees:
//!
//! | tree  | key                              | value (postcard)                       |
//! |-------|----------------------------------|----------------------------------------|
//! | `log` | `L` + index as big-endian `u64`  | `Entry` at that index                  |
//! | `log` | `M` + `vote`                     | `Vote`                                 |
//! | `log` | `M` + `committed`                | `Option<LogId>`                        |
//! | `log` | `M` + `last_purged`              | `LogId`                                |
//! | `sm`  | `applied`                        | `AppliedState`                         |
//! | `sm`  | `snapshot`                       | current snapshot: meta + data bytes    |
//! | `sm`  | `snapshot_seq`                   | `u64` counter for unique snapshot ids  |
//!
//! Big-endian indexes make sled's byte order the log order, so ranges and "last entry" are plain
//! sled range scans. Entries and log metadata share one tree so a purge (new last-purged id plus the
//! removed entries) or a truncate is one atomic batch.
//!
//! Durability: a write is in sled's in-process buffers when it returns; [`Engine::flush`] writes
//! and fsyncs everything written before it. sled also flushes in the background every 500 ms, and
//! recovery after a crash yields a prefix of the writes, in order.
//!
//! Memory: sled's page cache defaults to 1 GiB. Raft state here is small (a config, backend states,
//! a bounded log between snapshots), so the cache is capped at [`CACHE_CAPACITY_BYTES`] (16 MiB),
//! which bounds what a long-running node can accumulate (target: an idle node under ~30 MB RSS)
//! while the working set still fits. Measured on this machine, release build: opening a store
//! adds about 1 MB RSS, and 1000 appended + applied entries bring the process to about 6 MB.
//! Known limit: in debug builds sled 0.34 zero-fills its global metrics histograms (42 x 512 KiB,
//! allocated even with metrics off) on first use, so a debug process carries ~22 MB more; release
//! builds turn that fill into untouched zeroed pages.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::StoreError;

/// Upper bound of sled's page cache, in bytes.
pub const CACHE_CAPACITY_BYTES: u64 = 16 * 1024 * 1024;

const LOG_PREFIX: u8 = b'L';
const META_PREFIX: u8 = b'M';

/// Key of the log entry at `index` in [`Space::Log`].
pub fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Index of a log entry key, or `None` if `key` is not one.
pub fn log_index(key: &[u8]) -> Option<u64> {
    if key.len() != 9 || key[0] != LOG_PREFIX {
        return None;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[1..]);
    Some(u64::from_be_bytes(b))
}

/// Key of a named log metadata value (vote, committed, last purged) in [`Space::Log`].
pub fn meta_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(META_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Which tree a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Log entries and log metadata.
    Log,
    /// State machine: applied state and snapshot.
    StateMachine,
}

/// Handle to the open database. Cheap to clone; the database closes (and its lock is released)
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Engine {
    db: sled::Db,
    log: sled::Tree,
    sm: sled::Tree,
    path: Arc<PathBuf>,
}

/// Writes to one tree, applied atomically by [`Engine::commit`].
pub struct Batch {
    space: Space,
    inner: sled::Batch,
}

impl Batch {
    pub fn put_bytes(&mut self, key: &[u8], value: Vec<u8>) {
        self.inner.insert(key, value);
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.inner.remove(key);
    }
}

impl Engine {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Engine, StoreError> {
        let path = dir.to_path_buf();
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| open_error(&path, e))?;
        let log = db.open_tree("log").map_err(|e| open_error(&path, e))?;
        let sm = db.open_tree("sm").map_err(|e| open_error(&path, e))?;
        Ok(Engine { db, log, sm, path: Arc::new(path) })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tree(&self, space: Space) -> &sled::Tree {
        match space {
            Space::Log => &self.log,
            Space::StateMachine => &self.sm,
        }
    }

    fn io(&self, op: impl Into<String>, e: sled::Error) -> StoreError {
        StoreError::Io { path: self.path.to_path_buf(), op: op.into(), source: e.into() }
    }

    /// Encode `value` with postcard; `what` names it in errors.
    pub fn encode<T: Serialize>(&self, what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
        postcard::to_allocvec(value).map_err(|source| StoreError::Encode {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            source,
        })
    }

    /// Decode postcard `bytes`; `what` names the value in errors.
    pub fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T, StoreError> {
        postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            source,
        })
    }

    /// Read and decode the value at `key`; `what` names it in errors.
    pub fn get<T: DeserializeOwned>(
        &self,
        space: Space,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.tree(space).get(key).map_err(|e| self.io(format!("reading {what}"), e))? {
            None => Ok(None),
            Some(v) => self.decode(what, &v).map(Some),
        }
    }

    /// An empty batch of writes to `space`.
    pub fn batch(&self, space: Space) -> Batch {
        Batch { space, inner: sled::Batch::default() }
    }

    /// Apply `batch` atomically (not yet flushed); `op` names it in errors.
    pub fn commit(&self, batch: Batch, op: &str) -> Result<(), StoreError> {
        self.tree(batch.space).apply_batch(batch.inner).map_err(|e| self.io(op, e))
    }

    /// Decoded log entries with indexes in `range`, in index order.
    pub fn log_entries<T: DeserializeOwned>(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<T>, StoreError> {
        let Some((start, end)) = key_range(range) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for kv in self.log.range(start..end) {
            let (k, v) = kv.map_err(|e| self.io("reading log entries", e))?;
            let what = match log_index(&k) {
                Some(i) => format!("log entry {i}"),
                None => "log entry with a malformed key".to_string(),
            };
            out.push(self.decode(&what, &v)?);
        }
        Ok(out)
    }

    /// Indexes of the log entries in `range`, in order.
    pub fn log_indexes(&self, range: impl RangeBounds<u64>) -> Result<Vec<u64>, StoreError> {
        let Some((start, end)) = key_range(range) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for k in self.log.range(start..end).keys() {
            let k = k.map_err(|e| self.io("listing log entries", e))?;
            out.extend(log_index(&k));
        }
        Ok(out)
    }

    /// The decoded entry with the highest index, if any.
    pub fn last_log_entry<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        let last = self
            .log
            .range(log_key(0).to_vec()..=log_key(u64::MAX).to_vec())
            .next_back()
            .transpose()
            .map_err(|e| self.io("reading the last log entry", e))?;
        match last {
            None => Ok(None),
            Some((k, v)) => {
                let what = format!("log entry {}", log_index(&k).unwrap_or_default());
                self.decode(&what, &v).map(Some)
            }
        }
    }

    /// Write every earlier write to disk and fsync; returns once it is durable.
    /// `op` names what is being made durable, in errors.
    pub async fn flush(&self, op: &str) -> Result<(), StoreError> {
        self.db.flush_async().await.map(|_| ()).map_err(|e| self.io(format!("flushing {op}"), e))
    }
}

/// Half-open sled key range `[start, end)` for the index range, or `None` if it is empty.
fn key_range(range: impl RangeBounds<u64>) -> Option<(Vec<u8>, Vec<u8>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    // The end key is exclusive; an unbounded end is "just past the largest index".
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1).map(log_key).map(|k| k.to_vec()),
        Bound::Excluded(&e) => Some(log_key(e).to_vec()),
        Bound::Unbounded => None,
    }
    .unwrap_or_else(|| vec![LOG_PREFIX + 1]);
    let start = log_key(start).to_vec();
    if start >= end {
        return None;
    }
    Some((start, end))
}

fn open_error(path: &Path, e: sled::Error) -> StoreError {
    let source: std::io::Error = e.into();
    let msg = source.to_string();
    if msg.contains("could not acquire lock") {
        StoreError::Locked { path: path.to_path_buf(), reason: msg }
    } else {
        StoreError::Open { path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_in_index_order_and_round_trip() {
        let idx = [0u64, 1, 255, 256, 65_535, 1 << 40, u64::MAX - 1, u64::MAX];
        let keys: Vec<_> = idx.iter().map(|&i| log_key(i)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (&i, k) in idx.iter().zip(&keys) {
            assert_eq!(log_index(k), Some(i));
        }
        assert_eq!(log_index(&meta_key("vote")), None);
    }

    #[test]
    fn meta_keys_sort_outside_the_log_key_range() {
        let (start, end) = key_range(..).unwrap();
        for name in ["vote", "committed", "last_purged"] {
            let k = meta_key(name);
            assert!(k < start || k >= end, "{name} falls inside the log key range");
        }
    }

    #[test]
    fn key_ranges_follow_the_bounds() {
        assert!(key_range(3..3).is_none());
        assert!(key_range((Bound::Included(5), Bound::Excluded(3))).is_none());
        assert_eq!(key_range(3..5), Some((log_key(3).to_vec(), log_key(5).to_vec())));
        assert_eq!(key_range(3..=5), Some((log_key(3).to_vec(), log_key(6).to_vec())));
        assert_eq!(key_range(..=u64::MAX), Some((log_key(0).to_vec(), vec![LOG_PREFIX + 1])));
        assert!(key_range((Bound::Excluded(u64::MAX), Bound::Unbounded)).is_none());
    }
}
