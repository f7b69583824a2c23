//! etcdctl against muster and against a real etcd, side by side: the same
//! command sequence on two empty stores, every command's exit status,
//! stdout and stderr compared after normalising what legitimately differs
//! (member, cluster and lease IDs, the Raft term, endpoints, timings and
//! temp paths).
//!
//! Needs Debian's `etcd-server` and `etcd-client` (scripts/test.sh installs
//! them); without them the test is skipped with a loud message. etcd runs
//! as a child process on free loopback ports in a temp dir and is killed at
//! the end; every command is bounded.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use muster_tests::{RealEtcd, TestCluster, Timings, installed};

/// Runs etcdctl 3.4 against `endpoint`, bounded by coreutils' `timeout`.
fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new("timeout");
    command
        .args(["10", "etcdctl", "--endpoints", endpoint])
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn etcdctl");
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("etcdctl output")
}

/// Replaces every maximal run of exactly 16 lowercase hex digits (a member
/// or lease ID as etcdctl prints it) with `<ID>`.
fn mask_hex_ids(text: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() == 16 && run.chars().any(|c| c.is_ascii_alphabetic() || c != '0') {
            out.push_str("<ID>");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || ('a'..='f').contains(&c) {
            run.push(c);
        } else if c.is_ascii_alphanumeric() {
            run.push(c);
            out.push_str(&run);
            run.clear();
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Replaces the value after each `marker` up to any of `ends` with `<N>`.
fn mask_after(text: &str, marker: &str, ends: &[char]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(marker) {
        out.push_str(&rest[..at + marker.len()]);
        rest = &rest[at + marker.len()..];
        let end = rest.find(|c| ends.contains(&c)).unwrap_or(rest.len());
        out.push_str("<N>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn normalise(text: &str, endpoint: &str, dir: &Path) -> String {
    let text = text
        .replace(endpoint, "<EP>")
        .replace(endpoint.trim_start_matches("http://"), "<EP>")
        .replace(&dir.display().to_string(), "<DIR>");
    let mut text = mask_hex_ids(&text);
    for marker in [
        "\"cluster_id\":",
        "\"member_id\":",
        "\"raft_term\":",
        "\"ID\":",
    ] {
        text = mask_after(&text, marker, &[',', '}']);
    }
    // etcdctl's own log lines: their time and per-process client name.
    text = mask_after(&text, "\"ts\":\"", &['"']);
    text = mask_after(&text, "\"target\":\"", &['"']);
    text = mask_after(&text, "remaining(", &[')']);
    mask_after(&text, "took = ", &['\n', ' '])
}

/// One step: etcdctl arguments (`{lease}` is replaced by the lease ID this
/// store granted in the `lease grant` step), optional stdin.
struct Step {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
}

const fn step(args: &'static [&'static str]) -> Step {
    Step { args, stdin: None }
}

const STEPS: &[Step] = &[
    step(&["put", "a", "1"]),
    step(&["put", "b", "2"]),
    step(&["get", "a"]),
    step(&["get", "", "--prefix"]),
    step(&["get", "", "--prefix", "-w", "json"]),
    step(&["get", "a", "--rev=2", "--print-value-only"]),
    step(&["get", "b", "--rev=99"]),
    step(&["del", "b"]),
    step(&["del", "nothing"]),
    step(&["put", "", "x"]),
    Step {
        args: &["txn"],
        stdin: Some("value(\"a\") = \"1\"\n\nput c 3\nput d 4\n\nput c failed\n\n"),
    },
    Step {
        args: &["txn", "-w", "json"],
        stdin: Some("mod(\"a\") > \"100\"\n\nput c x\n\nget c\n\n"),
    },
    step(&["get", "c", "-w", "json"]),
    step(&["lease", "grant", "60"]),
    step(&["put", "e", "5", "--lease={lease}"]),
    step(&["lease", "timetolive", "{lease}", "--keys"]),
    step(&["lease", "list"]),
    step(&["lease", "keep-alive", "--once", "{lease}"]),
    step(&["lease", "revoke", "{lease}"]),
    step(&["get", "e"]),
    step(&["lease", "timetolive", "{lease}"]),
    step(&["lease", "revoke", "{lease}"]),
    step(&["put", "f", "6", "--lease=1234"]),
    step(&["watch", "", "--prefix", "--rev=2"]),
    step(&["compaction", "4"]),
    step(&["get", "a", "--rev=3"]),
    step(&["compaction", "2"]),
    step(&["get", "", "--prefix", "--keys-only"]),
    step(&["endpoint", "health"]),
    step(&["alarm", "list"]),
];

/// Runs the steps against `endpoint`, normalised.
fn run(endpoint: &str, dir: &Path) -> Vec<(String, bool, String, String)> {
    let mut lease = String::new();
    let mut results = Vec::new();
    for step in STEPS {
        let args: Vec<String> = step
            .args
            .iter()
            .map(|a| a.replace("{lease}", &lease))
            .collect();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        // A watch never ends by itself: read the history for two seconds.
        let output = if args[0] == "watch" {
            let mut full = vec!["2", "etcdctl", "--endpoints", endpoint];
            full.append(&mut args);
            Command::new("timeout")
                .args(&full)
                .env("ETCDCTL_API", "3")
                .stdin(Stdio::null())
                .output()
                .expect("watch")
        } else {
            etcdctl(endpoint, &args, step.stdin)
        };
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        if step.args.starts_with(&["lease", "grant"]) {
            lease = stdout
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
        }
        results.push((
            step.args.join(" "),
            output.status.success(),
            normalise(&stdout, endpoint, dir),
            normalise(&String::from_utf8_lossy(&output.stderr), endpoint, dir),
        ));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_prints_the_same_against_muster_as_against_etcd() {
    if !installed("etcd") || !installed("etcdctl") {
        eprintln!(
            "SKIPPED: etcd and etcdctl are not installed; scripts/test.sh installs Debian's \
             etcd-server and etcd-client, and CI never skips this"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let etcd = RealEtcd::start(dir.path()).await;
    let cluster = TestCluster::start_with(
        1,
        Timings {
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
        },
    )
    .await;
    let muster_endpoint = cluster.endpoint(0);
    let etcd_endpoint = etcd.endpoint.clone();
    let dir_path = dir.path().to_path_buf();
    let (expected, got) = tokio::task::spawn_blocking(move || {
        (
            run(&etcd_endpoint, &dir_path),
            run(&muster_endpoint, &dir_path),
        )
    })
    .await
    .expect("etcdctl runs");
    drop(etcd);
    cluster.shutdown().await;

    let mut differences = Vec::new();
    for (want, have) in expected.iter().zip(&got) {
        if want != have {
            differences.push(format!(
                "etcdctl {}\n  etcd:   ok={} stdout={:?} stderr={:?}\n  muster: ok={} stdout={:?} stderr={:?}",
                want.0, want.1, want.2, want.3, have.1, have.2, have.3
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} commands differ:\n{}",
        differences.len(),
        expected.len(),
        differences.join("\n")
    );
}
