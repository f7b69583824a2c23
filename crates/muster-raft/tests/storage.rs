//! Durability and publication behaviour of the log store and the state
//! machine: corruption is a named startup error, restart restores the
//! applied state, and a subscriber that never reads cannot block apply.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster_core::{Command, PutRequest};
use muster_raft::{CommandResult, Entry, LogId, LogStore, StateMachine};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use tokio::sync::broadcast::error::TryRecvError;

/// Runs a test body with a deadline, so no test can hang.
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), body)
        .await
        .expect("test timed out")
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn put(index: u64, key: &str, value: &str) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(Command::Put(PutRequest {
            key: key.to_string().into(),
            value: value.to_string().into(),
            ..Default::default()
        })),
    }
}

/// Entries `from..=to`: puts of `key{i % 3}`, with a lease grant at 2.
fn entries(from: u64, to: u64) -> Vec<Entry> {
    (from..=to)
        .map(|i| match i {
            1 => Entry {
                log_id: log_id(1),
                payload: EntryPayload::Blank,
            },
            2 => Entry {
                log_id: log_id(2),
                payload: EntryPayload::Normal(Command::LeaseGrant { id: 7, ttl: 60 }),
            },
            _ => put(i, &format!("key{}", i % 3), &format!("value{i}")),
        })
        .collect()
}

fn only_snapshot_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .expect("snapshot dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    assert_eq!(files.len(), 1, "expected one snapshot file: {files:?}");
    files.into_iter().next().expect("one file")
}

#[tokio::test]
async fn appended_entries_survive_a_reopen() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = LogStore::open(dir.path()).await.expect("open");
            log.blocking_append(entries(1, 10)).await.expect("append");
            log.truncate(log_id(9)).await.expect("truncate");
            log.purge(log_id(3)).await.expect("purge");
        }
        let mut log = LogStore::open(dir.path()).await.expect("reopen");
        let state = log.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(3)));
        assert_eq!(state.last_log_id, Some(log_id(8)));
        let read = log.try_get_log_entries(0..100).await.expect("read");
        let indexes: Vec<u64> = read.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (4..=8).collect::<Vec<_>>());
        assert_eq!(read, entries(4, 8));
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_log_record_is_a_startup_error_naming_its_index() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = LogStore::open(dir.path()).await.expect("open");
            log.blocking_append(entries(1, 5)).await.expect("append");
        }
        {
            // Flip one bit of entry 3's payload behind the store's back.
            let db = sled::open(dir.path()).expect("sled open");
            let tree = db.open_tree("log").expect("log tree");
            let key = 3u64.to_be_bytes();
            let mut value = tree.get(key).expect("get").expect("entry 3").to_vec();
            let last = value.len() - 1;
            value[last] ^= 0x01;
            tree.insert(key, value).expect("insert");
            db.flush().expect("flush");
        }
        let err = LogStore::open(dir.path())
            .await
            .expect_err("a corrupt record must fail the open");
        let message = err.to_string();
        assert!(message.contains("index 3"), "{message}");
        assert!(message.contains("`log`"), "{message}");
        assert!(message.contains("checksum mismatch"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_vote_is_a_startup_error_naming_its_key() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = LogStore::open(dir.path()).await.expect("open");
            log.save_vote(&openraft::Vote::new(2, 1))
                .await
                .expect("save vote");
        }
        {
            let db = sled::open(dir.path()).expect("sled open");
            let tree = db.open_tree("meta").expect("meta tree");
            let mut value = tree.get("vote").expect("get").expect("vote").to_vec();
            value[0] ^= 0x80;
            tree.insert("vote", value).expect("insert");
            db.flush().expect("flush");
        }
        let message = LogStore::open(dir.path())
            .await
            .expect_err("a corrupt vote must fail the open")
            .to_string();
        assert!(message.contains("`meta`"), "{message}");
        assert!(message.contains("\"vote\""), "{message}");
    })
    .await;
}

#[tokio::test]
async fn a_vote_survives_a_reopen() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let vote = openraft::Vote::new_committed(3, 2);
        {
            let mut log = LogStore::open(dir.path()).await.expect("open");
            log.save_vote(&vote).await.expect("save vote");
        }
        let mut log = LogStore::open(dir.path()).await.expect("reopen");
        assert_eq!(log.read_vote().await.expect("read vote"), Some(vote));
    })
    .await;
}

#[tokio::test]
async fn a_refused_command_is_a_result_not_a_storage_error() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path()).await.expect("open");
        let revoke_missing = Entry {
            log_id: log_id(1),
            payload: EntryPayload::Normal(Command::LeaseRevoke { id: 99 }),
        };
        let results = sm.apply([revoke_missing]).await.expect("apply");
        assert_eq!(
            results,
            [CommandResult::Failed(muster_core::Error::LeaseNotFound)]
        );
        assert_eq!(sm.last_applied(), Some(log_id(1)));
        assert_eq!(sm.store().revision(), 1);
    })
    .await;
}

#[tokio::test]
async fn restart_restores_the_snapshot_and_the_log_replays_after_it() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log_dir, sm_dir) = (dir.path().join("log"), dir.path().join("state"));
        let (hash_at_snapshot, hash_at_end) = {
            let mut log = LogStore::open(&log_dir).await.expect("open log");
            let mut sm = StateMachine::open(&sm_dir).await.expect("open sm");
            log.blocking_append(entries(1, 20)).await.expect("append");
            sm.apply(entries(1, 12)).await.expect("apply");
            let snapshot = sm
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("build");
            assert_eq!(snapshot.meta.last_log_id, Some(log_id(12)));
            let at_snapshot = sm.store().hash_kv(0).expect("hash");
            sm.apply(entries(13, 20)).await.expect("apply rest");
            (at_snapshot, sm.store().hash_kv(0).expect("hash"))
        };

        let mut log = LogStore::open(&log_dir).await.expect("reopen log");
        let mut sm = StateMachine::open(&sm_dir).await.expect("reopen sm");
        assert_eq!(sm.last_applied(), Some(log_id(12)));
        assert_eq!(sm.store().hash_kv(0).expect("hash"), hash_at_snapshot);
        let current = sm.get_current_snapshot().await.expect("current");
        assert_eq!(
            current.expect("a snapshot").meta.last_log_id,
            Some(log_id(12))
        );

        // What openraft does at startup: replay the log after the snapshot.
        let rest = log.try_get_log_entries(13..).await.expect("read log");
        sm.apply(rest).await.expect("replay");
        assert_eq!(sm.last_applied(), Some(log_id(20)));
        assert_eq!(sm.store().hash_kv(0).expect("hash"), hash_at_end);
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_snapshot_file_is_a_startup_error_naming_the_file() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut sm = StateMachine::open(dir.path()).await.expect("open");
            sm.apply(entries(1, 8)).await.expect("apply");
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("build");
        }
        let file = only_snapshot_file(dir.path());
        let mut bytes = std::fs::read(&file).expect("read snapshot");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&file, bytes).expect("write snapshot");

        let err = StateMachine::open(dir.path())
            .await
            .expect_err("a corrupt snapshot must fail the open");
        let message = err.to_string();
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(message.contains("checksum mismatch"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn only_the_newest_snapshot_file_is_kept() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path()).await.expect("open");
        for (from, to) in [(1, 4), (5, 8), (9, 12)] {
            sm.apply(entries(from, to)).await.expect("apply");
            sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .expect("build");
        }
        let file = only_snapshot_file(dir.path());
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        assert!(name.starts_with("1-12-"), "{name}");
    })
    .await;
}

#[tokio::test]
async fn an_installed_snapshot_replaces_the_store_and_survives_a_restart() {
    bounded(async {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let mut leader = StateMachine::open(leader_dir.path()).await.expect("open");
        leader.apply(entries(1, 9)).await.expect("apply");
        let snapshot = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        {
            let mut follower = StateMachine::open(follower_dir.path()).await.expect("open");
            follower.apply(entries(1, 3)).await.expect("apply");
            let mut events = follower.subscribe();
            follower
                .install_snapshot(&snapshot.meta, snapshot.snapshot.clone())
                .await
                .expect("install");
            assert_eq!(follower.last_applied(), Some(log_id(9)));
            let jump = events.try_recv().expect("a jump notice");
            assert!(jump.events.is_empty());
            assert_eq!(jump.index, 9);
            assert_eq!(jump.revision, leader.store().revision());
        }
        let follower = StateMachine::open(follower_dir.path())
            .await
            .expect("reopen");
        assert_eq!(follower.last_applied(), Some(log_id(9)));
        assert_eq!(
            follower.store().hash_kv(0).expect("hash"),
            leader.store().hash_kv(0).expect("hash")
        );

        // A damaged transfer is refused and leaves the state alone.
        let mut damaged = snapshot.snapshot.clone();
        let middle = damaged.get_ref().len() / 2;
        damaged.get_mut()[middle] ^= 0x01;
        let mut follower = follower;
        assert!(
            follower
                .install_snapshot(&snapshot.meta, damaged)
                .await
                .is_err()
        );
        assert_eq!(follower.last_applied(), Some(log_id(9)));
    })
    .await;
}

#[tokio::test]
async fn applied_events_are_published_in_log_order() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open(dir.path()).await.expect("open");
        let mut events = sm.subscribe();
        sm.apply(entries(1, 5)).await.expect("apply");
        // Entries 1 (blank) and 2 (lease grant) produce no events.
        for index in 3..=5 {
            let published = events.recv().await.expect("events");
            assert_eq!(published.index, index);
            assert_eq!(published.events.len(), 1);
            assert_eq!(published.events[0].kv.mod_revision, published.revision);
        }
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
    })
    .await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_block_apply() {
    bounded(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sm = StateMachine::open_with_event_capacity(dir.path(), 4)
            .await
            .expect("open");
        let mut idle = sm.subscribe();
        // Many more entries than the channel holds, one apply call each and
        // one big batch: neither may wait for the idle subscriber.
        for index in 1..=50 {
            sm.apply([put(index, "k", "v")]).await.expect("apply");
        }
        sm.apply((51..=100).map(|i| put(i, "k", "v")))
            .await
            .expect("apply batch");
        assert_eq!(sm.last_applied(), Some(log_id(100)));
        match idle.try_recv() {
            Err(TryRecvError::Lagged(missed)) => assert_eq!(missed, 96),
            other => panic!("expected Lagged, got {other:?}"),
        }
        // After the lag, the newest messages are still there.
        let next = idle.try_recv().expect("after lag");
        assert_eq!(next.index, 97);
    })
    .await;
}
