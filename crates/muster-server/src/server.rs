//! The client API of one member, assembled: every etcd v3 service muster
//! serves, on one listener.
//!
//! ```text
//!   TcpListener (--listen-client-urls) ──▶ tonic Server
//!       ├─ etcdserverpb.KV          (kv)
//!       ├─ etcdserverpb.Watch       (watch)
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

use std::future::Future;
use std::sync::Arc;

use muster_proto::etcdserverpb as pb;
use muster_raft::RaftNode;
use tokio::net::TcpListener;

use crate::kv::{KvService, Limits};
use crate::watch::{WatchConfig, WatchService};

/// The services of one member's client API.
#[derive(Clone, Debug)]
pub struct ClientApi {
    node: Arc<RaftNode>,
    cluster_id: u64,
    limits: Limits,
    watch: WatchConfig,
    /// Flipped to `true` when [`ClientApi::serve`] is told to stop, so that
    /// long-lived streams (watches) end and the server can drain.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl ClientApi {
    /// The client API of `node`, a member of cluster `cluster_id`, with
    /// `limits` checked at the edge.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, limits: Limits) -> Self {
        ClientApi {
            node,
            cluster_id,
            limits,
            watch: WatchConfig {
                max_response_bytes: limits.max_request_bytes,
                ..WatchConfig::default()
            },
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The same API with the watch service tuned by `watch`.
    pub fn with_watch_config(mut self, watch: WatchConfig) -> Self {
        self.watch = watch;
        self
    }

    /// The tonic router with every service added.
    pub fn router(&self) -> tonic::transport::server::Router {
        let kv = KvService::new(Arc::clone(&self.node), self.cluster_id, self.limits);
        let watch = WatchService::new(Arc::clone(&self.node), self.cluster_id, self.watch)
            .stopping_on(self.stopping.subscribe());
        tonic::transport::Server::builder()
            .add_service(kv.into_server())
            .add_service(watch.into_server())
    }

    /// Serves the client API on `listener` until `shutdown` resolves; then
    /// ends every open stream and returns once in-flight calls are done.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        let stopping = Arc::clone(&self.stopping);
        self.router()
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    shutdown.await;
                    stopping.send_replace(true);
                },
            )
            .await
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
