//! Membership changes on a running cluster ([`RaftNode::add_learner`],
//! [`RaftNode::promote`], [`RaftNode::remove`], [`RaftNode::members`])
//! while a background writer keeps writing through whichever member leads.
//!
//! Every listener is bound by the test first (port 0), so peer addresses are
//! known before any member starts. Every wait is bounded, and events are
//! awaited by polling openraft's metrics, never by sleeping.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use common::{
    Cluster, Options, POLL, Running, WAIT, assert_all_have, assert_equal_hashes, current_leader,
    put,
};
use muster_core::Response;
use muster_raft::{CommandResult, Error, Members, NodeId};
use openraft::ServerState;
use tokio::task::JoinHandle;

/// Writes acknowledged before a test stops its writer.
const TOTAL_WRITES: usize = 300;
/// Most writes the background writer makes before it stops by itself.
const MAX_WRITES: usize = 3_000;

/// A task writing `w/0000`, `w/0001`, ... one at a time through whichever
/// member leads until told to stop (or [`MAX_WRITES`]), retrying each write
/// for at most [`WAIT`] while leadership moves or a member stops.
struct Writer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    task: JoinHandle<BTreeMap<String, String>>,
}

impl Writer {
    fn spawn(running: Running) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, written) = (stop.clone(), written.clone());
            async move {
                let mut acknowledged = BTreeMap::new();
                for i in 0..MAX_WRITES {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (key, value) = (format!("w/{i:04}"), format!("v{i}"));
                    write_with_retries(&running, &key, &value).await;
                    acknowledged.insert(key, value);
                    written.fetch_add(1, Ordering::Relaxed);
                }
                acknowledged
            }
        });
        Writer {
            stop,
            written,
            task,
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` writes have been acknowledged.
    async fn wait_written(&self, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.written() < count {
            assert!(
                Instant::now() < deadline,
                "writer stuck at {} writes",
                self.written()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the writer; returns every acknowledged write.
    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(WAIT * 2, self.task)
            .await
            .expect("writer stops in time")
            .expect("writer task")
    }
}

/// Writes `key = value` through the current leader, retrying (bounded by
/// [`WAIT`]) on `NotLeader`, on a leader that stops mid-write and while no
/// member leads.
async fn write_with_retries(running: &Running, key: &str, value: &str) {
    let deadline = Instant::now() + WAIT;
    let mut attempts = 0u32;
    loop {
        if let Some(leader) = current_leader(running, None) {
            attempts += 1;
            match tokio::time::timeout(WAIT, leader.write(put(key, value))).await {
                Ok(Ok(CommandResult::Applied(Response::Put(_)))) => return,
                Ok(Ok(other)) => panic!("unexpected result of a put: {other:?}"),
                // Leadership moved, or the leader was stopped or removed.
                Ok(Err(Error::NotLeader { .. } | Error::Raft(_))) => {}
                Ok(Err(e)) => panic!("write of {key} failed: {e}"),
                Err(_) => panic!("write of {key} not acknowledged within {WAIT:?}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "could not write {key} within {WAIT:?} ({attempts} attempts)"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every acknowledged write is on every running member, and all of them
/// hold the same history.
fn assert_all_have_and_agree(cluster: &Cluster, acknowledged: &BTreeMap<String, String>) {
    assert_all_have(cluster, acknowledged, "w/");
    assert_equal_hashes(cluster);
}

fn voter_ids(members: &Members) -> Vec<NodeId> {
    members.voters.keys().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_is_promoted_and_a_follower_is_removed_under_writes() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let leader = cluster.wait_any_leader().await;
    cluster.wait_members(&[1, 2, 3], &[1, 2, 3]).await;
    let addr_of_1 = cluster.node(1).peer_addr().to_string();
    assert_eq!(leader.members().voters.get(&1), Some(&addr_of_1));

    let writer = Writer::spawn(cluster.running.clone());
    writer.wait_written(20).await;

    // A follower refuses membership changes and names the leader.
    let follower = (1..=3).find(|&id| id != leader.id()).expect("a follower");
    match cluster.node(follower).promote(1).await {
        Err(Error::NotLeader {
            leader: Some(named),
            ..
        }) => assert_eq!(named, leader.id()),
        other => panic!("a follower changed the membership: {other:?}"),
    }

    // Member 4 starts empty and joins as a learner once caught up.
    let addr = cluster.start_member(4).await;
    let before_join = writer.written();
    tokio::time::timeout(WAIT, leader.add_learner(4, addr.to_string()))
        .await
        .expect("learner caught up in time")
        .expect("add learner");
    let members = leader.members();
    assert_eq!(voter_ids(&members), [1, 2, 3]);
    assert_eq!(members.learners, BTreeMap::from([(4, addr.to_string())]));
    assert!(members.contains(4));

    // Promoting it gives four voters, seen by every member.
    tokio::time::timeout(WAIT, leader.promote(4))
        .await
        .expect("promote in time")
        .expect("promote");
    cluster.wait_members(&[1, 2, 3, 4], &[1, 2, 3, 4]).await;
    for node in cluster.running() {
        assert_eq!(
            node.members().voters.get(&4),
            Some(&addr.to_string()),
            "member {}",
            node.id()
        );
    }

    // Removing an original follower leaves three voters; it is then stopped.
    let leader = cluster.wait_any_leader().await;
    let removed = (1..=3).find(|&id| id != leader.id()).expect("a follower");
    tokio::time::timeout(WAIT, leader.remove(removed))
        .await
        .expect("remove in time")
        .expect("remove");
    let remaining: Vec<NodeId> = (1..=4).filter(|&id| id != removed).collect();
    assert!(!leader.members().contains(removed));
    cluster.wait_members(&remaining, &remaining).await;
    cluster.stop(removed).await;

    // Removing a member that is not there changes nothing.
    leader.remove(removed).await.expect("remove again");

    // The writer kept going through all of it.
    writer
        .wait_written(TOTAL_WRITES.max(writer.written() + 20))
        .await;
    let during = writer.written() - before_join;
    let acknowledged = writer.finish().await;
    eprintln!(
        "{} writes acknowledged, {during} of them during the membership changes",
        acknowledged.len()
    );
    assert!(during >= 20, "the writer made no progress: {during}");

    cluster.wait_converged().await;
    assert_all_have_and_agree(&cluster, &acknowledged);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_can_remove_itself_and_leadership_moves() {
    let cluster = Cluster::start(Options::fast(3)).await;
    let old = cluster.wait_any_leader().await;
    cluster.wait_members(&[1, 2, 3], &[1, 2, 3]).await;

    let writer = Writer::spawn(cluster.running.clone());
    writer.wait_written(20).await;

    tokio::time::timeout(WAIT, old.remove(old.id()))
        .await
        .expect("remove in time")
        .expect("the leader removes itself");
    let remaining: Vec<NodeId> = (1..=3).filter(|&id| id != old.id()).collect();
    cluster.wait_members(&remaining, &remaining).await;

    // The removed leader steps down and one of the others takes over.
    let deadline = Instant::now() + WAIT;
    let new = loop {
        let leader = remaining
            .iter()
            .map(|&id| cluster.node(id))
            .find(|node| node.raft().metrics().borrow().state == ServerState::Leader);
        if let Some(leader) = leader {
            break leader;
        }
        assert!(Instant::now() < deadline, "no new leader within {WAIT:?}");
        tokio::time::sleep(POLL).await;
    };
    assert_ne!(new.id(), old.id());
    assert_ne!(
        old.raft().metrics().borrow().state,
        ServerState::Leader,
        "the removed leader still leads"
    );
    drop(old);
    let removed = remaining
        .iter()
        .fold((1..=3).sum::<NodeId>(), |sum, id| sum - id);
    cluster.stop(removed).await;

    writer
        .wait_written(TOTAL_WRITES.max(writer.written() + 20))
        .await;
    let acknowledged = writer.finish().await;
    eprintln!(
        "{} writes acknowledged; leader {removed} removed, {} leads",
        acknowledged.len(),
        new.id()
    );

    cluster.wait_converged().await;
    assert_all_have_and_agree(&cluster, &acknowledged);
    for node in cluster.running() {
        assert_eq!(
            voter_ids(&node.members()),
            remaining,
            "member {}",
            node.id()
        );
    }
    cluster.shutdown().await;
}
