//! The key-value workloads: put (optionally with a lease), range
//! (linearizable or serializable) and txn compare-and-swap.
//!
//! Invariants: each client owns its gRPC client and has one request
//! outstanding; key choices are deterministic per (seed, client); the
//! measured phase starts after setup (leases granted, keys prefilled) and
//! ends when the budget is spent, before cleanup.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use muster_proto::etcdserverpb::kv_client::KvClient;
use muster_proto::etcdserverpb::lease_client::LeaseClient;
use muster_proto::etcdserverpb::{self as pb, compare, request_op, response_op};
use tokio::task::JoinSet;
use tonic::codegen::Bytes;

use crate::{Budget, Config, Pool, Report, Rng, Tally, bounded};

/// TTL of the leases the put workload attaches its keys to: far longer
/// than any run, so none expires during it.
const PUT_LEASE_TTL: i64 = 3600;

/// Runs `body(client, budget)` for every client in parallel over one
/// budget; returns the merged tally and the phase's wall time.
pub(crate) async fn closed_loop<F, Fut>(
    clients: usize,
    total: u64,
    duration: Option<Duration>,
    body: F,
) -> anyhow::Result<(Tally, Duration)>
where
    F: Fn(usize, Arc<Budget>) -> Fut,
    Fut: Future<Output = Tally> + Send + 'static,
{
    let budget = Budget::new(total, duration);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for client in 0..clients {
        set.spawn(body(client, budget.clone()));
    }
    let mut tally = Tally::default();
    while let Some(joined) = set.join_next().await {
        tally.merge(joined.context("a client task failed")?);
    }
    Ok((tally, started.elapsed()))
}

fn report(config: &Config, workload: &str, variant: &str) -> Report {
    Report::new(
        workload,
        variant,
        &config.endpoints,
        config.clients,
        config.conns,
    )
}

/// Grants one lease of `ttl` seconds on connection `i`.
pub(crate) async fn grant(config: &Config, pool: &Pool, i: usize, ttl: i64) -> Result<i64, String> {
    let response = bounded(
        config.request_timeout,
        LeaseClient::new(pool.get(i)).lease_grant(pb::LeaseGrantRequest { ttl, id: 0 }),
    )
    .await?;
    if response.error.is_empty() {
        Ok(response.id)
    } else {
        Err(response.error)
    }
}

/// Revokes `leases` with `config.clients` clients; returns how many
/// revocations failed (a lease already gone counts as revoked).
pub(crate) async fn revoke_all(config: &Config, pool: &Pool, leases: Vec<i64>) -> u64 {
    let leases = Arc::new(leases);
    let total = leases.len() as u64;
    let (tally, _) = match closed_loop(config.clients, total, None, |client, budget| {
        let mut lease = LeaseClient::new(pool.get(client));
        let leases = leases.clone();
        let bound = config.request_timeout;
        async move {
            let mut tally = Tally::default();
            while let Some(i) = budget.take() {
                let id = leases[i as usize];
                let started = Instant::now();
                let result =
                    bounded(bound, lease.lease_revoke(pb::LeaseRevokeRequest { id })).await;
                let result = match result {
                    Err(e) if e.contains("NotFound") => Ok(()),
                    other => other.map(drop),
                };
                tally.outcome(started, result);
            }
            tally
        }
    })
    .await
    {
        Ok(done) => done,
        Err(_) => return total,
    };
    tally.errors
}

/// Puts by `config.clients` clients over one budget of `total` (or
/// `duration`): operation `i` writes key `i` of the key space under `sub`,
/// or a random key of it when `random`; client `c` attaches its puts to
/// `leases[c]` when given.
async fn put_phase(
    config: &Config,
    pool: &Pool,
    sub: &'static str,
    total: u64,
    duration: Option<Duration>,
    random: bool,
    leases: &[i64],
) -> anyhow::Result<(Tally, Duration)> {
    let value = Bytes::from(config.value());
    closed_loop(config.clients, total, duration, |client, budget| {
        let mut kv = KvClient::new(pool.get(client));
        let mut rng = Rng::new(config.seed, client as u64);
        let config = config.clone();
        let value = value.clone();
        let lease = leases.get(client).copied().unwrap_or(0);
        async move {
            let mut tally = Tally::default();
            while let Some(i) = budget.take() {
                let i = if random {
                    rng.below(config.key_space)
                } else {
                    i
                };
                let request = pb::PutRequest {
                    key: config.key(sub, i).into(),
                    value: value.clone(),
                    lease,
                    ..Default::default()
                };
                let started = Instant::now();
                let result = bounded(config.request_timeout, kv.put(request)).await;
                tally.outcome(started, result);
            }
            tally
        }
    })
    .await
}

/// The put workload.
pub(crate) async fn put(config: &Config, pool: &Pool, with_lease: bool) -> anyhow::Result<Report> {
    let mut report = report(config, "put", if with_lease { "lease" } else { "" });
    let mut leases = vec![0; config.clients];
    if with_lease {
        for (client, lease) in leases.iter_mut().enumerate() {
            *lease = grant(config, pool, client, PUT_LEASE_TTL)
                .await
                .map_err(|e| anyhow::anyhow!("granting the put workload's lease: {e}"))?;
        }
    }
    let (tally, elapsed) = put_phase(
        config,
        pool,
        "put/",
        config.total,
        config.duration,
        true,
        &leases,
    )
    .await?;
    tally.into_report(&mut report);
    report.elapsed = elapsed;
    if with_lease {
        let failed = revoke_all(config, pool, leases).await;
        if failed > 0 {
            report.count("cleanup_failures", failed);
        }
    }
    Ok(report)
}

/// Writes every key of the key space under `sub` once (not measured).
pub(crate) async fn prefill(config: &Config, pool: &Pool, sub: &'static str) -> anyhow::Result<()> {
    let (tally, _) = put_phase(config, pool, sub, config.key_space, None, false, &[]).await?;
    if tally.errors > 0 {
        anyhow::bail!(
            "prefilling {} keys: {} puts failed, the first with {}",
            config.key_space,
            tally.errors,
            tally.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// The range workload.
pub(crate) async fn range(
    config: &Config,
    pool: &Pool,
    serializable: bool,
    fill: bool,
) -> anyhow::Result<Report> {
    let variant = if serializable {
        "serializable"
    } else {
        "linearizable"
    };
    let mut report = report(config, "range", variant);
    if fill {
        prefill(config, pool, "range/").await?;
    }
    // Prefilled keys a range found absent (a lost write, or a stale read).
    let absent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tally, elapsed) = closed_loop(
        config.clients,
        config.total,
        config.duration,
        |client, budget| {
            let mut kv = KvClient::new(pool.get(client));
            let mut rng = Rng::new(config.seed, client as u64);
            let config = config.clone();
            let absent = absent.clone();
            async move {
                let mut tally = Tally::default();
                let mut missing = 0u64;
                while budget.take().is_some() {
                    let key = config.key("range/", rng.below(config.key_space));
                    let request = pb::RangeRequest {
                        key: key.into(),
                        serializable,
                        ..Default::default()
                    };
                    let started = Instant::now();
                    let result = bounded(config.request_timeout, kv.range(request)).await;
                    if let Some(response) = tally.outcome(started, result)
                        && fill
                        && response.kvs.is_empty()
                    {
                        missing += 1;
                    }
                }
                absent.fetch_add(missing, std::sync::atomic::Ordering::Relaxed);
                tally
            }
        },
    )
    .await?;
    tally.into_report(&mut report);
    report.elapsed = elapsed;
    if fill {
        report.count("missing", absent.load(std::sync::atomic::Ordering::Relaxed));
    }
    Ok(report)
}

/// The txn compare-and-swap workload.
pub(crate) async fn txn(config: &Config, pool: &Pool) -> anyhow::Result<Report> {
    let mut report = report(config, "txn", "cas");
    let value = Bytes::from(config.value());
    let succeeded = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tally, elapsed) = closed_loop(
        config.clients,
        config.total,
        config.duration,
        |client, budget| {
            let mut kv = KvClient::new(pool.get(client));
            let mut rng = Rng::new(config.seed, client as u64);
            let config = config.clone();
            let value = value.clone();
            let succeeded = succeeded.clone();
            async move {
                let mut tally = Tally::default();
                // The mod revision this client last saw per key (0: absent).
                let mut seen: HashMap<u64, i64> = HashMap::new();
                let mut wins = 0u64;
                while budget.take().is_some() {
                    let i = rng.below(config.key_space);
                    let key = Bytes::from(config.key("txn/", i));
                    let known = seen.get(&i).copied().unwrap_or(0);
                    let request = pb::TxnRequest {
                        compare: vec![pb::Compare {
                            result: compare::CompareResult::Equal as i32,
                            target: compare::CompareTarget::Mod as i32,
                            key: key.clone(),
                            target_union: Some(compare::TargetUnion::ModRevision(known)),
                            ..Default::default()
                        }],
                        success: vec![pb::RequestOp {
                            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![pb::RequestOp {
                            request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                                key,
                                ..Default::default()
                            })),
                        }],
                    };
                    let started = Instant::now();
                    let result = bounded(config.request_timeout, kv.txn(request)).await;
                    let Some(response) = tally.outcome(started, result) else {
                        seen.remove(&i);
                        continue;
                    };
                    if response.succeeded {
                        wins += 1;
                        let revision = response.header.map_or(0, |h| h.revision);
                        seen.insert(i, revision);
                    } else {
                        let current = response
                            .responses
                            .into_iter()
                            .find_map(|r| match r.response {
                                Some(response_op::Response::ResponseRange(range)) => {
                                    Some(range.kvs.first().map_or(0, |kv| kv.mod_revision))
                                }
                                _ => None,
                            })
                            .unwrap_or(0);
                        seen.insert(i, current);
                    }
                }
                succeeded.fetch_add(wins, std::sync::atomic::Ordering::Relaxed);
                tally
            }
        },
    )
    .await?;
    let ok = tally.ok;
    tally.into_report(&mut report);
    report.elapsed = elapsed;
    let wins = succeeded.load(std::sync::atomic::Ordering::Relaxed);
    report.count("swapped", wins);
    report.count("conflicts", ok - wins);
    Ok(report)
}
