//! `RaftNode::submit` and `RaftNode::read_barrier` on every member: a
//! follower forwards writes to the leader and asks it for the read index,
//! over the peer service.
//!
//! As in tests/cluster.rs: listeners are bound by the test first (port 0),
//! every wait is bounded, and events are awaited by polling openraft's
//! metrics, never by sleeping.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Options, WAIT, put};
use muster_core::{Command, KeyValue, PutRequest, RangeRequest, Response};
use muster_raft::{CommandResult, Error, REQUEST_TIMEOUT, RaftNode};

/// The value of `key` in `node`'s applied store.
fn get(node: &RaftNode, key: &str) -> Option<String> {
    let range = node
        .state_machine()
        .store()
        .range(&RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
        .expect("range");
    range
        .kvs
        .into_iter()
        .next()
        .map(|KeyValue { value, .. }| String::from_utf8(value.to_vec()).expect("utf-8 value"))
}

/// `submit` bounded by the test's own wait, so a hang fails the test.
async fn submit(node: &RaftNode, command: Command) -> Result<CommandResult, Error> {
    tokio::time::timeout(WAIT, node.submit(command))
        .await
        .expect("submit returned in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_works_on_every_member_and_refusals_come_back_the_same() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let leader = cluster.wait_leader().await;

    let mut revisions = Vec::new();
    for id in 1..=3 {
        let key = format!("svc/from-{id}");
        let started = Instant::now();
        match submit(&cluster.node(id), put(&key, &format!("v{id}"))).await {
            Ok(CommandResult::Applied(Response::Put(put))) => revisions.push(put.revision),
            other => panic!("submit on member {id} (leader {leader}): {other:?}"),
        }
        eprintln!(
            "submit on member {id} (leader {leader}) took {:?}",
            started.elapsed()
        );
    }
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]),
        "revisions not increasing: {revisions:?}"
    );

    // A command the core refuses is a result, forwarded or not.
    for id in 1..=3 {
        let refused = Command::Put(PutRequest {
            lease: 4242,
            ..match put("svc/leased", "x") {
                Command::Put(request) => request,
                _ => unreachable!(),
            }
        });
        assert_eq!(
            submit(&cluster.node(id), refused).await.expect("submit"),
            CommandResult::Failed(muster_core::Error::LeaseNotFound),
            "member {id} (leader {leader})"
        );
    }

    cluster.wait_converged().await;
    for node in cluster.running() {
        for id in 1..=3 {
            assert_eq!(
                get(&node, &format!("svc/from-{id}")),
                Some(format!("v{id}")),
                "member {}",
                node.id()
            );
        }
        assert_eq!(get(&node, "svc/leased"), None, "member {}", node.id());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_barrier_on_a_follower_sees_every_acknowledged_write() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let leader = cluster.wait_leader().await;
    let followers = cluster.followers(leader);
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let (key, value) = (format!("svc/{i:02}"), format!("v{i}"));
        match cluster.node(leader).write(put(&key, &value)).await {
            Ok(CommandResult::Applied(_)) => {}
            other => panic!("write of {key}: {other:?}"),
        }
        let follower = cluster.node(followers[i % followers.len()]);
        let started = Instant::now();
        tokio::time::timeout(WAIT, follower.read_barrier())
            .await
            .expect("read barrier returned in time")
            .expect("read barrier");
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            get(&follower, &key),
            Some(value),
            "member {} missed {key} after a read barrier",
            follower.id()
        );
    }
    eprintln!("slowest follower read barrier: {slowest:?}");

    // And on the leader itself.
    cluster
        .node(leader)
        .read_barrier()
        .await
        .expect("read barrier on the leader");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_on_a_follower_succeeds_once_a_new_leader_is_elected() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let old_leader = cluster.wait_leader().await;
    let follower = cluster.followers(old_leader)[0];
    match submit(&cluster.node(follower), put("svc/before", "x")).await {
        Ok(CommandResult::Applied(_)) => {}
        other => panic!("submit before failover: {other:?}"),
    }

    cluster.stop(old_leader).await;
    // The follower still names the stopped leader for a while: submit must
    // find the new one by itself.
    let started = Instant::now();
    match submit(&cluster.node(follower), put("svc/after", "y")).await {
        Ok(CommandResult::Applied(_)) => {}
        other => panic!("submit after the leader stopped: {other:?}"),
    }
    let took = started.elapsed();
    eprintln!("submit across failover took {took:?}");
    assert!(took < REQUEST_TIMEOUT, "submit took {took:?}");

    let new_leader = cluster.wait_leader().await;
    assert_ne!(new_leader, old_leader);
    cluster
        .node(follower)
        .read_barrier()
        .await
        .expect("read barrier after failover");
    assert_eq!(get(&cluster.node(follower), "svc/after"), Some("y".into()));
    cluster.wait_converged().await;
    for node in cluster.running() {
        assert_eq!(get(&node, "svc/before"), Some("x".into()));
        assert_eq!(get(&node, "svc/after"), Some("y".into()));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_fails_submit_and_read_barrier_in_time() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.followers(leader)[0];
    cluster
        .node(follower)
        .read_barrier()
        .await
        .expect("read barrier before isolation");

    cluster.faults.isolate(follower);
    let node = cluster.node(follower);
    let started = Instant::now();
    let (submitted, barrier) = tokio::time::timeout(WAIT, async {
        tokio::join!(node.submit(put("svc/isolated", "x")), node.read_barrier())
    })
    .await
    .expect("submit and read barrier returned in time");
    let took = started.elapsed();
    eprintln!("isolated follower: submit {submitted:?}, read barrier {barrier:?} after {took:?}");
    assert!(
        matches!(
            submitted,
            Err(Error::Timeout { .. } | Error::NotLeader { .. })
        ),
        "submit on an isolated follower: {submitted:?}"
    );
    assert!(
        matches!(
            barrier,
            Err(Error::Timeout { .. } | Error::NotLeader { .. })
        ),
        "read barrier on an isolated follower: {barrier:?}"
    );
    assert!(
        took < REQUEST_TIMEOUT + Duration::from_secs(2),
        "took {took:?}"
    );

    // A shorter budget is honoured too.
    let started = Instant::now();
    let short = Duration::from_millis(500);
    assert!(node.read_barrier_within(short).await.is_err());
    assert!(
        node.submit_within(put("svc/isolated", "x"), short)
            .await
            .is_err()
    );
    let took = started.elapsed();
    assert!(took < 2 * short + Duration::from_secs(1), "took {took:?}");

    // The majority never saw the write.
    assert_eq!(get(&cluster.node(leader), "svc/isolated"), None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_each_keeps_its_own_revision_and_result() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let leader = cluster.wait_leader().await;
    let mut events = cluster.node(leader).state_machine().subscribe();
    let before = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .last_log_index;

    let forward_calls = muster_raft::metrics::FORWARD_BATCH.get_sample_count();
    let forwarded = muster_raft::metrics::FORWARD_BATCH.get_sample_sum();

    // 100 writes through each member at once; every 10th names a lease
    // that does not exist and must be refused on its own.
    const PER_MEMBER: usize = 100;
    let mut writes = tokio::task::JoinSet::new();
    for id in 1..=3 {
        for i in 0..PER_MEMBER {
            let node = cluster.node(id);
            let mut command = put(&format!("batch/{id}/{i:03}"), "v");
            if i % 10 == 0 {
                let Command::Put(request) = &mut command else {
                    unreachable!()
                };
                request.lease = 424_242;
            }
            writes.spawn(async move { (i % 10 == 0, submit(&node, command).await) });
        }
    }
    let mut revisions = Vec::new();
    while let Some(joined) = writes.join_next().await {
        match joined.expect("write task") {
            (true, Ok(CommandResult::Failed(muster_core::Error::LeaseNotFound))) => {}
            (false, Ok(CommandResult::Applied(Response::Put(put)))) => revisions.push(put.revision),
            other => panic!("unexpected outcome: {other:?}"),
        }
    }
    let accepted = 3 * PER_MEMBER * 9 / 10;
    assert_eq!(revisions.len(), accepted);
    revisions.sort_unstable();
    let first = revisions[0];
    assert_eq!(
        revisions,
        (first..first + accepted as i64).collect::<Vec<_>>(),
        "one revision per accepted write, none shared, none skipped"
    );

    // Fewer entries than writes: concurrent writes shared entries.
    let after = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .last_log_index;
    let entries = after.unwrap_or(0) - before.unwrap_or(0);
    eprintln!("{} writes in {entries} log entries", 3 * PER_MEMBER);
    assert!(
        entries < (3 * PER_MEMBER) as u64,
        "{entries} entries for {} concurrent writes",
        3 * PER_MEMBER
    );

    // The followers' writes shared peer calls to the leader.
    let calls = muster_raft::metrics::FORWARD_BATCH.get_sample_count() - forward_calls;
    let carried = muster_raft::metrics::FORWARD_BATCH.get_sample_sum() - forwarded;
    eprintln!("{carried} forwarded writes in {calls} peer calls");
    assert!(
        carried >= (2 * PER_MEMBER) as f64,
        "every follower write was forwarded"
    );
    assert!(
        calls < (2 * PER_MEMBER) as u64,
        "{calls} peer calls for {carried} concurrent forwarded writes"
    );

    // Subscribers get one message per revision, in order, each holding
    // only its revision's events.
    let mut seen = Vec::new();
    while seen.len() < accepted {
        let applied = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("events in time")
            .expect("no lag at this volume");
        assert_eq!(applied.events.len(), 1, "one put per revision");
        assert!(
            applied
                .events
                .iter()
                .all(|event| event.kv.mod_revision == applied.revision)
        );
        seen.push(applied.revision);
    }
    assert_eq!(seen, revisions, "every revision once, in order");

    cluster.wait_leader_and_converged().await;
    common::assert_equal_hashes(&cluster);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_barriers_never_miss_an_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    // etcd's timings: busy readers on a small machine must not starve the
    // heartbeats into an election, which is not what this tests.
    let cluster = Cluster::start(Options::defaults(3)).await;
    let leader = cluster.wait_leader().await;
    let acknowledged = Arc::new(AtomicU64::new(0));

    // One writer counts up through the leader while readers on every
    // member run barriers concurrently (sharing confirmation rounds).
    let writer = {
        let node = cluster.node(leader);
        let acknowledged = Arc::clone(&acknowledged);
        tokio::spawn(async move {
            for n in 1..=40u64 {
                match submit(&node, put("counter", &n.to_string())).await {
                    Ok(CommandResult::Applied(_)) => acknowledged.store(n, Ordering::SeqCst),
                    other => panic!("write {n}: {other:?}"),
                }
            }
        })
    };
    let mut readers = tokio::task::JoinSet::new();
    for id in 1..=3 {
        for _ in 0..4 {
            let node = cluster.node(id);
            let acknowledged = Arc::clone(&acknowledged);
            readers.spawn(async move {
                let mut reads = 0;
                while acknowledged.load(Ordering::SeqCst) < 40 {
                    let floor = acknowledged.load(Ordering::SeqCst);
                    tokio::time::timeout(WAIT, node.read_barrier())
                        .await
                        .expect("barrier in time")
                        .expect("barrier");
                    let seen: u64 = get(&node, "counter").map_or(0, |v| v.parse().expect("n"));
                    assert!(
                        seen >= floor,
                        "member {}: read {seen} after {floor} was acknowledged",
                        node.id()
                    );
                    reads += 1;
                }
                reads
            });
        }
    }
    writer.await.expect("writer");
    let mut reads = 0;
    while let Some(joined) = readers.join_next().await {
        reads += joined.expect("reader");
    }
    eprintln!("{reads} linearizable reads checked against 40 writes");
    assert!(reads >= 12, "every reader read at least once");
    cluster.shutdown().await;
}
