//! The `muster` binary as a user runs it: real processes, loopback ports
//! chosen free by the test, temp data dirs, every wait bounded.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn muster(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Flags for a one-member cluster named `name` on fresh ports.
fn single(name: &str, data_dir: &Path, token: &str) -> Vec<String> {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let client = format!("http://127.0.0.1:{}", free_port());
    vec![
        "--name".into(),
        name.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--initial-cluster".into(),
        format!("{name}={peer}"),
        "--initial-cluster-token".into(),
        token.into(),
    ]
}

/// Starts the binary and waits for "member started" on its log.
fn start(args: &[String]) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = muster(&args).spawn().expect("spawn muster");
    let stderr = child.stderr.take().expect("stderr");
    let (started, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let mut started = Some(started);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("member started")
                && let Some(tx) = started.take()
            {
                let _ = tx.send(());
            }
        }
    });
    if wait.recv_timeout(START_TIMEOUT).is_err() {
        let _ = child.kill();
        panic!("muster did not report 'member started' within {START_TIMEOUT:?}");
    }
    child
}

/// Sends SIGTERM and waits (bounded) for a clean exit.
fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "muster exited with {status} after SIGTERM"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("muster did not exit within 10 s of SIGTERM");
}

/// Runs the binary to completion, bounded.
fn run_to_exit(args: &[String]) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = muster(&args).spawn().expect("spawn");
    for _ in 0..400 {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("muster kept running when it should have refused to start");
}

#[test]
fn a_member_starts_writes_its_identity_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("m1");
    let child = start(&single("m1", &data, "t1"));
    let identity = std::fs::read_to_string(data.join("member/identity")).expect("identity written");
    assert!(identity.starts_with("muster-identity 1\n"));
    assert!(identity.contains("name=m1\n"));
    terminate(child);
}

#[test]
fn a_restart_on_the_same_data_dir_rejoins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("m1");
    let args = single("m1", &data, "t1");
    terminate(start(&args));
    // Same flags, same data dir: the identity matches and the node starts
    // from its log and snapshot.
    terminate(start(&args));
}

#[test]
fn another_clusters_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("m1");
    terminate(start(&single("m1", &data, "first-cluster")));
    let output = run_to_exit(&single("m1", &data, "second-cluster"));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("belongs to cluster") && stderr.contains(&data.display().to_string()),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_refused_naming_the_setting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = single("m1", &dir.path().join("m1"), "t1");
    args.extend(["--election-timeout".into(), "100".into()]);
    let output = run_to_exit(&args);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--election-timeout"), "{stderr}");
    assert!(
        !dir.path().join("m1").exists(),
        "nothing is written before validation passes"
    );
}
