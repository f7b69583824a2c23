//! The peer transport: openraft's RPCs between members over gRPC.
//!
//! ```text
//!   member 1 (leader)                               member 2
//!   openraft ─▶ PeerNetwork ──gRPC muster.raft.v1.Raft──▶ PeerService ─▶ openraft
//!               (one per target,   payload = bincode(openraft request)
//!                shares the peer's ◀── payload = bincode(Result<response, RaftError>)
//!                lazy Channel)
//! ```
//!
//! The protobuf layer only frames bytes: every request and response carries
//! the bincode 2 (standard config, serde) encoding of openraft's own type, so
//! openraft's messages need no hand-written conversions. Both ends must run
//! the same muster version.
//!
//! Invariants:
//!
//! - The [`PeerService`] is for members only. It is served on the peer
//!   address and must never be exposed as a client API: anyone who can reach
//!   it can vote, append and overwrite the state with a snapshot.
//! - One [`tonic::transport::Channel`] per peer address, created lazily and
//!   shared by every [`PeerNetwork`] to that address; a channel reconnects by
//!   itself, so a restarted peer is reached again without a new client.
//! - Every call is bounded by openraft's [`RPCOption::hard_ttl`].
//! - Errors keep openraft's distinctions: a peer that cannot be connected to
//!   is [`Unreachable`] (openraft backs off), a call that ran out of time is
//!   a [`Timeout`], any other transport failure a [`NetworkError`], and an
//!   error openraft returned on the peer a [`RemoteError`].
//! - A failing peer is logged once at `info` when it starts failing and once
//!   when it recovers; the repeated failures in between are `debug`, so a
//!   member that is down does not flood the log.
//!
//! Besides openraft's three RPCs the service carries six of muster's own,
//! also for members only:
//!
//! - `ForwardBatch`: a follower hands clients' [`Command`]s to the leader,
//!   which proposes each and answers each [`CommandResult`] (or a
//!   [`ForwardError`]); a follower's concurrent forwards share calls (see
//!   `coalesce`).
//! - `ReadIndex`: a follower asks the leader for the read index of a
//!   linearizable read; the leader confirms its leadership with a quorum
//!   first.
//! - `LeaseBatch`: a follower hands lease renewals and time-to-live
//!   queries to the leader's lease keeper ([`crate::RaftNode::lease`]); the
//!   renewals of one call share one leadership confirmation.
//! - `TimeoutNow`: a leader that is stopping asks its most up-to-date
//!   follower to campaign at once ([`crate::RaftNode::hand_over`]).
//! - `Membership`: a follower hands a membership change to the leader
//!   ([`crate::RaftNode::change_members`]).
//! - `Members`: a member about to join asks for the cluster's
//!   [`Directory`] ([`fetch_directory`]); any member answers.
//!
//! [`crate::RaftNode::submit`], [`crate::RaftNode::read_barrier`] and
//! [`crate::RaftNode::hand_over`] use them through the same cached channels
//! as openraft's messages.
//!
//! The service restarts the member's election clock (see `election`) on
//! every append-entries or snapshot it accepts and every vote it grants.
//!
//! [`FaultInjector`] (for tests) sits in front of every send: it can cut a
//! member off from the others or delay messages to it, the way a blackholed
//! or slow network would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error as StdError;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use muster_core::Command;
use openraft::error::{CheckIsLeaderError, ClientWriteError};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::election::ElectionClock;
use crate::lease::{KeeperSlot, LeaseAnswer, LeaseOp, Unanswered};

/// How long a leader waits for a quorum to confirm its leadership before
/// it renews a lease for a forwarded keep-alive.
const LEADERSHIP_CHECK: Duration = Duration::from_secs(3);
use crate::members::{self, Directory, MembershipOp, Refusal};
use crate::proposer::Proposer;
use crate::read_index::{ReadIndexError, ReadIndexGroup};
use crate::state_machine::StateMachine;
use crate::types::{CommandResult, NodeId, Raft, TypeConfig};

/// The generated protobuf messages and gRPC stubs of the peer protocol,
/// package `muster.raft.v1` (`proto/muster/raft/v1/raft.proto`).
#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rustdoc::all
)]
pub mod proto {
    tonic::include_proto!("muster.raft.v1");
}

use proto::raft_client::RaftClient;
use proto::raft_server::RaftServer;

/// Largest peer message accepted or sent. Peers are trusted members and an
/// append-entries batch can be large (openraft sends up to
/// `max_payload_entries` entries, each up to a client request in size), so
/// this is far above tonic's 4 MiB default.
pub const MAX_PEER_MESSAGE_BYTES: usize = 1 << 30;

/// How long to wait for a TCP connection to a peer before calling it
/// unreachable (the call's own deadline may cut this shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn encode<T: Serialize>(value: &T) -> Result<Bytes, bincode::error::EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map(Bytes::from)
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, bincode::error::DecodeError> {
    bincode::serde::decode_from_slice(payload, bincode::config::standard()).map(|(value, _)| value)
}

/// Why the member that received a `ForwardBatch` or `ReadIndex` call could not
/// serve it. Travels bincode-encoded in the reply's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiving member is not the leader (any more); `leader` is its
    /// view of the leader, if it knows one.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's ID as the receiving member sees it.
        leader: Option<NodeId>,
    },
    /// openraft failed the request on the receiving member (it is shutting
    /// down, or its storage failed).
    #[error("raft: {0}")]
    Raft(String),
}

impl From<Unanswered> for ForwardError {
    fn from(unanswered: Unanswered) -> Self {
        match unanswered {
            Unanswered::NotLeader(leader) => ForwardError::NotLeader { leader },
            Unanswered::Failed(reason) => ForwardError::Raft(reason),
        }
    }
}

// ---------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------

/// The server side of the peer transport: hands each decoded RPC to the
/// local [`openraft::Raft`] and returns its result, encoded.
///
/// Serve it on the peer address only, never to clients (see the module
/// docs). [`crate::RaftNode`] serves it; a server that runs its own tonic
/// server can add [`PeerService::into_server`] instead.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    /// Forwarded writes join the leader's group commit.
    proposer: Proposer,
    id: NodeId,
    clock: ElectionClock,
    keeper: KeeperSlot,
    state_machine: StateMachine,
    cluster_id: u64,
    /// How long a membership change may wait for its commit.
    change_timeout: Duration,
    /// The leader's read-index rounds, shared with the member's own reads.
    reads: ReadIndexGroup,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService").finish_non_exhaustive()
    }
}

/// The read index of a linearizable read served by this member as the
/// leader: openraft's read log id (after a quorum confirmed the
/// leadership), raised to `recovered_index`, the last log index this member
/// had when it started.
///
/// The raise matters after a restart: openraft resumes a member whose vote
/// for itself was committed as the leader at once, in the same term, with
/// the committed index it last saved, which may lag what the cluster
/// acknowledged before the restart; its read log id (the larger of that
/// committed index and the term's first entry) can then be below an
/// acknowledged write. Every acknowledged entry is in the leader's log, so
/// reading at the last index it had at start is never stale; that index is
/// committed by this leader, or the read fails with its leadership.
pub(crate) async fn leader_read_index(
    raft: &Raft,
    recovered_index: u64,
) -> Result<u64, RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>> {
    let read = raft
        .ensure_linearizable()
        .await?
        .map_or(0, |log_id| log_id.index);
    Ok(read.max(recovered_index))
}

impl PeerService {
    /// A peer service forwarding to `raft`, member `id`'s openraft: writes
    /// through `proposer`, read indexes from `reads`. It restarts `clock`
    /// whenever a leader is heard from or a vote granted. Lease operations
    /// go to the keeper registered in `keeper`; the directory is read from
    /// `state_machine` and names `cluster_id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        raft: Raft,
        proposer: Proposer,
        reads: ReadIndexGroup,
        id: NodeId,
        clock: ElectionClock,
        keeper: KeeperSlot,
        state_machine: StateMachine,
        cluster_id: u64,
        change_timeout: Duration,
    ) -> Self {
        PeerService {
            raft,
            proposer,
            reads,
            id,
            clock,
            keeper,
            state_machine,
            cluster_id,
            change_timeout,
        }
    }

    /// This service as a tonic service, ready for
    /// `tonic::transport::Server::add_service`, with the message size
    /// limit raised to [`MAX_PEER_MESSAGE_BYTES`].
    pub fn into_server(self) -> RaftServer<PeerService> {
        RaftServer::new(self)
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
    }
}

fn decode_request<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, Status> {
    decode(payload).map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

fn encode_reply<T: Serialize>(value: &T, what: &str) -> Result<Bytes, Status> {
    encode(value).map_err(|e| Status::internal(format!("encoding {what}: {e}")))
}

#[tonic::async_trait]
impl proto::raft_server::Raft for PeerService {
    async fn append_entries(
        &self,
        request: Request<proto::AppendEntriesRequest>,
    ) -> Result<Response<proto::AppendEntriesResponse>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode_request(&request.into_inner().payload, "append-entries request")?;
        let result = self.raft.append_entries(rpc).await;
        if matches!(&result, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
        {
            self.clock.touch();
        }
        Ok(Response::new(proto::AppendEntriesResponse {
            payload: encode_reply(&result, "append-entries response")?,
        }))
    }

    async fn vote(
        &self,
        request: Request<proto::VoteRequest>,
    ) -> Result<Response<proto::VoteResponse>, Status> {
        let rpc: VoteRequest<NodeId> =
            decode_request(&request.into_inner().payload, "vote request")?;
        let result = self.raft.vote(rpc).await;
        if matches!(&result, Ok(response) if response.vote_granted) {
            self.clock.touch();
        }
        Ok(Response::new(proto::VoteResponse {
            payload: encode_reply(&result, "vote response")?,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<proto::InstallSnapshotRequest>,
    ) -> Result<Response<proto::InstallSnapshotResponse>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> =
            decode_request(&request.into_inner().payload, "install-snapshot request")?;
        let result = self.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.clock.touch();
        }
        Ok(Response::new(proto::InstallSnapshotResponse {
            payload: encode_reply(&result, "install-snapshot response")?,
        }))
    }

    async fn forward_batch(
        &self,
        request: Request<proto::ForwardBatchRequest>,
    ) -> Result<Response<proto::ForwardBatchResponse>, Status> {
        let commands: Vec<Command> =
            decode_request(&request.into_inner().payload, "forwarded commands")?;
        let results: Vec<Result<CommandResult, ForwardError>> = self
            .proposer
            .write_many(commands)
            .await
            .into_iter()
            .map(forward_result)
            .collect();
        Ok(Response::new(proto::ForwardBatchResponse {
            payload: encode_reply(&results, "forward-batch response")?,
        }))
    }

    async fn read_index(
        &self,
        _request: Request<proto::ReadIndexRequest>,
    ) -> Result<Response<proto::ReadIndexResponse>, Status> {
        let result: Result<u64, ForwardError> = match self.reads.read_index().await {
            Ok(index) => Ok(index),
            Err(ReadIndexError::NotLeader(leader)) => Err(ForwardError::NotLeader { leader }),
            Err(ReadIndexError::NoQuorum(reason)) => Err(ForwardError::Raft(reason)),
            Err(ReadIndexError::Failed(e)) => Err(ForwardError::Raft(e.to_string())),
        };
        Ok(Response::new(proto::ReadIndexResponse {
            payload: encode_reply(&result, "read-index response")?,
        }))
    }

    async fn lease_batch(
        &self,
        request: Request<proto::LeaseBatchRequest>,
    ) -> Result<Response<proto::LeaseBatchResponse>, Status> {
        let ops: Vec<LeaseOp> = decode_request(&request.into_inner().payload, "lease operations")?;
        let results: Vec<Result<LeaseAnswer, ForwardError>> =
            match self.keeper.get().and_then(Weak::upgrade) {
                None => ops
                    .iter()
                    .map(|_| Err(ForwardError::Raft("this member keeps no leases".into())))
                    .collect(),
                Some(keeper) => crate::lease::answer_all_confirmed(
                    &self.raft,
                    &self.reads,
                    &*keeper,
                    ops,
                    LEADERSHIP_CHECK,
                )
                .await
                .into_iter()
                .map(|answer| answer.map_err(ForwardError::from))
                .collect(),
            };
        Ok(Response::new(proto::LeaseBatchResponse {
            payload: encode_reply(&results, "lease-batch response")?,
        }))
    }

    async fn membership(
        &self,
        request: Request<proto::MembershipRequest>,
    ) -> Result<Response<proto::MembershipResponse>, Status> {
        let op: MembershipOp = decode_request(&request.into_inner().payload, "membership change")?;
        let result = members::execute(&self.raft, op, self.change_timeout).await;
        Ok(Response::new(proto::MembershipResponse {
            payload: encode_reply(&result, "membership response")?,
        }))
    }

    async fn members(
        &self,
        _request: Request<proto::MembersRequest>,
    ) -> Result<Response<proto::MembersResponse>, Status> {
        let directory = members::directory(&self.raft, &self.state_machine, self.cluster_id);
        Ok(Response::new(proto::MembersResponse {
            payload: encode_reply(&directory, "member directory")?,
        }))
    }

    async fn timeout_now(
        &self,
        request: Request<proto::TimeoutNowRequest>,
    ) -> Result<Response<proto::TimeoutNowResponse>, Status> {
        let request = request.into_inner();
        let metrics = self.raft.metrics().borrow().clone();
        let is_voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|voter| voter == self.id);
        let campaigning = is_voter
            && metrics.state != ServerState::Leader
            && metrics.current_term <= request.term
            && self.raft.trigger().elect().await.is_ok();
        if campaigning {
            self.clock.touch();
            tracing::info!(
                from = request.from,
                term = request.term,
                "leader handed over: campaigning"
            );
        }
        Ok(Response::new(proto::TimeoutNowResponse {
            payload: encode_reply(&campaigning, "timeout-now response")?,
        }))
    }
}

// ---------------------------------------------------------------------------
// Fault injection (tests)
// ---------------------------------------------------------------------------

/// Network faults between members, for tests.
///
/// A cloneable handle: give the same injector to every member of an
/// in-process cluster ([`crate::RaftNode::start_with_faults`]) and flip
/// faults from the test. Every message a member sends is checked against it
/// before it leaves:
///
/// - a *dropped* message never arrives; the sender waits out the call's
///   deadline and gets a timeout, as with a blackholed peer;
/// - a *delayed* message is held for the delay first (the delay counts
///   against the call's deadline).
///
/// In production nothing is ever set and the check is one uncontended lock.
#[derive(Clone, Debug, Default)]
pub struct FaultInjector {
    faults: Arc<Mutex<Faults>>,
}

#[derive(Debug, Default)]
struct Faults {
    /// Members cut off from everyone, both ways.
    isolated: BTreeSet<NodeId>,
    /// Single directions `(from, to)` that drop every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Delay of every message sent to a member.
    delays: BTreeMap<NodeId, Duration>,
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Deliver,
    Drop,
    Delay(Duration),
}

impl FaultInjector {
    /// An injector with no faults set.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        // A panic while holding this lock cannot leave the sets inconsistent.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops every message to and from `node` until [`FaultInjector::heal`].
    pub fn isolate(&self, node: NodeId) {
        self.lock().isolated.insert(node);
    }

    /// Undoes every fault involving `node`: its isolation, cut links from
    /// or to it, and the delay of messages to it.
    pub fn heal(&self, node: NodeId) {
        let mut faults = self.lock();
        faults.isolated.remove(&node);
        faults.cut.retain(|&(from, to)| from != node && to != node);
        faults.delays.remove(&node);
    }

    /// Drops every message from `from` to `to` (one direction only).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut.insert((from, to));
    }

    /// Holds every message to `node` for `delay` before sending it; a zero
    /// delay removes the fault.
    pub fn delay(&self, node: NodeId, delay: Duration) {
        let mut faults = self.lock();
        if delay.is_zero() {
            faults.delays.remove(&node);
        } else {
            faults.delays.insert(node, delay);
        }
    }

    /// Removes every fault.
    pub fn heal_all(&self) {
        *self.lock() = Faults::default();
    }

    /// Whether `node` is isolated.
    pub fn is_isolated(&self, node: NodeId) -> bool {
        self.lock().isolated.contains(&node)
    }

    fn fault(&self, from: NodeId, to: NodeId) -> Fault {
        let faults = self.lock();
        if faults.isolated.contains(&from)
            || faults.isolated.contains(&to)
            || faults.cut.contains(&(from, to))
        {
            Fault::Drop
        } else if let Some(&delay) = faults.delays.get(&to) {
            Fault::Delay(delay)
        } else {
            Fault::Deliver
        }
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// A peer address's shared connection and health.
#[derive(Clone)]
struct Peer {
    channel: Channel,
    /// False while calls to this peer fail; drives the log level.
    healthy: Arc<AtomicBool>,
}

/// The client side of the peer transport: openraft asks it for one
/// [`PeerNetwork`] per replication target.
///
/// Channels are cached per peer address (`BasicNode::addr`, `host:port`) and
/// connect lazily, so creating a client never blocks and a member that is
/// down is retried on the next call.
#[derive(Clone, Debug)]
pub struct PeerNetworkFactory {
    /// This member: the sending side of every message.
    id: NodeId,
    peers: Arc<Mutex<HashMap<String, Peer>>>,
    faults: FaultInjector,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl PeerNetworkFactory {
    /// The network of member `id`, sending through `faults` (pass
    /// `FaultInjector::default()` outside tests).
    pub fn new(id: NodeId, faults: FaultInjector) -> Self {
        PeerNetworkFactory {
            id,
            peers: Arc::default(),
            faults,
        }
    }

    /// The fault injector every message goes through.
    pub fn faults(&self) -> &FaultInjector {
        &self.faults
    }

    fn peer(&self, addr: &str) -> Result<Peer, tonic::transport::Error> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(peer) = peers.get(addr) {
            return Ok(peer.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        let peer = Peer {
            channel,
            healthy: Arc::new(AtomicBool::new(true)),
        };
        peers.insert(addr.to_string(), peer.clone());
        Ok(peer)
    }
}

/// The answer to one forwarded command: its result, or why this member
/// could not propose it.
fn forward_result(written: crate::proposer::WriteResult) -> Result<CommandResult, ForwardError> {
    match written {
        Ok(result) => Ok(result),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ForwardError::NotLeader {
                leader: forward.leader_id,
            })
        }
        Err(e) => Err(ForwardError::Raft(e.to_string())),
    }
}

/// Why a peer call of muster's own produced no answer from the peer.
#[derive(Clone, Debug)]
pub(crate) enum PeerCallError {
    /// The peer could not be connected to (or dropped the connection): the
    /// request was most likely not served.
    Unreachable(String),
    /// No answer within the deadline: the request may or may not have been
    /// served.
    Timeout(Duration),
    /// Any other transport or decoding failure.
    Network(String),
}

impl std::fmt::Display for PeerCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerCallError::Unreachable(e) => write!(f, "unreachable: {e}"),
            PeerCallError::Timeout(ttl) => write!(f, "no answer within {ttl:?}"),
            PeerCallError::Network(e) => write!(f, "{e}"),
        }
    }
}

impl From<Failure> for PeerCallError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unreachable(e) => PeerCallError::Unreachable(e.to_string()),
            Failure::Timeout(ttl) => PeerCallError::Timeout(ttl),
            Failure::Network(e) => PeerCallError::Network(e.to_string()),
        }
    }
}

impl PeerNetworkFactory {
    /// A connection to member `target` at `node`, through the shared channel
    /// cache.
    fn client(&self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        let peer = match self.peer(&node.addr) {
            Ok(peer) => Some(peer),
            Err(error) => {
                tracing::warn!(target_id = target, addr = %node.addr, %error, "invalid peer address");
                None
            }
        };
        PeerNetwork {
            source: self.id,
            target,
            node: node.clone(),
            peer,
            faults: self.faults.clone(),
        }
    }

    /// One of muster's own peer RPCs to member `target` at peer address
    /// `addr`, waiting at most `ttl`: `call` sends the request and answers
    /// the reply's payload, which is decoded as `T`.
    async fn call<T, F, Fut>(
        &self,
        target: NodeId,
        addr: &str,
        ttl: Duration,
        call: F,
    ) -> Result<T, PeerCallError>
    where
        T: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Bytes, Status>>,
    {
        let reply = self
            .client(target, &BasicNode::new(addr))
            .send(ttl, call)
            .await?;
        decode(&reply).map_err(|e| PeerCallError::Network(format!("undecodable reply: {e}")))
    }

    /// Sends `commands` to member `target` (at peer address `addr`, which
    /// should be the leader) in one call, and waits at most `ttl` for the
    /// answers: one per command, in order.
    pub(crate) async fn forward_batch(
        &self,
        target: NodeId,
        addr: &str,
        commands: &[Command],
        ttl: Duration,
    ) -> Result<Vec<Result<CommandResult, ForwardError>>, PeerCallError> {
        let payload = encode(&commands).map_err(|e| PeerCallError::Network(e.to_string()))?;
        self.call(target, addr, ttl, |mut client| async move {
            let reply = client
                .forward_batch(proto::ForwardBatchRequest { payload })
                .await?;
            Ok(reply.into_inner().payload)
        })
        .await
    }

    /// Sends lease operations `ops` to member `target` (at peer address
    /// `addr`, which should be the leader) in one call, waiting at most
    /// `ttl`: one answer per operation, in order.
    pub(crate) async fn lease_batch(
        &self,
        target: NodeId,
        addr: &str,
        ops: &[LeaseOp],
        ttl: Duration,
    ) -> Result<Vec<Result<LeaseAnswer, ForwardError>>, PeerCallError> {
        let payload = encode(&ops).map_err(|e| PeerCallError::Network(e.to_string()))?;
        self.call(target, addr, ttl, |mut client| async move {
            let reply = client
                .lease_batch(proto::LeaseBatchRequest { payload })
                .await?;
            Ok(reply.into_inner().payload)
        })
        .await
    }

    /// Sends membership change `op` to member `target` (at peer address
    /// `addr`, which should be the leader), waiting at most `ttl`.
    pub(crate) async fn membership(
        &self,
        target: NodeId,
        addr: &str,
        op: MembershipOp,
        ttl: Duration,
    ) -> Result<Result<Result<(), Refusal>, ForwardError>, PeerCallError> {
        let payload = encode(&op).map_err(|e| PeerCallError::Network(e.to_string()))?;
        self.call(target, addr, ttl, |mut client| async move {
            let reply = client
                .membership(proto::MembershipRequest { payload })
                .await?;
            Ok(reply.into_inner().payload)
        })
        .await
    }

    /// Asks member `target` (at peer address `addr`) to campaign at once,
    /// as the successor of this leader in `term`; answers whether it did.
    pub(crate) async fn timeout_now(
        &self,
        target: NodeId,
        addr: &str,
        term: u64,
        ttl: Duration,
    ) -> Result<bool, PeerCallError> {
        let from = self.id;
        self.call(target, addr, ttl, |mut client| async move {
            let reply = client
                .timeout_now(proto::TimeoutNowRequest { from, term })
                .await?;
            Ok(reply.into_inner().payload)
        })
        .await
    }

    /// Asks member `target` (at peer address `addr`, which should be the
    /// leader) for its read index, waiting at most `ttl`.
    pub(crate) async fn read_index(
        &self,
        target: NodeId,
        addr: &str,
        ttl: Duration,
    ) -> Result<Result<u64, ForwardError>, PeerCallError> {
        self.call(target, addr, ttl, |mut client| async move {
            let reply = client.read_index(proto::ReadIndexRequest {}).await?;
            Ok(reply.into_inner().payload)
        })
        .await
    }
}

/// The connections accepted on `listener`, each with `TCP_NODELAY` set.
///
/// tonic sets it only on listeners it binds itself. Without it, a small
/// response written right after another small frame on the same
/// connection (a watch event, a heartbeat answer) waits for the client's
/// delayed ACK (Nagle's algorithm): tens of milliseconds per request.
pub fn accept_nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "setting TCP_NODELAY failed");
            }
        })
    })
}

/// Asks the member whose peer service listens on `addr` (`host:port`) for
/// its view of the cluster, waiting at most `ttl`. Used before this member
/// has a Raft node of its own: it joins a running cluster and must learn
/// its ID and the cluster's.
pub async fn fetch_directory(addr: &str, ttl: Duration) -> Result<Directory, crate::Error> {
    let failed = |reason: String| {
        crate::Error::Raft(format!("asking {addr} for the members: {reason}").into())
    };
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT.min(ttl));
    let exchange = async {
        let channel = channel.connect().await.map_err(|e| failed(e.to_string()))?;
        let reply = RaftClient::new(channel)
            .members(proto::MembersRequest {})
            .await
            .map_err(|e| failed(e.message().to_string()))?;
        decode(&reply.into_inner().payload).map_err(|e| failed(format!("undecodable reply: {e}")))
    };
    tokio::time::timeout(ttl, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {ttl:?}")))?
}

impl RaftNetworkFactory<TypeConfig> for PeerNetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        self.client(target, node)
    }
}

/// The connection from this member to one peer, as openraft uses it.
#[derive(Debug)]
pub struct PeerNetwork {
    source: NodeId,
    target: NodeId,
    node: BasicNode,
    /// `None` when the address is not a valid URI authority: every call
    /// fails as unreachable.
    peer: Option<Peer>,
    faults: FaultInjector,
}

/// Why a call produced no decoded reply.
#[derive(Debug)]
enum Failure {
    Unreachable(AnyError),
    Timeout(Duration),
    Network(AnyError),
}

impl PeerNetwork {
    /// Sends one RPC (already encoded) through `call`, under the fault
    /// injector and the deadline `ttl`, and returns the reply's payload.
    async fn send<F, Fut>(&self, ttl: Duration, call: F) -> Result<Bytes, Failure>
    where
        F: FnOnce(RaftClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Bytes, Status>>,
    {
        let Some(peer) = &self.peer else {
            return Err(Failure::Unreachable(AnyError::error(format!(
                "invalid peer address {:?}",
                self.node.addr
            ))));
        };
        let client = RaftClient::new(peer.channel.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES);
        let fault = self.faults.fault(self.source, self.target);
        let exchange = async {
            match fault {
                Fault::Deliver => {}
                Fault::Delay(delay) => tokio::time::sleep(delay).await,
                Fault::Drop => std::future::pending::<()>().await,
            }
            call(client).await
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Err(_) => Err(Failure::Timeout(ttl)),
            Ok(Ok(payload)) => Ok(payload),
            Ok(Err(status)) => Err(match status.code() {
                Code::Unavailable => Failure::Unreachable(AnyError::new(&status)),
                Code::DeadlineExceeded | Code::Cancelled => Failure::Timeout(ttl),
                _ => Failure::Network(AnyError::new(&status)),
            }),
        };
        self.note_health(peer, &result);
        result
    }

    /// Logs a change of the peer's health at `info`, a repeated failure at
    /// `debug`.
    fn note_health(&self, peer: &Peer, result: &Result<Bytes, Failure>) {
        let healthy = result.is_ok();
        let was_healthy = peer.healthy.swap(healthy, Ordering::Relaxed);
        match (was_healthy, result) {
            (true, Err(failure)) => tracing::info!(
                target_id = self.target, addr = %self.node.addr, ?failure,
                "peer unreachable"
            ),
            (false, Err(failure)) => tracing::debug!(
                target_id = self.target, addr = %self.node.addr, ?failure,
                "peer still unreachable"
            ),
            (false, Ok(_)) => tracing::info!(
                target_id = self.target, addr = %self.node.addr,
                "peer reachable again"
            ),
            (true, Ok(_)) => {}
        }
    }

    /// Turns a failed call into openraft's error for it.
    fn rpc_error<E: StdError>(
        &self,
        action: RPCTypes,
        failure: Failure,
    ) -> RPCError<NodeId, BasicNode, E> {
        match failure {
            Failure::Unreachable(e) => RPCError::Unreachable(Unreachable::from(e)),
            Failure::Network(e) => RPCError::Network(NetworkError::from(e)),
            Failure::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.source,
                target: self.target,
                timeout,
            }),
        }
    }

    /// Encodes `rpc`, sends it with `call`, and decodes the peer's
    /// `Result<Resp, E>`.
    async fn exchange<Req, Resp, E, F, Fut>(
        &self,
        action: RPCTypes,
        option: &RPCOption,
        rpc: &Req,
        call: F,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: StdError + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, Bytes) -> Fut,
        Fut: Future<Output = Result<Bytes, Status>>,
    {
        let payload = encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let reply = self
            .send(option.hard_ttl(), |client| call(client, payload))
            .await
            .map_err(|failure| self.rpc_error(action, failure))?;
        let result: Result<Resp, E> =
            decode(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.exchange(
            RPCTypes::AppendEntries,
            &option,
            &rpc,
            |mut client, payload| async move {
                let reply = client
                    .append_entries(proto::AppendEntriesRequest { payload })
                    .await?;
                Ok(reply.into_inner().payload)
            },
        )
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.exchange(
            RPCTypes::InstallSnapshot,
            &option,
            &rpc,
            |mut client, payload| async move {
                let reply = client
                    .install_snapshot(proto::InstallSnapshotRequest { payload })
                    .await?;
                Ok(reply.into_inner().payload)
            },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.exchange(
            RPCTypes::Vote,
            &option,
            &rpc,
            |mut client, payload| async move {
                let reply = client.vote(proto::VoteRequest { payload }).await?;
                Ok(reply.into_inner().payload)
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolation_drops_both_directions_and_heal_restores() {
        let faults = FaultInjector::new();
        faults.isolate(2);
        assert_eq!(faults.fault(1, 2), Fault::Drop);
        assert_eq!(faults.fault(2, 3), Fault::Drop);
        assert_eq!(faults.fault(1, 3), Fault::Deliver);
        faults.heal(2);
        assert_eq!(faults.fault(1, 2), Fault::Deliver);
    }

    #[test]
    fn a_cut_is_one_way_and_delays_apply_to_the_receiver() {
        let faults = FaultInjector::new();
        faults.cut(1, 2);
        faults.delay(3, Duration::from_millis(5));
        assert_eq!(faults.fault(1, 2), Fault::Drop);
        assert_eq!(faults.fault(2, 1), Fault::Deliver);
        assert_eq!(faults.fault(1, 3), Fault::Delay(Duration::from_millis(5)));
        faults.heal_all();
        assert_eq!(faults.fault(1, 2), Fault::Deliver);
        assert_eq!(faults.fault(1, 3), Fault::Deliver);
    }

    #[test]
    fn forward_replies_survive_the_payload_encoding() {
        let refused: Result<CommandResult, ForwardError> =
            Err(ForwardError::NotLeader { leader: Some(3) });
        assert_eq!(
            decode::<Result<CommandResult, ForwardError>>(&encode(&refused).unwrap()).unwrap(),
            refused
        );
        let failed: Result<CommandResult, ForwardError> =
            Ok(CommandResult::Failed(muster_core::Error::LeaseNotFound));
        assert_eq!(
            decode::<Result<CommandResult, ForwardError>>(&encode(&failed).unwrap()).unwrap(),
            failed
        );
        let index: Result<u64, ForwardError> = Ok(42);
        assert_eq!(
            decode::<Result<u64, ForwardError>>(&encode(&index).unwrap()).unwrap(),
            index
        );
    }

    #[test]
    fn a_remote_error_survives_the_payload_encoding() {
        let error: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        let decoded: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
            decode(&encode(&error).unwrap()).unwrap();
        assert_eq!(decoded, error);
    }
}
