//! The fault suite's workload and checkers against in-process 3-member
//! clusters with a follower cut off mid-run: an honest cluster's history is
//! valid, and one whose followers answer linearizable reads without the
//! read barrier (the `fault-injection` switch) is caught serving stale
//! reads. Every wait is bounded: the workload runs for a fixed time and its
//! final phase has its own bound.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_check::{AnomalyKind, Options, Report};
use muster_tests::{TestCluster, Timings};

/// How long the workload runs, and when the follower is cut off and healed.
const RUN: Duration = Duration::from_secs(8);
const CUT_AT: Duration = Duration::from_secs(2);
const CUT_FOR: Duration = Duration::from_secs(3);

/// Runs the workload for [`RUN`] against a 3-member cluster (its client
/// APIs adjusted by `configure`), isolating one follower from
/// [`CUT_AT`] for [`CUT_FOR`], and checks the history.
async fn run_with_a_follower_cut_off(configure: muster_tests::Configure) -> Report {
    let cluster = TestCluster::start_configured(3, Timings::FAST, configure).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    let members: BTreeMap<String, String> = (0..cluster.size())
        .map(|i| (cluster.name(i).to_string(), cluster.endpoint(i)))
        .collect();
    let mut config = muster_workload::Config::new(members, history.clone());
    config.duration = RUN;
    config.clients = 6;
    config.keys = 3;
    config.watchers = 2;
    config.registrants = 1;
    config.lease_ttl = 3;
    config.election_timeout_ms = Timings::FAST.election_timeout_ms;
    config.request_timeout = Duration::from_secs(1);
    config.final_timeout = Duration::from_secs(30);
    let workload = tokio::spawn(muster_workload::run(config));

    tokio::time::sleep(CUT_AT).await;
    let follower = cluster.follower().await;
    cluster.isolate(follower);
    tokio::time::sleep(CUT_FOR).await;
    cluster.heal(follower);

    let summary = tokio::time::timeout(RUN + Duration::from_secs(60), workload)
        .await
        .expect("the workload ends within its run and final bound")
        .expect("the workload task")
        .expect("the workload runs");
    eprintln!("{summary}");
    cluster.shutdown().await;
    let records = muster_check::history::read(&history).expect("the history parses");
    let report = muster_check::check(&records, &Options::default());
    eprintln!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_cluster_with_a_follower_cut_off_passes_every_checker() {
    let report = run_with_a_follower_cut_off(|api| api).await;
    assert!(report.operations > 100, "the workload ran: {report}");
    assert!(report.is_valid(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_reading_without_the_barrier_are_caught_serving_stale_reads() {
    let report = run_with_a_follower_cut_off(|api| api.with_stale_follower_reads(true)).await;
    assert!(
        report.count(AnomalyKind::NotLinearizable) + report.count(AnomalyKind::RevisionOrder) > 0,
        "stale reads went unnoticed: {report}"
    );
}
