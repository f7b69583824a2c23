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
///
/// A port [`free_port`] found free may be taken (by another test's member
/// or probe) before the member binds it: a start that fails so is retried
/// on fresh ports, at most twice.
fn cluster(size: usize) -> Cluster {
    let mut attempt = 1;
    let cluster = loop {
        match start_members(size) {
            Ok(cluster) => break cluster,
            Err(logs) if attempt < 3 && logs.contains("Address already in use") => {
                eprintln!("start {attempt} lost a port to another process; retrying");
                attempt += 1;
            }
            Err(logs) => panic!("{logs}"),
        }
    };
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

/// Spawns `size` members of one new cluster on free ports and waits
/// (bounded) until each has logged "member started". Fails, with the
/// members' logs, when that takes longer than [`START_TIMEOUT`] or as soon
/// as a member has exited (half a second later, so its last words are in).
fn start_members(size: usize) -> Result<Cluster, String> {
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
    let mut cluster = Cluster {
        children,
        clients,
        _dir: dir,
    };
    let mut started = std::collections::HashSet::new();
    let mut seen = Vec::new();
    let deadline = Instant::now() + START_TIMEOUT;
    let mut exited: Option<(usize, Instant)> = None;
    while started.len() < size {
        let now = Instant::now();
        if let Some((i, at)) = exited
            && now > at + Duration::from_millis(500)
        {
            return Err(format!(
                "member m{i} exited while starting; the members' logs:\n{}",
                seen.join("\n")
            ));
        }
        if now > deadline {
            return Err(format!(
                "not every member logged 'member started' within {START_TIMEOUT:?}; their logs:\n{}",
                seen.join("\n")
            ));
        }
        // Wake at least every 100 ms to notice a member that exited.
        match log.recv_timeout(Duration::from_millis(100)) {
            Ok((i, line)) => {
                if is_started_line(&line) {
                    started.insert(i);
                }
                seen.push(format!("m{i}: {line}"));
            }
            Err(_) if exited.is_none() => {
                exited = cluster
                    .children
                    .iter_mut()
                    .position(|c| c.try_wait().ok().flatten().is_some())
                    .map(|i| (i, Instant::now()));
            }
            Err(_) => {}
        }
    }
    // Keep draining the logs so the members never block on a full pipe.
    std::thread::spawn(move || while log.recv().is_ok() {});
    Ok(cluster)
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

/// Kills (SIGKILL) and reaps a long-running `musterctl` when dropped, so a
/// failing assertion does not leave it behind.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `musterctl --endpoints <endpoints> <args>` in the background; its
/// stdout lines arrive on the returned channel (stderr is discarded).
fn musterctl_lines(endpoints: &str, args: &[&str]) -> (Background, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_musterctl"))
        .args(["--endpoints", endpoints])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn musterctl");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    (Background(child), lines)
}

/// Parses one JSON document printed by `musterctl -w json`.
fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// (endpoint, member ID, leader ID) of every endpoint of `endpoints`, from
/// `endpoint status -w json`; `None` if some endpoint did not answer.
fn statuses(endpoints: &str) -> Option<Vec<(String, u64, u64)>> {
    let output = musterctl(endpoints, &["endpoint", "status", "-w", "json"]);
    if !output.status.success() {
        return None;
    }
    let parsed = json(&text(&output));
    let rows = parsed
        .as_array()
        .expect("an array of endpoint statuses")
        .iter()
        .map(|entry| {
            let status = &entry["Status"];
            (
                entry["Endpoint"].as_str().expect("Endpoint").to_string(),
                status["header"]["member_id"].as_u64().expect("member_id"),
                // Omitted (as Go's omitempty) while no leader is known.
                status["leader"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Some(rows)
}

/// Waits (bounded) until `member list` shows `size` members, every one
/// started: each has published its name and client URLs, which it does
/// shortly after it starts serving.
fn wait_all_started(endpoints: &str, size: usize) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let rows = member_rows(endpoints);
        if rows.len() == size && rows.iter().all(|r| r[1] == "started") {
            return;
        }
        assert!(Instant::now() < deadline, "not all started: {rows:?}");
        std::thread::sleep(Duration::from_millis(50)); // poll interval
    }
}

/// A loopback port bound, but not listening, while the socket lives: the
/// peer URL of a member that never starts. Connections to it are refused,
/// and no other test's [`free_port`] can hand it to a member meanwhile
/// (this cluster's leader would send that member its Raft traffic).
fn reserved_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(([127, 0, 0, 1], 0).into())
        .expect("bind a loopback port");
    let port = socket.local_addr().expect("local address").port();
    (socket, port)
}

/// `member list` in simple output, one row of fields per member.
fn member_rows(endpoints: &str) -> Vec<Vec<String>> {
    ok(musterctl(endpoints, &["member", "list"]))
        .lines()
        .map(|line| line.split(", ").map(str::to_string).collect())
        .collect()
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

/// A learner is added (unstarted, with the environment a new member needs),
/// listed as an unstarted learner, refused promotion with etcd's error while
/// it has not caught up, has its peer URL updated and is removed: the
/// cluster is back to its three voters.
#[test]
fn a_learner_is_added_updated_refused_promotion_and_removed() {
    let cluster = cluster(3);
    let all = cluster.clients.join(",");
    let (_peer_port, port) = reserved_port();
    let peer = format!("http://127.0.0.1:{port}");
    let added = ok(musterctl(
        &all,
        &[
            "member",
            "add",
            "m3",
            "--learner",
            &format!("--peer-urls={peer}"),
        ],
    ));
    // "Member <%16x id> added to cluster <%16x cluster id>" (etcdctl 3.4
    // says "added" for a learner too), then the new member's environment.
    let first = added.lines().next().expect("a first line");
    let words: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{added}");
    assert_eq!(
        [words[0], words[2], words[3], words[4]],
        ["Member", "added", "to", "cluster"],
        "{added}"
    );
    let id = words[1].to_string();
    let id_number = u64::from_str_radix(&id, 16).expect("a hex member ID");
    assert!(
        first.starts_with(&format!("Member {id_number:16x} added")),
        "{added}"
    );
    for prefix in ["ETCD", "MUSTER"] {
        assert!(
            added.contains(&format!("\n{prefix}_NAME=\"m3\"\n")),
            "{added}"
        );
        assert!(
            added.contains(&format!(
                "\n{prefix}_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"\n"
            )),
            "{added}"
        );
        assert!(
            added.contains(&format!("\n{prefix}_INITIAL_CLUSTER_STATE=\"existing\"\n")),
            "{added}"
        );
        let initial = added
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{prefix}_INITIAL_CLUSTER=\"")))
            .expect("an initial cluster")
            .trim_end_matches('"');
        let names: Vec<&str> = initial.split(',').collect();
        assert_eq!(names.len(), 4, "{added}");
        assert!(names.contains(&format!("m3={peer}").as_str()), "{added}");
    }

    // Listed (through every member) as an unstarted learner: no name, no
    // client URLs.
    for endpoint in &cluster.clients {
        let rows = member_rows(endpoint);
        assert_eq!(rows.len(), 4, "{rows:?}");
        let learner = rows.iter().find(|r| r[0] == id).expect("the learner");
        assert_eq!(
            learner,
            &[&id, "unstarted", "", &peer, "", "true"],
            "{rows:?}"
        );
        let voters = rows.iter().filter(|r| r[5] == "false").count();
        assert_eq!(voters, 3, "{rows:?}");
    }

    // A learner that never started has none of the leader's log.
    let promote = musterctl(&all, &["member", "promote", &id]);
    assert_eq!(promote.status.code(), Some(1), "{}", text(&promote));
    assert_eq!(
        err(&promote),
        "Error: etcdserver: can only promote a learner member which is in sync with leader\n"
    );
    assert_eq!(text(&promote), "");

    let (_other_port, port) = reserved_port();
    let other = format!("http://127.0.0.1:{port}");
    let updated = ok(musterctl(
        &all,
        &["member", "update", &id, &format!("--peer-urls={other}")],
    ));
    assert!(
        updated.starts_with(&format!("Member {id_number:16x} updated in cluster ")),
        "{updated}"
    );
    let rows = member_rows(&all);
    let learner = rows.iter().find(|r| r[0] == id).expect("the learner");
    assert_eq!(
        learner,
        &[&id, "unstarted", "", &other, "", "true"],
        "{rows:?}"
    );
    // The JSON list agrees.
    let listed = json(&ok(musterctl(&all, &["member", "list", "-w", "json"])));
    let member = listed["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["ID"].as_u64() == Some(id_number))
        .unwrap_or_else(|| panic!("the learner in {listed}"));
    assert_eq!(member["peerURLs"], serde_json::json!([other]), "{listed}");
    assert_eq!(member["isLearner"], serde_json::json!(true), "{listed}");

    let removed = ok(musterctl(&all, &["member", "remove", &id]));
    assert!(
        removed.starts_with(&format!("Member {id_number:16x} removed from cluster ")),
        "{removed}"
    );
    let rows = member_rows(&all);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r[0] != id && r[5] == "false"),
        "{rows:?}"
    );

    // Removing it again: etcd's "member not found".
    let again = musterctl(&all, &["member", "remove", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(err(&again), "Error: etcdserver: member not found\n");
    // The cluster still serves writes with its three voters.
    assert_eq!(ok(musterctl(&all, &["put", "after", "removal"])), "OK\n");
}

/// `move-leader` finds the leader among the endpoints and hands leadership
/// to a follower of a three-voter cluster (where the move is certain, see
/// README's Semantics); every member then reports the new leader. A target
/// that is not a member is refused with etcd's "bad leader transferee", and
/// endpoints without the leader are refused before anything is sent.
#[test]
fn move_leader_hands_leadership_to_a_follower_of_three_voters() {
    let cluster = cluster(3);
    let all = cluster.clients.join(",");
    let before = statuses(&all).expect("every endpoint's status");
    assert_eq!(before.len(), 3, "{before:?}");
    let leader = before[0].2;
    assert_ne!(leader, 0, "{before:?}");
    assert!(
        before.iter().all(|(_, _, l)| *l == leader),
        "members disagree on the leader: {before:?}"
    );
    let (old_endpoint, _, _) = before
        .iter()
        .find(|(_, member, _)| *member == leader)
        .expect("the leader is a member")
        .clone();
    let (_, target, _) = *before
        .iter()
        .find(|(_, member, _)| *member != leader)
        .expect("a follower");

    let moved = ok(musterctl(
        &all,
        &[
            "--command-timeout=10s",
            "move-leader",
            &format!("{target:x}"),
        ],
    ));
    assert_eq!(
        moved,
        format!("Leadership transferred from {leader:x} to {target:x}\n")
    );
    // Every member learns of the new leader: poll, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = statuses(&all);
        if after
            .as_ref()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|(_, _, l)| *l == target))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every member reports leader {target:x}: {after:?}"
        );
        std::thread::sleep(Duration::from_millis(50)); // poll interval
    }
    // The cluster serves writes under its new leader.
    assert_eq!(ok(musterctl(&all, &["put", "moved", "yes"])), "OK\n");

    // Not a member: etcd's ErrBadLeaderTransferee, leadership unchanged.
    let bad = musterctl(&all, &["move-leader", "1234abcd"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert_eq!(err(&bad), "Error: etcdserver: bad leader transferee\n");
    let after = statuses(&all).expect("every endpoint's status");
    assert!(after.iter().all(|(_, _, l)| *l == target), "{after:?}");

    // Only the old leader (now a follower) given: no leader to ask.
    let no_leader = musterctl(&old_endpoint, &["move-leader", &format!("{leader:x}")]);
    assert_eq!(no_leader.status.code(), Some(1), "{}", text(&no_leader));
    assert!(
        err(&no_leader).starts_with("Error: no leader endpoint given at "),
        "{}",
        err(&no_leader)
    );
}

/// After some writes every member reports the same `HashKV` hash at the
/// same revision (simple, JSON and `--cluster` forms), a hash of an earlier
/// revision differs but agrees again, and `alarm disarm` with no alarm
/// raised succeeds printing nothing, as etcdctl does.
#[test]
fn hashkv_agrees_on_every_member_and_disarming_no_alarm_prints_nothing() {
    let cluster = cluster(3);
    let all = cluster.clients.join(",");
    // `--cluster` below reads the client URLs the members publish.
    wait_all_started(&all, 3);
    for i in 0..5 {
        ok(musterctl(
            &all,
            &["put", &format!("/svc/api/{i}"), "10.0.0.1"],
        ));
    }
    ok(musterctl(&all, &["del", "/svc/api/0"]));
    let put = json(&ok(musterctl(
        &all,
        &["put", "/svc/last", "x", "-w", "json"],
    )));
    let revision = put["header"]["revision"].as_i64().expect("a revision");
    // A linearizable read through each member: each has applied the writes.
    for endpoint in &cluster.clients {
        assert_eq!(
            ok(musterctl(
                endpoint,
                &["get", "/svc/last", "--print-value-only"]
            )),
            "x\n"
        );
    }

    let hashes = |args: &[&str]| -> Vec<(String, u64, i64)> {
        let mut command = vec!["endpoint", "hashkv", "-w", "json"];
        command.extend_from_slice(args);
        let parsed = json(&ok(musterctl(&all, &command)));
        parsed
            .as_array()
            .expect("an array of hashes")
            .iter()
            .map(|entry| {
                let hash = &entry["HashKV"];
                (
                    entry["Endpoint"].as_str().expect("Endpoint").to_string(),
                    hash["hash"].as_u64().expect("a non-zero hash"),
                    hash["header"]["revision"].as_i64().expect("a revision"),
                )
            })
            .collect()
    };
    let latest = hashes(&[]);
    let endpoints: Vec<&str> = latest.iter().map(|(e, _, _)| e.as_str()).collect();
    assert_eq!(endpoints, cluster.clients, "{latest:?}");
    let hash = latest[0].1;
    assert!(
        latest.iter().all(|(_, h, r)| *h == hash && *r == revision),
        "hash {hash} at revision {revision} everywhere: {latest:?}"
    );
    let at_revision = hashes(&["--rev", &revision.to_string()]);
    assert!(
        at_revision.iter().all(|(_, h, _)| *h == hash),
        "{at_revision:?}"
    );
    let earlier = hashes(&["--rev", &(revision - 1).to_string()]);
    let earlier_hash = earlier[0].1;
    assert_ne!(earlier_hash, hash, "the last put changed nothing hashed");
    assert!(
        earlier.iter().all(|(_, h, _)| *h == earlier_hash),
        "{earlier:?}"
    );

    // Simple output: "<endpoint>, <hash>" per endpoint, in order.
    let simple = ok(musterctl(&all, &["endpoint", "hashkv"]));
    let expected: String = cluster
        .clients
        .iter()
        .map(|endpoint| format!("{endpoint}, {hash}\n"))
        .collect();
    assert_eq!(simple, expected);
    // --cluster asks every member in the member list, through any one.
    let through_one = ok(musterctl(
        &cluster.clients[1],
        &["endpoint", "hashkv", "--cluster"],
    ));
    let mut rows: Vec<&str> = through_one.lines().collect();
    rows.sort_unstable();
    let mut expected: Vec<&str> = expected.lines().collect();
    expected.sort_unstable();
    assert_eq!(rows, expected, "{through_one}");

    // No alarm raised: disarming succeeds and prints nothing, and none is
    // listed afterwards.
    assert_eq!(ok(musterctl(&all, &["alarm", "disarm"])), "");
    assert_eq!(ok(musterctl(&all, &["alarm", "list"])), "");
    let listed = json(&ok(musterctl(&all, &["alarm", "list", "-w", "json"])));
    assert!(
        listed["alarms"].as_array().is_none_or(Vec::is_empty),
        "{listed}"
    );
}

/// A TTL-2 lease kept alive by `lease keep-alive` (one renewal every third
/// of the TTL) keeps its key past the TTL; once the keep-alive is killed the
/// lease expires and takes the key with it, and a keep-alive of the expired
/// lease prints etcdctl's "expired or revoked." and exits 0.
#[test]
fn a_kept_alive_lease_outlives_its_ttl_and_expires_once_the_keep_alive_stops() {
    let cluster = cluster(1);
    let ep = cluster.clients[0].clone();
    // 2 s is the least TTL granted: ceil(1.5 × the default 1 s election
    // timeout the members run with).
    let granted = ok(musterctl(&ep, &["lease", "grant", "2"]));
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("an ID")
        .to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(2s)\n"));
    ok(musterctl(
        &ep,
        &["put", "/svc/api/1", "10.0.0.1", "--lease", &id],
    ));
    let renewed_from = Instant::now();

    let once = json(&ok(musterctl(
        &ep,
        &["lease", "keep-alive", &id, "--once", "-w", "json"],
    )));
    assert_eq!(once["TTL"], serde_json::json!(2), "{once}");
    assert_eq!(
        once["ID"].as_i64().map(|n| format!("{n:016x}")),
        Some(id.clone()),
        "{once}"
    );
    assert!(once["revision"].as_i64().is_some(), "{once}");

    let (keep_alive, lines) = musterctl_lines(&ep, &["lease", "keep-alive", &id]);
    // Read renewals until they have kept the lease for more than its TTL
    // (the first line comes at once, then one every ~667 ms).
    let expected = format!("lease {id} keepalived with TTL(2)");
    let mut renewals = 0;
    let mut last_renewal = Instant::now();
    while renewals < 2 || renewed_from.elapsed() < Duration::from_secs(3) {
        let line = lines
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no renewal within 5 s after {renewals}"));
        last_renewal = Instant::now();
        assert_eq!(line, expected);
        renewals += 1;
    }
    assert_eq!(
        ok(musterctl(&ep, &["get", "/svc/api/1", "--print-value-only"])),
        "10.0.0.1\n",
        "the key outlived its lease's TTL only through the renewals"
    );
    let ttl = ok(musterctl(&ep, &["lease", "timetolive", &id]));
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(2s), remaining(")),
        "{ttl}"
    );

    drop(keep_alive);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ok(musterctl(&ep, &["get", "/svc/api/1"])).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the key outlived its unrenewed lease"
        );
        std::thread::sleep(Duration::from_millis(100)); // poll interval
    }
    // Not before its TTL ran out after the last renewal seen (less a
    // margin: the member renewed a little before the line arrived).
    let lived = last_renewal.elapsed();
    assert!(lived > Duration::from_millis(1500), "gone {lived:?} after");
    assert_eq!(
        ok(musterctl(&ep, &["lease", "timetolive", &id])),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        ok(musterctl(&ep, &["lease", "keep-alive", &id])),
        format!("lease {id} expired or revoked.\n")
    );
}

/// `lease keep-alive --once` of a lease that no longer exists fails as
/// etcdctl 3.4's does (its `KeepAliveOnce` turns the server's TTL-0 answer
/// into `ErrLeaseNotFound`): "Error: etcdserver: requested lease not found".
#[test]
fn keep_alive_once_of_a_revoked_lease_fails_with_lease_not_found() {
    let cluster = cluster(1);
    let ep = &cluster.clients[0];
    let granted = ok(musterctl(ep, &["lease", "grant", "60"]));
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("an ID")
        .to_string();
    ok(musterctl(ep, &["lease", "revoke", &id]));
    let once = musterctl(ep, &["lease", "keep-alive", &id, "--once"]);
    assert_eq!(text(&once), "");
    assert_eq!(err(&once), "Error: etcdserver: requested lease not found\n");
    assert_eq!(once.status.code(), Some(1));
}

/// `move-leader` given only followers fails as etcdctl 3.4's does, naming
/// the endpoints as Go prints a `[]string`: "Error: no leader endpoint
/// given at [<endpoint> <endpoint>]".
#[test]
fn move_leader_without_the_leader_names_the_endpoints_as_etcdctl() {
    let cluster = cluster(3);
    let all = cluster.clients.join(",");
    let statuses = statuses(&all).expect("every endpoint's status");
    let followers: Vec<&str> = statuses
        .iter()
        .filter(|(_, member, leader)| member != leader)
        .map(|(endpoint, _, _)| endpoint.as_str())
        .collect();
    assert_eq!(followers.len(), 2, "{statuses:?}");
    let moved = musterctl(&followers.join(","), &["move-leader", "1"]);
    assert_eq!(text(&moved), "");
    assert_eq!(
        err(&moved),
        format!(
            "Error: no leader endpoint given at [{}]\n",
            followers.join(" ")
        )
    );
    assert_eq!(moved.status.code(), Some(1));
}

/// `service register` holds an instance while it runs; `list`, `resolve`
/// and `watch` see it; a killed registrant's instance stays until its lease
/// expires unless `deregister` removes it; bad input is refused naming the
/// field.
#[test]
fn service_commands_register_list_resolve_watch_and_deregister() {
    let cluster = cluster(1);
    let ep = cluster.clients[0].clone();
    let (mut registrant, lines) = musterctl_lines(
        &ep,
        &[
            "service",
            "register",
            "api",
            "api-1",
            "10.0.0.1:8080",
            "--tag",
            "v1",
            "--meta",
            "commit=4f2a",
            "--weight",
            "3",
            "--zone",
            "eu-1a",
            "--ttl",
            "30",
        ],
    );
    let first = lines
        .recv_timeout(RUN_TIMEOUT)
        .expect("register prints a line");
    assert!(
        first.starts_with("registered /registry/services/api/api-1 with lease "),
        "{first}"
    );
    let (_second, _) = musterctl_lines(
        &ep,
        &[
            "service",
            "register",
            "api",
            "api-2",
            "10.0.0.2:8080",
            "--health",
            "critical",
        ],
    );

    // Wait until both are listed.
    let deadline = Instant::now() + RUN_TIMEOUT;
    let listed = loop {
        let listed = ok(musterctl(&ep, &["service", "list", "api"]));
        if listed.lines().count() == 3 {
            break listed;
        }
        assert!(Instant::now() < deadline, "not both listed: {listed}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "SERVICE", "ID", "ADDRESS", "HEALTH", "WEIGHT", "ZONE", "TAGS"
        ]
    );
    assert_eq!(
        rows[1],
        [
            "api",
            "api-1",
            "10.0.0.1:8080",
            "passing",
            "3",
            "eu-1a",
            "v1"
        ]
    );
    assert_eq!(rows[2], ["api", "api-2", "10.0.0.2:8080", "critical", "1"]);
    let passing = ok(musterctl(
        &ep,
        &["service", "list", "--health", "passing", "-w", "json"],
    ));
    let passing = json(&passing);
    assert_eq!(passing["instances"].as_array().unwrap().len(), 1);
    assert_eq!(passing["instances"][0]["meta"]["commit"], "4f2a");

    // resolve picks only the healthy one, whatever the balancer.
    for balancer in ["round-robin", "weighted", "least-outstanding"] {
        let picked = ok(musterctl(
            &ep,
            &["service", "resolve", "api", "--balancer", balancer],
        ));
        assert_eq!(picked, "10.0.0.1:8080\n");
    }
    let none = musterctl(&ep, &["service", "resolve", "nothing"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(err(&none).contains("no healthy instance"), "{}", err(&none));

    // The same key, as etcd clients see it: the resolver's JSON.
    let raw = ok(musterctl(
        &ep,
        &["get", "/registry/services/api/api-1", "--print-value-only"],
    ));
    assert!(
        raw.starts_with(r#"{"Addr":"10.0.0.1:8080","Metadata":{"version":1,"#),
        "{raw}"
    );

    // Killed: the instance stays until its lease expires (30 s), and a
    // watcher sees the deregistration remove it.
    registrant.0.kill().expect("kill the registrant");
    let (_watch, events) = musterctl_lines(&ep, &["service", "watch", "api", "--max-events", "3"]);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(events.recv_timeout(RUN_TIMEOUT).expect("the snapshot"));
    }
    assert_eq!(seen[0], "PUT api/api-1 10.0.0.1:8080 passing");
    ok(musterctl(&ep, &["service", "deregister", "api", "api-1"]));
    assert_eq!(
        events.recv_timeout(RUN_TIMEOUT).expect("the removal"),
        "DELETE api/api-1"
    );
    let gone = musterctl(&ep, &["service", "deregister", "api", "api-1"]);
    assert_eq!(gone.status.code(), Some(1));

    // Bad input names the field; nothing is written.
    let bad = musterctl(&ep, &["service", "register", "API", "1", "10.0.0.1:80"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(err(&bad).contains("service \"API\""), "{}", err(&bad));
    let bad = musterctl(&ep, &["service", "register", "api", "1", "10.0.0.1"]);
    assert!(err(&bad).contains("addr"), "{}", err(&bad));
    let bad = musterctl(
        &ep,
        &[
            "service",
            "register",
            "api",
            "1",
            "10.0.0.1:80",
            "--health",
            "fine",
        ],
    );
    assert_eq!(bad.status.code(), Some(2));
}
