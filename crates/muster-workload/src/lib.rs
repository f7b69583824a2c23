//! `muster-workload`: the fault suite's recording workload.
//!
//! [`run`] drives a muster (or etcd) cluster through its etcd v3 gRPC API
//! with concurrent clients on every member and records every operation to a
//! JSON-lines history in the format of [`muster_check::history`]:
//!
//! - `clients` KV clients (processes `0..clients`) issue linearizable and
//!   serializable gets, puts, deletes and compare-and-swaps on
//!   `<prefix>k<0..keys>`;
//! - `registrants` lease clients (processes after the KV clients) grant a
//!   lease, register `<prefix>svc/<process>-<n>` under it, keep it alive
//!   over one keep-alive stream, then revoke or abandon it and start over;
//! - `watchers` watchers follow the prefix from the revision after the one
//!   read at start, resuming on another member after every error;
//! - after `duration` a final phase reads every member's state under the
//!   prefix at one revision (with HashKV) and waits until every watcher has
//!   covered that revision.
//!
//! Invariants this crate keeps (the history's, and its own):
//!
//! - The [`StartRecord`] is the first
//!   line; every `t` is nanoseconds on one monotonic clock since it, and
//!   `t` never decreases along the file (not only per process).
//! - The history starts from an empty prefix: keys an earlier run left
//!   under it are deleted (unrecorded) before the first record after the
//!   start record, and the watchers start right after that revision.
//! - Every invocation is recorded just before its request is sent and is
//!   followed by exactly one completion of the same `id` (unless the
//!   workload is killed). A completion is `fail` only when the request
//!   certainly had no effect: every failed read, and a write that could not
//!   connect at all or that the server refused with `InvalidArgument`,
//!   `FailedPrecondition`, `NotFound` or `ResourceExhausted`. Every other
//!   write error (timeouts, broken connections, `Unavailable` after sending,
//!   ...) is `info`.
//! - A process has at most one operation outstanding, and records its
//!   records from one task in order, so `t` never decreases for a process.
//! - Every written value is `"<process>-<n>"`, unique in the history.
//! - Every request is bounded by `request_timeout`; the start-up wait, the
//!   final reads and the watchers' final coverage are each bounded by
//!   `final_timeout`. The history is written by one task and flushed at
//!   least every 100 ms, so a killed workload leaves a usable history.
//! - Every task is owned by [`run`]'s future: dropping it aborts them all
//!   (the history then ends without the final records).

mod client;
mod finale;
mod lease;
mod net;
mod parse;
mod recorder;
mod rng;
mod summary;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use muster_check::history::{Record, StartRecord};
use tokio::task::JoinSet;

pub use net::{CallError, prefix_end, read_outcome, write_outcome};
pub use parse::{parse_duration, parse_endpoints};
pub use summary::{OpCounts, Summary, WatchCounts};

use crate::net::Member;
use crate::recorder::Recorder;
use crate::watch::Phase;

/// What to run against what.
#[derive(Clone, Debug)]
pub struct Config {
    /// Member name → client URL (`http://host:port`). Client `i` starts on
    /// the `i % n`-th member in name order.
    pub members: BTreeMap<String, String>,
    /// How long the clients and registrants run (after the start-up wait).
    pub duration: Duration,
    /// Number of KV clients.
    pub clients: usize,
    /// Number of keys the KV clients share.
    pub keys: usize,
    /// The prefix every key lives under.
    pub prefix: String,
    /// Number of watchers of the prefix.
    pub watchers: usize,
    /// Number of lease clients (service registrants).
    pub registrants: usize,
    /// TTL, in seconds, of the leases the registrants grant.
    pub lease_ttl: i64,
    /// The cluster's election timeout (recorded for the lease checker).
    pub election_timeout_ms: u64,
    /// Bound on every request (and on each keep-alive round trip).
    pub request_timeout: Duration,
    /// Bound on the start-up wait, on the final reads and on the watchers'
    /// final coverage.
    pub final_timeout: Duration,
    /// Seed of every client's choices.
    pub seed: u64,
    /// Where the history is written (created or truncated).
    pub history: PathBuf,
}

impl Config {
    /// A configuration with the suite's defaults: 30 s, 8 clients on 10
    /// keys under `/fault/`, 3 watchers, 2 registrants with 5 s leases, a
    /// 1000 ms election timeout, 2 s requests, a 60 s final bound, seed 1.
    pub fn new(members: BTreeMap<String, String>, history: impl Into<PathBuf>) -> Self {
        Config {
            members,
            duration: Duration::from_secs(30),
            clients: 8,
            keys: 10,
            prefix: "/fault/".to_string(),
            watchers: 3,
            registrants: 2,
            lease_ttl: 5,
            election_timeout_ms: 1000,
            request_timeout: Duration::from_secs(2),
            final_timeout: Duration::from_secs(60),
            seed: 1,
            history: history.into(),
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.members.is_empty() {
            bail!("no members given");
        }
        if self.clients > 0 && self.keys == 0 {
            bail!("--keys must be at least 1 when there are clients");
        }
        if self.prefix.is_empty() {
            bail!("the prefix must not be empty");
        }
        if self.lease_ttl < 1 {
            bail!("--lease-ttl must be at least 1 second");
        }
        if self.request_timeout.is_zero() {
            bail!("--request-timeout must be positive");
        }
        Ok(())
    }
}

/// What every task shares.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) members: Vec<Member>,
    pub(crate) recorder: Recorder,
    ids: AtomicU64,
}

impl Ctx {
    /// A fresh operation ID, unique in the history.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs the workload described by `config` and returns what it did.
///
/// Fails only when it could not run at all: an invalid configuration, a
/// history file that cannot be written, no member answering within
/// `final_timeout` at start, or keys left under the prefix that could not
/// be deleted with a known outcome. Errors of the cluster during the run are
/// recorded, not returned.
pub async fn run(config: Config) -> anyhow::Result<Summary> {
    config.validate()?;
    let members = config
        .members
        .iter()
        .map(|(name, url)| Member::new(name, url, &config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wall_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let start = Instant::now();
    let (recorder, writer) = recorder::spawn(&config.history, start)
        .with_context(|| format!("creating {}", config.history.display()))?;
    recorder.record(|_| {
        Record::Start(StartRecord {
            t: 0,
            wall_ns,
            prefix: config.prefix.clone(),
            members: config.members.clone(),
            election_timeout_ms: config.election_timeout_ms,
            lease_ttl: config.lease_ttl,
        })
    });
    let ctx = Arc::new(Ctx {
        config,
        members,
        recorder,
        ids: AtomicU64::new(1),
    });

    let r0 = match finale::initial_revision(&ctx).await {
        Ok(r0) => r0,
        Err(e) => {
            drop(ctx);
            let _ = writer.await;
            return Err(e);
        }
    };
    tracing::info!(revision = r0, "cluster answered; starting the workload");

    // Every task lives in a JoinSet owned by this future: if the caller
    // drops `run`, the tasks are aborted with it.
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Running);
    let mut watchers = JoinSet::new();
    for j in 0..ctx.config.watchers {
        let watcher = u32::try_from(j).unwrap_or(u32::MAX);
        watchers.spawn(watch::watcher(
            ctx.clone(),
            watcher,
            r0 + 1,
            phase_rx.clone(),
        ));
    }
    drop(phase_rx);

    let began = Instant::now();
    let deadline = began + ctx.config.duration;
    let mut clients = JoinSet::new();
    for i in 0..ctx.config.clients {
        let process = u32::try_from(i).unwrap_or(u32::MAX);
        clients.spawn(client::kv_client(ctx.clone(), process, deadline));
    }
    let mut registrants = JoinSet::new();
    for i in 0..ctx.config.registrants {
        let process = u32::try_from(ctx.config.clients + i).unwrap_or(u32::MAX);
        registrants.spawn(lease::registrant(ctx.clone(), process, deadline));
    }
    while let Some(joined) = clients.join_next().await {
        if let Err(e) = joined {
            tracing::error!("a client task failed: {e}");
        }
    }
    let mut abandoned = None;
    while let Some(joined) = registrants.join_next().await {
        match joined {
            Ok(at) => abandoned = abandoned.max(at),
            Err(e) => tracing::error!("a registrant task failed: {e}"),
        }
    }
    let elapsed = began.elapsed();

    let finals = finale::final_phase(&ctx, abandoned).await;
    let cover_deadline = Instant::now() + ctx.config.final_timeout;
    let _ = phase_tx.send(match finals.revision {
        Some(revision) => Phase::Cover {
            revision,
            deadline: cover_deadline,
        },
        None => Phase::Stop,
    });
    // The watchers stop by themselves at `cover_deadline`; this bound only
    // guards against one stuck in a request.
    let hard_deadline = cover_deadline + ctx.config.request_timeout * 2;
    let mut watchers_covered = 0;
    let _ = tokio::time::timeout_at(hard_deadline.into(), async {
        while let Some(joined) = watchers.join_next().await {
            match joined {
                Ok(true) => watchers_covered += 1,
                Ok(false) => {}
                Err(e) => tracing::error!("a watcher task failed: {e}"),
            }
        }
    })
    .await;
    watchers.shutdown().await;
    drop(phase_tx);

    let watcher_count = ctx.config.watchers;
    let history = ctx.config.history.clone();
    let member_count = ctx.members.len();
    drop(ctx);
    let tally = writer
        .await
        .context("the history writer panicked")?
        .with_context(|| format!("writing {}", history.display()))?;
    let hashes_agree = tally.hashes_agree();
    Ok(Summary {
        members: member_count,
        elapsed,
        ops: tally.ops,
        watch: tally.watch,
        watchers: watcher_count,
        watchers_covered,
        final_revision: finals.revision,
        finals_read: tally.finals_read,
        finals_failed: tally.finals_failed,
        hashes_agree,
        records: tally.records,
        history,
    })
}
