//! muster-bench's workloads against an in-process 3-member cluster, small:
//! each must account for every operation (succeeded or failed: a request
//! may time out on a loaded machine), and the cluster's guarantees must
//! show in what it reports: no event lost or duplicated, no key of a lease
//! kept alive lost, every registry watcher's view equal to the final state.
//! (These check what the load generator reports, not how fast anything is:
//! performance is measured by `scripts/bench-vs-etcd.sh`, never by a test.)

use std::time::Duration;

use muster_bench::{Config, Report, Workload};
use muster_tests::TestCluster;

fn config(cluster: &TestCluster, clients: usize) -> Config {
    let mut config = Config::new(cluster.endpoints());
    config.clients = clients;
    config.conns = clients.min(3);
    config.total = 200;
    config.key_space = 50;
    config.val_size = 64;
    config.request_timeout = Duration::from_secs(5);
    config
}

fn count(report: &Report, name: &str) -> u64 {
    report
        .get(name)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("no count {name} in {report}"))
}

/// Every one of `total` operations is counted once, with one latency per
/// success, and at least one succeeded.
fn accounted(r: &Report, total: u64) {
    assert_eq!(r.ops + r.errors, total, "{r}");
    assert_eq!(r.latency.count(), r.ops, "{r}");
    assert!(r.ops > 0, "{r}");
}

async fn run(config: &Config, workload: Workload) -> Report {
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        muster_bench::run(config, &workload),
    )
    .await
    .expect("the workload ends within 60 s")
    .expect("the workload runs");
    eprintln!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_workloads_complete_every_operation() {
    let cluster = TestCluster::start(3).await;
    let config = config(&cluster, 4);

    for lease in [false, true] {
        let r = run(&config, Workload::Put { lease }).await;
        accounted(&r, 200);
    }
    for serializable in [false, true] {
        let r = run(
            &config,
            Workload::Range {
                serializable,
                prefill: true,
            },
        )
        .await;
        accounted(&r, 200);
        assert_eq!(
            count(&r, "missing"),
            0,
            "every prefilled key read back: {r}"
        );
    }
    let r = run(&config, Workload::Txn).await;
    accounted(&r, 200);
    assert_eq!(count(&r, "swapped") + count(&r, "conflicts"), r.ops, "{r}");
    assert!(count(&r, "swapped") > 0, "{r}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_fan_out_delivers_every_put_to_every_watcher_once() {
    let cluster = TestCluster::start(3).await;
    let config = config(&cluster, 2);
    let r = run(
        &config,
        Workload::Watch {
            watchers: 60,
            streams: 4,
            puts: 25,
            settle: Duration::from_secs(10),
        },
    )
    .await;
    let acknowledged = count(&r, "puts_ok");
    assert!(acknowledged > 0, "{r}");
    // A put that timed out may still have been applied and delivered.
    assert!(count(&r, "delivered") >= 60 * acknowledged, "{r}");
    assert_eq!(count(&r, "lost"), 0, "{r}");
    assert_eq!(count(&r, "duplicate"), 0, "{r}");
    assert_eq!(
        r.latency.count(),
        count(&r, "delivered"),
        "one latency per delivery: {r}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_kept_alive_keep_every_key_and_the_registry_views_agree() {
    let cluster = TestCluster::start(3).await;
    let config = config(&cluster, 4);
    let r = run(
        &config,
        Workload::Lease {
            leases: 100,
            ttl: 3,
            hold: Duration::from_secs(4),
            streams: 3,
            cleanup: true,
        },
    )
    .await;
    accounted(&r, 100);
    assert_eq!(count(&r, "attached"), r.ops, "{r}");
    assert_eq!(count(&r, "keys_present"), r.ops, "{r}");
    assert_eq!(count(&r, "keys_lost"), 0, "{r}");
    assert_eq!(count(&r, "keepalives_expired"), 0, "{r}");
    // Each lease renewed at least once in 4 s at a 1 s interval, and every
    // renewal answered.
    assert!(count(&r, "keepalives_answered") >= r.ops, "{r}");
    assert_eq!(
        count(&r, "keepalives_answered"),
        count(&r, "keepalives_sent"),
        "{r}"
    );
    assert!(r.get("keepalive_error").is_none(), "{r}");

    let r = run(
        &config,
        Workload::Registry {
            instances: 12,
            watchers: 2,
            ttl: 3,
            duration: Duration::from_secs(3),
            max_life: Duration::from_millis(1500),
        },
    )
    .await;
    assert_eq!(r.errors, 0, "{r}");
    assert!(count(&r, "registrations") >= 12, "{r}");
    assert_eq!(
        count(&r, "registrations"),
        count(&r, "deregistrations"),
        "{r}"
    );
    assert_eq!(
        count(&r, "watch_events"),
        2 * 2 * count(&r, "registrations"),
        "{r}"
    );
    assert_eq!(count(&r, "views_mismatched"), 0, "{r}");
    assert_eq!(count(&r, "left_registered"), 0, "{r}");
    cluster.shutdown().await;
}
