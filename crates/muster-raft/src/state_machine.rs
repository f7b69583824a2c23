//! The state machine: openraft's apply and snapshot calls over a
//! [`muster_core::Store`].
//!
//! The adapter holds no business logic. For each committed entry it calls
//! [`Store::apply`] with the entry's index (normal entries), or records the
//! membership (membership entries), then advances `last_applied`. A command
//! the core refuses is a deterministic outcome returned to the client inside
//! [`CommandResult::Failed`], not a storage error.
//!
//! Invariants:
//!
//! - **Readers see whole entries.** The store, `last_applied` and the
//!   membership sit behind one lock, updated together per entry; a reader
//!   ([`StateMachine::store`]) gets an O(1) clone of a state that is exactly
//!   "the log applied up to `last_applied`". The lock is a std lock because
//!   no critical section awaits.
//! - **Publishing never blocks apply.** Each revision an entry produced
//!   (one, or one per command of a batch) is published as one
//!   [`AppliedEvents`] on a bounded
//!   [`tokio::sync::broadcast`] channel *after* the lock is released, so a
//!   receiver that reads the store sees at least that entry. A receiver that
//!   falls behind loses the oldest messages and learns it from
//!   [`broadcast::error::RecvError::Lagged`]; it then catches up from the
//!   store's MVCC history. After a snapshot is installed, one
//!   `AppliedEvents` with no events announces the jump.
//! - **Snapshots are built off the apply path.** `build_snapshot` clones the
//!   store (O(1), structurally shared) and serialises it on a blocking
//!   thread while apply goes on. Files are written atomically
//!   (`snapshot_file`), only the newest is kept, and [`StateMachine::open`]
//!   loads it: restart = snapshot + openraft replaying the log after it. A
//!   snapshot file that fails verification is a startup error naming the
//!   file, never skipped.
//!
//! ```text
//!   dir/snapshots/<term>-<index>-<seq>.snap     the newest snapshot
//!   dir/snapshots/<...>.snap.tmp                 being written (removed at open)
//! ```

use std::fmt::Debug;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use muster_core::{Event, Store};
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta,
};
use tokio::sync::{Mutex, broadcast};

use crate::error::Error;
use crate::snapshot_file::{self, Meta};
use crate::types::{CommandResult, Entry, LogId, StorageError, StoredMembership, TypeConfig};

/// How many [`AppliedEvents`] a subscriber may fall behind before it loses
/// messages, unless [`StateMachine::open_with_event_capacity`] says
/// otherwise.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// The largest event capacity a state machine accepts.
pub const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// The events of one revision an applied log entry produced, as published
/// to subscribers (an entry holding a batch publishes one per command that
/// changed keys).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedEvents {
    /// The log index of the entry.
    pub index: u64,
    /// The revision of the events. When this is published the store holds
    /// at least the whole entry, so its revision may be higher.
    pub revision: i64,
    /// The changes, in revision order. Empty when a snapshot replaced the
    /// store: catch up from history up to `revision`.
    pub events: Vec<Event>,
}

/// The events of the entry at `index`, one [`AppliedEvents`] per revision:
/// an entry holds one revision, or one per command of a
/// [`muster_core::Command::Batch`]. Events come in revision order, and
/// every event of a revision carries it in `kv.mod_revision`.
fn per_revision(index: u64, events: Vec<Event>) -> Vec<Arc<AppliedEvents>> {
    let mut out: Vec<AppliedEvents> = Vec::new();
    for event in events {
        let revision = event.kv.mod_revision;
        match out.last_mut() {
            Some(last) if last.revision == revision => last.events.push(event),
            _ => out.push(AppliedEvents {
                index,
                revision,
                events: vec![event],
            }),
        }
    }
    out.into_iter().map(Arc::new).collect()
}

/// The replicated state machine of one member.
///
/// Cloning is cheap (a shared handle): the server keeps a clone to read the
/// store and subscribe to events while openraft owns another.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("snapshot_dir", &self.shared.snapshot_dir)
            .field("last_applied", &self.last_applied())
            .finish_non_exhaustive()
    }
}

struct Shared {
    snapshot_dir: PathBuf,
    state: RwLock<AppliedState>,
    events: broadcast::Sender<Arc<AppliedEvents>>,
    /// Held across every snapshot file operation, so builds and installs
    /// never interleave their writes and removals.
    snapshots: Mutex<SnapshotFiles>,
}

/// What the log applied up to `last_applied` produced.
#[derive(Clone, Default)]
struct AppliedState {
    store: Store,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

#[derive(Default)]
struct SnapshotFiles {
    /// The newest snapshot on disk.
    current: Option<(Meta, PathBuf)>,
    /// Distinguishes snapshots built at the same log id.
    next_seq: u64,
}

impl StateMachine {
    /// Opens the state machine kept under `dir`, loading the newest
    /// snapshot in `dir/snapshots` if there is one.
    ///
    /// Fails with [`Error::CorruptSnapshot`] naming the file when a snapshot
    /// file does not verify.
    pub async fn open(dir: impl AsRef<Path>) -> Result<StateMachine, Error> {
        Self::open_with_event_capacity(dir, DEFAULT_EVENT_CAPACITY).await
    }

    /// As [`StateMachine::open`], with room for `capacity` unread
    /// [`AppliedEvents`] per subscriber (clamped to `1..=`
    /// [`MAX_EVENT_CAPACITY`]).
    pub async fn open_with_event_capacity(
        dir: impl AsRef<Path>,
        capacity: usize,
    ) -> Result<StateMachine, Error> {
        let snapshot_dir = dir.as_ref().join("snapshots");
        let load_dir = snapshot_dir.clone();
        let (state, current) = tokio::task::spawn_blocking(move || load_newest(&load_dir))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        let (events, _) = broadcast::channel(capacity.clamp(1, MAX_EVENT_CAPACITY));
        Ok(StateMachine {
            shared: Arc::new(Shared {
                snapshot_dir,
                state: RwLock::new(state),
                events,
                snapshots: Mutex::new(SnapshotFiles {
                    current,
                    next_seq: 1,
                }),
            }),
        })
    }

    /// A new subscription to the events of every entry applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AppliedEvents>> {
        self.shared.events.subscribe()
    }

    /// The applied store: an O(1) clone, a consistent snapshot of the log
    /// applied up to [`StateMachine::last_applied`] at the time of the call.
    pub fn store(&self) -> Store {
        self.shared.read().store.clone()
    }

    /// The store together with the last log id applied to it.
    pub fn store_at(&self) -> (Store, Option<LogId>) {
        let state = self.shared.read();
        (state.store.clone(), state.last_applied)
    }

    /// The last log id applied.
    pub fn last_applied(&self) -> Option<LogId> {
        self.shared.read().last_applied
    }

    /// The membership of the last membership entry applied.
    pub fn membership(&self) -> StoredMembership {
        self.shared.read().membership.clone()
    }

    /// The directory snapshot files are kept in.
    pub fn snapshot_dir(&self) -> &Path {
        &self.shared.snapshot_dir
    }
}

impl Shared {
    // A poisoned lock means apply panicked inside the core, which also
    // brought the Raft node down; readers may still look at the last state.
    fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, AppliedState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply(&self, entries: impl IntoIterator<Item = Entry>) -> Vec<CommandResult> {
        let mut results = Vec::new();
        let mut published = Vec::new();
        {
            let mut state = self.write();
            for entry in entries {
                let log_id = entry.log_id;
                let result = match entry.payload {
                    EntryPayload::Blank => CommandResult::Noop,
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(log_id), membership);
                        CommandResult::Noop
                    }
                    EntryPayload::Normal(command) => {
                        match state.store.apply(log_id.index, command) {
                            Ok(applied) => {
                                published.extend(per_revision(log_id.index, applied.events));
                                CommandResult::Applied(applied.response)
                            }
                            Err(error) => CommandResult::Failed(error),
                        }
                    }
                };
                state.last_applied = Some(log_id);
                results.push(result);
            }
        }
        for events in published {
            self.publish(events);
        }
        results
    }

    fn publish(&self, events: Arc<AppliedEvents>) {
        // `send` never waits: it fails only when nobody subscribed, and a
        // full channel drops the oldest message for laggards.
        let _ = self.events.send(events);
    }

    async fn build_snapshot(&self) -> Result<Snapshot<TypeConfig>, Error> {
        let mut files = self.snapshots.lock().await;
        let state = self.read().clone();
        let seq = files.next_seq;
        files.next_seq += 1;
        let (term, index) = state
            .last_applied
            .map_or((0, 0), |id| (id.leader_id.term, id.index));
        let meta = Meta {
            last_log_id: state.last_applied,
            last_membership: state.membership,
            snapshot_id: format!("{term}-{index}-{seq}"),
        };
        let dir = self.snapshot_dir.clone();
        let written = meta.clone();
        let (bytes, path) = tokio::task::spawn_blocking(move || {
            let bytes = snapshot_file::encode(&written, &state.store)?;
            let path = snapshot_file::write(&dir, &written.snapshot_id, &bytes)?;
            Ok::<_, Error>((bytes, path))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        self.replace_current(&mut files, meta.clone(), path).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    async fn install_snapshot(&self, meta: &Meta, bytes: Vec<u8>) -> Result<(), Error> {
        let mut files = self.snapshots.lock().await;
        let dir = self.snapshot_dir.clone();
        let expected = meta.clone();
        let (store, path) = tokio::task::spawn_blocking(move || {
            let received = || PathBuf::from(format!("<received {}>", expected.snapshot_id));
            let (decoded, store) =
                snapshot_file::decode(&bytes).map_err(|reason| Error::CorruptSnapshot {
                    file: received(),
                    reason,
                })?;
            if decoded != expected {
                return Err(Error::CorruptSnapshot {
                    file: received(),
                    reason: format!("carries metadata {decoded:?}, announced as {expected:?}"),
                });
            }
            let path = snapshot_file::write(&dir, &expected.snapshot_id, &bytes)?;
            Ok((store, path))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let revision = store.revision();
        {
            let mut state = self.write();
            *state = AppliedState {
                store,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
        }
        self.replace_current(&mut files, meta.clone(), path).await?;
        self.publish(Arc::new(AppliedEvents {
            index: meta.last_log_id.map_or(0, |id| id.index),
            revision,
            events: Vec::new(),
        }));
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    /// Makes `path` the current snapshot unless a newer one is current,
    /// then removes every other snapshot file.
    async fn replace_current(
        &self,
        files: &mut SnapshotFiles,
        meta: Meta,
        path: PathBuf,
    ) -> Result<(), Error> {
        let newer_is_current = files
            .current
            .as_ref()
            .is_some_and(|(current, _)| current.last_log_id > meta.last_log_id);
        if !newer_is_current {
            files.current = Some((meta, path));
        }
        let keep = files.current.as_ref().map(|(_, p)| p.clone());
        let dir = self.snapshot_dir.clone();
        tokio::task::spawn_blocking(move || remove_others(&dir, keep.as_deref()))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn current_snapshot(&self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let files = self.snapshots.lock().await;
        let Some((meta, path)) = files.current.clone() else {
            return Ok(None);
        };
        let bytes = tokio::task::spawn_blocking(move || snapshot_file::read_checked(&path))
            .await
            .map_err(|e| Error::Task(e.to_string()))??;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}

/// Loads the newest snapshot in `dir` (creating `dir` if needed), removing
/// leftover temporary files and older snapshots.
fn load_newest(dir: &Path) -> Result<(AppliedState, Option<(Meta, PathBuf)>), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut newest: Option<(Meta, Store, PathBuf)> = None;
    for path in snapshot_paths(dir)? {
        if path
            .extension()
            .is_some_and(|e| e == snapshot_file::TEMP_EXTENSION)
        {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            continue;
        }
        if path
            .extension()
            .is_none_or(|e| e != snapshot_file::EXTENSION)
        {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let (meta, store) =
            snapshot_file::decode(&bytes).map_err(|reason| Error::CorruptSnapshot {
                file: path.clone(),
                reason,
            })?;
        if newest
            .as_ref()
            .is_none_or(|(m, _, _)| m.last_log_id < meta.last_log_id)
        {
            newest = Some((meta, store, path));
        }
    }
    let Some((meta, store, path)) = newest else {
        return Ok((AppliedState::default(), None));
    };
    remove_others(dir, Some(&path))?;
    tracing::info!(file = %path.display(), last_applied = ?meta.last_log_id, "loaded snapshot");
    let state = AppliedState {
        store,
        last_applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
    };
    Ok((state, Some((meta, path))))
}

fn snapshot_paths(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut paths = Vec::new();
    for item in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let item = item.map_err(|e| Error::io(dir, e))?;
        paths.push(item.path());
    }
    paths.sort();
    Ok(paths)
}

/// Removes every `.snap` file in `dir` but `keep`.
fn remove_others(dir: &Path, keep: Option<&Path>) -> Result<(), Error> {
    let mut removed = false;
    for path in snapshot_paths(dir)? {
        let is_snapshot = path
            .extension()
            .is_some_and(|e| e == snapshot_file::EXTENSION);
        if is_snapshot && Some(path.as_path()) != keep {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed = true;
        }
    }
    if removed {
        snapshot_file::sync_dir(dir)?;
    }
    Ok(())
}

fn snapshot_error(error: Error, meta: Option<&Meta>, verb: ErrorVerb) -> StorageError {
    error.into_storage(
        ErrorSubject::Snapshot(meta.map(SnapshotMeta::signature)),
        verb,
    )
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let timer = crate::metrics::SNAPSHOT_SAVE_SECONDS.start_timer();
        let snapshot = self
            .shared
            .build_snapshot()
            .await
            .map_err(|e| snapshot_error(e, None, ErrorVerb::Write))?;
        timer.observe_duration();
        crate::metrics::SNAPSHOT_SAVES.inc();
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.shared.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let _timer = crate::metrics::APPLY_SECONDS.start_timer();
        let results = self.shared.apply(entries);
        if let Some(applied) = self.shared.read().last_applied {
            crate::metrics::PROPOSALS_APPLIED.set(i64::try_from(applied.index).unwrap_or(i64::MAX));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let timer = crate::metrics::SNAPSHOT_INSTALL_SECONDS.start_timer();
        self.shared
            .install_snapshot(meta, snapshot.into_inner())
            .await
            .map_err(|e| snapshot_error(e, Some(meta), ErrorVerb::Write))?;
        timer.observe_duration();
        crate::metrics::SNAPSHOT_INSTALLS.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.shared
            .current_snapshot()
            .await
            .map_err(|e| snapshot_error(e, None, ErrorVerb::Read))
    }
}
