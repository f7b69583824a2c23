//! Membership changes on a running cluster ([`RaftNode::add_learner`],
//! [`RaftNode::promote`], [`RaftNode::remove`], [`RaftNode::members`])
//! while a background writer keeps writing through whichever member leads.
//!
//! Every listener is bound by the test first (port 0), so peer addresses are
//! known before any member starts. Every wait is bounded, and events are
//! awaited by polling openraft's metrics, never by sleeping.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_core::{Command, KeyValue, PutRequest, RangeRequest, Response};
use muster_raft::{CommandResult, Error, FaultInjector, Members, NodeId, RaftNode, RaftNodeConfig};
use openraft::{BasicNode, ServerState};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const HEARTBEAT_MS: u64 = 50;
const ELECTION_TIMEOUT_MS: u64 = 300;
/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// How often metrics are polled.
const POLL: Duration = Duration::from_millis(10);
/// Writes acknowledged before a test stops its writer.
const TOTAL_WRITES: usize = 300;
/// Most writes the background writer makes before it stops by itself.
const MAX_WRITES: usize = 3_000;

/// The running members, shared with the background writer.
type Running = Arc<Mutex<BTreeMap<NodeId, Arc<RaftNode>>>>;

struct Cluster {
    dir: TempDir,
    faults: FaultInjector,
    running: Running,
}

impl Cluster {
    /// Starts `size` members (IDs 1..=size) and initializes the cluster on
    /// member 1.
    async fn start(size: u64) -> Cluster {
        let cluster = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            faults: FaultInjector::new(),
            running: Arc::default(),
        };
        let mut membership = BTreeMap::new();
        for id in 1..=size {
            let addr = cluster.start_member(id).await;
            membership.insert(id, BasicNode::new(addr.to_string()));
        }
        cluster
            .node(1)
            .initialize(membership)
            .await
            .expect("initialize");
        cluster
    }

    /// Starts member `id` on a fresh directory, not initialized; returns
    /// its peer address.
    async fn start_member(&self, id: NodeId) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let config = RaftNodeConfig {
            heartbeat_ms: HEARTBEAT_MS,
            election_timeout_ms: ELECTION_TIMEOUT_MS,
            ..RaftNodeConfig::new(id, self.dir.path().join(format!("member-{id}")))
        };
        let node = RaftNode::start_with_faults(config, listener, self.faults.clone())
            .await
            .expect("start member");
        lock(&self.running).insert(id, Arc::new(node));
        addr
    }

    fn node(&self, id: NodeId) -> Arc<RaftNode> {
        lock(&self.running)
            .get(&id)
            .cloned()
            .expect("member is running")
    }

    fn running(&self) -> Vec<Arc<RaftNode>> {
        lock(&self.running).values().cloned().collect()
    }

    /// Waits until a running member leads; returns it.
    async fn wait_leader(&self) -> Arc<RaftNode> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = current_leader(&self.running) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every running member in `ids` sees exactly `voters` as
    /// voters and no learners.
    async fn wait_members(&self, ids: &[NodeId], voters: &[NodeId]) {
        let deadline = Instant::now() + WAIT;
        for &id in ids {
            let node = self.node(id);
            loop {
                let members = node.members();
                if members.voters.keys().copied().eq(voters.iter().copied())
                    && members.learners.is_empty()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {id} sees {members:?}, not voters {voters:?}"
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Stops member `id` and forgets it.
    async fn stop(&self, id: NodeId) {
        let node = lock(&self.running).remove(&id).expect("member is running");
        tokio::time::timeout(WAIT, node.shutdown())
            .await
            .expect("shutdown in time")
            .expect("shutdown");
    }

    /// Waits until every running member has applied everything any running
    /// member has applied (read from the state machines, which run ahead of
    /// the metrics).
    async fn wait_converged(&self) {
        let applied = self
            .running()
            .iter()
            .filter_map(|node| node.state_machine().last_applied())
            .map(|log_id| log_id.index)
            .max();
        for node in self.running() {
            node.raft()
                .wait(Some(WAIT))
                .applied_index_at_least(applied, format!("member {} catches up", node.id()))
                .await
                .expect("member catches up");
        }
    }

    async fn shutdown(self) {
        let ids: Vec<NodeId> = lock(&self.running).keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

fn lock(running: &Running) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Arc<RaftNode>>> {
    running.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running member that believes it leads, if any.
fn current_leader(running: &Running) -> Option<Arc<RaftNode>> {
    lock(running)
        .values()
        .find(|node| node.raft().metrics().borrow().state == ServerState::Leader)
        .cloned()
}

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    })
}

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
        if let Some(leader) = current_leader(running) {
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

/// Every key under `prefix` in `node`'s applied store, with its value.
fn keys(node: &RaftNode, prefix: &str) -> BTreeMap<String, String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let range = node
        .state_machine()
        .store()
        .range(&RangeRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: Bytes::from(end),
            ..Default::default()
        })
        .expect("range");
    range
        .kvs
        .into_iter()
        .map(|KeyValue { key, value, .. }| {
            (
                String::from_utf8(key.to_vec()).expect("utf-8 key"),
                String::from_utf8(value.to_vec()).expect("utf-8 value"),
            )
        })
        .collect()
}

/// Every acknowledged write is on every running member, and all of them
/// hold the same history.
fn assert_all_have_and_agree(cluster: &Cluster, acknowledged: &BTreeMap<String, String>) {
    let mut hashes = BTreeMap::new();
    for node in cluster.running() {
        let got = keys(&node, "w/");
        for (key, value) in acknowledged {
            assert_eq!(
                got.get(key),
                Some(value),
                "member {} lost acknowledged write {key}",
                node.id()
            );
        }
        let hash = node.state_machine().store().hash_kv(0).expect("hash_kv");
        hashes.insert(node.id(), hash.hash);
    }
    let first = *hashes.values().next().expect("a running member");
    assert!(
        hashes.values().all(|&hash| hash == first),
        "members diverge: {hashes:?}"
    );
}

fn voter_ids(members: &Members) -> Vec<NodeId> {
    members.voters.keys().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_joins_is_promoted_and_a_follower_is_removed_under_writes() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_leader().await;
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
    let leader = cluster.wait_leader().await;
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
    let cluster = Cluster::start(3).await;
    let old = cluster.wait_leader().await;
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
