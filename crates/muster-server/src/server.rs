//! The client API of one member, assembled: every etcd v3 service muster
//! serves, on one listener.
//!
//! ```text
//!   TcpListener (--listen-client-urls) ──▶ tonic Server
//!       ├─ etcdserverpb.KV          (kv)
//!       └─ ... further services as they are added
//! ```
//!
//! Invariants:
//!
//! - Every service answers from the same [`RaftNode`] and stamps the same
//!   cluster ID into its headers.
//! - [`ClientApi::serve`] returns once `shutdown` resolves and in-flight
//!   calls have drained; the node itself is stopped by its owner.

use std::future::Future;
use std::sync::Arc;

use muster_raft::RaftNode;
use tokio::net::TcpListener;

use crate::kv::{KvService, Limits};

/// The services of one member's client API.
#[derive(Clone, Debug)]
pub struct ClientApi {
    node: Arc<RaftNode>,
    cluster_id: u64,
    limits: Limits,
}

impl ClientApi {
    /// The client API of `node`, a member of cluster `cluster_id`, with
    /// `limits` checked at the edge.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, limits: Limits) -> Self {
        ClientApi {
            node,
            cluster_id,
            limits,
        }
    }

    /// The tonic router with every service added.
    pub fn router(&self) -> tonic::transport::server::Router {
        let kv = KvService::new(Arc::clone(&self.node), self.cluster_id, self.limits);
        tonic::transport::Server::builder().add_service(kv.into_server())
    }

    /// Serves the client API on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        self.router()
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
            .await
    }
}
