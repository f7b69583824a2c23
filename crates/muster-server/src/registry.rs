//! The service registry API (`muster.registry.v1.Registry`, see
//! `proto/muster/registry/v1/registry.proto`) for programs that do not speak
//! the etcd API: Register, Deregister, SetHealth, List and Watch over the
//! instances of [`muster_proto::registry`], served on the client port
//! beside the etcd services.
//!
//! ```text
//!   Register ─┬─ grant ─────────▶ LeaseService::lease_grant ─┐
//!             ├─ put / txn ─────▶ KvService::put / txn ──────┼─▶ RaftNode (leader)
//!             ├─ every ttl/3 ───▶ RaftNode::lease(Renew) ────┘   (forwarded
//!             └─ stream ends ───▶ LeaseService::lease_revoke       from followers)
//!   Deregister, SetHealth ──▶ read barrier + local store, then a txn
//!   List ──▶ read barrier + local store (a linearizable range)
//!   Watch ──▶ the state machine's applied events + store history
//! ```
//!
//! Nothing here talks to the cluster over a loopback client: writes go
//! through the etcd services' own edge (their trait methods, called
//! in-process), reads through the read barrier and the member's store.
//!
//! Invariants:
//!
//! - Registry writes are etcd writes: the same size limit, validation,
//!   space quota, errors and metrics as an etcd client's, and the keys and
//!   values are visible to (and writable by) etcd clients. The registry
//!   writes an instance only after [`Instance::validate`]; it reads back
//!   what others wrote leniently ([`Instance::decode`]) and skips what is
//!   not an instance.
//! - A Register stream owns one lease, which it granted itself. It renews
//!   the lease every ttl/3 only while the stream lives (a renewal that
//!   fails for want of a leader is retried sooner; only a lease found gone
//!   ends the stream), and every way the stream ends revokes it, except a
//!   member stopping (the lease is then left to expire, so that the
//!   registrant can register again through another member without its
//!   instance vanishing in between) and a lease already gone. A client
//!   that vanishes without closing its connection is cut off by the client
//!   API's HTTP/2 keepalive ([`crate::server::KEEPALIVE_INTERVAL`]), which
//!   ends its stream.
//! - Registering an existing id replaces the instance; the lease the key
//!   had is left to its owner. A stream whose key is found on another lease
//!   (or gone) ends; its health updates compare the key's lease to its own,
//!   so they never overwrite another registration's instance nor bring back
//!   a removed one.
//! - SetHealth and Deregister change only what they read: a txn comparing
//!   the key's mod revision, retried on conflict at most [`CAS_ATTEMPTS`]
//!   times.
//! - A watch subscribes to applied events before it reads the store, and
//!   keeps the first revision it has not yet sent (`next`), so, as the etcd
//!   watch, it is ordered, unique, atomic (one response per revision, with
//!   all its changes) and reliable (a lagging subscription or an installed
//!   snapshot falls back to history from `next`).
//!
//! A watch of `api` filtered to passing instances, as the key
//! `/registry/services/api/1` changes:
//!
//! ```text
//!   rev  change                                   WatchResponse
//!    4   (current when the watch starts)          snapshot: [] at 4
//!    5   put passing,  lease A   (Register)       put:     [api/1 passing]
//!    6   put critical, lease A   (SetHealth)      removed: [api/1 critical]  (no longer matches)
//!    7   put passing,  lease A   (health update)  put:     [api/1 passing]
//!    8   put passing,  lease B   (Register again) put:     [api/1 lease B]   (A's stream ends
//!                                                                             ALREADY_EXISTS)
//!    9   delete        (B's stream closed)        removed: [api/1 passing, lease B]
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use muster_core::{Error as CoreError, Event, EventKind, KeyRange, KeyValue, RangeRequest, Store};
use muster_proto::convert::registry::{health_from_wire, instance_from_wire, instance_to_wire};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_server::Kv;
use muster_proto::etcdserverpb::lease_server::Lease;
use muster_proto::prefix_end;
use muster_proto::registry::{
    Health, Instance, InvalidInstance, now_to_the_second, parse_key, registry_prefix,
    service_prefix, validate_id, validate_service,
};
use muster_proto::registrypb as rpb;
use muster_proto::registrypb::registry_server::{Registry, RegistryServer};
use muster_raft::{AppliedEvents, LeaseAnswer, LeaseOp, RaftNode};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::status::{core_status, raft_status};

/// The lease TTL, in seconds, of a registration that asks for none.
pub const DEFAULT_TTL: i64 = 10;

/// How many times SetHealth and Deregister read and try again when the
/// instance changed between their read and their write.
pub const CAS_ATTEMPTS: usize = 5;

/// Responses queued per stream before its task waits for the client.
const STREAM_BUFFER: usize = 64;

/// How soon a renewal that failed (no leader, timeout) is tried again.
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// Most events read from history at once by a catching-up watch.
const CATCH_UP_BATCH: usize = 1000;

/// The `muster.registry.v1.Registry` service of one member.
#[derive(Clone, Debug)]
pub struct RegistryService {
    node: Arc<RaftNode>,
    /// The key prefix instances live under (no trailing `/`).
    prefix: Arc<str>,
    /// The etcd KV service of the same member: the write path.
    kv: KvService,
    /// The etcd Lease service of the same member: grants and revokes.
    leases: LeaseService,
    /// Becomes `true` when the client API stops: every stream ends.
    stopping: watch::Receiver<bool>,
}

impl RegistryService {
    /// The registry of instances under `prefix` (validated by the caller,
    /// see [`muster_proto::registry::validate_prefix`]), answering from
    /// `node` and writing through the same member's `kv` and `leases`
    /// services.
    pub fn new(
        node: Arc<RaftNode>,
        prefix: impl Into<String>,
        kv: KvService,
        leases: LeaseService,
    ) -> Self {
        RegistryService {
            node,
            prefix: Arc::from(prefix.into()),
            kv,
            leases,
            stopping: watch::channel(false).1,
        }
    }

    /// The same service, ending every stream once `stopping` becomes true.
    pub fn stopping_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> RegistryServer<Self> {
        RegistryServer::new(self)
    }

    /// The key of instance `id` of `service`.
    fn key(&self, service: &str, id: &str) -> String {
        format!("{}{id}", service_prefix(&self.prefix, service))
    }

    /// The member's store once every write acknowledged before the call is
    /// applied (a linearizable read).
    async fn read(&self) -> Result<Store, Status> {
        self.node
            .read_barrier()
            .await
            .map_err(|e| raft_status(&e))?;
        Ok(self.node.state_machine().store())
    }

    /// Puts `value` at `key` attached to `lease`; the write's revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<i64, Status> {
        let response = self
            .kv
            .put(Request::new(pb::PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(value),
                lease,
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(response.header.map_or(0, |h| h.revision))
    }

    /// Runs `success` if `compare` holds; the txn's revision if it did.
    async fn txn(
        &self,
        compare: pb::Compare,
        success: pb::request_op::Request,
    ) -> Result<Option<i64>, Status> {
        let response = self
            .kv
            .txn(Request::new(pb::TxnRequest {
                compare: vec![compare],
                success: vec![pb::RequestOp {
                    request: Some(success),
                }],
                failure: Vec::new(),
            }))
            .await?
            .into_inner();
        Ok(response
            .succeeded
            .then(|| response.header.map_or(0, |h| h.revision)))
    }

    /// Grants a lease of `ttl` seconds (raised to the member's minimum, as
    /// etcd does); its ID and granted TTL.
    async fn grant(&self, ttl: i64) -> Result<(i64, i64), Status> {
        let response = self
            .leases
            .lease_grant(Request::new(pb::LeaseGrantRequest { ttl, id: 0 }))
            .await?
            .into_inner();
        Ok((response.id, response.ttl))
    }

    /// Revokes lease `id` (and deletes every key attached to it).
    async fn revoke(&self, id: i64) -> Result<(), Status> {
        self.leases
            .lease_revoke(Request::new(pb::LeaseRevokeRequest { id }))
            .await
            .map(drop)
    }

    /// Revokes lease `id`, logging rather than answering a failure (the
    /// lease then expires by itself).
    async fn revoke_quietly(&self, id: i64) {
        match self.revoke(id).await {
            Ok(()) => tracing::debug!(lease = id, "registry: registration's lease revoked"),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                tracing::debug!(lease = id, %status, "registry: revoke failed; the lease will expire")
            }
        }
    }

    /// Renews lease `id` through the leader's lessor.
    async fn renew(&self, id: i64) -> Result<LeaseAnswer, Status> {
        let answer = self
            .node
            .lease(LeaseOp::Renew { id })
            .await
            .map_err(|e| raft_status(&e))?;
        if let LeaseAnswer::Renewed { .. } = answer {
            crate::metrics::LEASES_RENEWED.inc();
        }
        Ok(answer)
    }

    /// The first request of a Register stream, carried out: the instance
    /// validated, a lease granted and the instance put with it.
    async fn register(&self, first: rpb::RegisterRequest) -> Result<Registration, Status> {
        let Some(wire) = first.instance else {
            return Err(Status::invalid_argument(
                "muster: the first request of a registration must carry an instance",
            ));
        };
        if first.ttl < 0 {
            return Err(Status::invalid_argument(format!(
                "muster: ttl {} is negative",
                first.ttl
            )));
        }
        let ttl = if first.ttl == 0 {
            DEFAULT_TTL
        } else {
            first.ttl
        };
        let mut instance = instance_from_wire(wire).map_err(|e| invalid(&e))?;
        instance.registered = now_to_the_second();
        let value = instance.encode().map_err(|e| invalid(&e))?;
        let key = instance.key(&self.prefix);
        let (lease, ttl) = self.grant(ttl).await?;
        let revision = match self.put(&key, value, lease).await {
            Ok(revision) => revision,
            Err(status) => {
                self.revoke_quietly(lease).await;
                return Err(status);
            }
        };
        tracing::debug!(key, lease, ttl, revision, "registry: instance registered");
        Ok(Registration {
            registry: self.clone(),
            key,
            instance,
            lease,
            ttl,
            revision,
        })
    }

    /// Serves one Register stream to its end.
    async fn hold(
        self,
        mut requests: Streaming<rpb::RegisterRequest>,
        responses: mpsc::Sender<Result<rpb::RegisterResponse, Status>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let first = tokio::select! {
            () = until_stopping(&mut stopping) => return,
            _ = responses.closed() => return,
            first = requests.message() => match first {
                Ok(Some(first)) => first,
                Ok(None) | Err(_) => return,
            },
        };
        let mut registration = match self.register(first).await {
            Ok(registration) => registration,
            Err(status) => {
                let _ = responses.send(Err(status)).await;
                return;
            }
        };
        let ending = if responses.send(Ok(registration.answer())).await.is_err() {
            Ending::Gone
        } else {
            registration
                .keep(&mut requests, &responses, &mut stopping)
                .await
        };
        let lease = registration.lease;
        match ending {
            Ending::Gone => self.revoke_quietly(lease).await,
            Ending::Closed => {
                // A graceful deregistration: the responses end once the
                // lease is revoked.
                self.revoke_quietly(lease).await;
            }
            Ending::Failed { status, revoke } => {
                tracing::debug!(key = registration.key, lease, %status, "registry: registration ends");
                // The answer first, so the registrant can register again
                // at once; the revoke deletes the key only while it is
                // still on this lease.
                let _ = responses.send(Err(status)).await;
                if revoke {
                    self.revoke_quietly(lease).await;
                }
            }
            Ending::Stopping => {
                let _ = responses
                    .send(Err(Status::unavailable("muster: the member is stopping")))
                    .await;
            }
        }
    }

    /// Validates a Deregister or SetHealth request's service and ID.
    fn instance_key(&self, service: &str, id: &str) -> Result<String, Status> {
        validate_service(service).map_err(|e| invalid(&e))?;
        validate_id(id).map_err(|e| invalid(&e))?;
        Ok(self.key(service, id))
    }
}

/// Resolves once `stopping` becomes true; never when its sender is gone
/// (a service built without [`RegistryService::stopping_on`]).
async fn until_stopping(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The status for an instance (or request) that fails validation.
fn invalid(error: &InvalidInstance) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The current version of `key` in `store`.
fn get(store: &Store, key: &str) -> Result<Option<KeyValue>, Status> {
    let response = store
        .range(&RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..Default::default()
        })
        .map_err(|e| core_status(&e))?;
    Ok(response.kvs.into_iter().next())
}

/// A compare: `key`'s mod revision is `revision` (0: the key is absent).
fn mod_revision_is(key: &str, revision: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Mod as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::new(),
        target_union: Some(pb::compare::TargetUnion::ModRevision(revision)),
    }
}

/// A compare: `key` is attached to `lease` (so it exists).
fn lease_is(key: &str, lease: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Lease as i32,
        key: Bytes::copy_from_slice(key.as_bytes()),
        range_end: Bytes::new(),
        target_union: Some(pb::compare::TargetUnion::Lease(lease)),
    }
}

fn put_op(key: &str, value: Vec<u8>, lease: i64) -> pb::request_op::Request {
    pb::request_op::Request::RequestPut(pb::PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::from(value),
        lease,
        ..Default::default()
    })
}

fn delete_op(key: &str) -> pb::request_op::Request {
    pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    })
}

/// How a Register stream ended.
enum Ending {
    /// The client cancelled the call or its connection broke: revoke.
    Gone,
    /// The client closed its side: revoke, then end the responses.
    Closed,
    /// End the responses with `status`; revoke the lease if `revoke`.
    Failed {
        /// The stream's last answer.
        status: Status,
        /// Whether the lease may still exist.
        revoke: bool,
    },
    /// The member stops: end with UNAVAILABLE, leave the lease to expire.
    Stopping,
}

impl Ending {
    fn failed(status: Status) -> Self {
        Ending::Failed {
            status,
            revoke: true,
        }
    }

    fn lease_lost() -> Self {
        Ending::Failed {
            status: core_status(&CoreError::LeaseNotFound),
            revoke: false,
        }
    }
}

/// A registered instance, held by its Register stream.
struct Registration {
    registry: RegistryService,
    key: String,
    instance: Instance,
    lease: i64,
    /// The lease's granted TTL, in seconds.
    ttl: i64,
    /// The revision of the last write of the instance.
    revision: i64,
}

impl Registration {
    fn answer(&self) -> rpb::RegisterResponse {
        rpb::RegisterResponse {
            key: self.key.clone(),
            lease: self.lease,
            revision: self.revision,
            ttl: self.ttl,
        }
    }

    /// A third of the lease's TTL: how often it is renewed.
    fn renew_every(&self) -> Duration {
        Duration::from_millis(self.ttl.max(1).unsigned_abs().saturating_mul(1000) / 3)
    }

    /// Keeps the lease alive and applies health updates until the stream
    /// ends; how it ended.
    async fn keep(
        &mut self,
        requests: &mut Streaming<rpb::RegisterRequest>,
        responses: &mpsc::Sender<Result<rpb::RegisterResponse, Status>>,
        stopping: &mut watch::Receiver<bool>,
    ) -> Ending {
        let mut renewal = Instant::now() + self.renew_every();
        loop {
            tokio::select! {
                () = until_stopping(stopping) => return Ending::Stopping,
                _ = responses.closed() => return Ending::Gone,
                request = requests.message() => match request {
                    Ok(Some(request)) => match self.update(request).await {
                        Ok(Some(answer)) => {
                            if responses.send(Ok(answer)).await.is_err() {
                                return Ending::Gone;
                            }
                        }
                        Ok(None) => {}
                        Err(ending) => return ending,
                    },
                    Ok(None) => return Ending::Closed,
                    Err(_) => return Ending::Gone,
                },
                _ = tokio::time::sleep_until(renewal) => {
                    renewal = match self.renew().await {
                        Ok(true) => Instant::now() + self.renew_every(),
                        Ok(false) => Instant::now() + RENEW_RETRY.min(self.renew_every()),
                        Err(ending) => return ending,
                    };
                }
            }
        }
    }

    /// Renews the lease and checks that the key is still on it: `false`
    /// when the renewal failed for now (try again soon).
    async fn renew(&self) -> Result<bool, Ending> {
        match self.registry.renew(self.lease).await {
            Ok(LeaseAnswer::Renewed { .. }) => {}
            Ok(LeaseAnswer::NotFound) => return Err(Ending::lease_lost()),
            Ok(LeaseAnswer::Remaining { .. }) => return Ok(false),
            Err(status) => {
                tracing::debug!(lease = self.lease, %status, "registry: renewal failed; retrying");
                return Ok(false);
            }
        }
        // The local store, once it holds this registration's last write,
        // shows whether someone took the key or removed it since.
        let store = self.registry.node.state_machine().store();
        if store.revision() < self.revision {
            return Ok(true);
        }
        let current = get(&store, &self.key).map_err(Ending::failed)?;
        self.check_owner(&store, current.as_ref())?;
        Ok(true)
    }

    /// Whether `current` (the key as `store` holds it) is still this
    /// registration's; the ending when it is not.
    fn check_owner(&self, store: &Store, current: Option<&KeyValue>) -> Result<(), Ending> {
        match current {
            Some(kv) if kv.lease == self.lease => Ok(()),
            Some(kv) if kv.lease == 0 => Err(Ending::failed(Status::already_exists(format!(
                "muster: instance {} was overwritten without a lease",
                self.key
            )))),
            Some(kv) => Err(Ending::failed(Status::already_exists(format!(
                "muster: instance {} was registered again, under lease {}",
                self.key, kv.lease
            )))),
            None if store.lease(self.lease).is_none() => Err(Ending::lease_lost()),
            None => Err(Ending::failed(Status::failed_precondition(format!(
                "muster: instance {} was removed",
                self.key
            )))),
        }
    }

    /// Applies a later request: the answer to send, if any.
    async fn update(
        &mut self,
        request: rpb::RegisterRequest,
    ) -> Result<Option<rpb::RegisterResponse>, Ending> {
        if request.instance.is_some() {
            return Err(Ending::failed(Status::invalid_argument(
                "muster: only the first request of a registration may carry an instance",
            )));
        }
        let health = health_from_wire(request.health).map_err(|e| Ending::failed(invalid(&e)))?;
        let Some(health) = health else {
            return Ok(None);
        };
        // Unchanged (as stored: SetHealth may have changed it since): no
        // write, answered with the last write's revision.
        let store = self.registry.read().await.map_err(Ending::failed)?;
        let current = get(&store, &self.key).map_err(Ending::failed)?;
        self.check_owner(&store, current.as_ref())?;
        if let Some(kv) = current
            && decode(&self.registry.prefix, &kv).is_ok_and(|stored| stored.health == health)
        {
            self.instance.health = health;
            self.revision = kv.mod_revision;
            return Ok(Some(self.answer()));
        }
        let mut instance = self.instance.clone();
        instance.health = health;
        let value = instance.encode().map_err(|e| Ending::failed(invalid(&e)))?;
        let written = self
            .registry
            .txn(
                lease_is(&self.key, self.lease),
                put_op(&self.key, value, self.lease),
            )
            .await;
        match written {
            Ok(Some(revision)) => {
                self.instance = instance;
                self.revision = revision;
                Ok(Some(self.answer()))
            }
            Ok(None) => {
                // The key is not on this lease: find out why, from a store
                // that holds the failed txn.
                let store = self.registry.read().await.map_err(Ending::failed)?;
                let current = get(&store, &self.key).map_err(Ending::failed)?;
                self.check_owner(&store, current.as_ref())?;
                Err(Ending::failed(Status::aborted(format!(
                    "muster: instance {} changed during a health update",
                    self.key
                ))))
            }
            Err(status) if status.code() == Code::NotFound => Err(Ending::lease_lost()),
            Err(status) => Err(Ending::failed(status)),
        }
    }
}

/// The filters of a List or Watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Filter {
    /// Only this service's instances; `None`: every service's.
    service: Option<String>,
    /// Only instances carrying every one of these.
    tags: Vec<String>,
    /// Only instances in one of these states; empty: any.
    health: Vec<Health>,
}

impl Filter {
    /// The filter a request asks for (an empty service is every service;
    /// `HEALTH_UNSPECIFIED` among the states is any state).
    fn new(service: String, tags: Vec<String>, health: &[i32]) -> Result<Filter, Status> {
        let service = if service.is_empty() {
            None
        } else {
            validate_service(&service).map_err(|e| invalid(&e))?;
            Some(service)
        };
        let mut states = Vec::new();
        let mut any = false;
        for &value in health {
            match health_from_wire(value).map_err(|e| invalid(&e))? {
                Some(state) => states.push(state),
                None => any = true,
            }
        }
        if any {
            states.clear();
        }
        Ok(Filter {
            service,
            tags,
            health: states,
        })
    }

    /// The key prefix the filter's instances are under.
    fn key_prefix(&self, prefix: &str) -> String {
        match &self.service {
            Some(service) => service_prefix(prefix, service),
            None => registry_prefix(prefix),
        }
    }

    /// Whether `instance` passes.
    fn matches(&self, instance: &Instance) -> bool {
        self.service.as_ref().is_none_or(|s| *s == instance.service)
            && self.tags.iter().all(|tag| instance.has_tag(tag))
            && (self.health.is_empty() || self.health.contains(&instance.health))
    }
}

/// The instance stored in `kv`, if it is one.
fn decode(prefix: &str, kv: &KeyValue) -> Result<Instance, InvalidInstance> {
    Instance::decode(prefix, &kv.key, &kv.value)
}

/// The instances in `store` under `prefix` that pass `filter`, as sent on
/// the wire, and the revision they were read at.
fn list(store: &Store, prefix: &str, filter: &Filter) -> Result<(Vec<rpb::Instance>, i64), Status> {
    let key_prefix = filter.key_prefix(prefix);
    let response = store
        .range(&RangeRequest {
            key: Bytes::from(key_prefix.clone().into_bytes()),
            range_end: Bytes::from(prefix_end(key_prefix.as_bytes())),
            ..Default::default()
        })
        .map_err(|e| core_status(&e))?;
    let mut skipped = 0usize;
    let mut instances = Vec::new();
    for kv in &response.kvs {
        match decode(prefix, kv) {
            Ok(instance) if filter.matches(&instance) => {
                instances.push(instance_to_wire(&instance, kv.mod_revision, kv.lease));
            }
            Ok(_) => {}
            Err(error) => {
                skipped += 1;
                tracing::trace!(%error, "registry: not an instance");
            }
        }
    }
    if skipped > 0 {
        tracing::debug!(
            skipped,
            prefix = key_prefix,
            "registry: values under the prefix that are not instances were skipped"
        );
    }
    Ok((instances, response.revision))
}

/// What the events of one revision mean to a watcher with `filter`: the
/// instances put (matching now) and removed (deleted, or changed so that
/// they no longer match), in event order.
fn translate(
    prefix: &str,
    filter: &Filter,
    events: &[Event],
) -> (Vec<rpb::Instance>, Vec<rpb::Instance>) {
    let mut put = Vec::new();
    let mut removed = Vec::new();
    for event in events {
        let Some((service, id)) = parse_key(prefix, &event.kv.key) else {
            continue;
        };
        if filter.service.as_ref().is_some_and(|s| *s != service) {
            continue;
        }
        let bare = || rpb::Instance {
            service: service.clone(),
            id: id.clone(),
            ..Default::default()
        };
        // The instance before the change, if it matched: `None` when it
        // did not (or was not an instance), `Some(None)` when unknown.
        let before: Option<Option<rpb::Instance>> = match &event.prev_kv {
            Some(prev) => decode(prefix, prev)
                .ok()
                .filter(|i| filter.matches(i))
                .map(|i| Some(instance_to_wire(&i, prev.mod_revision, prev.lease))),
            // A put creating the key replaced nothing.
            None if event.kind == EventKind::Put && event.kv.version == 1 => None,
            None => Some(None),
        };
        match event.kind {
            EventKind::Put => match decode(prefix, &event.kv) {
                Ok(now) if filter.matches(&now) => {
                    put.push(instance_to_wire(
                        &now,
                        event.kv.mod_revision,
                        event.kv.lease,
                    ));
                }
                now => {
                    if let Some(before) = before {
                        removed.push(match now {
                            Ok(now) => {
                                instance_to_wire(&now, event.kv.mod_revision, event.kv.lease)
                            }
                            Err(_) => before.unwrap_or_else(bare),
                        });
                    }
                }
            },
            EventKind::Delete => {
                if let Some(before) = before {
                    removed.push(before.unwrap_or_else(bare));
                }
            }
        }
    }
    (put, removed)
}

/// The stream ended: the client went away or the member stops.
struct Closed;

/// The task serving one Watch stream.
struct RegistryWatch {
    node: Arc<RaftNode>,
    prefix: Arc<str>,
    filter: Filter,
    /// The watched key range.
    key: Bytes,
    range_end: Bytes,
    /// The first revision not yet sent.
    next: i64,
    responses: mpsc::Sender<Result<rpb::WatchResponse, Status>>,
}

impl RegistryWatch {
    async fn send(&self, response: rpb::WatchResponse) -> Result<(), Closed> {
        self.responses.send(Ok(response)).await.map_err(|_| Closed)
    }

    /// Sends the changes of one revision's `events`, if any matter.
    async fn send_revision(&self, revision: i64, events: &[Event]) -> Result<(), Closed> {
        let (put, removed) = translate(&self.prefix, &self.filter, events);
        if put.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.send(rpb::WatchResponse {
            revision,
            put,
            removed,
            ..Default::default()
        })
        .await
    }

    async fn run(
        mut self,
        start_revision: i64,
        mut events: broadcast::Receiver<Arc<AppliedEvents>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        if start_revision == 0 {
            let snapshot = tokio::select! {
                () = until_stopping(&mut stopping) => return,
                _ = self.responses.closed() => return,
                store = self.node.read_barrier() => store
                    .map_err(|e| raft_status(&e))
                    .and_then(|()| {
                        let store = self.node.state_machine().store();
                        list(&store, &self.prefix, &self.filter)
                    }),
            };
            let (snapshot, revision) = match snapshot {
                Ok(snapshot) => snapshot,
                Err(status) => {
                    let _ = self.responses.send(Err(status)).await;
                    return;
                }
            };
            self.next = revision + 1;
            let response = rpb::WatchResponse {
                snapshot,
                revision,
                ..Default::default()
            };
            if self.send(response).await.is_err() {
                return;
            }
        } else {
            self.next = start_revision;
        }
        let mut synced = false;
        loop {
            if *stopping.borrow() {
                return;
            }
            if !synced {
                if self.catch_up().await.is_err() {
                    return;
                }
                synced = true;
            }
            tokio::select! {
                () = until_stopping(&mut stopping) => return,
                _ = self.responses.closed() => return,
                applied = events.recv() => match applied {
                    Ok(applied) if applied.events.is_empty() => {
                        // A snapshot replaced the store: catch up from it.
                        synced = false;
                    }
                    Ok(applied) => {
                        if applied.revision >= self.next {
                            self.next = applied.revision + 1;
                            let range = KeyRange::new(&self.key, &self.range_end);
                            let mine: Vec<Event> = applied
                                .events
                                .iter()
                                .filter(|e| range.contains(&e.kv.key))
                                .cloned()
                                .collect();
                            if self.send_revision(applied.revision, &mine).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => synced = false,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Sends every change from `next` to the store's current revision from
    /// history; on a compacted `next`, the compaction response (and the
    /// stream ends).
    async fn catch_up(&mut self) -> Result<(), Closed> {
        loop {
            let store = self.node.state_machine().store();
            let current = store.revision();
            if self.next > current {
                return Ok(());
            }
            let batch = store.events(
                &self.key,
                &self.range_end,
                self.next,
                current,
                CATCH_UP_BATCH,
            );
            match batch {
                Ok(batch) => {
                    for events in batch
                        .events
                        .chunk_by(|a, b| a.kv.mod_revision == b.kv.mod_revision)
                    {
                        self.send_revision(events[0].kv.mod_revision, events)
                            .await?;
                    }
                    self.next = batch.next_revision.max(self.next + 1);
                }
                Err(CoreError::Compacted) => {
                    let _ = self
                        .send(rpb::WatchResponse {
                            revision: current,
                            compact_revision: store.compact_revision(),
                            ..Default::default()
                        })
                        .await;
                    return Err(Closed);
                }
                Err(error) => {
                    let _ = self.responses.send(Err(core_status(&error))).await;
                    return Err(Closed);
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    type RegisterStream = ReceiverStream<Result<rpb::RegisterResponse, Status>>;

    async fn register(
        &self,
        request: Request<Streaming<rpb::RegisterRequest>>,
    ) -> Result<Response<Self::RegisterStream>, Status> {
        if *self.stopping.borrow() {
            return Err(Status::unavailable("muster: the member is stopping"));
        }
        let (responses, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(
            self.clone()
                .hold(request.into_inner(), responses, self.stopping.clone()),
        );
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn deregister(
        &self,
        request: Request<rpb::DeregisterRequest>,
    ) -> Result<Response<rpb::DeregisterResponse>, Status> {
        let request = request.into_inner();
        let key = self.instance_key(&request.service, &request.id)?;
        for _ in 0..CAS_ATTEMPTS {
            let store = self.read().await?;
            let Some(kv) = get(&store, &key)? else {
                return Ok(Response::new(rpb::DeregisterResponse {
                    deleted: false,
                    revision: store.revision(),
                }));
            };
            let Some(revision) = self
                .txn(mod_revision_is(&key, kv.mod_revision), delete_op(&key))
                .await?
            else {
                continue;
            };
            if kv.lease != 0 {
                // The registrant learns at its next renewal; if the revoke
                // fails it learns that the key is gone instead.
                match self.revoke(kv.lease).await {
                    Ok(()) => {}
                    Err(status) if status.code() == Code::NotFound => {}
                    Err(status) => {
                        tracing::warn!(key, lease = kv.lease, %status, "registry: deregistered, but the lease was not revoked");
                    }
                }
            }
            tracing::debug!(key, revision, "registry: instance deregistered");
            return Ok(Response::new(rpb::DeregisterResponse {
                deleted: true,
                revision,
            }));
        }
        Err(Status::aborted(format!(
            "muster: instance {key} kept changing; try again"
        )))
    }

    async fn set_health(
        &self,
        request: Request<rpb::SetHealthRequest>,
    ) -> Result<Response<rpb::SetHealthResponse>, Status> {
        let request = request.into_inner();
        let key = self.instance_key(&request.service, &request.id)?;
        let Some(health) = health_from_wire(request.health).map_err(|e| invalid(&e))? else {
            return Err(Status::invalid_argument(
                "muster: health must be passing, warning or critical",
            ));
        };
        for _ in 0..CAS_ATTEMPTS {
            let store = self.read().await?;
            let Some(kv) = get(&store, &key)? else {
                return Err(Status::not_found(format!(
                    "muster: instance {key} not found"
                )));
            };
            let mut instance = decode(&self.prefix, &kv)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            if instance.health == health {
                return Ok(Response::new(rpb::SetHealthResponse {
                    revision: store.revision(),
                }));
            }
            instance.health = health;
            let value = instance
                .encode()
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
            if let Some(revision) = self
                .txn(
                    mod_revision_is(&key, kv.mod_revision),
                    put_op(&key, value, kv.lease),
                )
                .await?
            {
                return Ok(Response::new(rpb::SetHealthResponse { revision }));
            }
        }
        Err(Status::aborted(format!(
            "muster: instance {key} kept changing; try again"
        )))
    }

    async fn list(
        &self,
        request: Request<rpb::ListRequest>,
    ) -> Result<Response<rpb::ListResponse>, Status> {
        let request = request.into_inner();
        let filter = Filter::new(request.service, request.tags, &request.health)?;
        let store = self.read().await?;
        let (instances, revision) = list(&store, &self.prefix, &filter)?;
        Ok(Response::new(rpb::ListResponse {
            instances,
            revision,
        }))
    }

    type WatchStream = ReceiverStream<Result<rpb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<rpb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        let filter = Filter::new(request.service, request.tags, &request.health)?;
        if request.start_revision < 0 {
            return Err(Status::invalid_argument(format!(
                "muster: start_revision {} is negative",
                request.start_revision
            )));
        }
        // Subscribe before anything reads the store (see the invariants).
        let events = self.node.state_machine().subscribe();
        let key_prefix = filter.key_prefix(&self.prefix);
        let (responses, receiver) = mpsc::channel(STREAM_BUFFER);
        let watch = RegistryWatch {
            node: Arc::clone(&self.node),
            prefix: Arc::clone(&self.prefix),
            filter,
            range_end: Bytes::from(prefix_end(key_prefix.as_bytes())),
            key: Bytes::from(key_prefix.into_bytes()),
            next: 0,
            responses,
        };
        tokio::spawn(watch.run(request.start_revision, events, self.stopping.clone()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/registry/services";

    fn stored(instance: &Instance, revision: i64, version: i64, lease: i64) -> KeyValue {
        KeyValue {
            key: Bytes::from(instance.key(PREFIX)),
            create_revision: revision - version + 1,
            mod_revision: revision,
            version,
            value: Bytes::from(instance.encode().unwrap()),
            lease,
        }
    }

    fn put(kv: KeyValue, prev: Option<KeyValue>) -> Event {
        Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
        }
    }

    fn delete(key: &str, revision: i64, prev: Option<KeyValue>) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: Bytes::from(key.to_string()),
                mod_revision: revision,
                ..Default::default()
            },
            prev_kv: prev,
        }
    }

    fn ids(instances: &[rpb::Instance]) -> Vec<(&str, i32)> {
        instances
            .iter()
            .map(|i| (i.id.as_str(), i.health))
            .collect()
    }

    fn passing_api() -> Filter {
        Filter::new("api".into(), Vec::new(), &[rpb::Health::Passing as i32]).unwrap()
    }

    #[test]
    fn filters_need_every_tag_and_one_of_the_states() {
        let mut instance = Instance::new("api", "1", "10.0.0.1:80");
        instance.tags = vec!["v2".into(), "eu".into()];
        let filter = |service: &str, tags: &[&str], health: &[rpb::Health]| {
            let health: Vec<i32> = health.iter().map(|h| *h as i32).collect();
            Filter::new(
                service.into(),
                tags.iter().map(|t| t.to_string()).collect(),
                &health,
            )
            .unwrap()
        };
        assert!(filter("", &[], &[]).matches(&instance));
        assert!(filter("api", &["v2", "eu"], &[]).matches(&instance));
        assert!(!filter("api", &["v2", "us"], &[]).matches(&instance));
        assert!(!filter("web", &[], &[]).matches(&instance));
        assert!(
            !filter("", &[], &[rpb::Health::Warning, rpb::Health::Critical]).matches(&instance)
        );
        assert!(filter("", &[], &[rpb::Health::Critical, rpb::Health::Passing]).matches(&instance));
        // HEALTH_UNSPECIFIED among the states means any.
        assert!(
            filter("", &[], &[rpb::Health::Critical, rpb::Health::Unspecified]).matches(&instance)
        );
        assert_eq!(
            filter("api", &[], &[]).key_prefix(PREFIX),
            "/registry/services/api/"
        );
        assert_eq!(
            filter("", &[], &[]).key_prefix(PREFIX),
            "/registry/services/"
        );
        let bad = Filter::new("API".into(), Vec::new(), &[]).unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("service"));
        assert_eq!(
            Filter::new(String::new(), Vec::new(), &[7])
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn changes_translate_to_put_and_removed() {
        let filter = passing_api();
        let mut up = Instance::new("api", "1", "10.0.0.1:80");
        let created = stored(&up, 5, 1, 7);
        // Created: a put (no previous version).
        let (put_, removed) = translate(PREFIX, &filter, &[put(created.clone(), None)]);
        assert_eq!((ids(&put_), removed.len()), (vec![("1", 1)], 0));
        assert_eq!((put_[0].mod_revision, put_[0].lease), (5, 7));
        // Turned critical: removed, as it now is.
        up.health = Health::Critical;
        let critical = stored(&up, 6, 2, 7);
        let (put_, removed) = translate(
            PREFIX,
            &filter,
            &[put(critical.clone(), Some(created.clone()))],
        );
        assert_eq!((put_.len(), ids(&removed)), (0, vec![("1", 3)]));
        // Still critical: nothing (the watcher no longer has it).
        let again = stored(&up, 7, 3, 7);
        let (put_, removed) = translate(PREFIX, &filter, &[put(again, Some(critical.clone()))]);
        assert!(put_.is_empty() && removed.is_empty());
        // Deleted while critical: nothing; deleted while passing: removed
        // as last stored; deleted with history gone: service and id.
        let key = up.key(PREFIX);
        let (put_, removed) = translate(PREFIX, &filter, &[delete(&key, 8, Some(critical))]);
        assert!(put_.is_empty() && removed.is_empty());
        let (_, removed) = translate(PREFIX, &filter, &[delete(&key, 8, Some(created))]);
        assert_eq!(
            (ids(&removed), removed[0].mod_revision),
            (vec![("1", 1)], 5)
        );
        let (_, removed) = translate(PREFIX, &filter, &[delete(&key, 8, None)]);
        assert_eq!(
            removed,
            vec![rpb::Instance {
                service: "api".into(),
                id: "1".into(),
                ..Default::default()
            }]
        );
    }

    #[test]
    fn other_services_and_foreign_values_are_left_out() {
        let filter = passing_api();
        let web = stored(&Instance::new("web", "1", "10.0.0.2:80"), 5, 1, 0);
        let foreign = KeyValue {
            key: Bytes::from_static(b"/registry/services/api/2"),
            value: Bytes::from_static(b"not json"),
            mod_revision: 5,
            version: 1,
            ..Default::default()
        };
        let deeper = KeyValue {
            key: Bytes::from_static(b"/registry/services/api/2/x"),
            ..foreign.clone()
        };
        let (put_, removed) = translate(
            PREFIX,
            &filter,
            &[
                put(web, None),
                put(foreign.clone(), None),
                put(deeper, None),
            ],
        );
        assert!(put_.is_empty() && removed.is_empty());
        // An instance overwritten by a value that is not one: removed.
        let before = stored(&Instance::new("api", "2", "10.0.0.3:80"), 4, 1, 0);
        let overwritten = KeyValue {
            version: 2,
            ..foreign
        };
        let (_, removed) = translate(PREFIX, &filter, &[put(overwritten, Some(before))]);
        assert_eq!(ids(&removed), vec![("2", 1)]);
    }

    #[test]
    fn a_list_skips_values_that_are_not_instances() {
        let mut store = Store::new();
        let mut index = 0;
        let mut write = |key: &str, value: Vec<u8>| {
            index += 1;
            store
                .apply(
                    index,
                    muster_core::Command::Put(muster_core::PutRequest {
                        key: Bytes::from(key.to_string()),
                        value: Bytes::from(value),
                        ..Default::default()
                    }),
                )
                .unwrap();
        };
        let mut canary = Instance::new("api", "1", "10.0.0.1:80");
        canary.tags = vec!["canary".into()];
        write(&canary.key(PREFIX), canary.encode().unwrap());
        let plain = Instance::new("api", "2", "10.0.0.2:80");
        write(&plain.key(PREFIX), plain.encode().unwrap());
        write("/registry/services/api/3", b"garbage".to_vec());
        write(
            "/registry/services/web/1",
            br#"{"Addr":"10.0.0.9:80"}"#.to_vec(),
        );
        write(
            "/registry/servicesx/api/1",
            br#"{"Addr":"10.0.0.9:80"}"#.to_vec(),
        );
        let every = Filter::default();
        let (instances, revision) = list(&store, PREFIX, &every).unwrap();
        // Revisions start at 1, as etcd's: five puts make it 6.
        assert_eq!(revision, 6);
        let keys: Vec<_> = instances
            .iter()
            .map(|i| format!("{}/{}", i.service, i.id))
            .collect();
        assert_eq!(keys, ["api/1", "api/2", "web/1"]);
        let canaries = Filter::new("api".into(), vec!["canary".into()], &[]).unwrap();
        let (instances, _) = list(&store, PREFIX, &canaries).unwrap();
        assert_eq!(ids(&instances), vec![("1", 1)]);
        assert_eq!(instances[0].mod_revision, 2);
    }
}
