//! The `musterctl` binary against real `muster` processes: loopback ports
//! chosen free by the test, temp data dirs, every wait bounded (polls with a
//! deadline, never a sleep as synchronisation).

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::{free_port, is_started_line, spawn_member};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// Running members; terminated (SIGTERM, bounded wait) when dropped, so a
/// failing assertion does not leave processes behind.
struct Cluster {
    children: Vec<Child>,
    /// Client URLs, one per member.
    clients: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Starts `size` members of one new cluster on free ports and waits
/// (bounded) until each has logged "member started" and the cluster answers
/// a linearizable read through every member.
fn cluster(size: usize) -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let peers: Vec<String> = (0..size)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let clients: Vec<String> = (0..size)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("m{i}={p}"))
        .collect();
    let initial = initial.join(",");
    let (lines, log) = mpsc::channel();
    let children = (0..size)
        .map(|i| {
            let args: Vec<String> = [
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.path().join(format!("m{i}")).display().to_string(),
                "--listen-peer-urls",
                &peers[i],
                "--initial-advertise-peer-urls",
                &peers[i],
                "--listen-client-urls",
                &clients[i],
                "--advertise-client-urls",
                &clients[i],
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                "musterctl",
            ]
            .map(str::to_string)
            .to_vec();
            spawn_member(i, &args, &lines)
        })
        .collect();
    let cluster = Cluster {
        children,
        clients,
        _dir: dir,
    };
    let mut started = std::collections::HashSet::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + START_TIMEOUT;
    while started.len() < size {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((i, line)) = log.recv_timeout(left) else {
            panic!(
                "not every member logged 'member started' within {START_TIMEOUT:?}; their logs:\n{}",
                seen.join("\n")
            );
        };
        if is_started_line(&line) {
            started.insert(i);
        }
        seen.push(format!("m{i}: {line}"));
    }
    // Keep draining the logs so the members never block on a full pipe.
    std::thread::spawn(move || while log.recv().is_ok() {});
    // A leader is elected once a linearizable read succeeds everywhere.
    for endpoint in &cluster.clients {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let get = musterctl(endpoint, &["--command-timeout=1s", "get", "ready"]);
            if get.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no linearizable read through {endpoint}: {}",
                err(&get)
            );
            std::thread::sleep(Duration::from_millis(50)); // poll interval
        }
    }
    cluster
}

/// Runs `musterctl --endpoints <endpoints> <args>` to completion, bounded.
fn musterctl(endpoints: &str, args: &[&str]) -> Output {
    musterctl_with_stdin(endpoints, args, "")
}

/// As [`musterctl`], with `stdin` written to the process's standard input.
fn musterctl_with_stdin(endpoints: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_musterctl"))
        .args(["--endpoints", endpoints])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn musterctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    wait_bounded(child, RUN_TIMEOUT)
}

/// Waits for `child` to exit within `within`, collecting its output.
fn wait_bounded(mut child: Child, within: Duration) -> Output {
    // Read the pipes on threads so a chatty child never blocks on them.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut buffer);
        buffer
    });
    let errors = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut buffer);
        buffer
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("musterctl did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: errors.join().expect("stderr reader"),
    }
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn err(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "musterctl failed ({}): {}",
        output.status,
        err(&output)
    );
    text(&output)
}

#[test]
fn put_get_and_del_with_prefix_and_json_output() {
    let cluster = cluster(1);
    let ep = cluster.clients[0].trim_start_matches("http://").to_string();
    let run = |args: &[&str]| musterctl(&ep, args);
    assert_eq!(
        ok(run(&["put", "/registry/api/1", "10.0.0.1:8080"])),
        "OK\n"
    );
    assert_eq!(
        ok(run(&["put", "/registry/api/2", "10.0.0.2:8080"])),
        "OK\n"
    );
    assert_eq!(ok(run(&["put", "/registry/other", "x"])), "OK\n");
    assert_eq!(
        ok(run(&["get", "/registry/api/", "--prefix"])),
        "/registry/api/1\n10.0.0.1:8080\n/registry/api/2\n10.0.0.2:8080\n"
    );
    assert_eq!(
        ok(run(&[
            "get",
            "/registry/api/2",
            "--print-value-only",
            "--consistency=s"
        ])),
        "10.0.0.2:8080\n"
    );
    assert_eq!(
        ok(run(&[
            "get",
            "/registry/api/",
            "--prefix",
            "--keys-only",
            "--order=DESCEND",
            "--limit=1"
        ])),
        "/registry/api/2\n\n"
    );
    let json = ok(run(&["get", "/registry/api/", "--prefix", "-w", "json"]));
    assert!(json.contains("\"count\":2"), "{json}");
    // Keys and values are base64 as in etcdctl's JSON: "/registry/api/1".
    assert!(json.contains("\"key\":\"L3JlZ2lzdHJ5L2FwaS8x\""), "{json}");
    assert!(json.starts_with("{\"header\":{\"cluster_id\":"), "{json}");

    let put_prev = ok(run(&[
        "put",
        "/registry/api/1",
        "10.0.0.9:8080",
        "--prev-kv",
    ]));
    assert_eq!(put_prev, "OK\n/registry/api/1\n10.0.0.1:8080\n");

    assert_eq!(ok(run(&["del", "/registry/api/", "--prefix"])), "2\n");
    assert_eq!(ok(run(&["get", "/registry/api/", "--prefix"])), "");
    let deleted = ok(run(&["del", "/registry/other", "-w", "json"]));
    assert!(deleted.contains("\"deleted\":1"), "{deleted}");
}

#[test]
fn a_transaction_is_read_from_stdin() {
    let cluster = cluster(1);
    let ep = &cluster.clients[0];
    ok(musterctl(ep, &["put", "/svc/leader", "a"]));
    let txn = "val(\"/svc/leader\") = \"a\"\n\nput /svc/leader \"b c\"\nget /svc/ --prefix\n\nput /svc/lost x\n\n";
    let output = ok(musterctl_with_stdin(ep, &["txn"], txn));
    assert_eq!(output, "SUCCESS\n\nOK\n\n/svc/leader\nb c\n");
    // The compare fails now: the failure branch runs.
    let output = ok(musterctl_with_stdin(ep, &["txn", "-w", "json"], txn));
    assert!(output.contains("\"response_put\""), "{output}");
    assert!(!output.contains("\"succeeded\""), "{output}");
    assert_eq!(
        ok(musterctl(ep, &["get", "/svc/lost", "--print-value-only"])),
        "x\n"
    );
    // A malformed compare is refused before anything is sent.
    let bad = musterctl_with_stdin(ep, &["txn"], "mod(/svc/leader) >\n\n\n");
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        err(&bad).starts_with("Error: malformed comparison"),
        "{}",
        err(&bad)
    );
}

#[test]
fn a_lease_is_granted_attached_inspected_and_revoked() {
    let cluster = cluster(1);
    let ep = &cluster.clients[0];
    let granted = ok(musterctl(ep, &["lease", "grant", "60"]));
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("an ID")
        .to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(id.len(), 16, "{granted}");
    ok(musterctl(
        ep,
        &["put", "/svc/api/1", "10.0.0.1", "--lease", &id],
    ));
    let ttl = ok(musterctl(ep, &["lease", "timetolive", &id, "--keys"]));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with("attached keys([/svc/api/1])\n"), "{ttl}");
    let list = ok(musterctl(ep, &["lease", "list"]));
    assert_eq!(list, format!("found 1 leases\n{id}\n"));
    let kept = ok(musterctl(ep, &["lease", "keep-alive", &id, "--once"]));
    assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"));
    assert_eq!(
        ok(musterctl(ep, &["lease", "revoke", &id])),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(musterctl(ep, &["get", "/svc/api/1"])), "");
    assert_eq!(
        ok(musterctl(ep, &["lease", "timetolive", &id])),
        format!("lease {id} already expired\n")
    );
}

#[test]
fn a_watch_bounded_by_max_events_receives_a_put() {
    let cluster = cluster(1);
    let ep = cluster.clients[0].clone();
    let put = ok(musterctl(
        &ep,
        &["put", "/svc/api/0", "before", "-w", "json"],
    ));
    // Watch from the next revision: no race between starting the watcher
    // and the put below.
    let revision: i64 = put
        .split("\"revision\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .expect("a revision in the put's header");
    let watcher = Command::new(env!("CARGO_BIN_EXE_musterctl"))
        .args([
            "--endpoints",
            &ep,
            "watch",
            "/svc/",
            "--prefix",
            "--prev-kv",
        ])
        .args(["--rev", &(revision + 1).to_string()])
        .args(["--max-events", "1", "--timeout", "15s"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    ok(musterctl(&ep, &["put", "/svc/api/0", "after"]));
    let watched = wait_bounded(watcher, RUN_TIMEOUT);
    assert_eq!(ok(watched), "PUT\n/svc/api/0\nbefore\n/svc/api/0\nafter\n");
}

#[test]
fn member_list_endpoint_health_alarm_list_and_snapshot_save() {
    let cluster = cluster(1);
    let ep = &cluster.clients[0];
    // A member publishes its name (and so shows as "started") shortly
    // after it starts serving: poll, bounded.
    let deadline = Instant::now() + START_TIMEOUT;
    let members = loop {
        let members = ok(musterctl(ep, &["member", "list"]));
        if members.contains(", started, ") || Instant::now() > deadline {
            break members;
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval
    };
    // "<hex id>, started, m0, <peer url>, <client url>, false"
    let fields: Vec<&str> = members.trim_end().split(", ").collect();
    assert_eq!(fields.len(), 6, "{members}");
    assert!(u64::from_str_radix(fields[0], 16).is_ok(), "{members}");
    assert_eq!(&fields[1..3], ["started", "m0"]);
    assert_eq!(fields[4], ep.as_str());
    assert_eq!(fields[5], "false");
    let json = ok(musterctl(ep, &["member", "list", "-w", "json"]));
    assert!(json.contains("\"peerURLs\":[\"http://127.0.0.1:"), "{json}");

    let health = ok(musterctl(ep, &["endpoint", "health"]));
    assert!(
        health.starts_with(&format!(
            "{ep} is healthy: successfully committed proposal: took = "
        )),
        "{health}"
    );

    assert_eq!(ok(musterctl(ep, &["alarm", "list"])), "");

    ok(musterctl(ep, &["put", "/svc/api/1", "10.0.0.1"]));
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backup.db");
    let saved = ok(musterctl(
        ep,
        &["snapshot", "save", &file.display().to_string()],
    ));
    assert_eq!(saved, format!("Snapshot saved at {}\n", file.display()));
    let size = std::fs::metadata(&file).expect("snapshot written").len();
    assert!(size > 0, "an empty snapshot");
    assert!(!Path::new(&format!("{}.part", file.display())).exists());
}

#[test]
fn endpoint_status_prints_a_table_row_per_endpoint_of_three_members() {
    let cluster = cluster(3);
    let endpoints = format!("{},{}", cluster.clients[0], cluster.clients[2]);
    let table = ok(musterctl(
        &endpoints,
        &["endpoint", "status", "-w", "table"],
    ));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "border, header, border, two rows, border:\n{table}"
    );
    assert!(
        lines[1].contains("ENDPOINT") && lines[1].contains("RAFT APPLIED INDEX"),
        "{table}"
    );
    assert!(
        lines[3].contains(&format!("| {} |", cluster.clients[0])),
        "{table}"
    );
    assert!(
        lines[4].contains(&format!("| {} |", cluster.clients[2])),
        "{table}"
    );
    for row in &lines[3..5] {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // "", endpoint, id, version, db size, is leader, is learner, ...
        assert!(u64::from_str_radix(cells[2], 16).is_ok(), "{row}");
        assert!(["true", "false"].contains(&cells[5]), "{row}");
        assert_eq!(cells[6], "false", "{row}");
    }
    // Two distinct members answered.
    assert_ne!(
        lines[3].split('|').nth(2),
        lines[4].split('|').nth(2),
        "{table}"
    );
    // Every endpoint is healthy, and member list sees all three.
    let all = cluster.clients.join(",");
    let health = ok(musterctl(&all, &["endpoint", "health"]));
    assert_eq!(health.lines().count(), 3, "{health}");
    let members = ok(musterctl(&all, &["member", "list"]));
    assert_eq!(members.lines().count(), 3, "{members}");
}

#[test]
fn a_future_revision_is_an_error_with_etcds_words() {
    let cluster = cluster(1);
    let ep = &cluster.clients[0];
    ok(musterctl(ep, &["put", "k", "v"]));
    let get = musterctl(ep, &["get", "k", "--rev", "1000"]);
    assert_eq!(get.status.code(), Some(1));
    assert_eq!(
        err(&get),
        "Error: etcdserver: mvcc: required revision is a future revision\n"
    );
    assert_eq!(text(&get), "");
}

#[test]
fn usage_errors_exit_2_and_an_unreachable_endpoint_exits_1_in_time() {
    let usage = musterctl("127.0.0.1:1", &["get"]);
    assert_eq!(usage.status.code(), Some(2), "{}", err(&usage));
    let started = Instant::now();
    let unreachable = musterctl(
        &format!("127.0.0.1:{}", free_port()),
        &["--dial-timeout=500ms", "get", "k"],
    );
    assert_eq!(unreachable.status.code(), Some(1));
    assert_eq!(err(&unreachable), "Error: context deadline exceeded\n");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn completions_are_printed_for_bash() {
    let completion = ok(musterctl("127.0.0.1:1", &["completion", "bash"]));
    assert!(completion.contains("musterctl"), "{completion}");
}
