//! Committed writes per second through the Raft layer: a 3-member cluster
//! on loopback (real sled logs with fsync, the real peer transport), W
//! concurrent writers each putting keys through the leader and awaiting
//! every acknowledgement (applied on the leader, durable on a majority).
//!
//! Run: `cargo bench -p muster-raft --bench raft_writes`
//! Knobs (environment): WRITERS (64), DURATION_S (10), VALUE_BYTES (256),
//! MEMBERS (3). Prints a table and one JSON line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use muster_core::{Command, PutRequest};
use muster_raft::{CommandResult, RaftNode, RaftNodeConfig};
use openraft::{BasicNode, ServerState};
use tokio::net::TcpListener;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // Criterion-style runners pass `--bench`; this harness takes no flags.
    let writers = knob("WRITERS", 64);
    let seconds = knob("DURATION_S", 10);
    let value_bytes = knob("VALUE_BYTES", 256) as usize;
    let members = knob("MEMBERS", 3);

    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes = Vec::new();
    let mut membership = BTreeMap::new();
    for id in 1..=members {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        membership.insert(
            id,
            BasicNode::new(listener.local_addr().expect("addr").to_string()),
        );
        let config = RaftNodeConfig::new(id, dir.path().join(format!("member-{id}")));
        nodes.push(Arc::new(
            RaftNode::start(config, listener)
                .await
                .expect("start member"),
        ));
    }
    nodes[0].initialize(membership).await.expect("initialize");
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        let leader = nodes
            .iter()
            .find(|n| n.raft().metrics().borrow().state == ServerState::Leader);
        if let Some(node) = leader {
            break Arc::clone(node);
        }
        assert!(Instant::now() < deadline, "no leader within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let value = Bytes::from(vec![b'v'; value_bytes]);
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (leader, value) = (leader.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < stop_at {
                let key = Bytes::from(format!("/bench/w{w:03}/k{:06}", i % 1000));
                let command = Command::Put(PutRequest {
                    key,
                    value: value.clone(),
                    ..Default::default()
                });
                let t = Instant::now();
                match leader.write(command).await.expect("write") {
                    CommandResult::Applied(_) => {}
                    other => panic!("write was not applied: {other:?}"),
                }
                latencies.push(t.elapsed());
                i += 1;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("writer"));
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / elapsed.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "members {members}, writers {writers}, value {value_bytes} B, {:.1} s, fsync on",
        elapsed.as_secs_f64()
    );
    println!("committed writes   {:>10}", latencies.len());
    println!("writes/s           {rate:>10.0}");
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!(
            "latency {name:<6} ms {:>10.2}",
            ms(percentile(&latencies, p))
        );
    }
    println!(
        "latency max    ms {:>10.2}",
        ms(latencies.last().copied().unwrap_or_default())
    );
    println!(
        "{{\"bench\":\"raft_writes\",\"members\":{members},\"writers\":{writers},\"value_bytes\":{value_bytes},\"writes\":{},\"writes_per_s\":{rate:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    for node in &nodes {
        node.shutdown().await.expect("shutdown");
    }
}
