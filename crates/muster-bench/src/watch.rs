//! The watch fan-out workload: W watchers of one key over S streams, then P
//! puts to the key.
//!
//! Invariants:
//!
//! - Every watcher is created (its `created` response received) before the
//!   first put, so every acknowledged put must reach every watcher.
//! - Each put's value starts with `<index>:<nanoseconds since the run's
//!   base instant>:`, so a delivery's latency is measured on one clock
//!   without a lookup, and each (watcher, put) pair is counted: delivered
//!   once, duplicate, or lost (an acknowledged put never delivered within
//!   the settle bound).
//! - Creation waits, the puts and the settle wait are each bounded; the
//!   stream tasks stop when told or when their watchers have everything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_proto::etcdserverpb::{self as pb, watch_request};
use tokio::sync::{mpsc, watch as signal};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Bytes;

use crate::kv::closed_loop;
use crate::{Config, Latency, Pool, Report, Tally, bounded};

/// What one stream saw.
struct StreamResult {
    /// Deliveries per (watcher slot, put index), saturating.
    seen: Vec<u8>,
    latency: Latency,
    error: Option<String>,
}

/// Shared progress of the stream tasks.
struct Progress {
    created: AtomicUsize,
    unique: AtomicU64,
}

/// Runs the workload.
pub(crate) async fn run(
    config: &Config,
    pool: &Pool,
    watchers: usize,
    streams: usize,
    puts: u64,
    settle: Duration,
) -> anyhow::Result<Report> {
    if watchers == 0 || streams == 0 || puts == 0 {
        bail!("--watchers, --streams and --puts must be at least 1");
    }
    let streams = streams.min(watchers);
    let key = Bytes::from(config.key("watch/", 0));
    let base = Instant::now();
    let progress = Arc::new(Progress {
        created: AtomicUsize::new(0),
        unique: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = signal::channel(false);
    let mut tasks = JoinSet::new();
    for s in 0..streams {
        let n = watchers / streams + usize::from(s < watchers % streams);
        tasks.spawn(stream(
            WatchClient::new(pool.get(s)),
            key.clone(),
            n,
            puts,
            base,
            progress.clone(),
            stop_rx.clone(),
            config.request_timeout,
        ));
    }
    // Every watcher created before the first put.
    let create_bound = config.request_timeout.max(Duration::from_secs(30));
    let created_by = Instant::now() + create_bound;
    while progress.created.load(Ordering::Relaxed) < watchers {
        if Instant::now() >= created_by || tasks.try_join_next().is_some() {
            let _ = stop_tx.send(true);
            let created = progress.created.load(Ordering::Relaxed);
            bail!("only {created} of {watchers} watchers were created within {create_bound:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let acked: Arc<Vec<AtomicBool>> = Arc::new((0..puts).map(|_| AtomicBool::new(false)).collect());
    let started = Instant::now();
    let (tally, _) = closed_loop(config.clients, puts, None, |client, budget| {
        let mut kv = KvClient::new(pool.get(client));
        let key = key.clone();
        let acked = acked.clone();
        let bound = config.request_timeout;
        let val_size = config.val_size;
        async move {
            let mut tally = Tally::default();
            while let Some(i) = budget.take() {
                let stamp = base.elapsed().as_nanos();
                let mut value = format!("{i}:{stamp}:").into_bytes();
                if value.len() < val_size {
                    value.resize(val_size, b'v');
                }
                let request = pb::PutRequest {
                    key: key.clone(),
                    value: value.into(),
                    ..Default::default()
                };
                let sent = Instant::now();
                let result = bounded(bound, kv.put(request)).await;
                if tally.outcome(sent, result).is_some() {
                    acked[i as usize].store(true, Ordering::Relaxed);
                }
            }
            tally
        }
    })
    .await?;
    let puts_ok = tally.ok;
    let expected = puts_ok * watchers as u64;
    let settle_by = Instant::now() + settle;
    while progress.unique.load(Ordering::Relaxed) < expected && Instant::now() < settle_by {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);

    let mut report = Report::new("watch", "", &config.endpoints, config.clients, config.conns);
    report.latency_name = "put-to-event".into();
    report.elapsed = elapsed;
    report.errors = tally.errors;
    report.first_error = tally.first_error.clone();
    let (mut delivered, mut duplicate, mut lost) = (0u64, 0u64, 0u64);
    while let Some(joined) = tasks.join_next().await {
        let result = joined.context("a watch stream task failed")?;
        report.latency.merge(&result.latency);
        if let Some(e) = result.error {
            report.errors += 1;
            report.first_error.get_or_insert(e);
        }
        for (pair, &n) in result.seen.iter().enumerate() {
            let i = pair % puts as usize;
            if n > 0 {
                delivered += 1;
                duplicate += u64::from(n - 1);
            } else if acked[i].load(Ordering::Relaxed) {
                lost += 1;
            }
        }
    }
    report.ops = delivered;
    report.latencies.push(("put".to_string(), tally.latency));
    report.count("watchers", watchers as u64);
    report.count("streams", streams as u64);
    report.count("puts", puts);
    report.count("puts_ok", puts_ok);
    report.count("expected", expected);
    report.count("delivered", delivered);
    report.count("lost", lost);
    report.count("duplicate", duplicate);
    Ok(report)
}

/// One watch stream with `n` watchers of `key`.
#[allow(clippy::too_many_arguments)]
async fn stream(
    mut client: WatchClient<tonic::transport::Channel>,
    key: Bytes,
    n: usize,
    puts: u64,
    base: Instant,
    progress: Arc<Progress>,
    mut stop: signal::Receiver<bool>,
    bound: Duration,
) -> StreamResult {
    let mut result = StreamResult {
        seen: vec![0; n * puts as usize],
        latency: Latency::new(),
        error: None,
    };
    let (tx, rx) = mpsc::channel(n + 1);
    for _ in 0..n {
        let create = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: key.clone(),
                    ..Default::default()
                },
            )),
        };
        if tx.send(create).await.is_err() {
            result.error = Some("watch request queue closed".into());
            return result;
        }
    }
    let mut responses = match bounded(bound, client.watch(ReceiverStream::new(rx))).await {
        Ok(responses) => responses,
        Err(e) => {
            result.error = Some(format!("opening a watch stream: {e}"));
            return result;
        }
    };
    // watch id → slot, in order of creation.
    let mut slots: std::collections::HashMap<i64, usize> = std::collections::HashMap::new();
    let mut unique = 0u64;
    let complete = n as u64 * puts;
    while unique < complete {
        let message = tokio::select! {
            m = responses.message() => m,
            _ = stop.changed() => break,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                result.error = Some("the server ended a watch stream".into());
                break;
            }
            Err(status) => {
                result.error = Some(format!(
                    "watch stream: {:?}: {}",
                    status.code(),
                    status.message()
                ));
                break;
            }
        };
        if response.created && slots.len() < n {
            let slot = slots.len();
            slots.insert(response.watch_id, slot);
            progress.created.fetch_add(1, Ordering::Relaxed);
        }
        if response.canceled {
            result.error = Some(format!(
                "watch {} canceled: {}",
                response.watch_id, response.cancel_reason
            ));
            break;
        }
        let Some(&slot) = slots.get(&response.watch_id) else {
            continue;
        };
        let now = base.elapsed();
        for event in &response.events {
            let Some(kv) = &event.kv else { continue };
            let Some((i, stamp)) = parse_stamp(&kv.value) else {
                continue;
            };
            if i >= puts {
                continue;
            }
            let cell = &mut result.seen[slot * puts as usize + i as usize];
            if *cell == 0 {
                unique += 1;
                progress.unique.fetch_add(1, Ordering::Relaxed);
                result
                    .latency
                    .record(now.saturating_sub(Duration::from_nanos(stamp)));
            }
            *cell = cell.saturating_add(1);
        }
    }
    drop(tx);
    result
}

/// `<index>:<nanos>:...` → (index, nanos).
fn parse_stamp(value: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(value.get(..value.len().min(48))?).ok()?;
    let mut parts = text.split(':');
    let i = parts.next()?.parse().ok()?;
    let stamp = parts.next()?.parse().ok()?;
    Some((i, stamp))
}

#[cfg(test)]
mod tests {
    use super::parse_stamp;

    #[test]
    fn stamps_parse() {
        assert_eq!(parse_stamp(b"12:3456:vvvv"), Some((12, 3456)));
        assert_eq!(parse_stamp(b"12:3456:"), Some((12, 3456)));
        assert_eq!(parse_stamp(b"x:1:"), None);
        assert_eq!(parse_stamp(b""), None);
    }
}
