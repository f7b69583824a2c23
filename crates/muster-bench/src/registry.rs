//! The registry mix: service instances register (grant a lease, put their
//! key with it), keep alive, and deregister (revoke) over and over, while
//! watchers follow the registry prefix.
//!
//! Invariants:
//!
//! - Keys from an earlier run under the prefix are deleted first; the
//!   watchers start at the revision after that, so each sees every change.
//! - Each instance has one registration at a time, lives a random time up
//!   to `max_life` (never past the run's end), renews every TTL/3 over its
//!   own keep-alive stream, and revokes its lease when it is done.
//! - At the end a marker key is written; each watcher stops at the marker,
//!   and its view of the prefix (its events applied in order) must equal
//!   the state read at the marker's revision. Every wait is bounded.
//! - Values are the registry's JSON (`{"Addr": ..., "Metadata": {...}}`)
//!   carrying the wall-clock time the put was sent (`sent_ns`); every
//!   watcher measures each put's delivery latency (sent → received) against
//!   the same clock, so the figure includes the commit and the fan-out.
//! - Registration throughput is every instance's first registration over
//!   the time until the last of them completed: all instances start at
//!   once, so it is the rate a cold start of the whole fleet gets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_proto::etcdserverpb::watch_client::WatchClient;
use muster_proto::etcdserverpb::{self as pb, watch_request};
use muster_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use crate::lease::{clear, count_prefix};
use crate::{Config, Latency, Pool, Report, Rng, Tally, bounded, prefix_end};

/// What one instance measured.
#[derive(Default)]
struct Instance {
    /// When its first registration completed.
    first_registered: Option<Instant>,
    register: Tally,
    deregister: Latency,
    keep_alive: Latency,
    deregistrations: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Instance {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// What one watcher saw.
struct View {
    keys: BTreeMap<Vec<u8>, Vec<u8>>,
    events: u64,
    /// Put events' delivery latency (sent → received).
    delivery: Latency,
    error: Option<String>,
}

/// Runs the workload.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    config: &Config,
    pool: &Pool,
    instances: usize,
    watchers: usize,
    ttl: i64,
    duration: Duration,
    max_life: Duration,
) -> anyhow::Result<Report> {
    if instances == 0 {
        bail!("--instances must be at least 1");
    }
    if ttl < 3 {
        bail!("--ttl must be at least 3 seconds");
    }
    let prefix = format!("{}registry/", config.prefix).into_bytes();
    let marker = [prefix.as_slice(), b"~end"].concat();
    clear(config, pool, &prefix).await?;
    let start = count_prefix(config, pool, &prefix)
        .await
        .map_err(|e| anyhow::anyhow!("reading the start revision: {e}"))?
        .header
        .map_or(0, |h| h.revision);

    let watch_bound = duration + config.request_timeout.max(Duration::from_secs(30));
    let mut views = JoinSet::new();
    for w in 0..watchers {
        views.spawn(follow(
            WatchClient::new(pool.get(w)),
            prefix.clone(),
            marker.clone(),
            start + 1,
            watch_bound,
        ));
    }

    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for i in 0..instances {
        let config = config.clone();
        let channel = pool.get(i);
        let key = [
            prefix.as_slice(),
            format!("svc-{}/{i:06}", i % 8).as_bytes(),
        ]
        .concat();
        tasks.spawn(instance(
            config, channel, key, i as u64, ttl, deadline, max_life,
        ));
    }
    let mut total = Instance::default();
    let mut first_registered = Vec::with_capacity(instances);
    while let Some(joined) = tasks.join_next().await {
        let one = joined.context("an instance task failed")?;
        first_registered.extend(one.first_registered);
        total.register.merge(one.register);
        total.deregister.merge(&one.deregister);
        total.keep_alive.merge(&one.keep_alive);
        total.deregistrations += one.deregistrations;
        total.errors += one.errors;
        if total.first_error.is_none() {
            total.first_error = one.first_error;
        }
    }
    let elapsed = started.elapsed();

    // The marker, then the final state at its revision.
    let mut kv = KvClient::new(pool.get(0));
    let marked = bounded(
        config.request_timeout,
        kv.put(pb::PutRequest {
            key: marker.clone().into(),
            value: b"end".to_vec().into(),
            ..Default::default()
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("writing the end marker: {e}"))?
    .header
    .map_or(0, |h| h.revision);
    let state = bounded(
        config.request_timeout,
        kv.range(pb::RangeRequest {
            key: prefix.clone().into(),
            range_end: prefix_end(&prefix).into(),
            revision: marked,
            ..Default::default()
        }),
    )
    .await
    .map_err(|e| anyhow::anyhow!("reading the final state: {e}"))?;
    let truth: BTreeMap<Vec<u8>, Vec<u8>> = state
        .kvs
        .into_iter()
        .filter(|kv| kv.key.as_ref() != marker.as_slice())
        .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
        .collect();

    let mut report = Report::new(
        "registry",
        "",
        &config.endpoints,
        config.clients,
        config.conns,
    );
    report.clients = instances;
    report.latency_name = "register".into();
    report.elapsed = elapsed;
    let registrations = total.register.ok;
    total.register.into_report(&mut report);
    report.errors += total.errors;
    if report.first_error.is_none() {
        report.first_error = total.first_error;
    }
    let (mut events, mut mismatched, mut watch_errors) = (0u64, 0u64, 0u64);
    let mut delivery = Latency::new();
    while let Some(joined) = views.join_next().await {
        let view = joined.context("a watcher task failed")?;
        events += view.events;
        delivery.merge(&view.delivery);
        if let Some(e) = view.error {
            watch_errors += 1;
            report.first_error.get_or_insert(e);
        }
        if view.keys != truth {
            mismatched += 1;
        }
    }
    report.errors += watch_errors;
    report
        .latencies
        .push(("deregister".into(), total.deregister));
    report
        .latencies
        .push(("keep-alive".into(), total.keep_alive));
    report.latencies.push(("watch-delivery".into(), delivery));
    // The fleet's cold start: every first registration.
    if first_registered.len() == instances
        && let Some(last) = first_registered.iter().max()
    {
        let took = last.duration_since(started);
        report.count("all_registered_ms", took.as_millis() as u64);
        report.count(
            "registrations_per_s",
            (instances as f64 / took.as_secs_f64().max(1e-9)).round() as u64,
        );
    }
    report.count("instances", instances as u64);
    report.count("registrations", registrations);
    report.count("deregistrations", total.deregistrations);
    report.count("watchers", watchers as u64);
    report.count("watch_events", events);
    report.count("watch_errors", watch_errors);
    report.count("views_mismatched", mismatched);
    report.count("left_registered", truth.len() as u64);
    Ok(report)
}

/// One service instance, registering until `deadline`.
async fn instance(
    config: Config,
    channel: tonic::transport::Channel,
    key: Vec<u8>,
    seed: u64,
    ttl: i64,
    deadline: Instant,
    max_life: Duration,
) -> Instance {
    let mut out = Instance::default();
    let mut lease = LeaseClient::new(channel.clone());
    let mut kv = KvClient::new(channel);
    let mut rng = Rng::new(config.seed, seed);
    let bound = config.request_timeout;
    let renew = Duration::from_secs(ttl as u64) / 3;
    let addr = format!(
        "10.{}.{}.{}:8080",
        seed >> 16 & 255,
        seed >> 8 & 255,
        seed & 255
    );
    let id =
        String::from_utf8_lossy(key.rsplit(|b| *b == b'/').next().unwrap_or_default()).into_owned();
    let value = |sent_ns: u128| -> Vec<u8> {
        let mut value = format!(
            r#"{{"Addr":"{addr}","Metadata":{{"version":1,"service":"svc-{}","id":"{id}","health":"passing","sent_ns":{sent_ns}}}}}"#,
            seed % 8
        )
        .into_bytes();
        value.resize(config.val_size.max(value.len()), b' ');
        value
    };
    // The keep-alive stream, opened with the first renewal (a server may
    // send the response headers only with its first response).
    let mut stream: Option<(
        mpsc::Sender<pb::LeaseKeepAliveRequest>,
        tonic::Streaming<pb::LeaseKeepAliveResponse>,
    )> = None;
    while Instant::now() < deadline {
        // Register.
        let started = Instant::now();
        let registered = async {
            let grant = bounded(
                bound,
                lease.lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
            )
            .await?;
            bounded(
                bound,
                kv.put(pb::PutRequest {
                    key: key.clone().into(),
                    value: value(now_ns()).into(),
                    lease: grant.id,
                    ..Default::default()
                }),
            )
            .await?;
            Ok::<_, String>(grant.id)
        }
        .await;
        let Some(id) = out.register.outcome(started, registered) else {
            continue;
        };
        out.first_registered.get_or_insert_with(Instant::now);
        // Live, renewing every TTL/3.
        let life = Duration::from_millis(rng.below(max_life.as_millis().max(1) as u64) + 1);
        let end = (Instant::now() + life).min(deadline);
        loop {
            let next = (Instant::now() + renew).min(end);
            tokio::time::sleep_until(next.into()).await;
            if Instant::now() >= end {
                break;
            }
            let sent = Instant::now();
            let request = pb::LeaseKeepAliveRequest { id };
            let responses = match &mut stream {
                Some((tx, responses)) => {
                    if tx.send(request).await.is_err() {
                        out.error("keep-alive stream closed".into());
                        return out;
                    }
                    responses
                }
                None => {
                    let (tx, rx) = mpsc::channel(4);
                    let _ = tx.send(request).await;
                    match bounded(bound, lease.lease_keep_alive(ReceiverStream::new(rx))).await {
                        Ok(responses) => &mut stream.insert((tx, responses)).1,
                        Err(e) => {
                            out.error(format!("opening a keep-alive stream: {e}"));
                            return out;
                        }
                    }
                }
            };
            match tokio::time::timeout(bound, responses.message()).await {
                Ok(Ok(Some(response))) if response.ttl > 0 => out.keep_alive.record(sent.elapsed()),
                Ok(Ok(Some(_))) => out.error(format!("lease {id:x} expired while kept alive")),
                Ok(Ok(None)) => {
                    out.error("the server ended a keep-alive stream".into());
                    return out;
                }
                Ok(Err(status)) => {
                    out.error(format!(
                        "keep-alive: {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                    return out;
                }
                Err(_) => {
                    out.error(format!("keep-alive timed out after {bound:?}"));
                    return out;
                }
            }
        }
        // Deregister.
        let started = Instant::now();
        match bounded(bound, lease.lease_revoke(pb::LeaseRevokeRequest { id })).await {
            Ok(_) => {
                out.deregister.record(started.elapsed());
                out.deregistrations += 1;
            }
            Err(e) => out.error(format!("deregistering: {e}")),
        }
    }
    drop(stream);
    out
}

/// One watcher of `prefix` from `start`, until it sees `marker` or
/// `bound` passes.
async fn follow(
    mut client: WatchClient<tonic::transport::Channel>,
    prefix: Vec<u8>,
    marker: Vec<u8>,
    start: i64,
    bound: Duration,
) -> View {
    let mut view = View {
        keys: BTreeMap::new(),
        events: 0,
        delivery: Latency::new(),
        error: None,
    };
    let work = async {
        let (tx, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.clone().into(),
                    range_end: prefix_end(&prefix).into(),
                    start_revision: start,
                    ..Default::default()
                },
            )),
        };
        tx.send(create)
            .await
            .map_err(|_| "watch request queue closed".to_string())?;
        let mut responses = client
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("opening a watch: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        loop {
            let response = responses
                .message()
                .await
                .map_err(|s| format!("watch: {:?}: {}", s.code(), s.message()))?
                .ok_or_else(|| "the server ended a watch stream".to_string())?;
            if response.canceled {
                return Err(format!("watch canceled: {}", response.cancel_reason));
            }
            for event in response.events {
                let Some(kv) = event.kv else { continue };
                if kv.key.as_ref() == marker.as_slice() {
                    return Ok::<(), String>(());
                }
                view.events += 1;
                if event.r#type == EventType::Delete as i32 {
                    view.keys.remove(kv.key.as_ref());
                } else {
                    if let Some(sent) = sent_ns(&kv.value) {
                        let now = now_ns();
                        view.delivery
                            .record(Duration::from_nanos(now.saturating_sub(sent) as u64));
                    }
                    view.keys.insert(kv.key.to_vec(), kv.value.to_vec());
                }
            }
        }
    };
    match tokio::time::timeout(bound, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => view.error = Some(e),
        Err(_) => view.error = Some(format!("the end marker did not arrive within {bound:?}")),
    }
    view
}

/// Nanoseconds since the Unix epoch.
fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// The `sent_ns` a value carries.
fn sent_ns(value: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = &text[text.find("\"sent_ns\":")? + "\"sent_ns\":".len()..];
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sent_time_is_read_back() {
        assert_eq!(
            super::sent_ns(br#"{"Metadata":{"sent_ns":123}}"#),
            Some(123)
        );
        assert_eq!(super::sent_ns(b"10.0.0.1:80"), None);
    }
}
