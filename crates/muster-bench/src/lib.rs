//! `muster-bench`: a load generator for any etcd v3 endpoint list, so the
//! same binary measures muster and etcd.
//!
//! [`run`] drives one [`Workload`] with [`Config::clients`] concurrent
//! clients sharing [`Config::conns`] gRPC connections, spread round-robin
//! over the endpoints, and returns a [`Report`]: throughput, HDR latency
//! percentiles of the main operation and of any secondary one, and the
//! workload's own counts (events lost, keys lost, ...).
//!
//! Invariants:
//!
//! - Every request is bounded by [`Config::request_timeout`]; a request
//!   that times out or fails counts as an error and is not retried, and
//!   its latency is not recorded. Every wait on the cluster (watch
//!   creation, event delivery, keep-alive phases) is bounded too, so a run
//!   always ends.
//! - Clients are closed-loop: each has at most one request outstanding
//!   (streams excepted) and takes its next operation from a shared budget
//!   of [`Config::total`] operations, or until [`Config::duration`] passes.
//! - Setup (prefilling keys, granting the put workload's leases, creating
//!   watchers) and cleanup (revoking leases) happen outside the measured
//!   phase; only the measured phase is in [`Report::elapsed`].
//! - Keys live under [`Config::prefix`]; key `i` of the key space is the
//!   prefix followed by `i` zero-padded so that the key is
//!   [`Config::key_size`] bytes (longer when the number does not fit).

mod conn;
mod kv;
mod lease;
mod registry;
pub mod report;
mod watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;

pub use crate::conn::Pool;
pub use crate::report::{Latency, Report, Summary};

/// Parses a Go-style duration (`10s`, `500ms`, `2m`).
pub use muster_server::duration::parse as parse_duration;

/// What every workload shares.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client URLs (`http://host:port`); connection `i` goes to endpoint
    /// `i % len`.
    pub endpoints: Vec<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// gRPC connections the clients share (client `i` uses connection
    /// `i % conns`).
    pub conns: usize,
    /// Operations in the measured phase (for put, range and txn).
    pub total: u64,
    /// When set, the measured phase ends after this long instead (or when
    /// `total` is reached, whichever is first).
    pub duration: Option<Duration>,
    /// Key length in bytes.
    pub key_size: usize,
    /// Value length in bytes.
    pub val_size: usize,
    /// Number of distinct keys the operations pick from (uniformly).
    pub key_space: u64,
    /// The prefix of every key.
    pub prefix: String,
    /// Bound on every request.
    pub request_timeout: Duration,
    /// Seed of the clients' key choices.
    pub seed: u64,
}

impl Config {
    /// Defaults: 1 client on 1 connection, 10,000 operations, 32-byte keys,
    /// 256-byte values, a key space of 10,000 under `bench/`, 10 s
    /// requests, seed 1.
    pub fn new(endpoints: Vec<String>) -> Self {
        Config {
            endpoints,
            clients: 1,
            conns: 1,
            total: 10_000,
            duration: None,
            key_size: 32,
            val_size: 256,
            key_space: 10_000,
            prefix: "bench/".to_string(),
            request_timeout: Duration::from_secs(10),
            seed: 1,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.endpoints.is_empty() {
            bail!("no endpoints given");
        }
        if self.clients == 0 || self.conns == 0 {
            bail!("--clients and --conns must be at least 1");
        }
        if self.key_space == 0 {
            bail!("--key-space must be at least 1");
        }
        if self.total == 0 && self.duration.is_none() {
            bail!("--total must be at least 1 (or give --duration)");
        }
        if self.prefix.is_empty() {
            bail!("--prefix must not be empty");
        }
        Ok(())
    }

    /// Key `i` of the key space under `sub` (a part of the prefix naming the
    /// workload, e.g. `put/`).
    pub fn key(&self, sub: &str, i: u64) -> Vec<u8> {
        let head = self.prefix.len() + sub.len();
        let width = self.key_size.saturating_sub(head);
        format!("{}{sub}{i:0width$}", self.prefix).into_bytes()
    }

    /// A value of [`Config::val_size`] bytes.
    pub fn value(&self) -> Vec<u8> {
        vec![b'v'; self.val_size]
    }
}

/// One workload and its own settings.
#[derive(Clone, Debug)]
pub enum Workload {
    /// Puts of random keys from the key space; with `lease`, every client
    /// attaches its puts to a lease of its own (granted before the
    /// measured phase, revoked after).
    Put {
        /// Attach each put to a lease.
        lease: bool,
    },
    /// Single-key ranges of random keys from the key space, prefilled
    /// first unless `prefill` is off.
    Range {
        /// Serializable (served from the member's local state) instead of
        /// linearizable.
        serializable: bool,
        /// Write every key of the key space before the measured phase.
        prefill: bool,
    },
    /// Compare-and-swap transactions: each client compares a random key's
    /// mod revision with the one it last saw and puts on success; on
    /// failure the transaction reads the key so the next try is current.
    Txn,
    /// Watch fan-out: `watchers` watchers of one key over `streams` watch
    /// streams, then `puts` puts to it by the clients; counts each
    /// watcher's delivered, lost and duplicate events and the latency
    /// from a put's send to each delivery.
    Watch {
        /// Number of watchers.
        watchers: usize,
        /// Number of watch streams they are spread over.
        streams: usize,
        /// Number of puts.
        puts: u64,
        /// How long to wait for the last deliveries after the last put.
        settle: Duration,
    },
    /// `leases` leases, each granted and given one key by the clients
    /// (the measured phase: grants/s), then kept alive over `streams`
    /// keep-alive streams for `hold` (keep-alive round trips), then the
    /// keys counted: every one must still be there.
    Lease {
        /// Number of leases.
        leases: u64,
        /// Their TTL in seconds.
        ttl: i64,
        /// How long they are kept alive.
        hold: Duration,
        /// Keep-alive streams.
        streams: usize,
        /// Revoke every lease at the end.
        cleanup: bool,
    },
    /// A service registry's traffic: `instances` instances register
    /// (grant, put with the lease), keep alive, and deregister (revoke)
    /// over and over while `watchers` watchers follow the prefix; at the
    /// end each watcher's view must equal the final state.
    Registry {
        /// Number of service instances.
        instances: usize,
        /// Number of watchers of the registry prefix.
        watchers: usize,
        /// TTL of the instances' leases in seconds.
        ttl: i64,
        /// How long the instances churn.
        duration: Duration,
        /// Longest life of one registration (each lives a random time up
        /// to it).
        max_life: Duration,
    },
}

/// Runs `workload` against `config.endpoints`.
pub async fn run(config: &Config, workload: &Workload) -> anyhow::Result<Report> {
    config.validate()?;
    let pool = Pool::connect(config).await?;
    match workload {
        Workload::Put { lease } => kv::put(config, &pool, *lease).await,
        Workload::Range {
            serializable,
            prefill,
        } => kv::range(config, &pool, *serializable, *prefill).await,
        Workload::Txn => kv::txn(config, &pool).await,
        Workload::Watch {
            watchers,
            streams,
            puts,
            settle,
        } => watch::run(config, &pool, *watchers, *streams, *puts, *settle).await,
        Workload::Lease {
            leases,
            ttl,
            hold,
            streams,
            cleanup,
        } => lease::run(config, &pool, *leases, *ttl, *hold, *streams, *cleanup).await,
        Workload::Registry {
            instances,
            watchers,
            ttl,
            duration,
            max_life,
        } => {
            registry::run(
                config, &pool, *instances, *watchers, *ttl, *duration, *max_life,
            )
            .await
        }
    }
}

/// The shared budget of a closed-loop phase: operation numbers handed out
/// until `total` or the deadline.
#[derive(Debug)]
pub(crate) struct Budget {
    next: AtomicU64,
    total: u64,
    deadline: Option<Instant>,
}

impl Budget {
    pub(crate) fn new(total: u64, duration: Option<Duration>) -> Arc<Self> {
        Arc::new(Budget {
            next: AtomicU64::new(0),
            total: if duration.is_some() && total == 0 {
                u64::MAX
            } else {
                total
            },
            deadline: duration.map(|d| Instant::now() + d),
        })
    }

    /// The next operation's number, or `None` when the phase is over.
    pub(crate) fn take(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }
}

/// What one client measured; merged into the report.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) latency: Latency,
}

impl Tally {
    /// Records one timed outcome.
    pub(crate) fn outcome<T>(&mut self, started: Instant, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => {
                self.ok += 1;
                self.latency.record(started.elapsed());
                Some(value)
            }
            Err(e) => {
                self.error(e);
                None
            }
        }
    }

    /// Records one error.
    pub(crate) fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    /// Adds `other` into the report's main numbers.
    pub(crate) fn into_report(self, report: &mut Report) {
        report.ops += self.ok;
        report.errors += self.errors;
        if report.first_error.is_none() {
            report.first_error = self.first_error;
        }
        report.latency.merge(&self.latency);
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.merge(&other.latency);
    }
}

/// Awaits `future` for at most `bound`, flattening a timeout and a gRPC
/// error into one message.
pub(crate) async fn bounded<T>(
    bound: Duration,
    future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(bound, future).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Err(format!("timed out after {bound:?}")),
    }
}

/// A small deterministic generator (xorshift64*) for key choices.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        if x == 0 {
            x = 1;
        }
        Rng(x)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` ≥ 1).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) use muster_proto::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_requested_size() {
        let config = Config::new(vec!["http://x".into()]);
        let mut c = config.clone();
        c.key_size = 32;
        assert_eq!(c.key("put/", 7).len(), 32);
        assert!(c.key("put/", 7).starts_with(b"bench/put/000"));
        c.key_size = 4;
        assert_eq!(c.key("put/", 12), b"bench/put/12".to_vec());
    }

    #[test]
    fn budget_hands_out_exactly_total() {
        let budget = Budget::new(3, None);
        assert_eq!(
            (0..5).map(|_| budget.take()).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(2), None, None]
        );
        let timed = Budget::new(0, Some(Duration::ZERO));
        assert_eq!(timed.take(), None);
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(1, 2);
        let mut b = Rng::new(1, 2);
        for _ in 0..100 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            assert!(x < 10);
        }
    }
}
