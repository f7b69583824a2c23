//! One Raft member: log store, state machine, peer transport and openraft,
//! wired together and serving the peer service on an already-bound
//! listener.
//!
//! ```text
//!   <data_dir>/raft-log   LogStore (sled: log + vote)
//!   <data_dir>/state      StateMachine (snapshots under state/snapshots)
//!
//!   TcpListener ──▶ PeerService ──▶ openraft::Raft ──▶ PeerNetworkFactory ──▶ peers
//! ```
//!
//! Invariants:
//!
//! - The caller binds the listener (port 0 in tests), so the peer address is
//!   known before the member starts and there is no bind race.
//! - `BasicNode::addr` of every member is its peer address, `host:port`;
//!   that is what [`RaftNode::initialize`] must be given.
//! - Restarting on the same `data_dir` recovers everything acknowledged:
//!   the vote and log from sled, the state from the newest snapshot plus
//!   the log after it. The membership (and so the peer addresses) comes
//!   back from the log, so a restarted member must listen on its old
//!   address.
//! - [`RaftNode::submit`] and [`RaftNode::read_barrier`] work on every
//!   member: a follower forwards the command to the leader, or asks it for
//!   the read index, over the peer service (`ForwardBatch`, `ReadIndex`), through
//!   the same cached channels openraft uses. Both are bounded by
//!   [`REQUEST_TIMEOUT`] (or the caller's timeout, see
//!   [`RaftNode::submit_within`]) and retry a bounded number of times while
//!   the leader moves.
//! - Membership changes go through the leader (a follower answers
//!   [`Error::NotLeader`], as for [`RaftNode::write`]) and use openraft's joint
//!   consensus: [`RaftNode::add_learner`] (returns once the new member has
//!   caught up), [`RaftNode::promote`] (learner → voter),
//!   [`RaftNode::remove`] (out of voters and learners; the leader may remove
//!   itself). [`RaftNode::members`] is this member's current view.
//! - Leadership moves only from the leader and only to a voter that has
//!   the whole log, after the leader's own lease has run out:
//!   [`RaftNode::hand_over`] (to the most up-to-date voter, before a stop)
//!   and [`RaftNode::move_leader`] (to a voter the caller names; the old
//!   leader stays a follower) share these steps.
//! - [`RaftNode::shutdown`] stops the peer server before openraft, and the
//!   sled database closes when the last handle (the `RaftNode` and any
//!   [`RaftNode::raft`] clones) is dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::metrics::WaitError;
use tokio::time::Instant;

use muster_core::Command;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::storage::RaftLogStorage as _;
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::coalesce::Forwarding;
use crate::election::{ElectionClock, spawn_campaigner};
use crate::error::Error;
use crate::lease::{KeeperSlot, LeaseAnswer, LeaseKeeper, LeaseOp};
use crate::log_store::LogStore;
use crate::members::{self, MembershipOp, Refusal};
use crate::metrics;
use crate::network::{FaultInjector, ForwardError, PeerCallError, PeerNetworkFactory, PeerService};
use crate::proposer::Proposer;
use crate::read_index::{ReadIndexError, ReadIndexGroup};
use crate::state_machine::StateMachine;
use crate::types::{
    CommandResult, DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, NodeId, Raft, raft_config,
};

/// Log entries applied since the last snapshot that trigger a new one
/// (etcd's default `--snapshot-count`).
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 100_000;

/// Most log entries kept behind a snapshot, so a follower that is only a
/// little behind catches up from the log rather than a whole snapshot
/// (etcd's `SnapshotCatchUpEntries`). [`RaftNodeConfig::snapshot_keep_logs`]
/// keeps a tenth of the snapshot interval, at most this many.
pub const MAX_SNAPSHOT_KEEP_LOGS: u64 = 5_000;

/// How long [`RaftNode::submit`] and [`RaftNode::read_barrier`] may take in
/// all, including finding the leader, forwarding and retries.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most attempts [`RaftNode::submit`] and [`RaftNode::read_barrier`] make,
/// each against the leader as known at the time.
const MAX_ATTEMPTS: u32 = 5;

/// Pause before the second attempt; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Longest pause between two attempts (besides waiting for a new leader).
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Extra time a leader waits past its lease before handing over, for clock
/// granularity.
const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// How long [`RaftNode::shutdown`] waits for the peer server to drain its
/// in-flight calls before it stops it outright.
const SERVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts a proposal as pending for as long as it lives (also when the
/// caller's future is dropped mid-way).
struct PendingProposal;

impl PendingProposal {
    fn start() -> Self {
        metrics::PROPOSALS_PENDING.inc();
        PendingProposal
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        metrics::PROPOSALS_PENDING.dec();
    }
}

/// What a [`RaftNode`] needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftNodeConfig {
    /// This member's ID, unique in the cluster and never reused.
    pub id: NodeId,
    /// The member's data directory: the log store goes in `raft-log`, the
    /// state machine and its snapshots in `state`.
    pub data_dir: PathBuf,
    /// Heartbeat interval in milliseconds (etcd's default: 100).
    pub heartbeat_ms: u64,
    /// Election timeout in milliseconds (etcd's default: 1000): a follower
    /// that stops hearing from the leader campaigns after a random
    /// `[t, 1.5 t)` (see [`crate::raft_config`]).
    pub election_timeout_ms: u64,
    /// Take a snapshot after this many entries since the last one
    /// (openraft's `SnapshotPolicy::LogsSinceLast`; etcd's
    /// `--snapshot-count`).
    pub snapshot_logs: u64,
    /// The cluster's ID, which the peer service's member directory names
    /// (0 when unknown).
    pub cluster_id: u64,
}

impl RaftNodeConfig {
    /// A configuration with etcd's timings and snapshot defaults
    /// ([`DEFAULT_HEARTBEAT_MS`], [`DEFAULT_ELECTION_TIMEOUT_MS`],
    /// [`DEFAULT_SNAPSHOT_LOGS`]).
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        RaftNodeConfig {
            id,
            data_dir: data_dir.into(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            election_timeout_ms: DEFAULT_ELECTION_TIMEOUT_MS,
            snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
            cluster_id: 0,
        }
    }

    /// Entries kept in the log behind a snapshot (openraft's
    /// `max_in_snapshot_log_to_keep`): a tenth of
    /// [`RaftNodeConfig::snapshot_logs`], at most
    /// [`MAX_SNAPSHOT_KEEP_LOGS`]. A follower further behind than this
    /// receives the snapshot instead of the log.
    pub fn snapshot_keep_logs(&self) -> u64 {
        (self.snapshot_logs / 10).min(MAX_SNAPSHOT_KEEP_LOGS)
    }

    /// The openraft configuration for these settings, validated.
    pub fn openraft_config(&self) -> Result<openraft::Config, Error> {
        openraft::Config {
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: self.snapshot_keep_logs(),
            ..raft_config(self.heartbeat_ms, self.election_timeout_ms)?
        }
        .validate()
        .map_err(|e| Error::Config(Box::new(e)))
    }

    /// The log store's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.data_dir.join("raft-log")
    }

    /// The state machine's directory.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join("state")
    }
}

/// The cluster's members as one member currently sees them: the voters and
/// the learners, each with its peer address (`host:port`).
///
/// During a joint-consensus change the voters of both configurations are
/// listed as voters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// Members that vote (and so count towards the quorum), by ID.
    pub voters: BTreeMap<NodeId, String>,
    /// Members that receive the log but do not vote, by ID.
    pub learners: BTreeMap<NodeId, String>,
}

impl Members {
    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains_key(&id) || self.learners.contains_key(&id)
    }
}

/// The running peer server.
#[derive(Debug)]
struct PeerServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A running Raft member: openraft over muster's log store and state
/// machine, serving the peer service.
pub struct RaftNode {
    id: NodeId,
    peer_addr: SocketAddr,
    raft: Raft,
    state_machine: StateMachine,
    log_store: LogStore,
    faults: FaultInjector,
    /// The peer channels (shared with openraft's network) for forwarding.
    network: PeerNetworkFactory,
    /// After a failed attempt, how long to wait for a different leader
    /// before trying again (the election timeout).
    leader_change_wait: Duration,
    server: Mutex<Option<PeerServer>>,
    /// The election campaigner and the switch that stops it.
    campaigner: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
    /// Election timing shared with the campaigner and the peer service.
    clock: ElectionClock,
    /// The lease keeper answering [`RaftNode::lease`] here and forwarded
    /// lease operations from followers.
    keeper: KeeperSlot,
    /// The leader's read-index rounds (shared with the peer service); the
    /// floor of every read index is the last log index this member had
    /// when it started.
    reads: ReadIndexGroup,
    /// Group commit of client writes proposed here as the leader, local
    /// and forwarded (shared with the peer service).
    proposer: Proposer,
    /// As a follower: the writes, lease operations and read-index requests
    /// this member hands the leader, coalesced into shared peer calls.
    forwarding: Forwarding,
}

/// Where the next attempt of a forwarded request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// This member leads: serve locally.
    Local,
    /// Forward to this member at this peer address.
    Remote(NodeId, String),
}

/// What made an attempt fail, for the error returned when giving up.
#[derive(Debug)]
enum Miss {
    /// No leader was known.
    NoLeader,
    /// The member asked is not the leader; its view of the leader.
    NotLeader(Option<NodeId>),
    /// The leader (this ID) could not be reached.
    Unreachable(NodeId, String),
}

/// Why [`RaftNode::move_leader`] did not move leadership.
#[derive(Debug, thiserror::Error)]
pub enum MoveLeaderError {
    /// This member does not lead; `leader` is the one it knows, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this member knows.
        leader: Option<NodeId>,
    },
    /// The target is not a voter of the cluster: a learner, or not a
    /// member at all.
    #[error("member {target} is not a voter")]
    NotVoter {
        /// The member asked to lead.
        target: NodeId,
    },
    /// The target did not become leader in time.
    #[error("leadership did not move to member {target} within {after:?}: {reason}")]
    Timeout {
        /// The member asked to lead.
        target: NodeId,
        /// How long the move was given.
        after: Duration,
        /// The step that did not finish.
        reason: String,
    },
}

/// Lets this member campaign again when dropped: a leader transfer that
/// ends, however it ends, gives the member back its part in elections.
struct ResumeCampaigning<'a>(&'a ElectionClock);

impl Drop for ResumeCampaigning<'_> {
    fn drop(&mut self) {
        self.0.stand_down(false);
    }
}

/// How waiting out a leader's own lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseWait {
    /// The lease ran out while this member still led.
    RanOut,
    /// The deadline came first.
    Deadline,
    /// This member stopped leading meanwhile.
    Deposed,
}

/// Why a `TimeoutNow` did not produce the wanted leader.
#[derive(Debug)]
enum TransferMiss {
    /// The successor refused to campaign (not a voter, leads already, or
    /// is at a later term).
    Refused(NodeId),
    /// The request did not reach the successor.
    Undelivered(NodeId, String),
    /// The successor was asked, but did not become leader in time.
    NoNewLeader(NodeId),
}

impl std::fmt::Display for TransferMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferMiss::Refused(id) => write!(f, "member {id} refused to campaign"),
            TransferMiss::Undelivered(id, error) => {
                write!(f, "TimeoutNow not delivered to member {id}: {error}")
            }
            TransferMiss::NoNewLeader(id) => {
                write!(
                    f,
                    "member {id} campaigned but did not become leader in time"
                )
            }
        }
    }
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .field("peer_addr", &self.peer_addr)
            .finish_non_exhaustive()
    }
}

impl RaftNode {
    /// Opens the member's stores under `config.data_dir`, starts openraft
    /// and serves the peer service on `listener`.
    ///
    /// A member starting on an empty directory is a pristine learner until
    /// [`RaftNode::initialize`] (on one member) makes it part of a cluster;
    /// one restarting on an existing directory resumes where it stopped.
    pub async fn start(config: RaftNodeConfig, listener: TcpListener) -> Result<RaftNode, Error> {
        Self::start_with_faults(config, listener, FaultInjector::default()).await
    }

    /// As [`RaftNode::start`], sending every peer message through `faults`
    /// (for tests: share one injector between the members of a cluster).
    pub async fn start_with_faults(
        config: RaftNodeConfig,
        listener: TcpListener,
        faults: FaultInjector,
    ) -> Result<RaftNode, Error> {
        let raft_config = Arc::new(config.openraft_config()?);
        let peer_addr = listener
            .local_addr()
            .map_err(|e| Error::io(config.data_dir.clone(), e))?;
        let log_store = LogStore::open(config.log_dir()).await?;
        // Every entry this member had before it stopped; a read it serves
        // as the leader is never below it (see `leader_read_index`).
        let recovered_index = log_store
            .clone()
            .get_log_state()
            .await
            .map_err(|e| Error::Raft(Box::new(e)))?
            .last_log_id
            .map_or(0, |log_id| log_id.index);
        let state_machine = StateMachine::open(config.state_dir()).await?;
        let network = PeerNetworkFactory::new(config.id, faults.clone());
        let forwarding = Forwarding::start(&network);
        let raft = Raft::new(
            config.id,
            raft_config,
            network.clone(),
            log_store.clone(),
            state_machine.clone(),
        )
        .await
        .map_err(|e| Error::Raft(Box::new(e)))?;

        let clock = ElectionClock::new();
        let (stop_campaigner, campaigner_stopped) = watch::channel(false);
        let campaigner = spawn_campaigner(
            raft.clone(),
            config.id,
            clock.clone(),
            Duration::from_millis(config.election_timeout_ms.max(1)),
            campaigner_stopped,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let keeper = KeeperSlot::default();
        let proposer = Proposer::start(raft.clone());
        let reads = ReadIndexGroup::new(raft.clone(), recovered_index);
        let service = PeerService::new(
            raft.clone(),
            proposer.clone(),
            reads.clone(),
            config.id,
            clock.clone(),
            Arc::clone(&keeper),
            state_machine.clone(),
            config.cluster_id,
            REQUEST_TIMEOUT,
        )
        .into_server();
        let incoming = crate::network::accept_nodelay(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(id = config.id, %peer_addr, "raft member started");

        Ok(RaftNode {
            id: config.id,
            peer_addr,
            raft,
            state_machine,
            log_store,
            faults,
            network,
            leader_change_wait: Duration::from_millis(config.election_timeout_ms.max(1)),
            server: Mutex::new(Some(PeerServer { stop, task })),
            campaigner: Mutex::new(Some((stop_campaigner, campaigner))),
            clock,
            keeper,
            proposer,
            reads,
            forwarding,
        })
    }

    /// This member's ID.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address the peer service listens on.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The openraft handle: metrics, waits, membership changes, reads.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The replicated state machine: the applied store and its events.
    pub fn state_machine(&self) -> &StateMachine {
        &self.state_machine
    }

    /// The sled log store (for its size on disk).
    pub fn log_store(&self) -> &LogStore {
        &self.log_store
    }

    /// The fault injector this member sends through.
    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    /// Forms a cluster of `members` (ID → `BasicNode` with the peer
    /// address). Call it on one member of a new cluster; on a member that
    /// is already initialized it does nothing and succeeds.
    pub async fn initialize(&self, members: BTreeMap<NodeId, BasicNode>) -> Result<(), Error> {
        match self.raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::Raft(Box::new(e))),
        }
    }

    /// Proposes `command` and waits until it is committed and applied on
    /// this member (the leader).
    ///
    /// On a follower this fails with [`Error::NotLeader`], naming the leader
    /// when known ([`RaftNode::submit`] forwards instead). A command the
    /// core refuses is not an error here: it is applied as
    /// [`CommandResult::Failed`] on every replica.
    pub async fn write(&self, command: Command) -> Result<CommandResult, Error> {
        self.proposer
            .write(command)
            .await
            .map_err(client_write_error)
    }

    /// Applies `command` through the leader, from any member, within
    /// [`REQUEST_TIMEOUT`] (see [`RaftNode::submit_within`]).
    pub async fn submit(&self, command: Command) -> Result<CommandResult, Error> {
        self.submit_within(command, REQUEST_TIMEOUT).await
    }

    /// Applies `command` through the leader, from any member, and returns
    /// its result once it is applied on the leader.
    ///
    /// On the leader this is [`RaftNode::write`]. A follower forwards the
    /// command over the peer service (`ForwardBatch`) to the leader it knows, or
    /// waits for one to be elected. The result is the leader's, so a command
    /// the core refuses comes back as [`CommandResult::Failed`] here too.
    ///
    /// Retries (at most 5 attempts, re-resolving the leader each time, with
    /// a short backoff) happen only when the command was not proposed: the
    /// member asked answered that it is not the leader, or could not be
    /// connected to (a connection dropped mid-call counts as that too; the
    /// peer server drains in-flight calls when it stops, so this is rare).
    ///
    /// Fails with [`Error::NotLeader`] when no leader became known within
    /// `timeout`, with [`Error::Timeout`] when the leader could not be
    /// reached or did not answer within it (the outcome of the write is then
    /// unknown), and with [`Error::Raft`] when the leader failed it.
    pub async fn submit_within(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<CommandResult, Error> {
        let command = &command;
        let _pending = PendingProposal::start();
        let result = self
            .via_leader(
                "submit",
                "the command",
                timeout,
                || async move {
                    match self.write(command.clone()).await {
                        Err(Error::NotLeader { leader, .. }) => Ok(Err(leader)),
                        result => result.map(Ok),
                    }
                },
                |leader, addr, ttl| async move {
                    self.forwarding
                        .writes
                        .call(leader, &addr, command.clone(), ttl)
                        .await
                },
            )
            .await;
        match &result {
            Ok(_) => metrics::PROPOSALS_COMMITTED.inc(),
            Err(_) => metrics::PROPOSALS_FAILED.inc(),
        }
        result
    }

    /// Runs one request on the leader, from any member, within `timeout`:
    /// `local` when this member leads (answering `Err(leader)` when it
    /// turns out not to), else `remote` against the leader's peer address.
    /// The retry policy of [`RaftNode::submit_within`]: at most 5 attempts,
    /// re-resolving the leader each time, only while nothing was proposed.
    async fn via_leader<T, L, LF, R, RF>(
        &self,
        operation: &'static str,
        what: &str,
        timeout: Duration,
        local: L,
        remote: R,
    ) -> Result<T, Error>
    where
        L: Fn() -> LF,
        LF: Future<Output = Result<Result<T, Option<NodeId>>, Error>>,
        R: Fn(NodeId, String, Duration) -> RF,
        RF: Future<Output = Result<Result<T, ForwardError>, PeerCallError>>,
    {
        let deadline = Instant::now() + timeout;
        let mut hint = None;
        let mut miss = Miss::NoLeader;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 && !self.pause_before_retry(attempt, &miss, deadline).await {
                break;
            }
            let Some(target) = self.resolve_leader(hint.take(), deadline).await else {
                miss = Miss::NoLeader;
                break;
            };
            match target {
                Target::Local => match local().await? {
                    Ok(answer) => return Ok(answer),
                    Err(leader) => {
                        hint = leader;
                        miss = Miss::NotLeader(leader);
                    }
                },
                Target::Remote(leader, addr) => {
                    let ttl = deadline.saturating_duration_since(Instant::now());
                    match remote(leader, addr, ttl).await {
                        Ok(Ok(answer)) => return Ok(answer),
                        Ok(Err(ForwardError::NotLeader { leader: named })) => {
                            hint = named;
                            miss = Miss::NotLeader(named);
                        }
                        Ok(Err(ForwardError::Raft(reason))) => {
                            return Err(Error::Raft(
                                format!("leader {leader} failed {what}: {reason}").into(),
                            ));
                        }
                        Err(PeerCallError::Unreachable(reason)) => {
                            miss = Miss::Unreachable(leader, reason);
                        }
                        Err(failure @ PeerCallError::Timeout(_)) => {
                            return Err(Error::Timeout {
                                operation,
                                after: timeout,
                                reason: format!("leader {leader}: {failure}"),
                            });
                        }
                        Err(PeerCallError::Network(reason)) => {
                            return Err(Error::Raft(
                                format!("forwarding to leader {leader}: {reason}").into(),
                            ));
                        }
                    }
                }
            }
        }
        Err(self.give_up(operation, timeout, miss))
    }

    /// Waits until this member has applied every entry committed before the
    /// call, so a read of its state machine afterwards is linearizable,
    /// within [`REQUEST_TIMEOUT`] (see [`RaftNode::read_barrier_within`]).
    pub async fn read_barrier(&self) -> Result<(), Error> {
        self.read_barrier_within(REQUEST_TIMEOUT).await
    }

    /// Waits until this member has applied every entry committed before the
    /// call (read index): the leader confirms its leadership with a quorum
    /// heartbeat and names its read index, and this member waits until it
    /// has applied that index. A read of the local state machine afterwards
    /// sees every write acknowledged before the call.
    ///
    /// On the leader this is openraft's `ensure_linearizable`, its index
    /// raised to the last log index the member had when it started (a
    /// member restarted as the leader may know a stale committed index); a
    /// follower asks the leader over the peer service (`ReadIndex`), which
    /// answers the same way. Concurrent barriers on the leader, its own and
    /// its followers', share one confirmation round (`read_index.rs`).
    /// Every failed attempt is retried (a read changes nothing), at most 5
    /// attempts and within `timeout` in all.
    ///
    /// Fails with [`Error::NotLeader`] when no leader became known within
    /// `timeout`, with [`Error::Timeout`] when none answered or this member
    /// did not catch up in time, and with [`Error::Raft`] when this member's
    /// openraft stopped or failed the check.
    pub async fn read_barrier_within(&self, timeout: Duration) -> Result<(), Error> {
        const OPERATION: &str = "read barrier";
        let deadline = Instant::now() + timeout;
        let mut hint = None;
        let mut miss = Miss::NoLeader;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 && !self.pause_before_retry(attempt, &miss, deadline).await {
                break;
            }
            let Some(target) = self.resolve_leader(hint.take(), deadline).await else {
                miss = Miss::NoLeader;
                break;
            };
            let ttl = deadline.saturating_duration_since(Instant::now());
            match target {
                Target::Local => match tokio::time::timeout(ttl, self.reads.read_index()).await {
                    Ok(Ok(index)) => return self.wait_applied(index, deadline, timeout).await,
                    Ok(Err(ReadIndexError::NotLeader(leader))) => {
                        hint = leader;
                        miss = Miss::NotLeader(leader);
                    }
                    // Peers that did not answer in time: another round may
                    // get a quorum.
                    Ok(Err(ReadIndexError::NoQuorum(reason))) => {
                        miss = Miss::Unreachable(self.id, reason);
                    }
                    Ok(Err(ReadIndexError::Failed(e))) => return Err(Error::Raft(e)),
                    Err(_) => {
                        miss = Miss::Unreachable(self.id, "no quorum confirmed".into());
                    }
                },
                Target::Remote(leader, addr) => {
                    match self.forwarding.reads.call(leader, &addr, (), ttl).await {
                        Ok(Ok(index)) => return self.wait_applied(index, deadline, timeout).await,
                        Ok(Err(ForwardError::NotLeader { leader: named })) => {
                            hint = named;
                            miss = Miss::NotLeader(named);
                        }
                        Ok(Err(ForwardError::Raft(reason))) => {
                            miss = Miss::Unreachable(leader, reason);
                        }
                        Err(failure) => miss = Miss::Unreachable(leader, failure.to_string()),
                    }
                }
            }
        }
        Err(self.give_up(OPERATION, timeout, miss))
    }

    /// Waits (until `deadline`) until this member has applied `index`.
    async fn wait_applied(
        &self,
        index: u64,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(), Error> {
        if index == 0 {
            // Only the initial membership entry, if anything: no data.
            return Ok(());
        }
        let ttl = deadline.saturating_duration_since(Instant::now());
        match self
            .raft
            .wait(Some(ttl))
            .applied_index_at_least(Some(index), "read barrier")
            .await
        {
            Ok(_) => Ok(()),
            Err(WaitError::Timeout(_, _)) => Err(Error::Timeout {
                operation: "read barrier",
                after: timeout,
                reason: format!("this member did not apply the read index {index} in time"),
            }),
            Err(e @ WaitError::ShuttingDown) => Err(Error::Raft(Box::new(e))),
        }
    }

    /// The leader this member currently knows, with its peer address.
    fn known_leader(&self) -> Option<Target> {
        let leader = self.raft.metrics().borrow().current_leader?;
        self.known_target(leader)
    }

    /// Where to send a request for `leader`, by this member's membership.
    fn target(
        &self,
        leader: NodeId,
        metrics: &openraft::RaftMetrics<NodeId, BasicNode>,
    ) -> Option<Target> {
        if leader == self.id {
            return Some(Target::Local);
        }
        let node = metrics.membership_config.membership().get_node(&leader)?;
        Some(Target::Remote(leader, node.addr.clone()))
    }

    /// The member to try next: `hint` (a leader named by a refusal) if this
    /// member knows its address, else the leader this member knows, waiting
    /// for one until `deadline`. `None` when no leader became known in time.
    async fn resolve_leader(&self, hint: Option<NodeId>, deadline: Instant) -> Option<Target> {
        if let Some(target) = hint.and_then(|id| self.known_target(id)) {
            return Some(target);
        }
        if let Some(target) = self.known_leader() {
            return Some(target);
        }
        let ttl = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(ttl))
            .metrics(
                |metrics| metrics.current_leader.is_some(),
                "a leader is known",
            )
            .await
            .ok()?;
        self.known_leader()
    }

    /// Pauses before attempt `attempt` (≥ 1): after an unreachable leader,
    /// until a different leader is known or an election timeout passed;
    /// then a short backoff. False when `deadline` has passed.
    async fn pause_before_retry(&self, attempt: u32, miss: &Miss, deadline: Instant) -> bool {
        if let Miss::Unreachable(failed, _) = *miss {
            let wait = self
                .leader_change_wait
                .min(deadline.saturating_duration_since(Instant::now()));
            let _ = self
                .raft
                .wait(Some(wait))
                .metrics(
                    |metrics| metrics.current_leader.is_some_and(|id| id != failed),
                    "a different leader is known",
                )
                .await;
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (attempt - 1).min(8))
            .min(MAX_BACKOFF);
        let now = Instant::now();
        if now + backoff >= deadline {
            return false;
        }
        tokio::time::sleep(backoff).await;
        true
    }

    /// The error of a request that ran out of attempts or time.
    fn give_up(&self, operation: &'static str, timeout: Duration, miss: Miss) -> Error {
        match miss {
            Miss::NoLeader => Error::NotLeader {
                leader: None,
                leader_addr: None,
            },
            Miss::NotLeader(leader) => Error::NotLeader {
                leader,
                leader_addr: leader.and_then(|id| match self.known_target(id) {
                    Some(Target::Remote(_, addr)) => Some(addr),
                    _ => None,
                }),
            },
            Miss::Unreachable(leader, reason) => Error::Timeout {
                operation,
                after: timeout,
                reason: format!("leader {leader}: {reason}"),
            },
        }
    }

    /// [`RaftNode::target`] for `id` with the current metrics.
    fn known_target(&self, id: NodeId) -> Option<Target> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        self.target(id, &metrics)
    }

    /// Registers this member's lease keeper (once; later calls are
    /// ignored). Until then, and once the keeper is dropped (it is held
    /// weakly, since it usually holds this node), lease operations fail on
    /// this member and on followers forwarding to it.
    pub fn set_lease_keeper(&self, keeper: &Arc<dyn LeaseKeeper>) {
        let _ = self.keeper.set(Arc::downgrade(keeper));
    }

    /// Runs lease operation `op` on the leader's lease keeper, from any
    /// member: locally when this member leads, otherwise forwarded over
    /// the peer service (`LeaseBatch`). Retries as [`RaftNode::submit`] does
    /// while leadership moves, within [`REQUEST_TIMEOUT`].
    pub async fn lease(&self, op: LeaseOp) -> Result<LeaseAnswer, Error> {
        self.via_leader(
            "lease",
            "the lease operation",
            REQUEST_TIMEOUT,
            || async move {
                let keeper = self
                    .keeper
                    .get()
                    .and_then(std::sync::Weak::upgrade)
                    .ok_or_else(|| Error::Raft("this member keeps no leases".into()))?;
                match crate::lease::answer_confirmed(
                    &self.raft,
                    &self.reads,
                    &*keeper,
                    op,
                    REQUEST_TIMEOUT / 3,
                )
                .await
                {
                    Ok(answer) => Ok(Ok(answer)),
                    Err(crate::lease::Unanswered::NotLeader(leader)) => Ok(Err(leader)),
                    Err(crate::lease::Unanswered::Failed(reason)) => {
                        Err(Error::Raft(reason.into()))
                    }
                }
            },
            |leader, addr, ttl| async move { self.forwarding.leases.call(leader, &addr, op, ttl).await },
        )
        .await
    }

    /// Runs membership change `op` on the leader, from any member (locally
    /// when this member leads, else forwarded over the peer service's
    /// `Membership` RPC), retrying as [`RaftNode::submit`] does while
    /// leadership moves. The inner `Err` is the leader's refusal; see
    /// `members` for when an `Ok` answer is given.
    pub async fn change_members(&self, op: MembershipOp) -> Result<Result<(), Refusal>, Error> {
        self.via_leader(
            "membership change",
            "the membership change",
            REQUEST_TIMEOUT,
            || {
                let op = op.clone();
                async move {
                    match members::execute(&self.raft, op, REQUEST_TIMEOUT).await {
                        Ok(answer) => Ok(Ok(answer)),
                        Err(ForwardError::NotLeader { leader }) => Ok(Err(leader)),
                        Err(ForwardError::Raft(reason)) => Err(Error::Raft(reason.into())),
                    }
                }
            },
            |leader, addr, ttl| {
                let op = op.clone();
                async move { self.network.membership(leader, &addr, op, ttl).await }
            },
        )
        .await
    }

    /// Adds member `id`, whose peer service listens on `addr` (`host:port`),
    /// as a learner, and waits until the leader sees it caught up with the
    /// log (openraft's blocking `add_learner`), so promoting it next does
    /// not stall the cluster.
    ///
    /// The new member must have been started (on an empty data directory,
    /// not initialized) before. Adding a member that is already a voter or
    /// learner re-adds it with its old address (the address is not
    /// replaced). The wait is not bounded: wrap the call in a timeout.
    ///
    /// On a follower this fails with [`Error::NotLeader`].
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), Error> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map(drop)
            .map_err(client_write_error)
    }

    /// Makes learner `id` a voter, keeping every other voter and learner,
    /// through joint consensus (returns once the final configuration is
    /// committed).
    ///
    /// Fails with [`Error::Raft`] when `id` is not a learner (add it with
    /// [`RaftNode::add_learner`] first), and on a follower with
    /// [`Error::NotLeader`].
    pub async fn promote(&self, id: NodeId) -> Result<(), Error> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await
            .map(drop)
            .map_err(client_write_error)
    }

    /// Removes member `id` from the cluster: from the voters (through joint
    /// consensus) and from the learners, so nothing is replicated to it any
    /// more. Returns once the configuration without it is committed; the
    /// removed member can then be shut down.
    ///
    /// The leader may remove itself: it keeps leading until the
    /// configuration without it is committed, then steps down and the
    /// remaining voters elect a new leader (after the leader lease, see
    /// [`crate::raft_config`]). Removing a member that is not in the
    /// cluster succeeds and changes nothing.
    ///
    /// On a follower this fails with [`Error::NotLeader`].
    pub async fn remove(&self, id: NodeId) -> Result<(), Error> {
        let ids = BTreeSet::from([id]);
        // Not retained: a removed voter leaves the node set too.
        let response = self
            .raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(client_write_error)?;
        // A member that was only a learner is still there.
        let still_learner = response
            .membership
            .is_none_or(|membership| membership.get_node(&id).is_some());
        if still_learner {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(client_write_error)?;
        }
        Ok(())
    }

    /// The voters and learners with their peer addresses, from the newest
    /// membership configuration this member knows (it may not be committed
    /// yet, and a lagging follower may not know the newest one).
    pub fn members(&self) -> Members {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let addr = |id: &NodeId| {
            membership
                .get_node(id)
                .map(|node| node.addr.clone())
                .unwrap_or_default()
        };
        Members {
            voters: membership.voter_ids().map(|id| (id, addr(&id))).collect(),
            learners: membership.learner_ids().map(|id| (id, addr(&id))).collect(),
        }
    }

    /// Hands leadership to another voter before this member stops, waiting
    /// at most `within`; answers the new leader, or `None` when this member
    /// does not lead, leads alone, or the handover did not happen in time
    /// (the cluster then elects a leader after its election timeout, as
    /// after a crash).
    ///
    /// The successor is the voter with the most of the log; the leader waits
    /// until it has the whole log, asks it to campaign at once
    /// (`TimeoutNow`), and grants it its vote. In a three-member cluster
    /// that vote is the quorum; with five, the others also have to grant
    /// theirs, which they do once their leader lease (one election timeout
    /// after the last heartbeat) has run out. A leader elected less than
    /// one election timeout ago still holds its own lease and refuses the
    /// vote, so it cannot hand over that early.
    ///
    /// This member stays out of elections afterwards (it is stopping); to
    /// move leadership and keep serving, use [`RaftNode::move_leader`].
    pub async fn hand_over(&self, within: Duration) -> Result<Option<NodeId>, Error> {
        let deadline = Instant::now() + within;
        if self.raft.metrics().borrow().state != openraft::ServerState::Leader {
            return Ok(None);
        }
        match self.wait_out_lease(deadline).await {
            LeaseWait::RanOut => {}
            LeaseWait::Deadline => return Ok(None),
            LeaseWait::Deposed => {
                tracing::info!(id = self.id, "hand-over: leadership lost meanwhile");
                return Ok(None);
            }
        }
        let metrics = self.raft.metrics().borrow().clone();
        let term = metrics.current_term;
        let last = metrics.last_log_index.unwrap_or(0);
        let membership = metrics.membership_config.membership().clone();
        let others: BTreeSet<NodeId> = membership.voter_ids().filter(|id| *id != self.id).collect();
        if others.is_empty() {
            return Ok(None);
        }
        let Ok(metrics) = self.wait_caught_up(&others, last, deadline).await else {
            tracing::info!(id = self.id, "hand-over: no voter caught up in time");
            return Ok(None);
        };
        let Some(successor) = metrics.replication.as_ref().and_then(|replication| {
            others
                .iter()
                .filter_map(|id| {
                    let matched = replication.get(id)?.as_ref()?.index;
                    Some((matched, *id))
                })
                .max()
                .map(|(_, id)| id)
        }) else {
            return Ok(None);
        };
        let Some(addr) = membership
            .get_node(&successor)
            .map(|node| node.addr.clone())
        else {
            return Ok(None);
        };
        self.clock.stand_down(true);
        let handed = self
            .send_timeout_now(successor, &addr, term, deadline)
            .await;
        match handed {
            Ok(leader) => Ok(Some(leader)),
            Err(miss) => {
                tracing::info!(id = self.id, successor, %miss, "hand-over failed");
                self.clock.stand_down(false);
                Ok(None)
            }
        }
    }

    /// Moves leadership to voter `target` (etcd's `MoveLeader`) and keeps
    /// this member running as a follower; returns once `target` leads, at
    /// most `within` after the call.
    ///
    /// The steps are those of [`RaftNode::hand_over`], with the successor
    /// chosen by the caller: this member waits out its own leader lease
    /// (one election timeout after it became leader), waits until `target`
    /// has the whole log, asks it to campaign (`TimeoutNow`) and grants it
    /// its vote. This member does not campaign while the transfer runs and
    /// takes part in elections again once it is over, whether it succeeded
    /// or not. Moving leadership to the leader itself succeeds at once.
    ///
    /// With three voters this member's vote is the quorum, so the move is
    /// certain once `target` campaigns. With five or more, the other voters
    /// grant their votes only once their leader lease (one election timeout
    /// after this member's last heartbeat) has run out, and by then they
    /// may campaign themselves: the election that follows can make another
    /// member leader. openraft 0.9 has no lease-bypassing transfer vote
    /// (etcd's `CampaignTransfer`); call again from the new leader.
    ///
    /// Fails with [`MoveLeaderError::NotLeader`] on a member that does not
    /// lead, [`MoveLeaderError::NotVoter`] when `target` is not a voter (a
    /// learner or not a member), and [`MoveLeaderError::Timeout`] when
    /// another member was elected instead, or `target` did not become
    /// leader within `within` (it may still become leader a little later,
    /// if its campaign was under way).
    pub async fn move_leader(
        &self,
        target: NodeId,
        within: Duration,
    ) -> Result<(), MoveLeaderError> {
        let deadline = Instant::now() + within;
        let timeout = |reason: String| MoveLeaderError::Timeout {
            target,
            after: within,
            reason,
        };
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != openraft::ServerState::Leader {
            return Err(MoveLeaderError::NotLeader {
                leader: metrics.current_leader,
            });
        }
        let membership = metrics.membership_config.membership().clone();
        if !membership.voter_ids().any(|id| id == target) {
            return Err(MoveLeaderError::NotVoter { target });
        }
        if target == self.id {
            return Ok(());
        }
        let Some(addr) = membership.get_node(&target).map(|node| node.addr.clone()) else {
            return Err(MoveLeaderError::NotVoter { target });
        };
        match self.wait_out_lease(deadline).await {
            LeaseWait::RanOut => {}
            LeaseWait::Deadline => {
                return Err(timeout(
                    "this member's leader lease did not run out in time".into(),
                ));
            }
            LeaseWait::Deposed => {
                let leader = self.raft.metrics().borrow().current_leader;
                return if leader == Some(target) {
                    Ok(())
                } else {
                    Err(MoveLeaderError::NotLeader { leader })
                };
            }
        }
        let metrics = self.raft.metrics().borrow().clone();
        let term = metrics.current_term;
        let last = metrics.last_log_index.unwrap_or(0);
        if self
            .wait_caught_up(&BTreeSet::from([target]), last, deadline)
            .await
            .is_err()
        {
            return Err(timeout(format!(
                "member {target} did not catch up with the log (index {last}) in time"
            )));
        }
        self.clock.stand_down(true);
        // Campaign again once the transfer is over, even if the caller
        // drops this future half-way.
        let _resume = ResumeCampaigning(&self.clock);
        match self.send_timeout_now(target, &addr, term, deadline).await {
            Ok(leader) if leader == target => {
                tracing::info!(id = self.id, target, "leadership moved");
                Ok(())
            }
            Ok(leader) => Err(timeout(format!("member {leader} was elected instead"))),
            Err(miss) => Err(timeout(miss.to_string())),
        }
    }

    /// Waits (until `deadline`) until this leader's own lease has run out:
    /// one election timeout (plus a margin) after it became leader. Until
    /// then it would refuse a successor its vote.
    async fn wait_out_lease(&self, deadline: Instant) -> LeaseWait {
        let lease = self.leader_change_wait + LEASE_MARGIN;
        loop {
            let now = Instant::now();
            match self.clock.leading_since() {
                Some(since) if since + lease <= now => return LeaseWait::RanOut,
                _ if now >= deadline => return LeaseWait::Deadline,
                Some(since) => tokio::time::sleep_until((since + lease).min(deadline)).await,
                None => tokio::time::sleep(lease / 8).await,
            }
            if self.raft.metrics().borrow().state != openraft::ServerState::Leader {
                return LeaseWait::Deposed;
            }
        }
    }

    /// Waits (until `deadline`) until one of `candidates` has replicated
    /// the log up to `last`; the leader's metrics at that moment.
    async fn wait_caught_up(
        &self,
        candidates: &BTreeSet<NodeId>,
        last: u64,
        deadline: Instant,
    ) -> Result<openraft::RaftMetrics<NodeId, BasicNode>, WaitError> {
        self.raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .metrics(
                |m| {
                    m.replication.as_ref().is_some_and(|replication| {
                        candidates.iter().any(|id| {
                            replication
                                .get(id)
                                .and_then(|matched| matched.as_ref())
                                .is_some_and(|log_id| log_id.index >= last)
                        })
                    })
                },
                "a voter has the whole log",
            )
            .await
    }

    /// Asks `successor` to campaign and waits (until `deadline`) until
    /// another member than this one leads; that leader (usually, but not
    /// necessarily, `successor`).
    async fn send_timeout_now(
        &self,
        successor: NodeId,
        addr: &str,
        term: u64,
        deadline: Instant,
    ) -> Result<NodeId, TransferMiss> {
        let ttl = deadline.saturating_duration_since(Instant::now());
        match self.network.timeout_now(successor, addr, term, ttl).await {
            Ok(true) => {}
            Ok(false) => return Err(TransferMiss::Refused(successor)),
            Err(error) => return Err(TransferMiss::Undelivered(successor, error.to_string())),
        }
        let moved = self
            .raft
            .wait(Some(deadline.saturating_duration_since(Instant::now())))
            .metrics(
                |m| m.current_leader.is_some_and(|leader| leader != self.id),
                "another member leads",
            )
            .await;
        match moved {
            Ok(m) => m.current_leader.ok_or(TransferMiss::NoNewLeader(successor)),
            Err(_) => Err(TransferMiss::NoNewLeader(successor)),
        }
    }

    /// Stops the election campaigner, the peer server and then openraft.
    /// Idempotent. The stores
    /// close when this `RaftNode` (and every clone of [`RaftNode::raft`]) is
    /// dropped.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let campaigner = self
            .campaigner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((stop, task)) = campaigner {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(PeerServer { stop, mut task }) = server {
            let _ = stop.send(());
            match tokio::time::timeout(SERVER_DRAIN_TIMEOUT, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(id = self.id, %error, "peer server failed"),
                Ok(Err(error)) => tracing::warn!(id = self.id, %error, "peer server task failed"),
                Err(_) => {
                    tracing::warn!(
                        id = self.id,
                        "peer server did not drain in time; aborting it"
                    );
                    task.abort();
                }
            }
        }
        self.raft
            .shutdown()
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        tracing::info!(id = self.id, "raft member stopped");
        Ok(())
    }
}

/// openraft's refusal of a client write or membership change as muster's
/// error: [`Error::NotLeader`] when this member does not lead.
fn client_write_error(error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => Error::NotLeader {
            leader: forward.leader_id,
            leader_addr: forward.leader_node.map(|node| node.addr),
        },
        e => Error::Raft(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_etcds_and_validate() {
        let config = RaftNodeConfig::new(1, "/tmp/unused");
        assert_eq!(config.snapshot_keep_logs(), MAX_SNAPSHOT_KEEP_LOGS);
        let raft = config.openraft_config().expect("valid");
        assert_eq!(raft.heartbeat_interval, DEFAULT_HEARTBEAT_MS);
        assert_eq!(raft.election_timeout_max, DEFAULT_ELECTION_TIMEOUT_MS);
        assert_eq!(
            raft.snapshot_policy,
            SnapshotPolicy::LogsSinceLast(DEFAULT_SNAPSHOT_LOGS)
        );
        assert_eq!(raft.max_in_snapshot_log_to_keep, MAX_SNAPSHOT_KEEP_LOGS);
    }

    #[test]
    fn a_short_snapshot_interval_keeps_a_tenth_of_it() {
        let config = RaftNodeConfig {
            snapshot_logs: 50,
            ..RaftNodeConfig::new(1, "/tmp/unused")
        };
        assert_eq!(config.snapshot_keep_logs(), 5);
        assert_eq!(
            config
                .openraft_config()
                .expect("valid")
                .max_in_snapshot_log_to_keep,
            5
        );
    }
}
