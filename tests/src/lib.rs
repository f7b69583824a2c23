//! Cross-crate and compatibility tests for muster, and the in-process
//! cluster they run against.
//!
//! The tests live in `tests/tests/`; for example `proto_interop.rs` checks
//! that `muster-proto`'s etcd v3.5 messages are wire-compatible with the
//! `etcd-client` crate's, and `client_api.rs` drives every etcd v3 RPC
//! through `etcd-client` against a [`TestCluster`].
//!
//! A [`TestCluster`] is 1, 3 or 5 members in this process, each a real
//! [`RaftNode`] (sled log, peer transport on loopback) with the client API
//! ([`ClientApi`]) on its own loopback port. Every port is bound by the
//! harness first, below the kernel's ephemeral range ([`free_port`]), and
//! kept across a member's restart. Every wait is bounded by [`WAIT`].

pub mod proxy;

mod ports;
pub use ports::free_port;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_raft::{NodeId, RaftNode, RaftNodeConfig};
use muster_server::cluster::MemberAttributes;
use muster_server::kv::Limits;
use muster_server::server::ClientApi;
use openraft::{BasicNode, ServerState};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Upper bound of every wait in the harness and its tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// The cluster ID every test cluster reports.
pub const CLUSTER_ID: u64 = 0x6d75_7374_6572_0001;

/// Timings of a test cluster.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// Heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout, in milliseconds.
    pub election_timeout_ms: u64,
}

impl Timings {
    /// Short timings so elections in tests take a fraction of a second.
    pub const FAST: Timings = Timings {
        heartbeat_ms: 50,
        election_timeout_ms: 300,
    };
}

/// One running member.
struct Running {
    node: Arc<RaftNode>,
    stop_clients: oneshot::Sender<()>,
    clients: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A member's fixed parts, which outlive a restart.
struct Slot {
    /// `m1`, `m2`, ...: the name it publishes.
    name: String,
    config: RaftNodeConfig,
    peer_addr: SocketAddr,
    client_addr: SocketAddr,
    running: Option<Running>,
}

/// Adjusts a member's client API before it serves (see
/// [`TestCluster::start_configured`]).
pub type Configure = fn(ClientApi) -> ClientApi;

/// An in-process muster cluster serving the etcd v3 API on loopback.
pub struct TestCluster {
    dir: TempDir,
    slots: Vec<Slot>,
    configure: Configure,
    /// Listeners bound by [`TestCluster::prepare_member`], not yet started.
    prepared: Option<(TcpListener, TcpListener)>,
}

async fn bind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    }
}

/// A listener on a loopback port below the kernel's ephemeral range
/// ([`free_port`]), so that the port is still free when a stopped member
/// binds it again: no outgoing connection can have taken it meanwhile.
async fn bind_below_ephemeral() -> TcpListener {
    bind(SocketAddr::from(([127, 0, 0, 1], free_port()))).await
}

impl TestCluster {
    /// Starts `size` members with [`Timings::FAST`] and bootstraps them.
    pub async fn start(size: usize) -> TestCluster {
        Self::start_with(size, Timings::FAST).await
    }

    /// Starts `size` members with `timings` and bootstraps them.
    pub async fn start_with(size: usize, timings: Timings) -> TestCluster {
        Self::start_configured(size, timings, |api| api).await
    }

    /// Starts `size` members with `timings`, each client API adjusted by
    /// `configure` (also on restarts), and bootstraps them.
    pub async fn start_configured(
        size: usize,
        timings: Timings,
        configure: Configure,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut slots = Vec::new();
        let mut peer_listeners = Vec::new();
        let mut client_listeners = Vec::new();
        for i in 0..size {
            let peer = bind_below_ephemeral().await;
            let client = bind_below_ephemeral().await;
            let mut config = RaftNodeConfig::new(
                i as NodeId + 1,
                dir.path().join(format!("member-{}", i + 1)),
            );
            config.heartbeat_ms = timings.heartbeat_ms;
            config.election_timeout_ms = timings.election_timeout_ms;
            config.cluster_id = CLUSTER_ID;
            slots.push(Slot {
                name: format!("m{}", i + 1),
                config,
                peer_addr: peer.local_addr().expect("peer addr"),
                client_addr: client.local_addr().expect("client addr"),
                running: None,
            });
            peer_listeners.push(peer);
            client_listeners.push(client);
        }
        let mut cluster = TestCluster {
            dir,
            slots,
            configure,
            prepared: None,
        };
        for (i, (peer, client)) in peer_listeners.into_iter().zip(client_listeners).enumerate() {
            cluster.run(i, peer, client).await;
        }
        let members: BTreeMap<NodeId, BasicNode> = cluster
            .slots
            .iter()
            .map(|slot| (slot.config.id, BasicNode::new(slot.peer_addr.to_string())))
            .collect();
        cluster
            .node(0)
            .initialize(members)
            .await
            .expect("initialize");
        cluster.wait_leader().await;
        cluster.wait_published().await;
        cluster
    }

    /// Waits until every running member's name is in the member table of
    /// every running member (each publishes its name and URLs once it
    /// serves).
    pub async fn wait_published(&self) {
        let deadline = Instant::now() + WAIT;
        let running: Vec<&Running> = self
            .slots
            .iter()
            .filter_map(|s| s.running.as_ref())
            .collect();
        loop {
            let published = running.iter().all(|viewer| {
                let store = viewer.node.state_machine().store();
                self.slots
                    .iter()
                    .filter(|slot| slot.running.is_some())
                    .all(|slot| {
                        store
                            .member(slot.config.id)
                            .is_some_and(|m| m.name == slot.name)
                    })
            });
            if published {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members did not publish their attributes within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Binds the ports of a member about to be added to the cluster and
    /// answers its peer URL, for `MemberAdd`; start it with
    /// [`TestCluster::start_prepared`].
    pub async fn prepare_member(&mut self) -> String {
        let peer = bind_below_ephemeral().await;
        let client = bind_below_ephemeral().await;
        let url = format!("http://{}", peer.local_addr().expect("peer addr"));
        self.prepared = Some((peer, client));
        url
    }

    /// Starts the prepared member as `id` (the ID `MemberAdd` answered),
    /// on an empty data directory and without bootstrapping: it receives
    /// the cluster's log from the leader. Answers its index.
    pub async fn start_prepared(&mut self, id: NodeId) -> usize {
        let (peer, client) = self.prepared.take().expect("a prepared member");
        let template = &self.slots[0].config;
        let mut config = RaftNodeConfig::new(id, self.dir.path().join(format!("member-{id:x}")));
        config.heartbeat_ms = template.heartbeat_ms;
        config.election_timeout_ms = template.election_timeout_ms;
        config.cluster_id = CLUSTER_ID;
        let i = self.slots.len();
        self.slots.push(Slot {
            name: format!("m{}", i + 1),
            config,
            peer_addr: peer.local_addr().expect("peer addr"),
            client_addr: client.local_addr().expect("client addr"),
            running: None,
        });
        self.run(i, peer, client).await;
        i
    }

    /// Member `i`'s name (`m1`, `m2`, ...).
    pub fn name(&self, i: usize) -> &str {
        &self.slots[i].name
    }

    /// Member `i`'s peer URL, `http://127.0.0.1:<port>`.
    pub fn peer_url(&self, i: usize) -> String {
        format!("http://{}", self.slots[i].peer_addr)
    }

    async fn run(&mut self, i: usize, peer: TcpListener, client: TcpListener) {
        let slot = &mut self.slots[i];
        let node = Arc::new(
            RaftNode::start(slot.config.clone(), peer)
                .await
                .expect("start member"),
        );
        let (stop_clients, stopped) = oneshot::channel::<()>();
        let attributes = MemberAttributes {
            name: slot.name.clone(),
            peer_urls: vec![format!("http://{}", slot.peer_addr)],
            client_urls: vec![format!("http://{}", slot.client_addr)],
        };
        let api = (self.configure)(
            ClientApi::new(Arc::clone(&node), CLUSTER_ID, Limits::default())
                .with_election_timeout(Duration::from_millis(slot.config.election_timeout_ms))
                .with_member_attributes(attributes),
        );
        let clients = tokio::spawn(api.serve(client, async {
            let _ = stopped.await;
        }));
        slot.running = Some(Running {
            node,
            stop_clients,
            clients,
        });
    }

    /// How many members the cluster has (running or not).
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Member `i`'s Raft node (it must be running).
    pub fn node(&self, i: usize) -> Arc<RaftNode> {
        let running = self.slots[i].running.as_ref().expect("member is running");
        Arc::clone(&running.node)
    }

    /// Cuts member `i` off from every running member, both ways, until
    /// [`TestCluster::heal`]: Raft messages to and from it are dropped
    /// (its clients still reach it).
    pub fn isolate(&self, i: usize) {
        let id = self.member_id(i);
        for slot in &self.slots {
            if let Some(running) = &slot.running {
                running.node.faults().isolate(id);
            }
        }
    }

    /// Undoes [`TestCluster::isolate`] of member `i`.
    pub fn heal(&self, i: usize) {
        let id = self.member_id(i);
        for slot in &self.slots {
            if let Some(running) = &slot.running {
                running.node.faults().heal(id);
            }
        }
    }

    /// Drops every Raft message from member `from` to member `to` (one
    /// direction) until [`TestCluster::heal`] of either.
    pub fn cut(&self, from: usize, to: usize) {
        let to_id = self.member_id(to);
        if let Some(running) = &self.slots[from].running {
            running.node.faults().cut(self.member_id(from), to_id);
        }
    }

    /// Delays every Raft message to member `i` by `delay` until
    /// [`TestCluster::heal`].
    pub fn delay(&self, i: usize, delay: Duration) {
        let id = self.member_id(i);
        for slot in &self.slots {
            if let Some(running) = &slot.running {
                running.node.faults().delay(id, delay);
            }
        }
    }

    /// Member `i`'s ID.
    pub fn member_id(&self, i: usize) -> NodeId {
        self.slots[i].config.id
    }

    /// Member `i`'s client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.slots[i].client_addr)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.size()).map(|i| self.endpoint(i)).collect()
    }

    /// An `etcd-client` connected to member `i` only.
    pub async fn client(&self, i: usize) -> etcd_client::Client {
        tokio::time::timeout(WAIT, etcd_client::Client::connect([self.endpoint(i)], None))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// Waits until the running members agree on a leader; its index.
    pub async fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut leaders = self
                .slots
                .iter()
                .filter_map(|slot| slot.running.as_ref())
                .map(|running| running.node.raft().metrics().borrow().current_leader);
            let first = leaders.next().flatten();
            if let Some(leader) = first
                && leaders.all(|l| l == Some(leader))
                && let Some(i) = self.slots.iter().position(|s| s.config.id == leader)
                && self.slots[i]
                    .running
                    .as_ref()
                    .is_some_and(|r| r.node.raft().metrics().borrow().state == ServerState::Leader)
            {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The index of a running member that is not the leader.
    pub async fn follower(&self) -> usize {
        let leader = self.wait_leader().await;
        (0..self.size())
            .find(|&i| i != leader && self.slots[i].running.is_some())
            .expect("a running follower")
    }

    /// Stops member `i`: its client API, then its Raft node.
    pub async fn stop(&mut self, i: usize) {
        let running = self.slots[i].running.take().expect("member is running");
        let _ = running.stop_clients.send(());
        let _ = tokio::time::timeout(WAIT, running.clients).await;
        tokio::time::timeout(WAIT, running.node.shutdown())
            .await
            .expect("shutdown in time")
            .expect("shutdown");
    }

    /// Restarts stopped member `i` on its data directory and old ports.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.slots[i].running.is_none(), "member {i} is running");
        let peer = bind(self.slots[i].peer_addr).await;
        let client = bind(self.slots[i].client_addr).await;
        self.run(i, peer, client).await;
    }

    /// Restarts stopped member `i` on its data directory with its peer
    /// service on `peer` (a new address, after `MemberUpdate`).
    pub async fn restart_with_peer(&mut self, i: usize, peer: TcpListener) {
        assert!(self.slots[i].running.is_none(), "member {i} is running");
        self.slots[i].peer_addr = peer.local_addr().expect("peer addr");
        let client = bind(self.slots[i].client_addr).await;
        self.run(i, peer, client).await;
    }

    /// Stops every running member.
    pub async fn shutdown(mut self) {
        for i in 0..self.size() {
            if self.slots[i].running.is_some() {
                self.stop(i).await;
            }
        }
    }
}

/// Whether `binary` runs (`binary --version`).
pub fn installed(binary: &str) -> bool {
    std::process::Command::new(binary)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// A real etcd (Debian's `etcd-server`) as a child process on free
/// loopback ports, with its data in `dir`; killed on drop.
pub struct RealEtcd {
    child: std::process::Child,
    /// Its client URL, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Its peer URL, `http://127.0.0.1:<port>`.
    pub peer_url: String,
}

impl RealEtcd {
    /// Starts etcd and waits (bounded by [`WAIT`]) until it serves a read.
    pub async fn start(dir: &std::path::Path) -> RealEtcd {
        Self::start_with_flags(dir, &[]).await
    }

    /// Starts etcd with `flags` added to its command line (for example
    /// `--quota-backend-bytes`) and waits (bounded by [`WAIT`]) until it
    /// serves a read.
    pub async fn start_with_flags(dir: &std::path::Path, flags: &[&str]) -> RealEtcd {
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = std::process::Command::new("etcd")
            // Named as a test cluster's first member, so member lists of
            // the two compare equal.
            .args(["--name", "m1", "--data-dir"])
            .arg(dir.join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("m1={peer}")])
            .args(flags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn etcd");
        let etcd = RealEtcd {
            child,
            endpoint: client,
            peer_url: peer,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let attempt = async {
                let mut client = etcd_client::Client::connect([etcd.endpoint.clone()], None)
                    .await
                    .ok()?;
                client.get("health", None).await.ok()
            };
            if tokio::time::timeout(Duration::from_secs(2), attempt)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
