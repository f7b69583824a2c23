//! The lease workload: grant L leases each with one key (measured:
//! grants/s), keep every lease alive from its grant on over a few
//! keep-alive streams (measured: round trips) until `hold` after the last
//! grant, then count the keys.
//!
//! Invariants:
//!
//! - Keys from an earlier run under the workload's prefix are deleted
//!   first, so the final count is this run's alone.
//! - A lease joins its keep-alive stream the moment its key is attached
//!   and is renewed every TTL/3 from then on: each stream keeps its leases
//!   in a queue ordered by when each is next due and sends every renewal
//!   that is due at each tick, so a late tick catches up and a lease is
//!   never more than TTL/3 plus one tick, one round trip and the client's
//!   own delay from its last renewal while the cluster answers, however
//!   long the grant phase lasts; a key that disappears anyway is counted
//!   as lost.
//! - The keep-alive phase ends `hold` after the grant phase, plus at most
//!   one request bound; cleanup (revoking every lease) is outside every
//!   measurement.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_proto::etcdserverpb::{self as pb};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Bytes;

use crate::kv::{closed_loop, revoke_all};
use crate::{Config, Latency, Pool, Report, Tally, bounded, prefix_end};

/// How often a keep-alive stream sends its next share of renewals.
const TICK: Duration = Duration::from_millis(20);

/// What one keep-alive stream measured.
#[derive(Default)]
struct KeepAlive {
    sent: u64,
    answered: u64,
    expired: u64,
    round_trip: Latency,
    error: Option<String>,
}

/// Runs the workload.
pub(crate) async fn run(
    config: &Config,
    pool: &Pool,
    leases: u64,
    ttl: i64,
    hold: Duration,
    streams: usize,
    cleanup: bool,
) -> anyhow::Result<Report> {
    if leases == 0 || streams == 0 {
        bail!("--leases and --streams must be at least 1");
    }
    if ttl < 3 {
        bail!("--ttl must be at least 3 seconds");
    }
    let prefix = format!("{}lease/", config.prefix).into_bytes();
    clear(config, pool, &prefix).await?;

    // The keep-alive streams start first: each lease joins one as soon as
    // its key is attached, and a stream's hold begins when every sender
    // is gone, i.e. when the grant phase is over.
    let interval = Duration::from_secs(ttl as u64) / 3;
    let streams = streams.min(leases as usize);
    let mut tasks = JoinSet::new();
    let mut joins = Vec::with_capacity(streams);
    for s in 0..streams {
        let (join, joined) = mpsc::unbounded_channel();
        joins.push(join);
        tasks.spawn(keep_alive(
            LeaseClient::new(pool.get(s)),
            joined,
            interval,
            hold,
            config.request_timeout,
        ));
    }

    // Grant and attach: the measured phase.
    let granted = Arc::new(Mutex::new(Vec::with_capacity(leases as usize)));
    let value = Bytes::from(config.value());
    let attach = Arc::new(Mutex::new(Latency::new()));
    let grants = closed_loop(config.clients, leases, None, |client, budget| {
        let mut lease = LeaseClient::new(pool.get(client));
        let mut kv = KvClient::new(pool.get(client));
        let config = config.clone();
        let value = value.clone();
        let granted = granted.clone();
        let attach = attach.clone();
        let joins = joins.clone();
        async move {
            let mut tally = Tally::default();
            let mut attached = Latency::new();
            let mut mine = Vec::new();
            while let Some(i) = budget.take() {
                let started = Instant::now();
                let result = bounded(
                    config.request_timeout,
                    lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
                )
                .await;
                let Some(response) = tally.outcome(started, result) else {
                    continue;
                };
                let put_started = Instant::now();
                let put = pb::PutRequest {
                    key: config.key("lease/", i).into(),
                    value: value.clone(),
                    lease: response.id,
                    ..Default::default()
                };
                match bounded(config.request_timeout, kv.put(put)).await {
                    Ok(_) => {
                        attached.record(put_started.elapsed());
                        mine.push(response.id);
                        // A stream that has ended keeps no lease alive;
                        // its error is reported with its tally.
                        let _ = joins[i as usize % joins.len()].send((response.id, Instant::now()));
                    }
                    Err(e) => {
                        tally.ok -= 1;
                        tally.error(format!("attaching a key: {e}"));
                    }
                }
            }
            granted.lock().expect("not poisoned").extend(mine);
            attach.lock().expect("not poisoned").merge(&attached);
            tally
        }
    })
    .await;
    // The streams' hold starts once the last sender is dropped.
    drop(joins);
    let (tally, elapsed) = grants?;
    let ids = std::mem::take(&mut *granted.lock().expect("not poisoned"));
    let mut report = Report::new("lease", "", &config.endpoints, config.clients, config.conns);
    report.latency_name = "grant".into();
    tally.into_report(&mut report);
    report.elapsed = elapsed;
    report.latencies.push((
        "attach-put".into(),
        attach.lock().expect("not poisoned").clone(),
    ));

    // The keep-alive phase ends `hold` after the last grant.
    let mut total = KeepAlive::default();
    while let Some(joined) = tasks.join_next().await {
        let one = joined.context("a keep-alive task failed")?;
        total.sent += one.sent;
        total.answered += one.answered;
        total.expired += one.expired;
        total.round_trip.merge(&one.round_trip);
        if total.error.is_none() {
            total.error = one.error;
        }
    }

    // Count the keys.
    let count = count_prefix(config, pool, &prefix)
        .await
        .map_err(|e| anyhow::anyhow!("counting the keys: {e}"))?
        .count;
    let attached = ids.len() as u64;
    report
        .latencies
        .push(("keep-alive".into(), total.round_trip));
    report.count("leases", leases);
    report.count("attached", attached);
    report.count("ttl_s", ttl);
    report.count("hold_s", hold.as_secs_f64());
    report.count("keepalive_streams", streams as u64);
    report.count("keepalives_sent", total.sent);
    report.count("keepalives_answered", total.answered);
    report.count("keepalives_expired", total.expired);
    if let Some(e) = total.error {
        report.count("keepalive_error", e);
    }
    report.count("keys_present", count);
    report.count("keys_lost", attached.saturating_sub(count as u64));
    if cleanup {
        let failed = revoke_all(config, pool, ids).await;
        if failed > 0 {
            report.count("cleanup_failures", failed);
        }
    }
    Ok(report)
}

/// A count-only range of every key under `prefix`.
pub(crate) async fn count_prefix(
    config: &Config,
    pool: &Pool,
    prefix: &[u8],
) -> Result<pb::RangeResponse, String> {
    bounded(
        config.request_timeout,
        KvClient::new(pool.get(0)).range(pb::RangeRequest {
            key: prefix.to_vec().into(),
            range_end: prefix_end(prefix).into(),
            count_only: true,
            ..Default::default()
        }),
    )
    .await
}

/// Deletes every key under `prefix` (setup, not measured).
pub(crate) async fn clear(config: &Config, pool: &Pool, prefix: &[u8]) -> anyhow::Result<()> {
    bounded(
        config.request_timeout,
        KvClient::new(pool.get(0)).delete_range(pb::DeleteRangeRequest {
            key: prefix.to_vec().into(),
            range_end: prefix_end(prefix).into(),
            ..Default::default()
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("clearing {}: {e}", String::from_utf8_lossy(prefix)))?;
    Ok(())
}

/// Renews each lease that joins through `joined` every `interval` from
/// its join on, on one stream, until `hold` after `joined` closes.
async fn keep_alive(
    mut client: LeaseClient<tonic::transport::Channel>,
    mut joined: mpsc::UnboundedReceiver<(i64, Instant)>,
    interval: Duration,
    hold: Duration,
    bound: Duration,
) -> KeepAlive {
    let mut out = KeepAlive::default();
    // Leases by when each is next due: every lease joins and is renewed
    // with the same interval, so appending keeps the queue in due order.
    let mut queue: VecDeque<(Instant, i64)> = VecDeque::new();
    // A server may send the response headers only with its first response,
    // so the first renewal goes out before the call is awaited.
    let Some((first, joined_at)) = joined.recv().await else {
        return out;
    };
    let (tx, rx) = mpsc::channel(4096);
    let mut pending: HashMap<i64, Instant> = HashMap::new();
    pending.insert(first, Instant::now());
    queue.push_back((joined_at + interval, first));
    if tx
        .send(pb::LeaseKeepAliveRequest { id: first })
        .await
        .is_err()
    {
        out.error = Some("keep-alive request queue closed".into());
        return out;
    }
    out.sent += 1;
    let mut responses = match bounded(bound, client.lease_keep_alive(ReceiverStream::new(rx))).await
    {
        Ok(responses) => responses,
        Err(e) => {
            out.error = Some(format!("opening a keep-alive stream: {e}"));
            return out;
        }
    };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when the grant phase is over.
    let mut end: Option<tokio::time::Instant> = None;
    loop {
        let renewing = end.is_none_or(|end| tokio::time::Instant::now() < end);
        // Once renewing is over, nothing more is awaited but answers.
        if !renewing && pending.is_empty() {
            return out;
        }
        let drain_end = end.map(|end| end + bound);
        tokio::select! {
            _ = ticker.tick(), if renewing => {
                loop {
                    match joined.try_recv() {
                        Ok((id, at)) => queue.push_back((at + interval, id)),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            end.get_or_insert_with(|| tokio::time::Instant::now() + hold);
                            break;
                        }
                    }
                }
                let now = Instant::now();
                while let Some(&(due, id)) = queue.front() {
                    if due > now {
                        break;
                    }
                    queue.pop_front();
                    queue.push_back((due + interval, id));
                    pending.insert(id, now);
                    if tx.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                        out.error.get_or_insert_with(|| "keep-alive stream closed".into());
                        return out;
                    }
                    out.sent += 1;
                }
            }
            message = responses.message() => match message {
                Ok(Some(response)) => {
                    out.answered += 1;
                    if let Some(sent) = pending.remove(&response.id) {
                        out.round_trip.record(sent.elapsed());
                    }
                    if response.ttl <= 0 {
                        out.expired += 1;
                    }
                }
                Ok(None) => {
                    out.error.get_or_insert_with(|| "the server ended a keep-alive stream".into());
                    return out;
                }
                Err(status) => {
                    out.error.get_or_insert_with(|| format!("keep-alive stream: {:?}: {}", status.code(), status.message()));
                    return out;
                }
            },
            _ = sleep_until_some(drain_end) => return out,
        }
    }
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
