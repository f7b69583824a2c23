//! The in-process cluster harness shared by the integration tests: members
//! of a [`Cluster`] are [`RaftNode`]s on loopback in one temp directory,
//! sharing one [`FaultInjector`].
//!
//! Every listener is bound by the harness first (port 0), so peer addresses
//! are known before any member starts. Every wait is bounded, and events are
//! awaited by polling openraft's metrics, never by sleeping.

// Each test binary compiles this module separately and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_core::{Command, KeyValue, PutRequest, RangeRequest, Response};
use muster_raft::{CommandResult, Error, FaultInjector, NodeId, RaftNode, RaftNodeConfig};
use openraft::{BasicNode, ServerState};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// Heartbeat interval of the fast-timed clusters.
pub(crate) const HEARTBEAT_MS: u64 = 50;
/// Election timeout of the fast-timed clusters.
pub(crate) const ELECTION_TIMEOUT_MS: u64 = 300;
/// Upper bound of every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// How often metrics are polled.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// The running members, shared with background tasks (such as a writer).
pub(crate) type Running = Arc<Mutex<BTreeMap<NodeId, Arc<RaftNode>>>>;

/// How a [`Cluster`] is started; `None` keeps [`RaftNodeConfig::new`]'s
/// default.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Members started, with IDs `1..=size`.
    pub(crate) size: u64,
    /// [`RaftNodeConfig::heartbeat_ms`] of every member.
    pub(crate) heartbeat_ms: Option<u64>,
    /// [`RaftNodeConfig::election_timeout_ms`] of every member.
    pub(crate) election_timeout_ms: Option<u64>,
    /// [`RaftNodeConfig::snapshot_logs`] of every member.
    pub(crate) snapshot_logs: Option<u64>,
    /// Whether [`Cluster::start`] initializes the cluster on member 1.
    pub(crate) initialize: bool,
}

impl Options {
    /// `size` members at the fast test timings ([`HEARTBEAT_MS`],
    /// [`ELECTION_TIMEOUT_MS`]), initialized.
    pub(crate) fn fast(size: u64) -> Options {
        Options {
            size,
            heartbeat_ms: Some(HEARTBEAT_MS),
            election_timeout_ms: Some(ELECTION_TIMEOUT_MS),
            snapshot_logs: None,
            initialize: true,
        }
    }

    /// `size` members with the default configuration (etcd's timings),
    /// initialized.
    pub(crate) fn defaults(size: u64) -> Options {
        Options {
            size,
            heartbeat_ms: None,
            election_timeout_ms: None,
            snapshot_logs: None,
            initialize: true,
        }
    }

    fn config(&self, id: NodeId, dir: &TempDir) -> RaftNodeConfig {
        let mut config = RaftNodeConfig::new(id, dir.path().join(format!("member-{id}")));
        if let Some(heartbeat_ms) = self.heartbeat_ms {
            config.heartbeat_ms = heartbeat_ms;
        }
        if let Some(election_timeout_ms) = self.election_timeout_ms {
            config.election_timeout_ms = election_timeout_ms;
        }
        if let Some(snapshot_logs) = self.snapshot_logs {
            config.snapshot_logs = snapshot_logs;
        }
        config
    }
}

/// One member slot: its configuration and address outlive the running
/// node, so it can be restarted.
struct Slot {
    config: RaftNodeConfig,
    addr: SocketAddr,
}

/// An in-process test cluster.
pub(crate) struct Cluster {
    dir: TempDir,
    options: Options,
    /// The fault injector shared by every member.
    pub(crate) faults: FaultInjector,
    /// The running members.
    pub(crate) running: Running,
    slots: Mutex<BTreeMap<NodeId, Slot>>,
}

impl Cluster {
    /// Starts `options.size` members (IDs 1..=size) and, if
    /// `options.initialize`, initializes the cluster on member 1.
    pub(crate) async fn start(options: Options) -> Cluster {
        // Warnings (openraft's errors only), or what `RUST_LOG` asks for, captured per test (without
        // openraft's error per failed send to a stopped member).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "warn,openraft=error,openraft::replication=off",
                    )
                }),
            )
            .with_test_writer()
            .try_init();
        let cluster = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            options,
            faults: FaultInjector::new(),
            running: Arc::default(),
            slots: Mutex::default(),
        };
        for id in 1..=options.size {
            cluster.start_member(id).await;
        }
        if options.initialize {
            cluster
                .node(1)
                .initialize(cluster.membership())
                .await
                .expect("initialize");
        }
        cluster
    }

    /// Starts member `id` on a fresh directory, not initialized; returns
    /// its peer address.
    pub(crate) async fn start_member(&self, id: NodeId) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let config = self.options.config(id, &self.dir);
        let node = RaftNode::start_with_faults(config.clone(), listener, self.faults.clone())
            .await
            .expect("start member");
        lock(&self.slots).insert(id, Slot { config, addr });
        lock(&self.running).insert(id, Arc::new(node));
        addr
    }

    /// Every member ever started, with its peer address.
    pub(crate) fn membership(&self) -> BTreeMap<NodeId, BasicNode> {
        lock(&self.slots)
            .iter()
            .map(|(&id, slot)| (id, BasicNode::new(slot.addr.to_string())))
            .collect()
    }

    /// Running member `id`.
    pub(crate) fn node(&self, id: NodeId) -> Arc<RaftNode> {
        lock(&self.running)
            .get(&id)
            .cloned()
            .expect("member is running")
    }

    /// Every running member, by ID.
    pub(crate) fn running(&self) -> Vec<Arc<RaftNode>> {
        lock(&self.running).values().cloned().collect()
    }

    /// The running members other than `leader`.
    pub(crate) fn followers(&self, leader: NodeId) -> Vec<NodeId> {
        lock(&self.running)
            .keys()
            .copied()
            .filter(|&id| id != leader)
            .collect()
    }

    /// Waits until one running member leads and every running member that
    /// is not isolated follows it; returns the leader.
    pub(crate) async fn wait_leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.agreed_leader() {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    fn agreed_leader(&self) -> Option<NodeId> {
        let reachable: Vec<Arc<RaftNode>> = self
            .running()
            .into_iter()
            .filter(|node| !self.faults.is_isolated(node.id()))
            .collect();
        let leader = reachable.iter().find_map(|node| {
            (node.raft().metrics().borrow().state == ServerState::Leader).then_some(node.id())
        })?;
        reachable
            .iter()
            .all(|node| node.raft().metrics().borrow().current_leader == Some(leader))
            .then_some(leader)
    }

    /// Waits until a running member believes it leads (whether or not the
    /// others follow it yet); returns it.
    pub(crate) async fn wait_any_leader(&self) -> Arc<RaftNode> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = current_leader(&self.running, None) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// The running member other than `except` that believes it leads, if
    /// any.
    pub(crate) fn leader_except(&self, except: Option<NodeId>) -> Option<Arc<RaftNode>> {
        current_leader(&self.running, except)
    }

    /// Waits until every running member in `ids` sees exactly `voters` as
    /// voters and no learners.
    pub(crate) async fn wait_members(&self, ids: &[NodeId], voters: &[NodeId]) {
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

    /// Puts `key = value` through the current leader, retrying (bounded)
    /// while leadership moves. Returns the revision of the write.
    pub(crate) async fn put(&self, key: &str, value: &str) -> i64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.wait_leader().await;
            let node = self.node(leader);
            match tokio::time::timeout(WAIT, node.write(put(key, value))).await {
                Ok(Ok(CommandResult::Applied(Response::Put(put)))) => return put.revision,
                Ok(Ok(other)) => panic!("unexpected result of a put: {other:?}"),
                Ok(Err(Error::NotLeader { .. })) => {}
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => panic!("write of {key} not acknowledged within {WAIT:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "could not write {key} within {WAIT:?}"
            );
        }
    }

    /// Writes `key = ok` through a leader other than `old`, retrying every
    /// [`POLL`] until it is acknowledged (bounded by [`WAIT`]).
    pub(crate) async fn put_avoiding(&self, old: NodeId, key: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.leader_except(Some(old)) {
                match tokio::time::timeout(WAIT, leader.write(put(key, "ok"))).await {
                    Ok(Ok(CommandResult::Applied(Response::Put(_)))) => return,
                    Ok(Ok(other)) => panic!("unexpected result of a put: {other:?}"),
                    Ok(Err(Error::NotLeader { .. })) => {}
                    Ok(Err(e)) => panic!("write failed: {e}"),
                    Err(_) => panic!("write of {key} not acknowledged within {WAIT:?}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "could not write {key} within {WAIT:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every running member has applied everything any running
    /// member has applied (so every acknowledged write is everywhere).
    ///
    /// The target is read from the state machines, not from openraft's
    /// metrics: a write is acknowledged as soon as it is applied, and the
    /// metrics may report it a moment later.
    pub(crate) async fn wait_converged(&self) {
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

    /// [`Cluster::wait_leader`], then [`Cluster::wait_converged`].
    pub(crate) async fn wait_leader_and_converged(&self) {
        self.wait_leader().await;
        self.wait_converged().await;
    }

    /// The hash of the whole retained history on every running member.
    pub(crate) fn hashes(&self) -> BTreeMap<NodeId, u32> {
        self.running()
            .iter()
            .map(|node| {
                let hash = node.state_machine().store().hash_kv(0).expect("hash_kv");
                (node.id(), hash.hash)
            })
            .collect()
    }

    /// The configuration member `id` was started with.
    pub(crate) fn config(&self, id: NodeId) -> RaftNodeConfig {
        lock(&self.slots).get(&id).expect("member").config.clone()
    }

    /// Stops running member `id`; its slot stays, so it can be restarted.
    pub(crate) async fn stop(&self, id: NodeId) {
        let node = lock(&self.running).remove(&id).expect("member is running");
        tokio::time::timeout(WAIT, node.shutdown())
            .await
            .expect("shutdown in time")
            .expect("shutdown");
        drop(node);
    }

    /// Restarts a stopped member on its data directory and old address,
    /// retrying the bind a few times in case the port is briefly taken.
    pub(crate) async fn restart(&self, id: NodeId) {
        assert!(
            !lock(&self.running).contains_key(&id),
            "member {id} is running"
        );
        let (config, addr) = {
            let slots = lock(&self.slots);
            let slot = slots.get(&id).expect("member");
            (slot.config.clone(), slot.addr)
        };
        let mut attempt = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    eprintln!("rebinding {addr}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        };
        let node = RaftNode::start_with_faults(config, listener, self.faults.clone())
            .await
            .expect("restart member");
        lock(&self.running).insert(id, Arc::new(node));
    }

    /// Stops every running member.
    pub(crate) async fn shutdown(self) {
        let ids: Vec<NodeId> = lock(&self.running).keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

/// Locks `mutex`, ignoring poisoning (a panicking test fails anyway).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running member other than `except` that believes it leads, if any.
pub(crate) fn current_leader(running: &Running, except: Option<NodeId>) -> Option<Arc<RaftNode>> {
    lock(running)
        .values()
        .find(|node| {
            Some(node.id()) != except && node.raft().metrics().borrow().state == ServerState::Leader
        })
        .cloned()
}

/// A put of `key = value`.
pub(crate) fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    })
}

/// Every key under `prefix` in `node`'s applied store, with its value.
pub(crate) fn keys(node: &RaftNode, prefix: &str) -> BTreeMap<String, String> {
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

/// Every acknowledged write under `prefix` is on every running member.
pub(crate) fn assert_all_have(
    cluster: &Cluster,
    expected: &BTreeMap<String, String>,
    prefix: &str,
) {
    for node in cluster.running() {
        let got = keys(&node, prefix);
        for (key, value) in expected {
            assert_eq!(
                got.get(key),
                Some(value),
                "member {} lost acknowledged write {key}",
                node.id()
            );
        }
    }
}

/// Every running member holds the same history.
pub(crate) fn assert_equal_hashes(cluster: &Cluster) {
    let hashes = cluster.hashes();
    let first = *hashes.values().next().expect("a running member");
    assert!(
        hashes.values().all(|&hash| hash == first),
        "members diverge: {hashes:?}"
    );
}
