//! The client API of one member, assembled: every etcd v3 service muster
//! serves, on one listener.
//!
//! ```text
//!   TcpListener (--listen-client-urls) ──▶ tonic Server
//!       ├─ etcdserverpb.KV          (kv)
//!       ├─ etcdserverpb.Watch       (watch)
//!       ├─ etcdserverpb.Lease       (lease: the lessor runs on the leader)
//!       ├─ etcdserverpb.Maintenance (maintenance)
//!       ├─ etcdserverpb.Auth        (auth: unimplemented)
//!       ├─ grpc.health.v1.Health    (health: SERVING while a leader is known)
//!       ├─ muster.registry.v1.Registry (registry: instances under
//!       │                               --registry-prefix, written through
//!       │                               the KV and Lease services above)
//!       └─ ... further services as they are added
//! ```
//!
//! Invariants:
//!
//! - Every service answers from the same [`RaftNode`] and stamps the same
//!   cluster ID into its headers.
//! - [`ClientApi::serve`] returns once `shutdown` resolves and in-flight
//!   calls have drained; open watch streams are ended at that point (they
//!   would otherwise never drain). The node itself is stopped by its owner.
//! - Every connection is pinged after [`KEEPALIVE_INTERVAL`] without a
//!   frame from the client and closed when the ping is not answered within
//!   [`KEEPALIVE_TIMEOUT`] (both adjustable with
//!   [`ClientApi::with_keepalive`]), so the streams of a client that vanished
//!   without closing its connection end (a registry `Register` stream then
//!   revokes its lease instead of renewing it forever).

use std::future::Future;
use std::sync::Arc;

use muster_core::Response;
use muster_proto::etcdserverpb as pb;
use muster_raft::{CommandResult, RaftNode};
use tonic::Status;

use crate::status::{core_status, raft_status};
use tokio::net::TcpListener;

use crate::auth::AuthService;
use crate::cluster::{ClusterService, MemberAttributes, publish};
use crate::health::HealthService;
use crate::kv::{KvService, Limits, Quota};
use crate::lease::{LeaseConfig, LeaseService, Lessor};
use crate::maintenance::MaintenanceService;
use crate::registry::RegistryService;
use crate::watch::{WatchConfig, WatchService};

/// How long a client connection may stay silent before it is pinged
/// (HTTP/2 keepalive).
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a client has to answer a keepalive ping before its connection
/// is closed (etcd's `--grpc-keepalive-timeout` default). Generous: a
/// client process starved of CPU for a few seconds must not lose its
/// connections and watches.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The services of one member's client API.
#[derive(Clone, Debug)]
pub struct ClientApi {
    node: Arc<RaftNode>,
    cluster_id: u64,
    limits: Limits,
    /// The space quota checked before writes that add data.
    quota: Quota,
    watch: WatchConfig,
    lease: LeaseConfig,
    /// What this member publishes about itself when it serves.
    attributes: Option<MemberAttributes>,
    /// The key prefix of the registry service's instances.
    registry_prefix: String,
    /// HTTP/2 keepalive: ping after this much silence, close when the ping
    /// is not answered within the second.
    keepalive: (std::time::Duration, std::time::Duration),
    /// Test builds only: followers answer linearizable reads without the
    /// read barrier (see `KvService::with_stale_follower_reads`).
    #[cfg(feature = "fault-injection")]
    stale_follower_reads: bool,
    /// Flipped to `true` when [`ClientApi::serve`] is told to stop, so that
    /// long-lived streams (watches) end and the server can drain.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ClientApi {
    /// The client API of `node`, a member of cluster `cluster_id`, with
    /// `limits` and etcd's default space quota (2 GiB) checked at the edge.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, limits: Limits) -> Self {
        ClientApi {
            node,
            cluster_id,
            limits,
            quota: Quota::default(),
            watch: WatchConfig {
                max_response_bytes: limits.max_request_bytes,
                ..WatchConfig::default()
            },
            lease: LeaseConfig::for_election_timeout(WatchConfig::default().election_timeout),
            attributes: None,
            registry_prefix: muster_proto::registry::DEFAULT_PREFIX.to_string(),
            keepalive: (KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT),
            #[cfg(feature = "fault-injection")]
            stale_follower_reads: false,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// Breaks linearizable reads on purpose (test builds only): followers
    /// answer them from local state without the read barrier.
    #[cfg(feature = "fault-injection")]
    pub fn with_stale_follower_reads(mut self, stale: bool) -> Self {
        self.stale_follower_reads = stale;
        self
    }

    /// The same API for a member with election timeout `election_timeout`
    /// (it sets the minimum lease TTL, a new leader's lease extension and
    /// how long a `hasleader` watch tolerates no leader).
    pub fn with_election_timeout(mut self, election_timeout: std::time::Duration) -> Self {
        self.watch.election_timeout = election_timeout;
        self.lease = LeaseConfig::for_election_timeout(election_timeout);
        self
    }

    /// The same API with a space quota of `max_bytes` (`None`: no quota),
    /// checked before puts, txns with puts and lease grants are proposed
    /// (etcd's `--quota-backend-bytes`; see [`crate::kv`]).
    pub fn with_quota(mut self, max_bytes: Option<u64>) -> Self {
        self.quota = Quota { max_bytes };
        self
    }

    /// The same API with the lessor tuned by `lease`.
    pub fn with_lease_config(mut self, lease: LeaseConfig) -> Self {
        self.lease = lease;
        self
    }

    /// The same API with the watch service tuned by `watch`.
    pub fn with_watch_config(mut self, watch: WatchConfig) -> Self {
        self.watch = watch;
        self
    }

    /// The same API publishing `attributes` (name, peer and client URLs)
    /// through Raft once it serves, so `MemberList` shows this member as
    /// started (see [`crate::cluster::publish`]).
    pub fn with_member_attributes(mut self, attributes: MemberAttributes) -> Self {
        self.attributes = Some(attributes);
        self
    }

    /// The same API with the registry service's instances under `prefix`
    /// (`--registry-prefix`; default `/registry/services`), which the
    /// caller has validated ([`muster_proto::registry::validate_prefix`]).
    pub fn with_registry_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.registry_prefix = prefix.into();
        self
    }

    /// The same API pinging a silent connection after `interval` and
    /// closing it when a ping goes unanswered for `timeout` (defaults
    /// [`KEEPALIVE_INTERVAL`], [`KEEPALIVE_TIMEOUT`]).
    pub fn with_keepalive(
        mut self,
        interval: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Self {
        self.keepalive = (interval, timeout);
        self
    }

    /// The tonic router with every service added, leases kept by `lessor`.
    fn router(
        &self,
        lessor: Arc<Lessor>,
    ) -> tonic::transport::server::Router<
        tower::layer::util::Stack<crate::metrics::GrpcMetricsLayer, tower::layer::util::Identity>,
    > {
        let lease = LeaseService::new(Arc::clone(&self.node), self.cluster_id, Arc::clone(&lessor))
            .with_quota(self.quota)
            .stopping_on(self.stopping.subscribe());
        let kv = KvService::new(Arc::clone(&self.node), self.cluster_id, self.limits)
            .with_quota(self.quota);
        #[cfg(feature = "fault-injection")]
        let kv = kv.with_stale_follower_reads(self.stale_follower_reads);
        let watch = WatchService::new(Arc::clone(&self.node), self.cluster_id, self.watch)
            .stopping_on(self.stopping.subscribe());
        let registry = RegistryService::new(
            Arc::clone(&self.node),
            self.registry_prefix.clone(),
            kv.clone(),
            lease.clone(),
        )
        .stopping_on(self.stopping.subscribe());
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(self.keepalive.0))
            .http2_keepalive_timeout(Some(self.keepalive.1))
            .layer(crate::metrics::GrpcMetricsLayer)
            .add_service(kv.into_server())
            .add_service(watch.into_server())
            .add_service(lease.into_server())
            .add_service(
                MaintenanceService::new(Arc::clone(&self.node), self.cluster_id)
                    .with_lessor(lessor)
                    .into_server(),
            )
            .add_service(ClusterService::new(Arc::clone(&self.node), self.cluster_id).into_server())
            .add_service(AuthService::new().into_server())
            .add_service(
                HealthService::new(&self.node)
                    .stopping_on(self.stopping.subscribe())
                    .into_server(),
            )
            .add_service(registry.into_server())
    }

    /// Serves the client API on `listener`, with this member's lessor
    /// running, until `shutdown` resolves; then ends every open stream and
    /// returns once in-flight calls are done and the lessor has stopped.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let stopping = Arc::clone(&self.stopping);
        let lessor = Lessor::new(Arc::clone(&self.node), self.lease);
        let lessor_task = tokio::spawn(Arc::clone(&lessor).run(self.stopping.subscribe()));
        let publisher = self.attributes.clone().map(|attributes| {
            tokio::spawn(publish(
                Arc::clone(&self.node),
                attributes,
                self.stopping.subscribe(),
            ))
        });
        let served = self
            .router(lessor)
            .serve_with_incoming_shutdown(muster_raft::accept_nodelay(listener), async move {
                shutdown.await;
                stopping.send_replace(true);
            })
            .await;
        // The lessor holds the node: it is gone when this returns.
        self.stopping.send_replace(true);
        let _ = lessor_task.await;
        if let Some(publisher) = publisher {
            let _ = publisher.await;
        }
        served
    }
}

/// The header of every response: the cluster's ID, this member's ID, the
/// current Raft term, and `revision` (the store revision the answer
/// reflects).
pub fn response_header(node: &RaftNode, cluster_id: u64, revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id,
        member_id: node.id(),
        revision,
        raft_term: node.raft().metrics().borrow().current_term,
    }
}

/// Proposes `command` through the leader (from any member) and returns the
/// core's response, or the gRPC status etcd answers for its failure.
pub async fn propose(node: &RaftNode, command: muster_core::Command) -> Result<Response, Status> {
    match node.submit(command).await.map_err(|e| raft_status(&e))? {
        CommandResult::Applied(response) => Ok(response),
        CommandResult::Failed(error) => Err(core_status(&error)),
        CommandResult::Noop => Err(Status::internal("a command was applied as a no-op")),
    }
}
