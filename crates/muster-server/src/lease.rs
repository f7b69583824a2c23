//! Leases: the leader's lessor (expiry timers, revocation, checkpoints) and
//! the etcd v3 `Lease` service on every member.
//!
//! ```text
//!   Grant / Revoke ──submit──▶ Raft log ──▶ every replica's lease table
//!   KeepAlive / TimeToLive ──RaftNode::lease──▶ leader's Lessor (forwarded
//!                                               over the peer service from
//!                                               a follower)
//!   Lessor tick (leader only): expired → LeaseRevoke through Raft (rate-
//!   limited); every checkpoint interval → LeaseCheckpoint through Raft
//! ```
//!
//! Invariants:
//!
//! - Only the leader holds expiry timers, and it answers renewals and
//!   time-to-live queries only while openraft says it leads. A member that
//!   stops leading drops its timers at its next tick; its revocations are
//!   proposed only after a quorum confirmed its leadership
//!   (`ensure_linearizable`), and a deposed leader's proposals cannot
//!   commit, so a deposed or paused old leader never revokes.
//! - A new leader starts every lease at its checkpointed remaining TTL (or
//!   its TTL when never checkpointed) plus one election timeout: a failover
//!   neither mass-expires healthy leases nor extends them forever.
//! - Revocations are proposed at most [`LeaseConfig::revokes_per_second`]
//!   per second; a revoke that fails is retried at a later tick.
//! - A renewal of a checkpointed lease clears its checkpoint through Raft,
//!   so a later leader does not restart it from the stale remaining TTL.
//! - Granted TTLs are at least [`LeaseConfig::min_ttl`] seconds (etcd:
//!   ceil(1.5 × election timeout)) and at most `MAX_LEASE_TTL`.
//! - A grant is checked against the space [`Quota`] (cost
//!   [`crate::kv::LEASE_OVERHEAD`]) before it is proposed, as etcd's
//!   `quotaLeaseServer` does; revokes, renewals and checkpoints never are.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use muster_core::{Command, Error as CoreError, LeaseCheckpoint, MAX_LEASE_TTL, Response, Store};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::lease_server::Lease;
use muster_raft::{CommandResult, LeaseAnswer, LeaseKeeper, LeaseOp, RaftNode};
use openraft::ServerState;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::kv::{LEASE_OVERHEAD, Quota};
use crate::status::{core_status, raft_status};

/// Lease checkpoints proposed in one log entry at most.
const CHECKPOINTS_PER_ENTRY: usize = 1000;

/// Tunables of the lessor.
#[derive(Clone, Copy, Debug)]
pub struct LeaseConfig {
    /// Smallest TTL granted, in seconds (a smaller request is raised).
    pub min_ttl: i64,
    /// The election timeout: a new leader adds it to every lease.
    pub election_timeout: Duration,
    /// How often the leader looks for expired leases.
    pub tick: Duration,
    /// Most revocations proposed per second (etcd: 1000).
    pub revokes_per_second: usize,
    /// How often the leader checkpoints remaining TTLs (etcd: 5 min).
    pub checkpoint_interval: Duration,
}

impl LeaseConfig {
    /// The configuration for a member with election timeout
    /// `election_timeout`: etcd's minimum TTL of ceil(1.5 × election
    /// timeout) seconds and etcd's other defaults.
    pub fn for_election_timeout(election_timeout: Duration) -> Self {
        let millis = u64::try_from(election_timeout.as_millis()).unwrap_or(u64::MAX / 4);
        let min_ttl = (3 * millis).div_ceil(2000).max(1);
        LeaseConfig {
            min_ttl: i64::try_from(min_ttl).unwrap_or(i64::MAX),
            election_timeout,
            tick: Duration::from_millis(500),
            revokes_per_second: 1000,
            checkpoint_interval: Duration::from_secs(300),
        }
    }
}

/// The leader's lease timers.
#[derive(Debug, Default)]
struct Timers {
    /// The term these timers were set up in; `None` when not leading.
    term: Option<u64>,
    /// Lease ID → when it expires.
    expiries: HashMap<i64, Instant>,
    /// Renewed leases whose checkpoint must be cleared.
    clear_checkpoints: BTreeSet<i64>,
}

/// The lessor of one member: lease timers while it leads.
#[derive(Debug)]
pub struct Lessor {
    node: Arc<RaftNode>,
    config: LeaseConfig,
    timers: Mutex<Timers>,
}

fn seconds_until(deadline: Instant, now: Instant) -> i64 {
    let left = deadline.saturating_duration_since(now);
    i64::try_from(left.as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
}

impl Lessor {
    /// A lessor for `node`, registered as its lease keeper.
    pub fn new(node: Arc<RaftNode>, config: LeaseConfig) -> Arc<Self> {
        let lessor = Arc::new(Lessor {
            node: Arc::clone(&node),
            config,
            timers: Mutex::default(),
        });
        let keeper: Arc<dyn LeaseKeeper> = lessor.clone();
        node.set_lease_keeper(&keeper);
        lessor
    }

    /// The configuration.
    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    fn timers(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The term this member leads in, if it leads.
    fn leading_term(&self) -> Option<u64> {
        let metrics = self.node.raft().metrics();
        let metrics = metrics.borrow();
        (metrics.state == ServerState::Leader).then_some(metrics.current_term)
    }

    /// Runs the lessor's tick until `stopping` becomes true or the node
    /// stops.
    pub async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.tick.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_checkpoint = Instant::now();
        let mut metrics_changes = self.node.raft().metrics();
        let mut seen = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopping.changed() => return,
                changed = metrics_changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Set the timers up the moment leadership changes, so
                    // that only leases granted before it get the extension.
                    let now_seen = self.leading_term();
                    if now_seen == seen {
                        continue;
                    }
                    seen = now_seen;
                }
            }
            let metrics = self.node.raft().metrics().borrow().clone();
            if metrics.running_state.is_err() {
                return;
            }
            let leading = metrics.state == ServerState::Leader;
            let store = self.node.state_machine().store();
            let budget = (self.config.revokes_per_second as f64 * self.config.tick.as_secs_f64())
                .ceil()
                .max(1.0) as usize;
            let expired = self.refresh(leading, metrics.current_term, &store, budget);
            if !leading {
                continue;
            }
            if !expired.is_empty() {
                self.revoke(expired).await;
            }
            let clear: Vec<i64> = std::mem::take(&mut self.timers().clear_checkpoints)
                .into_iter()
                .collect();
            if !clear.is_empty() {
                self.checkpoint(clear.into_iter().map(|id| (id, 0)).collect())
                    .await;
            }
            if last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                last_checkpoint = Instant::now();
                let due = self.remaining_ttls(&store);
                self.checkpoint(due).await;
            }
        }
    }

    /// Sets up the timers of a member just elected in `term`: every lease
    /// restarts from its checkpoint, plus an election timeout for the time
    /// without a leader.
    fn start_leading(&self, timers: &mut Timers, term: u64, store: &Store) {
        let now = Instant::now();
        timers.expiries = store
            .leases()
            .map(|lease| {
                let left = if lease.remaining_ttl > 0 {
                    lease.remaining_ttl
                } else {
                    lease.ttl
                };
                let expiry = now
                    + Duration::from_secs(left.max(0).unsigned_abs())
                    + self.config.election_timeout;
                (lease.id, expiry)
            })
            .collect();
        timers.clear_checkpoints.clear();
        timers.term = Some(term);
        tracing::info!(leases = timers.expiries.len(), term, "lessor: leading");
    }

    /// Brings the timers in line with leadership and the store; returns up
    /// to `budget` expired leases.
    fn refresh(&self, leading: bool, term: u64, store: &Store, budget: usize) -> Vec<i64> {
        let mut timers = self.timers();
        if !leading {
            *timers = Timers::default();
            return Vec::new();
        }
        let now = Instant::now();
        if timers.term != Some(term) {
            self.start_leading(&mut timers, term, store);
        } else {
            timers.expiries.retain(|id, _| store.lease(*id).is_some());
            for lease in store.leases() {
                timers
                    .expiries
                    .entry(lease.id)
                    .or_insert_with(|| now + Duration::from_secs(lease.ttl.max(0).unsigned_abs()));
            }
        }
        let mut expired: Vec<(Instant, i64)> = timers
            .expiries
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, at)| (*at, *id))
            .collect();
        expired.sort_unstable();
        expired.truncate(budget);
        expired.into_iter().map(|(_, id)| id).collect()
    }

    /// Proposes the revocation of `expired`, once a quorum confirmed this
    /// member still leads.
    async fn revoke(&self, expired: Vec<i64>) {
        if self.node.raft().ensure_linearizable().await.is_err() {
            return;
        }
        let mut proposals = tokio::task::JoinSet::new();
        for id in expired {
            let node = Arc::clone(&self.node);
            proposals.spawn(async move { (id, node.write(Command::LeaseRevoke { id }).await) });
        }
        while let Some(done) = proposals.join_next().await {
            let Ok((id, result)) = done else { continue };
            let mut timers = self.timers();
            match result {
                Ok(CommandResult::Applied(_))
                | Ok(CommandResult::Failed(CoreError::LeaseNotFound)) => {
                    timers.expiries.remove(&id);
                    crate::metrics::LEASES_EXPIRED.inc();
                    tracing::debug!(lease = id, "lease expired and revoked");
                }
                other => {
                    // Try again at a later tick.
                    tracing::debug!(lease = id, ?other, "revoking an expired lease failed");
                    if let Some(at) = timers.expiries.get_mut(&id) {
                        *at = Instant::now() + self.config.tick;
                    }
                }
            }
        }
    }

    /// The remaining TTL of every lease that has used part of its TTL.
    fn remaining_ttls(&self, store: &Store) -> Vec<(i64, i64)> {
        let now = Instant::now();
        let timers = self.timers();
        timers
            .expiries
            .iter()
            .filter_map(|(id, at)| {
                let lease = store.lease(*id)?;
                let left = seconds_until(*at, now).max(1);
                (left < lease.ttl).then_some((*id, left))
            })
            .collect()
    }

    /// Proposes `checkpoints` (lease, remaining seconds; 0 clears) in
    /// batches.
    async fn checkpoint(&self, checkpoints: Vec<(i64, i64)>) {
        for batch in checkpoints.chunks(CHECKPOINTS_PER_ENTRY) {
            let command = Command::LeaseCheckpoint {
                checkpoints: batch
                    .iter()
                    .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect(),
            };
            if let Err(error) = self.node.write(command).await {
                tracing::debug!(%error, "lease checkpoint not proposed");
                return;
            }
        }
    }
}

impl LeaseKeeper for Lessor {
    fn answer(&self, op: LeaseOp) -> Option<LeaseAnswer> {
        let term = self.leading_term()?;
        let store = self.node.state_machine().store();
        let now = Instant::now();
        let mut timers = self.timers();
        if timers.term != Some(term) {
            self.start_leading(&mut timers, term, &store);
        }
        match op {
            LeaseOp::Renew { id } => {
                let Some(lease) = store.lease(id) else {
                    timers.expiries.remove(&id);
                    return Some(LeaseAnswer::NotFound);
                };
                match timers.expiries.get(&id) {
                    // Already expired: its revocation is on its way.
                    Some(at) if *at <= now => return Some(LeaseAnswer::NotFound),
                    _ => {}
                }
                timers.expiries.insert(
                    id,
                    now + Duration::from_secs(lease.ttl.max(0).unsigned_abs()),
                );
                if lease.remaining_ttl > 0 {
                    timers.clear_checkpoints.insert(id);
                }
                Some(LeaseAnswer::Renewed { ttl: lease.ttl })
            }
            LeaseOp::TimeToLive { id } => {
                let Some(lease) = store.lease(id) else {
                    return Some(LeaseAnswer::NotFound);
                };
                let ttl = timers
                    .expiries
                    .get(&id)
                    .map_or(lease.ttl, |at| seconds_until(*at, now));
                Some(LeaseAnswer::Remaining { ttl })
            }
        }
    }
}

/// The `Lease` service of one member.
#[derive(Clone, Debug)]
pub struct LeaseService {
    node: Arc<RaftNode>,
    cluster_id: u64,
    lessor: Arc<Lessor>,
    /// Checked before a grant is proposed.
    quota: Quota,
    /// Becomes `true` when the client API stops: keep-alive streams end.
    stopping: watch::Receiver<bool>,
}

impl LeaseService {
    /// The service of `node` (member of cluster `cluster_id`) with its
    /// `lessor` and etcd's default [`Quota`].
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, lessor: Arc<Lessor>) -> Self {
        LeaseService {
            node,
            cluster_id,
            lessor,
            quota: Quota::default(),
            stopping: watch::channel(false).1,
        }
    }

    /// The same service checking grants against `quota`.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// The same service, ending every keep-alive stream once `stopping`
    /// becomes true.
    pub fn stopping_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::lease_server::LeaseServer<Self> {
        pb::lease_server::LeaseServer::new(self)
    }

    fn header(&self, revision: i64) -> pb::ResponseHeader {
        crate::server::response_header(&self.node, self.cluster_id, revision)
    }

    fn current_header(&self) -> pb::ResponseHeader {
        self.header(self.node.state_machine().store().revision())
    }

    async fn write(&self, command: Command) -> Result<Response, Status> {
        crate::server::propose(&self.node, command).await
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<tonic::Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        if request.ttl > MAX_LEASE_TTL {
            return Err(core_status(&CoreError::LeaseTtlTooLarge));
        }
        let ttl = request.ttl.max(self.lessor.config().min_ttl);
        self.quota.check(&self.node, LEASE_OVERHEAD).await?;
        let Response::LeaseGrant { revision, id, ttl } = self
            .write(Command::LeaseGrant {
                id: request.id,
                ttl,
            })
            .await?
        else {
            return Err(Status::internal(
                "a grant was answered with another response",
            ));
        };
        crate::metrics::LEASES_GRANTED.inc();
        Ok(tonic::Response::new(pb::LeaseGrantResponse {
            header: Some(self.header(revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<tonic::Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let Response::LeaseRevoke { revision } = self.write(Command::LeaseRevoke { id }).await?
        else {
            return Err(Status::internal(
                "a revoke was answered with another response",
            ));
        };
        crate::metrics::LEASES_REVOKED.inc();
        Ok(tonic::Response::new(pb::LeaseRevokeResponse {
            header: Some(self.header(revision)),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<pb::LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<Self::LeaseKeepAliveStream>, Status> {
        let mut requests = request.into_inner();
        let (responses, receiver) = mpsc::channel(16);
        let service = self.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            loop {
                if *stopping.borrow_and_update() {
                    return;
                }
                let request = tokio::select! {
                    request = requests.message() => match request {
                        Ok(Some(request)) => request,
                        Ok(None) | Err(_) => return,
                    },
                    _ = stopping.changed() => return,
                };
                let answer = service.node.lease(LeaseOp::Renew { id: request.id }).await;
                let response = match answer {
                    Ok(LeaseAnswer::Renewed { ttl }) => {
                        crate::metrics::LEASES_RENEWED.inc();
                        Ok(ttl)
                    }
                    Ok(_) => Ok(0),
                    Err(error) => Err(raft_status(&error)),
                };
                let failed = response.is_err();
                let response = response.map(|ttl| pb::LeaseKeepAliveResponse {
                    header: Some(service.current_header()),
                    id: request.id,
                    ttl,
                });
                if responses.send(response).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(receiver)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        let answer = self
            .node
            .lease(LeaseOp::TimeToLive { id: request.id })
            .await
            .map_err(|e| raft_status(&e))?;
        self.node
            .read_barrier()
            .await
            .map_err(|e| raft_status(&e))?;
        let store = self.node.state_machine().store();
        let (LeaseAnswer::Remaining { ttl }, Some(lease)) = (answer, store.lease(request.id))
        else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(tonic::Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.header(store.revision())),
                id: request.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if request.keys {
            store.lease_keys(request.id).unwrap_or_default()
        } else {
            Vec::new()
        };
        Ok(tonic::Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(self.header(store.revision())),
            id: request.id,
            ttl,
            granted_ttl: lease.ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<tonic::Response<pb::LeaseLeasesResponse>, Status> {
        self.node
            .read_barrier()
            .await
            .map_err(|e| raft_status(&e))?;
        let store = self.node.state_machine().store();
        Ok(tonic::Response::new(pb::LeaseLeasesResponse {
            header: Some(self.header(store.revision())),
            leases: store
                .leases()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect(),
        }))
    }
}
