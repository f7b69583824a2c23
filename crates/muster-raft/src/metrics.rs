//! Prometheus metrics of the replication layer, in the process's default
//! registry (`prometheus::default_registry()`), named after etcd's where
//! etcd has one (`etcd_` becomes `muster_`).
//!
//! Invariants:
//! - Counters only grow; gauges are set from the state they describe.
//! - Every metric is registered once, on first use; registering cannot fail
//!   for these fixed names, so a failure is a programming error.
//! - One process runs one member in production; in-process test clusters
//!   share these metrics.

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntGauge, register_histogram, register_int_counter,
    register_int_gauge,
};

/// Buckets for disk and apply latencies: 0.5 ms to about 8 s, doubling
/// (etcd's fsync buckets).
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 15).expect("valid buckets")
}

fn histogram(name: &str, help: &str) -> Histogram {
    register_histogram!(HistogramOpts::new(name, help).buckets(latency_buckets()))
        .expect("register histogram")
}

/// A histogram of counts: 1 to 1024, doubling.
fn count_histogram(name: &str, help: &str) -> Histogram {
    let buckets = prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets");
    register_histogram!(HistogramOpts::new(name, help).buckets(buckets))
        .expect("register histogram")
}

/// Time to write a batch of entries to the log (before the flush).
pub static LOG_APPEND_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "muster_disk_log_append_duration_seconds",
        "Time to write a batch of Raft log entries, before the flush.",
    )
});

/// Time to make the log durable (sled's flush: the fsync).
pub static LOG_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "muster_disk_wal_fsync_duration_seconds",
        "Time of the flush (fsync) that makes appended Raft log entries durable.",
    )
});

/// Time to apply a batch of committed entries to the state machine.
pub static APPLY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "muster_server_apply_duration_seconds",
        "Time to apply a batch of committed entries to the state machine.",
    )
});

/// Snapshots this member built.
pub static SNAPSHOT_SAVES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "muster_snapshot_save_total",
        "Snapshots this member built and wrote."
    )
    .expect("register counter")
});

/// Time to build and write a snapshot.
pub static SNAPSHOT_SAVE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "muster_snapshot_save_duration_seconds",
        "Time to build and write a snapshot.",
    )
});

/// Snapshots this member installed (received from a leader).
pub static SNAPSHOT_INSTALLS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "muster_snapshot_install_total",
        "Snapshots received from a leader and installed."
    )
    .expect("register counter")
});

/// Time to install a received snapshot.
pub static SNAPSHOT_INSTALL_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "muster_snapshot_install_duration_seconds",
        "Time to install a snapshot received from a leader.",
    )
});

/// Proposals (client commands) this member saw committed and applied.
pub static PROPOSALS_COMMITTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "muster_server_proposals_committed_total",
        "Commands proposed through this member that were committed and applied."
    )
    .expect("register counter")
});

/// Proposals through this member that failed (no leader, timeout,
/// shutdown); a command the store refused counts as committed.
pub static PROPOSALS_FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "muster_server_proposals_failed_total",
        "Commands proposed through this member that failed to commit."
    )
    .expect("register counter")
});

/// Proposals through this member waiting for their commit.
pub static PROPOSALS_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "muster_server_proposals_pending",
        "Commands proposed through this member and not yet answered."
    )
    .expect("register gauge")
});

/// The last log index this member applied.
pub static PROPOSALS_APPLIED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "muster_server_proposals_applied_total",
        "The index of the last Raft log entry this member applied."
    )
    .expect("register gauge")
});

/// How many client writes each entry the leader's proposer appended held
/// (1 when a write went alone).
pub static BATCH_COMMANDS: LazyLock<Histogram> = LazyLock::new(|| {
    count_histogram(
        "muster_server_proposal_batch_commands",
        "Client writes per Raft log entry the leader proposed (group commit).",
    )
});

/// How many linearizable reads each leadership confirmation of the leader
/// answered (read-index batching).
pub static READ_INDEX_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    count_histogram(
        "muster_server_read_index_batch_reads",
        "Linearizable reads answered per leadership confirmation round on the leader.",
    )
});

/// How many requests each peer call a follower sent to the leader carried
/// (forwarded writes, lease operations and read-index requests coalesced).
pub static FORWARD_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    count_histogram(
        "muster_server_forward_batch_requests",
        "Requests per peer call a follower sent to the leader (writes, lease operations, read indexes).",
    )
});

/// Registers every metric of this module, so all appear on a scrape
/// before their first event.
pub fn register() {
    LazyLock::force(&LOG_APPEND_SECONDS);
    LazyLock::force(&LOG_FSYNC_SECONDS);
    LazyLock::force(&APPLY_SECONDS);
    LazyLock::force(&SNAPSHOT_SAVES);
    LazyLock::force(&SNAPSHOT_SAVE_SECONDS);
    LazyLock::force(&SNAPSHOT_INSTALLS);
    LazyLock::force(&SNAPSHOT_INSTALL_SECONDS);
    LazyLock::force(&PROPOSALS_COMMITTED);
    LazyLock::force(&PROPOSALS_FAILED);
    LazyLock::force(&PROPOSALS_PENDING);
    LazyLock::force(&PROPOSALS_APPLIED);
    LazyLock::force(&BATCH_COMMANDS);
    LazyLock::force(&READ_INDEX_BATCH);
    LazyLock::force(&FORWARD_BATCH);
}
