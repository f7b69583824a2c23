//! Leases: the leader's lessor (expiry timers, revocation, checkpoints,
//! self-preservation) and the etcd v3 `Lease` service on every member.
//!
//! ```text
//!   Grant / Revoke ──submit──▶ Raft log ──▶ every replica's lease table
//!   KeepAlive / TimeToLive ──RaftNode::lease──▶ leader's Lessor (forwarded
//!                                               over the peer service from
//!                                               a follower)
//!   Lessor tick (leader only): expired → self-preservation decides (see
//!   crate::preserve) → LeaseRevoke through Raft (rate-limited) unless
//!   held; every checkpoint interval → LeaseCheckpoint through Raft
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
//! - **Self-preservation** ([`crate::preserve`], on unless
//!   [`PreservationConfig::enabled`] is false): every tick the lessor
//!   reports the expired leases it tracks; while too many expired within
//!   the window it revokes none of them (they are *held*) for at most
//!   [`PreservationConfig::max`], and a held lease that is renewed comes
//!   back to life (until then `TimeToLive` answers it 0 seconds left).
//!   Expired leases still held when it ends are revoked under the same
//!   rate limit. It never touches grants, renewals of live leases,
//!   checkpoints or a client's own `LeaseRevoke`. The state is this
//!   leader's alone: it is dropped with the timers, and entering and
//!   leaving it is logged at warn level and shown by the
//!   `muster_server_self_preservation` gauge, the
//!   `muster_server_self_preservation_entered_total` counter and a line
//!   in the leader's `Status.errors` ([`Lessor::self_preservation`]).
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

use muster_core::{
    Command, Error as CoreError, LeaseCheckpoint, LeaseInfo, MAX_LEASE_TTL, Response, Store,
};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::lease_server::Lease;
use muster_raft::{CommandResult, LeaseAnswer, LeaseKeeper, LeaseOp, RaftNode};
use openraft::ServerState;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

use crate::kv::{LEASE_OVERHEAD, Quota};
use crate::preserve::{Change, LeaveReason, Preservation, PreservationConfig, Report};
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
    /// When the leader stops revoking expired leases (see
    /// [`crate::preserve`]).
    pub self_preservation: PreservationConfig,
}

impl LeaseConfig {
    /// The configuration for a member with election timeout
    /// `election_timeout`: etcd's minimum TTL of ceil(1.5 × election
    /// timeout) seconds, a tick of a quarter of the election timeout
    /// (between 50 and 500 ms; etcd looks every 500 ms) so that a dead
    /// service's instance is gone within its TTL plus an election timeout,
    /// etcd's other defaults, and self-preservation on with its defaults.
    pub fn for_election_timeout(election_timeout: Duration) -> Self {
        let millis = u64::try_from(election_timeout.as_millis()).unwrap_or(u64::MAX / 4);
        let min_ttl = (3 * millis).div_ceil(2000).max(1);
        LeaseConfig {
            min_ttl: i64::try_from(min_ttl).unwrap_or(i64::MAX),
            election_timeout,
            tick: (election_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_millis(500)),
            revokes_per_second: 1000,
            checkpoint_interval: Duration::from_secs(300),
            self_preservation: PreservationConfig::default(),
        }
    }
}

/// The leader's lease timers.
#[derive(Debug)]
struct Timers {
    /// The term these timers were set up in; `None` when not leading.
    term: Option<u64>,
    /// Lease ID → when it expires.
    expiries: HashMap<i64, Instant>,
    /// Renewed leases whose checkpoint must be cleared.
    clear_checkpoints: BTreeSet<i64>,
    /// Whether expired leases are held rather than revoked.
    preservation: Preservation,
}

fn seconds_until(deadline: Instant, now: Instant) -> i64 {
    let left = deadline.saturating_duration_since(now);
    i64::try_from(left.as_millis().div_ceil(1000)).unwrap_or(i64::MAX)
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0).unsigned_abs())
}

impl Timers {
    /// The timers of a member that does not lead.
    fn new(preservation: PreservationConfig) -> Self {
        Timers {
            term: None,
            expiries: HashMap::new(),
            clear_checkpoints: BTreeSet::new(),
            preservation: Preservation::new(preservation),
        }
    }

    /// Forgets every timer (this member does not lead); ends
    /// self-preservation if it was under way.
    fn stop_leading(&mut self, now: Instant) -> Option<Change> {
        let change = self.preservation.leave(now, LeaveReason::Deposed);
        *self = Timers::new(self.preservation.config());
        change
    }

    /// Sets up the timers of a member just elected in `term`: every lease
    /// restarts from its checkpoint, plus `grace` (an election timeout) for
    /// the time without a leader. Self-preservation starts afresh.
    fn start_leading(
        &mut self,
        term: u64,
        store: &Store,
        now: Instant,
        grace: Duration,
    ) -> Option<Change> {
        let change = self.stop_leading(now);
        self.expiries = store
            .leases()
            .map(|lease| {
                let left = if lease.remaining_ttl > 0 {
                    lease.remaining_ttl
                } else {
                    lease.ttl
                };
                (lease.id, now + ttl_duration(left) + grace)
            })
            .collect();
        self.term = Some(term);
        tracing::info!(leases = self.expiries.len(), term, "lessor: leading");
        change
    }

    /// Follows the store: forgets revoked leases, starts new ones at their
    /// TTL.
    fn sync(&mut self, store: &Store, now: Instant) {
        self.expiries.retain(|id, _| store.lease(*id).is_some());
        for lease in store.leases() {
            self.expiries
                .entry(lease.id)
                .or_insert_with(|| now + ttl_duration(lease.ttl));
        }
    }

    /// Lets self-preservation see the expired leases, then answers up to
    /// `budget` of them to revoke, earliest deadline first, leaving out
    /// those it holds; and the change of mode, if any.
    fn due(&mut self, now: Instant, budget: usize) -> (Vec<i64>, Option<Change>) {
        let change = self.preservation.observe(now, &self.expiries);
        let mut expired: Vec<(Instant, i64)> = self
            .expiries
            .iter()
            .filter(|(id, at)| **at <= now && !self.preservation.holds(**id))
            .map(|(id, at)| (*at, *id))
            .collect();
        expired.sort_unstable();
        expired.truncate(budget);
        (expired.into_iter().map(|(_, id)| id).collect(), change)
    }

    /// Renews lease `id` (`lease`: the store's record of it) at `now`. An
    /// expired lease is not renewed (its revocation is on its way) unless
    /// self-preservation holds it: then it comes back to life.
    fn renew(&mut self, id: i64, lease: Option<LeaseInfo>, now: Instant) -> LeaseAnswer {
        let Some(lease) = lease else {
            self.expiries.remove(&id);
            return LeaseAnswer::NotFound;
        };
        match self.expiries.get(&id) {
            Some(at) if *at <= now && !self.preservation.holds(id) => {
                return LeaseAnswer::NotFound;
            }
            _ => {}
        }
        self.expiries.insert(id, now + ttl_duration(lease.ttl));
        self.preservation.renewed(id);
        if lease.remaining_ttl > 0 {
            self.clear_checkpoints.insert(id);
        }
        LeaseAnswer::Renewed { ttl: lease.ttl }
    }
}

/// Logs a change of self-preservation at warn level and keeps its metrics.
fn report(change: Option<Change>, config: &PreservationConfig) {
    match change {
        None => {}
        Some(Change::Entered {
            expiries,
            live,
            held,
        }) => {
            crate::metrics::SELF_PRESERVATION.set(1);
            crate::metrics::SELF_PRESERVATION_ENTERED.inc();
            tracing::warn!(
                expiries,
                live,
                held,
                threshold = config.threshold,
                window = ?config.window,
                max = ?config.max,
                "self-preservation: entering: {expiries} unresolved lease expiries within {:?} \
                 exceed {} of {live} live leases; holding expired leases instead of revoking \
                 them, for at most {:?}",
                config.window,
                config.threshold,
                config.max
            );
        }
        Some(Change::Left {
            reason,
            released,
            renewed,
            lasted,
        }) => {
            crate::metrics::SELF_PRESERVATION.set(0);
            tracing::warn!(
                %reason,
                released,
                renewed,
                lasted = ?lasted,
                "self-preservation: leaving ({reason}) after {lasted:?}: {renewed} held leases \
                 were renewed, {released} still expired are revoked now"
            );
        }
    }
}

/// The lessor of one member: lease timers while it leads.
#[derive(Debug)]
pub struct Lessor {
    node: Arc<RaftNode>,
    config: LeaseConfig,
    timers: Mutex<Timers>,
}

impl Lessor {
    /// A lessor for `node`, registered as its lease keeper.
    pub fn new(node: Arc<RaftNode>, config: LeaseConfig) -> Arc<Self> {
        let lessor = Arc::new(Lessor {
            node: Arc::clone(&node),
            config,
            timers: Mutex::new(Timers::new(config.self_preservation)),
        });
        let keeper: Arc<dyn LeaseKeeper> = lessor.clone();
        node.set_lease_keeper(&keeper);
        lessor
    }

    /// The configuration.
    pub fn config(&self) -> LeaseConfig {
        self.config
    }

    /// The self-preservation episode under way, while this member leads
    /// and holds expired leases.
    pub fn self_preservation(&self) -> Option<Report> {
        let term = self.leading_term()?;
        let timers = self.timers();
        if timers.term != Some(term) {
            return None;
        }
        timers.preservation.report(Instant::now())
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
    /// stops; then drops the timers (ending self-preservation).
    pub async fn run(self: Arc<Self>, stopping: watch::Receiver<bool>) {
        self.tick_until_stopped(stopping).await;
        let change = self.timers().stop_leading(Instant::now());
        report(change, &self.config.self_preservation);
    }

    async fn tick_until_stopped(&self, mut stopping: watch::Receiver<bool>) {
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

    /// Sets up the timers of a member just elected in `term` (see
    /// [`Timers::start_leading`]).
    fn start_leading(&self, timers: &mut Timers, term: u64, store: &Store, now: Instant) {
        let change = timers.start_leading(term, store, now, self.config.election_timeout);
        report(change, &self.config.self_preservation);
    }

    /// Brings the timers in line with leadership and the store; returns up
    /// to `budget` expired leases to revoke.
    fn refresh(&self, leading: bool, term: u64, store: &Store, budget: usize) -> Vec<i64> {
        let now = Instant::now();
        let mut timers = self.timers();
        if !leading {
            let change = timers.stop_leading(now);
            report(change, &self.config.self_preservation);
            return Vec::new();
        }
        if timers.term != Some(term) {
            self.start_leading(&mut timers, term, store, now);
        } else {
            timers.sync(store, now);
        }
        let (expired, change) = timers.due(now, budget);
        report(change, &self.config.self_preservation);
        expired
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
            self.start_leading(&mut timers, term, &store, now);
        }
        match op {
            LeaseOp::Renew { id } => Some(timers.renew(id, store.lease(id), now)),
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

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(1);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A store holding leases 1..=n with TTL 10 s.
    fn store_with_leases(n: i64) -> Store {
        let mut store = Store::new();
        for id in 1..=n {
            store
                .apply(id.unsigned_abs(), Command::LeaseGrant { id, ttl: 10 })
                .expect("grant");
        }
        store
    }

    /// What [`Lessor::run`] does with the leases `due` answers: revokes
    /// them through the log, and the lessor forgets them.
    fn revoke(store: &mut Store, timers: &mut Timers, index: &mut u64, ids: &[i64]) {
        for &id in ids {
            *index += 1;
            store
                .apply(*index, Command::LeaseRevoke { id })
                .expect("revoke");
            timers.expiries.remove(&id);
        }
    }

    /// Timers leading in term 1 at `t0` over 30 leases (deadlines t0 + 11 s),
    /// with self-preservation's defaults.
    fn leading(store: &Store, t0: Instant) -> Timers {
        let mut timers = Timers::new(PreservationConfig::default());
        assert_eq!(timers.start_leading(1, store, t0, GRACE), None);
        timers
    }

    #[test]
    fn a_third_expiring_at_once_is_held_renewable_then_revoked_at_the_rate_limit() {
        let t0 = Instant::now();
        let mut store = store_with_leases(30);
        let mut index = 100;
        let mut timers = leading(&store, t0);
        // Leases 11..=30 are kept alive every 5 s; 1..=10 stop renewing.
        let keep_alive = |timers: &mut Timers, store: &Store, now: Instant| {
            for id in 11..=30 {
                assert_eq!(
                    timers.renew(id, store.lease(id), now),
                    LeaseAnswer::Renewed { ttl: 10 }
                );
            }
        };
        keep_alive(&mut timers, &store, t0 + secs(5));
        assert_eq!(timers.due(t0 + secs(10), 1000), (Vec::new(), None));
        let (due, change) = timers.due(t0 + secs(11), 1000);
        assert_eq!(due, Vec::<i64>::new(), "held, not revoked");
        assert!(matches!(
            change,
            Some(Change::Entered {
                expiries: 10,
                live: 30,
                held: 10
            })
        ));
        // A held lease that renews comes back to life with its full TTL.
        assert_eq!(
            timers.renew(1, store.lease(1), t0 + secs(12)),
            LeaseAnswer::Renewed { ttl: 10 }
        );
        // A client's own revoke of a held lease goes through as always.
        revoke(&mut store, &mut timers, &mut index, &[2]);
        // Keep the rest alive up to the bound (5 min after entering).
        let mut now = t0 + secs(11);
        while now < t0 + secs(311) {
            keep_alive(&mut timers, &store, now);
            if now > t0 + secs(12) {
                assert_eq!(
                    timers.renew(1, store.lease(1), now),
                    LeaseAnswer::Renewed { ttl: 10 }
                );
            }
            timers.sync(&store, now);
            let (due, change) = timers.due(now, 1000);
            assert_eq!((due, change), (Vec::new(), None), "at {:?}", now - t0);
            now += secs(5);
        }
        // The bound: leases 3..=10, still expired, are revoked, at most
        // `budget` per tick and oldest first; lease 1 lives.
        keep_alive(&mut timers, &store, now);
        timers.sync(&store, now);
        let (due, change) = timers.due(now, 3);
        assert!(matches!(
            change,
            Some(Change::Left {
                reason: LeaveReason::Bound,
                released: 8,
                renewed: 1,
                ..
            })
        ));
        assert_eq!(due.len(), 3);
        let mut revoked = due.clone();
        revoke(&mut store, &mut timers, &mut index, &due);
        // A renewal of a lease released for revocation is refused.
        let waiting = (3..=10).find(|id| !revoked.contains(id)).expect("one left");
        assert_eq!(
            timers.renew(waiting, store.lease(waiting), now),
            LeaseAnswer::NotFound
        );
        while revoked.len() < 8 {
            now += Duration::from_millis(500);
            timers.sync(&store, now);
            let (due, change) = timers.due(now, 3);
            assert_eq!(change, None, "no new episode from the released leases");
            assert!(!due.is_empty() && due.len() <= 3);
            revoke(&mut store, &mut timers, &mut index, &due);
            revoked.extend(due);
        }
        revoked.sort_unstable();
        assert_eq!(revoked, (3..=10).collect::<Vec<_>>());
        assert!(store.lease(1).is_some());
    }

    #[test]
    fn ordinary_churn_is_revoked_at_once() {
        let t0 = Instant::now();
        let mut store = store_with_leases(30);
        let mut index = 100;
        let mut timers = leading(&store, t0);
        // One lease stops renewing every 20 s (3 a minute, under 4.5); the
        // others renew every 5 s.
        let mut stopped = Vec::new();
        let mut now = t0 + secs(5);
        while now < t0 + secs(200) {
            if (now - t0).as_secs() % 20 == 5 && stopped.len() < 9 {
                stopped.push(i64::try_from(stopped.len() + 1).expect("small"));
            }
            for id in 1..=30 {
                if !stopped.contains(&id) {
                    assert!(matches!(
                        timers.renew(id, store.lease(id), now),
                        LeaseAnswer::Renewed { .. }
                    ));
                }
            }
            timers.sync(&store, now);
            let (due, change) = timers.due(now, 1000);
            assert_eq!(change, None, "at {:?}", now - t0);
            assert!(due.iter().all(|id| stopped.contains(id)));
            revoke(&mut store, &mut timers, &mut index, &due);
            // Nothing expired is left waiting.
            assert!(timers.expiries.values().all(|at| *at > now));
            now += secs(5);
        }
        assert_eq!(store.lease_count(), 30 - stopped.len());
        // Each stopped lease was revoked at the first tick after its
        // deadline (checked in the loop), and none is left.
        assert!(stopped.iter().all(|id| store.lease(*id).is_none()));
    }

    #[test]
    fn a_new_term_starts_afresh_and_self_preservation_can_be_off() {
        let t0 = Instant::now();
        let store = store_with_leases(30);
        let mut timers = leading(&store, t0);
        assert!(matches!(
            timers.due(t0 + secs(11), 1000),
            (_, Some(Change::Entered { .. }))
        ));
        // Elected again in a later term: the episode ends, every lease
        // restarts from its TTL plus the grace.
        assert!(matches!(
            timers.start_leading(2, &store, t0 + secs(12), GRACE),
            Some(Change::Left {
                reason: LeaveReason::Deposed,
                ..
            })
        ));
        assert_eq!(timers.due(t0 + secs(22), 1000), (Vec::new(), None));
        assert!(timers.stop_leading(t0 + secs(22)).is_none());
        // Off: all 30 expire together and all are due, rate-limited.
        let mut off = Timers::new(PreservationConfig {
            enabled: false,
            ..PreservationConfig::default()
        });
        off.start_leading(1, &store, t0, GRACE);
        let (due, change) = off.due(t0 + secs(11), 20);
        assert_eq!((due.len(), change), (20, None));
        assert_eq!(
            off.renew(1, store.lease(1), t0 + secs(11)),
            LeaseAnswer::NotFound
        );
    }
}
