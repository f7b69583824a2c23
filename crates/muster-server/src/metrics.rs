//! The metrics endpoint (`--listen-metrics-urls`, etcd's default port 2381)
//! and the metrics of the client API.
//!
//! ```text
//!   GET /metrics   Prometheus text format: every metric of this process
//!   GET /health    200 while the process serves (shallow)
//!   GET /readyz    200 when this member knows a leader and has applied
//!                  everything the leader had committed (a read barrier,
//!                  at most one second); 503 otherwise
//! ```
//!
//! Metrics live in the process's default Prometheus registry, named after
//! etcd's where etcd has one (`etcd_` becomes `muster_`); the replication
//! layer's are in [`muster_raft::metrics`].
//!
//! Invariants:
//! - Counters only grow; gauges are set from the state they describe, the
//!   leader gauges by a task following the Raft metrics, the size gauge on
//!   each scrape.
//! - `muster_grpc_server_handled_total` labels only the etcd services'
//!   methods by name; any other path counts as `unknown`, so a client
//!   cannot grow the label set. A call's code is the `grpc-status` of its
//!   response headers (errors answered before any message); a stream that
//!   fails after it started counts as `OK`.
//! - The endpoint answers nothing but these three paths (404 otherwise)
//!   and only GET.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use muster_raft::RaftNode;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, TextEncoder, register_int_counter,
    register_int_counter_vec, register_int_gauge,
};
use tokio::net::TcpListener;

fn counter(name: &str, help: &str) -> IntCounter {
    register_int_counter!(name, help).expect("register counter")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register_int_gauge!(name, help).expect("register gauge")
}

/// Leader changes this member has seen.
pub static LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_server_leader_changes_seen_total",
        "Leader changes this member has seen.",
    )
});

/// 1 while this member leads.
pub static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "muster_server_is_leader",
        "1 while this member is the leader, else 0.",
    )
});

/// 1 while this member knows a leader.
pub static HAS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "muster_server_has_leader",
        "1 while this member knows a leader, else 0.",
    )
});

/// Open watch streams.
pub static WATCH_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "muster_debugging_mvcc_watch_stream_total",
        "Open watch streams.",
    )
});

/// Active watchers, over every stream.
pub static WATCHERS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "muster_debugging_mvcc_watcher_total",
        "Active watchers over every watch stream.",
    )
});

/// Times a watcher fell behind the live events and went back to catch-up.
pub static SLOW_WATCHERS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_debugging_mvcc_slow_watcher_total",
        "Times a watcher fell behind the live events and was moved back to catch-up.",
    )
});

/// Leases granted.
pub static LEASES_GRANTED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_debugging_lease_granted_total",
        "Leases granted through this member.",
    )
});

/// Leases revoked by a client.
pub static LEASES_REVOKED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_debugging_lease_revoked_total",
        "Leases revoked by a client through this member.",
    )
});

/// Lease keep-alives answered.
pub static LEASES_RENEWED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_debugging_lease_renewed_total",
        "Lease keep-alives this member answered.",
    )
});

/// Leases this member's lessor revoked because they expired.
pub static LEASES_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_debugging_lease_expired_total",
        "Leases this member's lessor (on the leader) revoked because they expired.",
    )
});

/// 1 while this member's lessor, as leader, holds expired leases instead
/// of revoking them (self-preservation, see [`crate::preserve`]).
pub static SELF_PRESERVATION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "muster_server_self_preservation",
        "1 while this member (the leader) holds expired leases instead of revoking them \
         (self-preservation), else 0.",
    )
});

/// Times this member's lessor entered self-preservation.
pub static SELF_PRESERVATION_ENTERED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "muster_server_self_preservation_entered_total",
        "Times this member's lessor (on the leader) entered self-preservation.",
    )
});

/// The store's size in bytes (what the quota measures).
pub static DB_SIZE_IN_USE: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "muster_mvcc_db_total_size_in_use_in_bytes",
        "Bytes the retained key history takes (what --quota-backend-bytes measures).",
    )
});

/// Handled gRPC calls by service, method and code.
pub static GRPC_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "muster_grpc_server_handled_total",
        "gRPC calls handled, by service, method and status code.",
        &["grpc_service", "grpc_method", "grpc_code"]
    )
    .expect("register counter vec")
});

/// DNS queries answered, by query type (`A`, `AAAA`, `SRV`, `SOA`, `ANY`,
/// `other`) and response code (`NOERROR`, `NXDOMAIN`, `REFUSED`, ...):
/// both fixed sets, so a client cannot grow the label set.
pub static DNS_QUERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "muster_dns_queries_total",
        "DNS queries answered, by query type and response code.",
        &["type", "rcode"]
    )
    .expect("register counter vec")
});

/// Registers every metric, so all appear on a scrape before their first
/// event.
pub fn register() {
    muster_raft::metrics::register();
    for metric in [
        &LEADER_CHANGES,
        &SLOW_WATCHERS,
        &LEASES_GRANTED,
        &LEASES_REVOKED,
        &LEASES_RENEWED,
        &LEASES_EXPIRED,
        &SELF_PRESERVATION_ENTERED,
    ] {
        LazyLock::force(metric);
    }
    for metric in [
        &IS_LEADER,
        &HAS_LEADER,
        &WATCH_STREAMS,
        &WATCHERS,
        &DB_SIZE_IN_USE,
        &SELF_PRESERVATION,
    ] {
        LazyLock::force(metric);
    }
    LazyLock::force(&GRPC_HANDLED);
    LazyLock::force(&DNS_QUERIES);
}

/// Follows `node`'s Raft metrics until they end: counts leader changes
/// and keeps the leader gauges.
pub async fn follow_leadership(node: Arc<RaftNode>) {
    let mut metrics = node.raft().metrics();
    let mut last = None;
    loop {
        let leader = metrics.borrow_and_update().current_leader;
        // A new leader, the first one this member learns of included (as
        // etcd counts); losing the leader is not a change until the next.
        if leader.is_some() && leader != last {
            LEADER_CHANGES.inc();
            last = leader;
        }
        IS_LEADER.set(i64::from(leader == Some(node.id())));
        HAS_LEADER.set(i64::from(leader.is_some()));
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The etcd services whose methods are labelled by name.
const KNOWN_SERVICES: &[&str] = &[
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "grpc.health.v1.Health",
];

/// (service, method) of a gRPC path, or `unknown` for anything else.
fn grpc_labels(path: &str) -> (&str, &str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method))
            if KNOWN_SERVICES.contains(&service)
                && !method.is_empty()
                && method.len() <= 64
                && method.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (service, method)
        }
        _ => ("unknown", "unknown"),
    }
}

/// The name of a gRPC status code, as the `grpc_code` label.
fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::Cancelled) => "Canceled",
        Ok(tonic::Code::Unknown) => "Unknown",
        Ok(tonic::Code::InvalidArgument) => "InvalidArgument",
        Ok(tonic::Code::DeadlineExceeded) => "DeadlineExceeded",
        Ok(tonic::Code::NotFound) => "NotFound",
        Ok(tonic::Code::AlreadyExists) => "AlreadyExists",
        Ok(tonic::Code::PermissionDenied) => "PermissionDenied",
        Ok(tonic::Code::ResourceExhausted) => "ResourceExhausted",
        Ok(tonic::Code::FailedPrecondition) => "FailedPrecondition",
        Ok(tonic::Code::Aborted) => "Aborted",
        Ok(tonic::Code::OutOfRange) => "OutOfRange",
        Ok(tonic::Code::Unimplemented) => "Unimplemented",
        Ok(tonic::Code::Internal) => "Internal",
        Ok(tonic::Code::Unavailable) => "Unavailable",
        Ok(tonic::Code::DataLoss) => "DataLoss",
        Ok(tonic::Code::Unauthenticated) => "Unauthenticated",
        Err(_) => "Unknown",
    }
}

/// A tower layer counting every gRPC call in
/// [`static@GRPC_HANDLED`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around the client API.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (service, method) = grpc_labels(request.uri().path());
        let labels = Labels {
            service: service.to_string(),
            method: method.to_string(),
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            // A trailers-only response (an error before any message)
            // carries its status in the headers; otherwise the status
            // comes in the trailers at the end of the body.
            let early = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .map(code_name);
            let mut labels = Some(labels);
            if let Some(code) = early {
                count(labels.take(), code);
            }
            Ok(response.map(|inner| CountedBody { inner, labels }))
        })
    }
}

/// The labels a call is counted under once its status is known.
#[derive(Debug)]
pub struct Labels {
    service: String,
    method: String,
}

fn count(labels: Option<Labels>, code: &str) {
    if let Some(labels) = labels {
        GRPC_HANDLED
            .with_label_values(&[labels.service.as_str(), labels.method.as_str(), code])
            .inc();
    }
}

/// A response body that counts its call in `grpc_server_handled_total`
/// when the status arrives in its trailers: a stream that fails after it
/// started counts under its real code. A body dropped before its trailers
/// (the client went away) counts as `Canceled`; one that ends without
/// trailers as `Unknown`.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    labels: Option<Labels>,
}

impl<B> http_body::Body for CountedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map_or("Unknown", code_name);
                    count(self.labels.take(), code);
                }
            }
            Poll::Ready(Some(Err(_))) => count(self.labels.take(), "Internal"),
            Poll::Ready(None) => count(self.labels.take(), "Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        count(self.labels.take(), "Canceled");
    }
}

/// How long `/readyz` waits for its read barrier.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `/metrics`, `/health` and `/readyz` for `node` on `listener`
/// until `stopping` turns true.
pub async fn serve(
    listener: TcpListener,
    node: Arc<RaftNode>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    register();
    let follower = tokio::spawn(follow_leadership(Arc::clone(&node)));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "accepting a metrics connection failed");
                continue;
            }
        };
        let node = Arc::clone(&node);
        let mut stop = stopping.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let node = Arc::clone(&node);
                async move { Ok::<_, Infallible>(answer(&node, &request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "metrics connection failed");
                    }
                }
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
    }
    follower.abort();
}

fn text(status: u16, body: impl Into<Bytes>, content_type: &str) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("a valid response")
}

async fn answer(node: &RaftNode, request: &http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    if request.method() != http::Method::GET {
        return text(405, "only GET\n", "text/plain");
    }
    match request.uri().path() {
        "/metrics" => {
            let store = node.state_machine().store();
            DB_SIZE_IN_USE.set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
            let mut body = Vec::new();
            let encoder = TextEncoder::new();
            match encoder.encode(&prometheus::gather(), &mut body) {
                Ok(()) => text(200, body, encoder.format_type()),
                Err(e) => text(500, format!("encoding metrics: {e}\n"), "text/plain"),
            }
        }
        "/health" => text(200, "{\"health\":\"true\"}\n", "application/json"),
        "/readyz" => match node.read_barrier_within(READY_TIMEOUT).await {
            Ok(()) => text(200, "ok\n", "text/plain"),
            Err(e) => text(503, format!("not ready: {e}\n"), "text/plain"),
        },
        _ => text(404, "not found\n", "text/plain"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_etcd_methods_are_labelled_by_name() {
        assert_eq!(
            grpc_labels("/etcdserverpb.KV/Put"),
            ("etcdserverpb.KV", "Put")
        );
        assert_eq!(
            grpc_labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        for odd in [
            "/x.Y/Put",
            "/etcdserverpb.KV/",
            "/etcdserverpb.KV/a-b",
            "/",
            "",
        ] {
            assert_eq!(grpc_labels(odd), ("unknown", "unknown"), "{odd}");
        }
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("x"), "Unknown");
    }
}
