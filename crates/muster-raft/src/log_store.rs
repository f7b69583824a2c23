//! The Raft log and vote, kept in sled.
//!
//! ```text
//!   <dir>/            one sled database
//!     tree "log"      u64 index (big-endian, so key order = index order)
//!                       -> record(Entry)
//!     tree "meta"     "vote"        -> record(Vote)
//!                     "committed"   -> record(Option<LogId>)
//!                     "last_purged" -> record(LogId)
//! ```
//!
//! Every value is a checksummed record (`crc32c ++ bincode`, see
//! `record.rs`). Invariants this module keeps:
//!
//! - **Durable before acknowledged.** [`RaftLogStorage::append`] writes all
//!   its entries in one `sled::Batch`, then awaits one `flush_async`; the
//!   flush callback is only called after sled's flush returned (group
//!   commit: one fsync per append call, however many entries). A failed
//!   flush is passed to the callback *and* returned. `save_vote`,
//!   `truncate` and `purge` also flush before returning.
//! - **Never silently skip.** A record whose checksum fails, that does not
//!   decode, or whose entry index differs from its key is an
//!   [`Error::CorruptRecord`] naming the store path, the tree and the index.
//!   [`LogStore::open`] verifies every record, so a damaged log is a startup
//!   error, not a surprise at replay.
//! - **The log is contiguous** from the first kept index to the last, and
//!   nothing at or below `last_purged` is kept (a purge interrupted by a
//!   crash is finished by the next `open`).
//!
//! `save_committed` is written without a flush: losing it only means the
//! committed entries are re-applied after the leader confirms them again.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::record;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG_TREE: &str = "log";
const META_TREE: &str = "meta";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";

/// The Raft log and vote of one member, on sled.
///
/// Cloning is cheap (a shared handle); a clone is the log reader openraft's
/// replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogDb>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct LogDb {
    path: PathBuf,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl LogStore {
    /// Opens (or creates) the log store in directory `path` and verifies
    /// every record in it.
    ///
    /// Fails with [`Error::CorruptRecord`] naming the tree and index of the
    /// first record that fails its checksum or does not decode.
    pub async fn open(path: impl AsRef<Path>) -> Result<LogStore, Error> {
        let path = path.as_ref().to_path_buf();
        let inner = tokio::task::spawn_blocking(move || LogDb::open(path))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(LogStore {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Bytes sled uses on disk: sled amplifies space, so watch this.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.inner.db.size_on_disk().map_err(|e| self.inner.sled(e))
    }
}

/// sled's page cache for the log. The log is written once and read back
/// mostly while it is recent (replication) or once (catch-up, replay), so a
/// small cache costs little; sled's default (1 GiB) would keep every entry
/// since the last purge in memory as well as in the state machine.
const LOG_CACHE_BYTES: u64 = 16 << 20;

impl LogDb {
    fn open(path: PathBuf) -> Result<LogDb, Error> {
        let sled_error = |source| Error::Sled {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(LOG_CACHE_BYTES)
            .open()
            .map_err(sled_error)?;
        let log = db.open_tree(LOG_TREE).map_err(sled_error)?;
        let meta = db.open_tree(META_TREE).map_err(sled_error)?;
        let store = LogDb {
            path,
            db,
            log,
            meta,
        };
        store.verify()?;
        Ok(store)
    }

    /// Checks every record; finishes an interrupted purge.
    fn verify(&self) -> Result<(), Error> {
        self.read_meta::<Vote<NodeId>>(VOTE_KEY)?;
        self.read_meta::<Option<LogId>>(COMMITTED_KEY)?;
        let last_purged = self.read_meta::<LogId>(LAST_PURGED_KEY)?;
        let mut previous: Option<u64> = None;
        for item in self.log.iter() {
            let (key, value) = item.map_err(|e| self.sled(e))?;
            let index = self.index_of(&key)?;
            self.decode_entry(index, &value)?;
            if let Some(p) = previous.filter(|p| p.checked_add(1) != Some(index)) {
                return Err(self.corrupt_log(index, format!("gap in the log after index {p}")));
            }
            previous = Some(index);
        }
        if let Some(purged) = last_purged {
            let stale = self.keys_in(..=purged.index)?;
            if !stale.is_empty() {
                tracing::info!(
                    path = %self.path.display(),
                    count = stale.len(),
                    "finishing an interrupted purge"
                );
                self.remove_keys(stale)?;
                self.db.flush().map_err(|e| self.sled(e))?;
            }
        }
        Ok(())
    }

    fn sled(&self, source: sled::Error) -> Error {
        Error::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt_log(&self, index: u64, reason: String) -> Error {
        Error::CorruptRecord {
            path: self.path.clone(),
            tree: LOG_TREE,
            key: format!("index {index}"),
            reason,
        }
    }

    fn index_of(&self, key: &[u8]) -> Result<u64, Error> {
        let bytes: [u8; 8] = key.try_into().map_err(|_| Error::CorruptRecord {
            path: self.path.clone(),
            tree: LOG_TREE,
            key: format!("key {key:02x?}"),
            reason: format!("key of {} bytes, expected 8", key.len()),
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn decode_entry(&self, index: u64, value: &[u8]) -> Result<Entry, Error> {
        let entry: Entry =
            record::decode(value).map_err(|reason| self.corrupt_log(index, reason))?;
        if entry.log_id.index != index {
            return Err(self.corrupt_log(
                index,
                format!("holds the entry of index {}", entry.log_id.index),
            ));
        }
        Ok(entry)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, Error> {
        let Some(value) = self.meta.get(key).map_err(|e| self.sled(e))? else {
            return Ok(None);
        };
        record::decode(&value)
            .map(Some)
            .map_err(|reason| Error::CorruptRecord {
                path: self.path.clone(),
                tree: META_TREE,
                key: format!("key {key:?}"),
                reason,
            })
    }

    fn write_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), Error> {
        let value = record::encode(value).map_err(|source| Error::Encode { what: key, source })?;
        self.meta.insert(key, value).map_err(|e| self.sled(e))?;
        Ok(())
    }

    fn read_range(&self, range: impl RangeBounds<u64>) -> Result<Vec<Entry>, Error> {
        let mut entries = Vec::new();
        for item in self.log.range(byte_range(range)) {
            let (key, value) = item.map_err(|e| self.sled(e))?;
            let index = self.index_of(&key)?;
            entries.push(self.decode_entry(index, &value)?);
        }
        Ok(entries)
    }

    fn keys_in(&self, range: impl RangeBounds<u64>) -> Result<Vec<sled::IVec>, Error> {
        self.log
            .range(byte_range(range))
            .keys()
            .map(|k| k.map_err(|e| self.sled(e)))
            .collect()
    }

    fn remove_keys(&self, keys: Vec<sled::IVec>) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        self.log.apply_batch(batch).map_err(|e| self.sled(e))
    }

    fn write_entries(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let value = record::encode(&entry).map_err(|source| Error::Encode {
                what: "log entry",
                source,
            })?;
            batch.insert(&entry.log_id.index.to_be_bytes(), value);
        }
        self.log.apply_batch(batch).map_err(|e| self.sled(e))
    }

    async fn flush(&self) -> Result<(), Error> {
        self.db.flush_async().await.map_err(|e| self.sled(e))?;
        Ok(())
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, Error> {
        let last_purged_log_id = self.read_meta::<LogId>(LAST_PURGED_KEY)?;
        let last = match self.log.last().map_err(|e| self.sled(e))? {
            Some((key, value)) => {
                let index = self.index_of(&key)?;
                Some(self.decode_entry(index, &value)?.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }
}

/// An index range as a range of big-endian sled keys.
fn byte_range(range: impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let key = |bound: Bound<&u64>| bound.map(|i| i.to_be_bytes());
    (key(range.start_bound()), key(range.end_bound()))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.inner
            .read_range(range)
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.inner
            .log_state()
            .map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let result = match self.inner.write_meta(VOTE_KEY, vote) {
            Ok(()) => self.inner.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.inner
            .read_meta(VOTE_KEY)
            .map_err(|e| e.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.inner
            .write_meta(COMMITTED_KEY, &committed)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .inner
            .read_meta::<Option<LogId>>(COMMITTED_KEY)
            .map_err(|e| e.into_storage(ErrorSubject::Store, ErrorVerb::Read))?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let append = crate::metrics::LOG_APPEND_SECONDS.start_timer();
        let result = match self.inner.write_entries(entries) {
            Ok(()) => {
                append.observe_duration();
                let _fsync = crate::metrics::LOG_FSYNC_SECONDS.start_timer();
                self.inner.flush().await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(e.into_storage(ErrorSubject::Logs, ErrorVerb::Write))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let result = match self
            .inner
            .keys_in(log_id.index..)
            .and_then(|keys| self.inner.remove_keys(keys))
        {
            Ok(()) => self.inner.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // last_purged first: a crash between the two steps leaves entries
        // that `open` removes, never a gap that looks like lost entries.
        let result = match self
            .inner
            .write_meta(LAST_PURGED_KEY, &log_id)
            .and_then(|()| self.inner.keys_in(..=log_id.index))
            .and_then(|keys| self.inner.remove_keys(keys))
        {
            Ok(()) => self.inner.flush().await,
            Err(e) => Err(e),
        };
        result.map_err(|e| e.into_storage(ErrorSubject::Logs, ErrorVerb::Delete))
    }
}
