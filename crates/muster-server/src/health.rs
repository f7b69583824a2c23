//! The gRPC health service (`grpc.health.v1.Health`) of one member,
//! answering from this member's view of the Raft leader.
//!
//! ```text
//!   openraft metrics (watch) ─┐
//!   client API stopping ──────┼─▶ reporter task ──set──▶ tonic-health statuses ──▶ Check / Watch
//!   service dropped ──────────┘
//! ```
//!
//! Invariants:
//!
//! - The overall service `""` is `SERVING` while this member knows a
//!   leader (itself or another member) and `NOT_SERVING` while it knows
//!   none: during an election, before it has joined a cluster, once its
//!   Raft node has stopped, and once the client API is stopping. A known
//!   leader is etcd's own notion of a usable member ("etcdserver: no
//!   leader" otherwise). Other service names are not registered and answer
//!   `NOT_FOUND`, as tonic-health does.
//! - One reporter task per server follows the metrics and writes a status
//!   only when it changes, so a `Watch` stream sees each transition once.
//! - The reporter task ends when the client API stops (the `stopping`
//!   signal of [`crate::server::ClientApi::serve`]), when the Raft node
//!   stops (its metrics channel closes), or when the last copy of the
//!   service is dropped, whichever comes first; it never outlives the
//!   client API.
//! - `Watch` streams end when the client API stops, so they do not hold up
//!   its graceful drain.

use std::pin::Pin;

use muster_raft::{NodeId, RaftNode};
use openraft::{BasicNode, RaftMetrics};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService as Statuses};

/// The service name of a member's overall health.
pub const OVERALL: &str = "";

/// Statuses buffered for one `Watch` stream.
const WATCH_QUEUE: usize = 4;

/// The health service of one member, not yet serving; see the module
/// documentation.
#[derive(Clone, Debug)]
pub struct HealthService {
    metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    stopping: watch::Receiver<bool>,
}

impl HealthService {
    /// The health service of `node`.
    pub fn new(node: &RaftNode) -> Self {
        HealthService {
            metrics: node.raft().metrics(),
            stopping: watch::channel(false).1,
        }
    }

    /// The same service, reporting `NOT_SERVING`, ending its reporter task
    /// and every `Watch` stream once `stopping` becomes true.
    pub fn stopping_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The tonic server for this service, with its reporter task started.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime (the task is spawned on the current one).
    pub fn into_server(self) -> HealthServer<MemberHealth> {
        let reporter = HealthReporter::new();
        let statuses = Statuses::from_health_reporter(reporter.clone());
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(report(
            self.metrics,
            reporter,
            self.stopping.clone(),
            stopped,
        ));
        HealthServer::new(MemberHealth {
            statuses,
            stopping: self.stopping,
            _stop_reporter: stop,
        })
    }
}

/// The serving health service of one member (see [`HealthService`]).
#[derive(Debug)]
pub struct MemberHealth {
    statuses: Statuses,
    stopping: watch::Receiver<bool>,
    /// Dropped with the service, which ends the reporter task.
    _stop_reporter: oneshot::Sender<()>,
}

/// The status of a member whose Raft metrics are `metrics`.
fn status_of(metrics: &RaftMetrics<NodeId, BasicNode>) -> ServingStatus {
    if metrics.current_leader.is_some() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Keeps the overall status in step with `metrics` until the client API
/// stops (`stopping`), the service is dropped (`dropped`) or the metrics
/// channel closes; the last two leave `NOT_SERVING` behind.
async fn report(
    mut metrics: watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    reporter: HealthReporter,
    mut stopping: watch::Receiver<bool>,
    mut dropped: oneshot::Receiver<()>,
) {
    let mut reported = None;
    loop {
        let status = if *stopping.borrow_and_update() {
            ServingStatus::NotServing
        } else {
            status_of(&metrics.borrow_and_update())
        };
        if reported != Some(status) {
            reporter.set_service_status(OVERALL, status).await;
            reported = Some(status);
        }
        if *stopping.borrow() {
            return;
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    // The Raft node has stopped: no leader any more.
                    reporter
                        .set_service_status(OVERALL, ServingStatus::NotServing)
                        .await;
                    return;
                }
            }
            changed = stopping.changed() => {
                if changed.is_err() {
                    // The client API is gone without having said so.
                    return;
                }
            }
            _ = &mut dropped => return,
        }
    }
}

/// The stream of a `Watch` call.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Health for MemberHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.statuses.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut statuses = self.statuses.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        let (sender, receiver) = mpsc::channel(WATCH_QUEUE);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = async { stopping.wait_for(|stopping| *stopping).await.is_ok() } => return,
                    () = sender.closed() => return,
                    status = statuses.next() => match status {
                        Some(status) => {
                            if sender.send(status).await.is_err() {
                                return;
                            }
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits until the overall status is `want` (bounded).
    async fn expect_status(health: &MemberHealth, want: ServingStatus) {
        let want = tonic_health::pb::health_check_response::ServingStatus::from(want) as i32;
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let response = health
                    .check(Request::new(HealthCheckRequest {
                        service: OVERALL.into(),
                    }))
                    .await
                    .expect("registered");
                if response.into_inner().status == want {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("status in time");
    }

    #[tokio::test]
    async fn follows_the_leader_and_the_stop() {
        let (metrics, _) = watch::channel(RaftMetrics::new_initial(1));
        let (stopping, _) = watch::channel(false);
        let reporter = HealthReporter::new();
        let health = MemberHealth {
            statuses: Statuses::from_health_reporter(reporter.clone()),
            stopping: stopping.subscribe(),
            _stop_reporter: oneshot::channel().0,
        };
        let (_keep, dropped) = oneshot::channel();
        let task = tokio::spawn(report(
            metrics.subscribe(),
            reporter,
            stopping.subscribe(),
            dropped,
        ));
        expect_status(&health, ServingStatus::NotServing).await;
        metrics.send_modify(|m| m.current_leader = Some(1));
        expect_status(&health, ServingStatus::Serving).await;
        metrics.send_modify(|m| m.current_leader = None);
        expect_status(&health, ServingStatus::NotServing).await;
        metrics.send_modify(|m| m.current_leader = Some(2));
        expect_status(&health, ServingStatus::Serving).await;
        stopping.send_replace(true);
        expect_status(&health, ServingStatus::NotServing).await;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends when the API stops")
            .expect("no panic");
    }

    #[tokio::test]
    async fn a_stopped_node_is_not_serving() {
        let (metrics, metrics_rx) = watch::channel(RaftMetrics::new_initial(1));
        metrics.send_modify(|m| m.current_leader = Some(1));
        let reporter = HealthReporter::new();
        let health = MemberHealth {
            statuses: Statuses::from_health_reporter(reporter.clone()),
            stopping: watch::channel(false).1,
            _stop_reporter: oneshot::channel().0,
        };
        let (_stopping, stopping_rx) = watch::channel(false);
        let (_keep, dropped) = oneshot::channel();
        let task = tokio::spawn(report(metrics_rx, reporter, stopping_rx, dropped));
        expect_status(&health, ServingStatus::Serving).await;
        drop(metrics);
        expect_status(&health, ServingStatus::NotServing).await;
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends with the node")
            .expect("no panic");
    }
}
