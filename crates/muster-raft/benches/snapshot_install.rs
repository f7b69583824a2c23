//! A lagging follower catching up by snapshot at scale: a 3-member cluster
//! on loopback (real sled logs, the real peer transport) where one member
//! is stopped while KEYS keys are written, the leader snapshots and purges
//! its log, and the member is restarted. Measures how long the restarted
//! member takes to receive, install and apply the snapshot, and checks it
//! then holds exactly the leader's history (HashKV).
//!
//! Run: `cargo bench -p muster-raft --bench snapshot_install`
//! Knobs (environment): KEYS (1000000), VALUE_BYTES (256), WRITERS (8).
//! Prints a table and one JSON line.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Options};
use muster_core::{Command, PutRequest, RequestOp, TxnRequest};
use muster_raft::{CommandResult, RaftNode};

/// Puts per log entry (a txn of this many puts; etcd's default
/// `--max-txn-ops`).
const PUTS_PER_TXN: usize = 128;

/// Bound on every wait of this run.
const LIMIT: Duration = Duration::from_secs(300);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes keys `snap/<i>` for `i` in `range` through `leader`, one txn per
/// [`PUTS_PER_TXN`] keys.
async fn load(leader: Arc<RaftNode>, range: std::ops::Range<usize>, value: Bytes) {
    let keys: Vec<usize> = range.collect();
    for chunk in keys.chunks(PUTS_PER_TXN) {
        let success = chunk
            .iter()
            .map(|i| {
                RequestOp::Put(PutRequest {
                    key: Bytes::from(format!("snap/{i:012}")),
                    value: value.clone(),
                    ..Default::default()
                })
            })
            .collect();
        let txn = Command::Txn(TxnRequest {
            success,
            ..Default::default()
        });
        let result = tokio::time::timeout(LIMIT, leader.write(txn))
            .await
            .expect("txn acknowledged in time")
            .expect("txn");
        assert!(matches!(result, CommandResult::Applied(_)), "{result:?}");
    }
}

fn applied(node: &RaftNode) -> u64 {
    node.state_machine()
        .last_applied()
        .map_or(0, |log_id| log_id.index)
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let keys = knob("KEYS", 1_000_000) as usize;
    let value_bytes = knob("VALUE_BYTES", 256) as usize;
    let writers = knob("WRITERS", 8) as usize;

    let cluster = Cluster::start(Options {
        // Snapshots every 1,000 entries, so the log is purged far past the
        // stopped member.
        snapshot_logs: Some(1_000),
        ..Options::fast(3)
    })
    .await;
    let leader_id = cluster.wait_leader().await;
    let follower = cluster.followers(leader_id)[0];
    cluster.put("snap/before", "x").await;
    cluster.wait_leader_and_converged().await;
    let stopped_at = applied(&cluster.node(follower));
    cluster.stop(follower).await;

    let leader = cluster.node(leader_id);
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let started = Instant::now();
    let per_writer = keys.div_ceil(writers);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let range = (w * per_writer).min(keys)..((w + 1) * per_writer).min(keys);
        tasks.spawn(load(Arc::clone(&leader), range, value.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("writer");
    }
    let loaded = started.elapsed();

    // A snapshot that covers everything, so the member installs it all.
    leader
        .raft()
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    let target = applied(&leader);
    leader
        .raft()
        .wait(Some(LIMIT))
        .metrics(
            |m| {
                m.snapshot.is_some_and(|s| s.index >= target)
                    && m.purged.is_some_and(|p| p.index > stopped_at)
            },
            "a snapshot of everything, log purged past the stopped member",
        )
        .await
        .unwrap_or_else(|e| panic!("leader snapshot: {e}"));
    eprintln!("leader snapshot after {:.2?}", started.elapsed());
    let state_bytes = dir_bytes(leader.state_machine().snapshot_dir());

    let restarted = Instant::now();
    cluster.restart(follower).await;
    let member = cluster.node(follower);
    member
        .raft()
        .wait(Some(LIMIT))
        .metrics(
            |m| {
                m.last_applied.is_some_and(|a| a.index >= target)
                    && m.snapshot.is_some_and(|s| s.index > stopped_at)
            },
            "the restarted member installed a snapshot and applied everything",
        )
        .await
        .unwrap_or_else(|e| panic!("catch up: {e}"));
    let installed = restarted.elapsed();
    let snapshot = member
        .raft()
        .metrics()
        .borrow()
        .snapshot
        .expect("installed snapshot");
    assert!(
        snapshot.index > stopped_at,
        "caught up from the log, not a snapshot"
    );

    let leader_hash = leader
        .state_machine()
        .store()
        .hash_kv(0)
        .expect("hash")
        .hash;
    let member_hash = member
        .state_machine()
        .store()
        .hash_kv(0)
        .expect("hash")
        .hash;
    assert_eq!(leader_hash, member_hash, "the member's history differs");
    let member_keys = member.state_machine().store().key_count();
    assert_eq!(member_keys, keys + 1, "keys on the member");

    println!("keys                 {keys}");
    println!("value bytes          {value_bytes}");
    println!(
        "load                 {loaded:.2?} ({:.0} keys/s)",
        keys as f64 / loaded.as_secs_f64()
    );
    println!(
        "snapshot on leader   {:.1} MiB",
        state_bytes as f64 / (1 << 20) as f64
    );
    println!("restart to caught up {installed:.2?}");
    println!(
        "{{\"bench\":\"snapshot_install\",\"keys\":{keys},\"value_bytes\":{value_bytes},\"state_bytes\":{state_bytes},\"install_ms\":{}}}",
        installed.as_millis()
    );
    cluster.shutdown().await;
}
