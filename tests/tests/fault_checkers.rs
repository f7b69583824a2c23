//! The fault suite's fast variant: the recording workload and the checkers
//! against in-process 3-member clusters, with faults injected by the peer
//! transport's hooks (isolate, one-way cut, delay). An honest cluster's
//! history passes every checker; one whose followers answer linearizable
//! reads without the read barrier (the `fault-injection` switch) is caught
//! serving stale reads. Every wait is bounded: the workload runs for a
//! fixed time, each fault is held for a fixed time, and the workload's
//! final phase has its own bound.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_check::{AnomalyKind, Options, Report};
use muster_tests::{TestCluster, Timings};

/// A fault of the schedule, by the role of the member it hits when it
/// starts.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// A follower cut off from the others, both ways.
    IsolateFollower,
    /// The leader cut off from the others, both ways.
    IsolateLeader,
    /// The leader's messages to one follower dropped (one way).
    CutLeaderToFollower,
    /// Every message to a follower held for 200 ms.
    DelayFollower,
}

/// How long each fault is held, and the quiet time before each.
const HOLD: Duration = Duration::from_millis(2500);
const QUIET: Duration = Duration::from_millis(1500);

/// Runs the workload against a 3-member cluster (its client APIs adjusted
/// by `configure`) for as long as `schedule` takes plus a quiet second,
/// injecting each fault in turn, and checks the history.
async fn run_with_faults(configure: muster_tests::Configure, schedule: &[Fault]) -> Report {
    let cluster = TestCluster::start_configured(3, Timings::FAST, configure).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let history = dir.path().join("history.jsonl");
    let members: BTreeMap<String, String> = (0..cluster.size())
        .map(|i| (cluster.name(i).to_string(), cluster.endpoint(i)))
        .collect();
    let run = (HOLD + QUIET) * schedule.len() as u32 + Duration::from_secs(2);
    let mut config = muster_workload::Config::new(members, history.clone());
    config.duration = run;
    config.clients = 6;
    config.keys = 3;
    config.watchers = 2;
    config.registrants = 1;
    config.lease_ttl = 3;
    config.election_timeout_ms = Timings::FAST.election_timeout_ms;
    config.request_timeout = Duration::from_secs(1);
    config.final_timeout = Duration::from_secs(30);
    let workload = tokio::spawn(muster_workload::run(config));

    // The faults, recorded as the fault script records them, so that the
    // checkers know when the cluster was disturbed (a leader change then
    // legitimately restarts leases).
    let mut faults = Vec::new();
    let record = |fault: Fault, phase: &str| {
        muster_check::history::Record::Fault(muster_check::history::FaultRecord {
            wall_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("a clock after 1970")
                .as_nanos() as u64,
            fault: format!("{fault:?}"),
            phase: phase.to_string(),
            detail: None,
        })
    };
    let mut healed: Option<Fault> = None;
    for &fault in schedule {
        tokio::time::sleep(QUIET).await;
        let leader = cluster.wait_leader().await;
        // As the script does: the previous fault's effects last until the
        // cluster has a leader again after the quiet time.
        if let Some(previous) = healed.take() {
            faults.push(record(previous, "settled"));
        }
        let follower = (0..cluster.size())
            .find(|&i| i != leader)
            .expect("a follower");
        match fault {
            Fault::IsolateFollower => cluster.isolate(follower),
            Fault::IsolateLeader => cluster.isolate(leader),
            Fault::CutLeaderToFollower => cluster.cut(leader, follower),
            Fault::DelayFollower => cluster.delay(follower, Duration::from_millis(200)),
        }
        faults.push(record(fault, "start"));
        tokio::time::sleep(HOLD).await;
        for i in 0..cluster.size() {
            cluster.heal(i);
        }
        faults.push(record(fault, "heal"));
        healed = Some(fault);
    }
    tokio::time::sleep(QUIET).await;
    cluster.wait_leader().await;
    if let Some(previous) = healed {
        faults.push(record(previous, "settled"));
    }

    let summary = tokio::time::timeout(run + Duration::from_secs(60), workload)
        .await
        .expect("the workload ends within its run and final bound")
        .expect("the workload task")
        .expect("the workload runs");
    eprintln!("{summary}");
    cluster.shutdown().await;
    let mut records = muster_check::history::read(&history).expect("the history parses");
    records.extend(faults);
    let report = muster_check::check(&records, &Options::default());
    eprintln!("{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_cluster_under_transport_faults_passes_every_checker() {
    let report = run_with_faults(
        |api| api,
        &[
            Fault::IsolateFollower,
            Fault::IsolateLeader,
            Fault::CutLeaderToFollower,
            Fault::DelayFollower,
        ],
    )
    .await;
    assert!(report.operations > 100, "the workload ran: {report}");
    assert!(report.is_valid(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_reading_without_the_barrier_are_caught_serving_stale_reads() {
    let report = run_with_faults(
        |api| api.with_stale_follower_reads(true),
        &[Fault::IsolateFollower],
    )
    .await;
    assert!(
        report.count(AnomalyKind::NotLinearizable) + report.count(AnomalyKind::RevisionOrder) > 0,
        "stale reads went unnoticed: {report}"
    );
}
