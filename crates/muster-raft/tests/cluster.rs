//! In-process clusters of [`RaftNode`]s on loopback: election, replication,
//! failover, catch-up after isolation and after a stop during 20k writes
//! (from the log and from a snapshot), and restart on the same data
//! directories.
//!
//! Every listener is bound by the test first (port 0), so peer addresses are
//! known before any member starts. Every wait is bounded, and events are
//! awaited by polling openraft's metrics, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    Cluster, ELECTION_TIMEOUT_MS, Options, WAIT, assert_all_have, assert_equal_hashes, keys,
};
use muster_core::Command;
use muster_raft::{CommandResult, Error, NodeId, RaftNode};

/// Starts `size` members (IDs 1..=size) at the fast timings with
/// `snapshot_logs`, and initializes the cluster on member 1.
async fn start(size: u64, snapshot_logs: u64) -> Cluster {
    start_with(Options {
        snapshot_logs: Some(snapshot_logs),
        initialize: false,
        ..Options::fast(size)
    })
    .await
}

/// As [`start`] at etcd's default timings (heartbeat 100 ms, election
/// timeout 1 s): for the bulk-write tests, where 32 writers fsyncing on a
/// loaded two-core machine can delay a heartbeat past the fast timings'
/// 300 ms and depose the leader mid-test, which is not what they test.
async fn start_patient(size: u64, snapshot_logs: u64) -> Cluster {
    start_with(Options {
        snapshot_logs: Some(snapshot_logs),
        initialize: false,
        heartbeat_ms: None,
        election_timeout_ms: None,
        ..Options::fast(size)
    })
    .await
}

async fn start_with(options: Options) -> Cluster {
    let cluster = Cluster::start(options).await;
    cluster
        .node(1)
        .initialize(cluster.membership())
        .await
        .expect("initialize");
    // Initializing again is a no-op.
    cluster
        .node(1)
        .initialize(cluster.membership())
        .await
        .expect("initialize twice");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_elect_a_leader_and_replicate_a_put() {
    let started = Instant::now();
    let cluster = start(3, 10_000).await;
    let leader = cluster.wait_leader().await;
    eprintln!("leader {leader} elected after {:?}", started.elapsed());

    let revision = cluster.put("svc/a", "10.0.0.1:80").await;
    assert_eq!(revision, 2, "first write of a new store is revision 2");
    cluster.wait_leader_and_converged().await;

    let expected = BTreeMap::from([("svc/a".to_string(), "10.0.0.1:80".to_string())]);
    for node in cluster.running() {
        assert_eq!(keys(&node, "svc/"), expected, "member {}", node.id());
    }
    assert_equal_hashes(&cluster);

    // A follower refuses writes and names the leader.
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let refused = cluster
        .node(follower)
        .write(Command::Compact { revision: 1 })
        .await;
    match refused {
        Err(Error::NotLeader {
            leader: Some(named),
            leader_addr: Some(addr),
        }) => {
            assert_eq!(named, leader);
            assert_eq!(addr, cluster.node(leader).peer_addr().to_string());
        }
        other => panic!("a follower accepted a write: {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_when_the_leader_stops() {
    let cluster = start(3, 10_000).await;
    let mut acknowledged = BTreeMap::new();
    for i in 0..20 {
        let (key, value) = (format!("svc/{i:03}"), format!("v{i}"));
        cluster.put(&key, &value).await;
        acknowledged.insert(key, value);
    }

    let old_leader = cluster.wait_leader().await;
    cluster.stop(old_leader).await;
    let stopped = Instant::now();
    let new_leader = cluster.wait_leader().await;
    let failover = stopped.elapsed();
    eprintln!("leader {old_leader} stopped; {new_leader} leads after {failover:?}");
    assert_ne!(new_leader, old_leader);
    // A follower campaigns a random [t, 1.5t) after the last heartbeat, so
    // failover takes about that plus a vote round (etcd: t..2t). With the
    // short test timeout (300 ms) and the other tests of this binary
    // loading both cores, split votes and late timers add rounds (one run
    // took over 2.2 s); this bound only catches a cluster that does not
    // recover. tests/failover.rs holds the tight one at the default
    // timings, and the benchmarks measure it.
    assert!(
        failover < Duration::from_millis(10 * ELECTION_TIMEOUT_MS + 2_000),
        "failover took {failover:?}"
    );

    cluster.put("svc/after-failover", "ok").await;
    acknowledged.insert("svc/after-failover".to_string(), "ok".to_string());
    cluster.wait_leader_and_converged().await;
    assert_all_have(&cluster, &acknowledged, "svc/");
    assert_equal_hashes(&cluster);
    cluster.shutdown().await;
}

/// Isolates a follower, writes `writes` keys through the majority, heals it,
/// and waits until it has caught up. Returns (cluster, follower, the
/// follower's applied index when it was healed, acknowledged writes).
async fn isolate_write_heal(
    writes: usize,
    snapshot_logs: u64,
) -> (Cluster, NodeId, u64, BTreeMap<String, String>) {
    let cluster = start(3, snapshot_logs).await;
    let leader = cluster.wait_leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let mut acknowledged = BTreeMap::new();
    cluster.put("svc/before", "x").await;
    acknowledged.insert("svc/before".to_string(), "x".to_string());
    cluster.wait_leader_and_converged().await;

    cluster.faults.isolate(follower);
    for i in 0..writes {
        let (key, value) = (format!("svc/{i:04}"), format!("v{i}"));
        cluster.put(&key, &value).await;
        acknowledged.insert(key, value);
    }
    let behind_at = cluster
        .node(follower)
        .state_machine()
        .last_applied()
        .map_or(0, |log_id| log_id.index);
    let leader_applied = cluster
        .node(cluster.wait_leader().await)
        .state_machine()
        .last_applied()
        .map_or(0, |log_id| log_id.index);
    assert!(
        behind_at + writes as u64 <= leader_applied,
        "the isolated follower kept up: {behind_at} vs {leader_applied}"
    );
    let isolated_keys = keys(&cluster.node(follower), "svc/");
    assert!(!isolated_keys.contains_key("svc/0000"));

    cluster.faults.heal(follower);
    cluster.wait_leader_and_converged().await;
    (cluster, follower, behind_at, acknowledged)
}

/// Writes `count` keys `bulk/NNNNN` through `leader` from `writers`
/// concurrent tasks, each write bounded by [`WAIT`]; returns them.
async fn write_many(
    leader: Arc<RaftNode>,
    count: usize,
    writers: usize,
) -> BTreeMap<String, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let leader = Arc::clone(&leader);
        tasks.spawn(async move {
            let mut written = Vec::new();
            for i in (writer..count).step_by(writers) {
                let (key, value) = (format!("bulk/{i:05}"), format!("v{i}"));
                let result = tokio::time::timeout(WAIT, leader.write(common::put(&key, &value)))
                    .await
                    .expect("write acknowledged in time")
                    .expect("write");
                assert!(matches!(result, CommandResult::Applied(_)), "{result:?}");
                written.push((key, value));
            }
            written
        });
    }
    let mut acknowledged = BTreeMap::new();
    while let Some(written) = tasks.join_next().await {
        acknowledged.extend(written.expect("writer task"));
    }
    acknowledged
}

/// Stops a follower, writes `writes` keys through the other two, restarts
/// it and waits until it has caught up. Returns (cluster, follower, the
/// follower's applied index when it stopped, acknowledged writes).
async fn stop_write_restart(
    writes: usize,
    snapshot_logs: u64,
) -> (Cluster, NodeId, u64, BTreeMap<String, String>) {
    let cluster = start_patient(3, snapshot_logs).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.followers(leader)[0];
    cluster.put("bulk/before", "x").await;
    cluster.wait_leader_and_converged().await;
    let stopped_at = cluster
        .node(follower)
        .state_machine()
        .last_applied()
        .map_or(0, |log_id| log_id.index);
    cluster.stop(follower).await;

    let started = Instant::now();
    let mut acknowledged = write_many(cluster.node(leader), writes, 32).await;
    eprintln!(
        "{writes} writes with member {follower} stopped: {:?}",
        started.elapsed()
    );
    acknowledged.insert("bulk/before".to_string(), "x".to_string());

    let restarted = Instant::now();
    cluster.restart(follower).await;
    cluster.wait_leader_and_converged().await;
    eprintln!(
        "member {follower} caught up {:?} after its restart",
        restarted.elapsed()
    );
    (cluster, follower, stopped_at, acknowledged)
}

/// The leader purged its log past `behind_at` (where `follower` stood), so
/// the follower can only have caught up by installing a snapshot, which it
/// holds.
async fn assert_caught_up_by_snapshot(cluster: &Cluster, follower: NodeId, behind_at: u64) {
    let leader = cluster.wait_leader().await;
    let leader_metrics = cluster.node(leader).raft().metrics().borrow().clone();
    let purged = leader_metrics.purged.map_or(0, |log_id| log_id.index);
    assert!(
        purged > behind_at,
        "leader purged only up to {purged}, follower was at {behind_at}"
    );
    let follower_metrics = cluster.node(follower).raft().metrics().borrow().clone();
    let snapshot = follower_metrics.snapshot.expect("follower has a snapshot");
    assert!(
        snapshot.index > behind_at,
        "follower's snapshot {snapshot} is not past {behind_at}"
    );
}

/// The follower has no snapshot: it caught up from the log.
fn assert_caught_up_by_log(cluster: &Cluster, follower: NodeId) {
    let metrics = cluster.node(follower).raft().metrics().borrow().clone();
    assert_eq!(metrics.snapshot, None, "no snapshot was needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_during_20k_writes_catches_up_from_the_log() {
    let (cluster, follower, _, acknowledged) = stop_write_restart(20_000, 100_000).await;
    assert_eq!(keys(&cluster.node(follower), "bulk/").len(), 20_001);
    assert_all_have(&cluster, &acknowledged, "bulk/");
    assert_equal_hashes(&cluster);
    assert_caught_up_by_log(&cluster, follower);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_during_20k_writes_catches_up_from_a_snapshot() {
    // Concurrent writes share log entries (group commit), so 20k writes
    // take far fewer than 20k entries: snapshot every 100.
    let (cluster, follower, stopped_at, acknowledged) = stop_write_restart(20_000, 100).await;
    assert_eq!(keys(&cluster.node(follower), "bulk/").len(), 20_001);
    assert_all_have(&cluster, &acknowledged, "bulk/");
    assert_equal_hashes(&cluster);
    assert_caught_up_by_snapshot(&cluster, follower, stopped_at).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_catches_up_from_the_log_after_healing() {
    let (cluster, follower, _, acknowledged) = isolate_write_heal(200, 10_000).await;
    assert_all_have(&cluster, &acknowledged, "svc/");
    assert_equal_hashes(&cluster);
    assert_caught_up_by_log(&cluster, follower);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_catches_up_from_a_snapshot_after_healing() {
    let (cluster, follower, behind_at, acknowledged) = isolate_write_heal(500, 50).await;
    assert_all_have(&cluster, &acknowledged, "svc/");
    assert_equal_hashes(&cluster);
    assert_caught_up_by_snapshot(&cluster, follower, behind_at).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_full_restart() {
    // Small snapshot interval so recovery goes through snapshot + log.
    let cluster = start(3, 50).await;
    let mut acknowledged = BTreeMap::new();
    for i in 0..120 {
        let (key, value) = (format!("svc/{i:03}"), format!("v{i}"));
        cluster.put(&key, &value).await;
        acknowledged.insert(key, value);
    }
    cluster.wait_leader_and_converged().await;
    let hashes_before = cluster.hashes();

    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let restarted = Instant::now();
    let leader = cluster.wait_leader().await;
    eprintln!(
        "after restart, {leader} leads after {:?}",
        restarted.elapsed()
    );
    cluster.wait_leader_and_converged().await;
    assert_all_have(&cluster, &acknowledged, "svc/");
    assert_eq!(
        cluster.hashes(),
        hashes_before,
        "state changed across restart"
    );

    cluster.put("svc/after-restart", "ok").await;
    acknowledged.insert("svc/after-restart".to_string(), "ok".to_string());
    cluster.wait_leader_and_converged().await;
    assert_all_have(&cluster, &acknowledged, "svc/");
    assert_equal_hashes(&cluster);
    cluster.shutdown().await;
}
