//! `muster agent` as a process beside a real `muster` member: it registers
//! its service, follows its checks into the registry, catches a hung
//! service, removes a long-critical instance, takes TTL reports over its
//! API, and deregisters on SIGTERM.
//!
//! Every wait is bounded; ports come from the kernel.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{free_port, is_started_line, muster, spawn_member};
use muster_client::{Client, Discovery, DiscoveryConfig, Health, View};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

/// A process killed (SIGTERM, then SIGKILL) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.0.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.wait();
    }
}

/// One `muster` member; its client URL.
fn member(dir: &std::path::Path) -> (Process, String) {
    let (client, peer) = (free_port(), free_port());
    let args: Vec<String> = [
        "--name",
        "m1",
        "--data-dir",
        &dir.join("m1").display().to_string(),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{client}"),
        "--advertise-client-urls",
        &format!("http://127.0.0.1:{client}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
        "--initial-advertise-peer-urls",
        &format!("http://127.0.0.1:{peer}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (lines, seen) = mpsc::channel();
    let child = Process(spawn_member(0, &args, &lines));
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match seen.recv_timeout(left) {
            Ok((_, line)) if is_started_line(&line) => break,
            Ok(_) => {}
            Err(_) => panic!("the member did not start within {WAIT:?}"),
        }
    }
    (child, format!("http://127.0.0.1:{client}"))
}

/// How the test service answers.
const OK: u8 = 0;
const HANG: u8 = 1;
const BUSY: u8 = 2;

/// An HTTP service whose answers the test switches; its port.
async fn service(mode: Arc<AtomicU8>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mode = mode.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf).await;
                let status = match mode {
                    OK => "200 OK",
                    BUSY => "429 Too Many Requests",
                    // Hung: the connection stays open, nothing is answered.
                    _ => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                };
                let _ = stream
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            });
        }
    });
    port
}

fn agent(dir: &std::path::Path, config: &str) -> Process {
    let path = dir.join(format!("agent-{}.toml", free_port()));
    std::fs::write(&path, config).unwrap();
    let mut command = muster(&["agent", "--config", &path.display().to_string()]);
    command.stderr(Stdio::inherit());
    Process(command.spawn().expect("spawn the agent"))
}

async fn discovery(endpoint: &str, service: &str) -> Discovery {
    Discovery::start(
        Client::single(endpoint).unwrap(),
        service,
        DiscoveryConfig::default(),
    )
    .await
    .expect("discovery")
}

fn health_of(view: &View, id: &str) -> Option<Health> {
    view.instances.get(id).map(|i| i.health)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_its_checks_and_catches_a_hung_service() {
    let dir = tempfile::tempdir().unwrap();
    let (_member, endpoint) = member(dir.path());
    let mode = Arc::new(AtomicU8::new(OK));
    let port = service(mode.clone()).await;
    // 3 failures × 200 ms + 300 ms timeout: critical within 0.9 s of hanging.
    let mut agent = agent(
        dir.path(),
        &format!(
            r#"
endpoints = ["{endpoint}"]
ttl = 3
api = ""
[service]
name = "web"
id = "web-1"
addr = "127.0.0.1:{port}"
tags = ["v1"]
[[check]]
name = "http"
http = "http://127.0.0.1:{port}/health"
interval = "200ms"
timeout = "300ms"
successes_before_passing = 2
failures_before_critical = 3
"#
        ),
    );
    let web = discovery(&endpoint, "web").await;
    let view = web
        .wait_for(WAIT, |v| health_of(v, "web-1") == Some(Health::Passing))
        .await
        .expect("registered and passing");
    assert_eq!(view.instances["web-1"].tags, ["v1"]);

    // A hung service: the process and its port are up, nothing answers.
    let hung = Instant::now();
    mode.store(HANG, Ordering::SeqCst);
    web.wait_for(WAIT, |v| health_of(v, "web-1") == Some(Health::Critical))
        .await
        .expect("marked critical");
    let took = hung.elapsed();
    let bound = Duration::from_millis(3 * 200 + 300) + Duration::from_millis(700);
    eprintln!("a hung service was marked critical after {took:?}");
    assert!(took <= bound, "critical after {took:?}, bound {bound:?}");
    assert!(
        web.healthy().is_empty(),
        "no traffic to a critical instance"
    );

    // Recovered, then overloaded (429): passing, then warning.
    mode.store(OK, Ordering::SeqCst);
    web.wait_for(WAIT, |v| health_of(v, "web-1") == Some(Health::Passing))
        .await
        .expect("passing again");
    mode.store(BUSY, Ordering::SeqCst);
    web.wait_for(WAIT, |v| health_of(v, "web-1") == Some(Health::Warning))
        .await
        .expect("warning on 429");

    // SIGTERM: deregistered, exit 0.
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    web.wait_for(WAIT, |v| v.instances.is_empty())
        .await
        .expect("deregistered on SIGTERM");
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "not by lease expiry"
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_critical_instance_is_removed_and_ttl_checks_take_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_member, endpoint) = member(dir.path());
    let api = free_port();
    let _agent = agent(
        dir.path(),
        &format!(
            r#"
endpoints = ["{endpoint}"]
ttl = 3
api = "127.0.0.1:{api}"
[service]
name = "batch"
id = "b-1"
addr = "10.0.0.9:7000"
deregister_critical_after = "1s"
[[check]]
name = "beat"
ttl = "1s"
"#
        ),
    );
    let batch = discovery(&endpoint, "batch").await;
    // Registered critical: no report yet.
    batch
        .wait_for(WAIT, |v| health_of(v, "b-1") == Some(Health::Critical))
        .await
        .expect("registered as critical");
    // Reports keep it passing.
    let report = |verdict: &'static str| async move {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", api)).await {
                let request = format!(
                    "PUT /v1/check/beat/{verdict} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                );
                s.write_all(request.as_bytes()).await.unwrap();
                let mut answer = String::new();
                s.read_to_string(&mut answer).await.unwrap();
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
                return;
            }
            assert!(Instant::now() < deadline, "the agent API never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    report("pass").await;
    batch
        .wait_for(WAIT, |v| health_of(v, "b-1") == Some(Health::Passing))
        .await
        .expect("passing after a report");
    report("warn").await;
    batch
        .wait_for(WAIT, |v| health_of(v, "b-1") == Some(Health::Warning))
        .await
        .expect("warning after a report");
    // Silence: critical after the TTL, removed 1 s later.
    let silent = Instant::now();
    batch
        .wait_for(WAIT, |v| health_of(v, "b-1") == Some(Health::Critical))
        .await
        .expect("critical after silence");
    batch
        .wait_for(WAIT, |v| v.instances.is_empty())
        .await
        .expect("removed after deregister_critical_after");
    assert!(silent.elapsed() >= Duration::from_secs(1));
    // A report brings it back.
    report("pass").await;
    batch
        .wait_for(WAIT, |v| health_of(v, "b-1") == Some(Health::Passing))
        .await
        .expect("registered again once passing");
}

#[test]
fn a_bad_config_file_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[service]\nname = \"Web\"\nid = \"1\"\naddr = \"10.0.0.1:80\"\n",
    )
    .unwrap();
    let output = muster(&["agent", "--config", &path.display().to_string()])
        .stderr(Stdio::piped())
        .output()
        .expect("run the agent");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("service \"Web\""), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
}
