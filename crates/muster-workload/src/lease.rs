//! The registrants: service registrations under leases.
//!
//! Each registrant loops: grant a lease of `lease_ttl`, put
//! `<prefix>svc/<process>-<n>` (value `"<process>-<n>"`) attached to it,
//! keep it alive over one LeaseKeepAlive stream every `ttl / 3`, and after
//! holding it for a random 2–4 × ttl either revoke it or abandon it (stop
//! renewing without revoking), 50/50; then start over. At `deadline` it
//! revokes the lease it holds.
//!
//! Invariants:
//!
//! - Every keep-alive round trip is one `lease_keep_alive` operation: its
//!   invocation is recorded when the request is queued on the stream, its
//!   completion when the response arrives (`ok` with the response's TTL) or
//!   when the round trip fails or exceeds `request_timeout` (`info`, or
//!   `fail` when the stream could not connect at all). A round trip never
//!   overlaps another operation of the process.
//! - After a failed round trip the stream is dropped (a late response can
//!   never be taken for a later round's) and reopened on the next member;
//!   the same lease is kept alive.
//! - A keep-alive answered with TTL 0 means the lease is gone: the
//!   registrant starts over with a new lease.
//! - The instant of the last abandonment is returned, so the final phase
//!   can wait until every abandoned lease should have expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_check::history::{Op, OpKind, OpResult};
use muster_proto::etcdserverpb::{self as pb, lease_client::LeaseClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::Ctx;
use crate::client::Client;
use crate::net::{CallError, write_outcome};
use crate::rng::Rng;

/// How long a registrant waits before retrying after a failure.
const RETRY: Duration = Duration::from_millis(100);

/// An open keep-alive stream.
struct KeepAliveStream {
    tx: mpsc::Sender<pb::LeaseKeepAliveRequest>,
    rx: tonic::Streaming<pb::LeaseKeepAliveResponse>,
}

/// One registrant; returns when it last abandoned a lease, if it did.
pub(crate) async fn registrant(ctx: Arc<Ctx>, process: u32, deadline: Instant) -> Option<Instant> {
    let mut rng = Rng::new(ctx.config.seed, (1 << 32) | u64::from(process));
    let ttl = ctx.config.lease_ttl;
    let ttl_span = Duration::from_secs(u64::try_from(ttl).unwrap_or(1));
    let interval = ttl_span / 3;
    let prefix = ctx.config.prefix.clone();
    let mut client = Client::new(ctx, process);
    let mut abandoned = None;
    'lease: while Instant::now() < deadline {
        let lease = match client.perform(&Op::LeaseGrant { ttl }).await {
            Ok(result) => result.lease.unwrap_or(0),
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let value = client.next_value();
        let put = Op::Put {
            key: format!("{prefix}svc/{value}"),
            value,
            lease: Some(lease),
        };
        if let Err(error) = client.perform(&put).await
            && error.is_refusal()
        {
            // Lease not found (expired already): nothing to keep alive.
            continue;
        }
        let hold_until = Instant::now() + ttl_span.mul_f64(2.0 + 2.0 * rng.unit());
        let mut stream: Option<KeepAliveStream> = None;
        let mut next = Instant::now() + interval;
        loop {
            tokio::time::sleep_until(next.min(hold_until).min(deadline).into()).await;
            let now = Instant::now();
            if now >= deadline {
                let _ = client.perform(&Op::LeaseRevoke { lease }).await;
                break 'lease;
            }
            if now >= hold_until {
                if rng.coin() {
                    let _ = client.perform(&Op::LeaseRevoke { lease }).await;
                } else {
                    tracing::debug!(process, lease, "abandoning the lease");
                    abandoned = Some(now);
                }
                continue 'lease;
            }
            match keep_alive(&mut client, &mut stream, lease).await {
                Some(ttl) if ttl > 0 => next = Instant::now() + interval,
                Some(_) => continue 'lease,
                None => next = Instant::now() + RETRY,
            }
        }
    }
    abandoned
}

/// One recorded keep-alive round trip on `stream` (opened on the client's
/// current member when there is none): the TTL answered, or `None` after an
/// error (the stream is then dropped and the client moved on).
async fn keep_alive(
    client: &mut Client,
    stream: &mut Option<KeepAliveStream>,
    lease: i64,
) -> Option<i64> {
    let op = Op::LeaseKeepAlive { lease };
    let id = client.ctx.next_id();
    let member = client.member;
    let channel = client.channel();
    let bound = client.ctx.config.request_timeout;
    client.record(id, member, OpKind::Invoke, &op, None, None);
    let round = async {
        let request = pb::LeaseKeepAliveRequest { id: lease };
        let open = match stream {
            Some(open) => {
                open.tx
                    .send(request)
                    .await
                    .map_err(|_| CallError::Closed("keep-alive stream closed".into()))?;
                open
            }
            None => {
                let (tx, rx) = mpsc::channel(4);
                tx.send(request)
                    .await
                    .map_err(|_| CallError::Closed("keep-alive stream closed".into()))?;
                let response = LeaseClient::new(channel)
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await
                    .map_err(CallError::Status)?;
                stream.insert(KeepAliveStream {
                    tx,
                    rx: response.into_inner(),
                })
            }
        };
        match open.rx.message().await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(CallError::Closed("keep-alive stream ended".into())),
            Err(status) => Err(CallError::Status(status)),
        }
    };
    let outcome = match tokio::time::timeout(bound, round).await {
        Ok(outcome) => outcome,
        Err(_) => Err(CallError::Timeout(bound)),
    };
    match outcome {
        Ok(response) => {
            let result = OpResult {
                revision: response.header.map_or(0, |h| h.revision),
                ttl: Some(response.ttl.max(0)),
                ..Default::default()
            };
            client.record(id, member, OpKind::Ok, &op, Some(result), None);
            Some(response.ttl)
        }
        Err(error) => {
            client.record(
                id,
                member,
                write_outcome(&error),
                &op,
                None,
                Some(error.to_string()),
            );
            *stream = None;
            client.move_on();
            None
        }
    }
}
