//! The agent's probes and its local API.
//!
//! Invariants: each probe is bounded by its check's timeout (a probe that
//! times out is critical); probes of one check never overlap; the local API
//! answers only `PUT /v1/check/<name>/{pass,warn,fail}` for the TTL checks
//! it was given and `GET /v1/health`, and never blocks the checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_client::Health;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::config::{Check, Kind};

/// The last report of each TTL check: when, and what it said.
pub(crate) type TtlBoard = Arc<Mutex<HashMap<String, (Instant, Health, String)>>>;

/// Probes `check` every interval and sends each result as `(index, health,
/// output)` until the receiver is gone.
pub(crate) async fn run(
    index: usize,
    check: Check,
    board: TtlBoard,
    results: mpsc::Sender<(usize, Health, String)>,
) {
    let every = match check.kind {
        // A TTL check looks at its board often enough to notice silence
        // soon after the TTL.
        Kind::Ttl(ttl) => (ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)),
        _ => check.interval,
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (health, output) = match &check.kind {
            Kind::Ttl(ttl) => ttl_state(&board, &check.name, *ttl, started),
            _ => match tokio::time::timeout(check.timeout, probe(&check)).await {
                Ok(result) => result,
                Err(_) => (
                    Health::Critical,
                    format!("no answer within {:?}", check.timeout),
                ),
            },
        };
        if results.send((index, health, output)).await.is_err() {
            return;
        }
    }
}

fn ttl_state(board: &TtlBoard, name: &str, ttl: Duration, started: Instant) -> (Health, String) {
    match board.lock().expect("ttl board").get(name) {
        Some((at, health, note)) if at.elapsed() <= ttl => (*health, note.clone()),
        Some((at, _, _)) => (
            Health::Critical,
            format!("TTL expired: last report {:?} ago", at.elapsed()),
        ),
        None => (
            Health::Critical,
            format!("no report yet ({:?} since start)", started.elapsed()),
        ),
    }
}

/// One probe of an HTTP, TCP, gRPC or command check.
async fn probe(check: &Check) -> (Health, String) {
    match &check.kind {
        Kind::Http { host, port, path } => http(host, *port, path).await,
        Kind::Tcp(addr) => match TcpStream::connect(addr).await {
            Ok(_) => (Health::Passing, format!("connected to {addr}")),
            Err(e) => (Health::Critical, format!("connecting to {addr}: {e}")),
        },
        Kind::Grpc { addr, service } => grpc(addr, service).await,
        Kind::Command(argv) => command(argv).await,
        Kind::Ttl(_) => unreachable!("TTL checks are not probed"),
    }
}

/// `GET path`: 2xx passing, 429 warning, anything else critical.
async fn http(host: &str, port: u16, path: &str) -> (Health, String) {
    let addr = format!("{host}:{port}");
    let mut stream = match TcpStream::connect(&addr).await {
        Ok(s) => s,
        Err(e) => return (Health::Critical, format!("connecting to {addr}: {e}")),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: muster-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return (Health::Critical, format!("sending to {addr}: {e}"));
    }
    let mut status_line = String::new();
    let mut reader = BufReader::new(stream).take(8192);
    if let Err(e) = reader.read_line(&mut status_line).await {
        return (Health::Critical, format!("reading from {addr}: {e}"));
    }
    let code = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    let line = status_line.trim_end().to_string();
    match code {
        Some(200..=299) => (Health::Passing, line),
        Some(429) => (Health::Warning, line),
        Some(_) => (Health::Critical, line),
        None if status_line.is_empty() => {
            (Health::Critical, format!("{addr} closed without answering"))
        }
        None => (Health::Critical, format!("not HTTP: {line:?}")),
    }
}

/// `grpc.health.v1.Health/Check`.
async fn grpc(addr: &str, service: &str) -> (Health, String) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(url) {
        Ok(e) => e,
        Err(e) => return (Health::Critical, format!("{addr}: {e}")),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return (Health::Critical, format!("connecting to {addr}: {e}")),
    };
    match HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
    {
        Ok(answer) => match answer.into_inner().status() {
            ServingStatus::Serving => (Health::Passing, "SERVING".into()),
            other => (Health::Critical, format!("{other:?}")),
        },
        Err(status) => (
            Health::Critical,
            format!("{}: {}", status.code(), status.message()),
        ),
    }
}

/// Runs the command: exit 0 passing, 1 warning, anything else critical.
async fn command(argv: &[String]) -> (Health, String) {
    let output = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    match output {
        Ok(output) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.truncate(512);
            match output.status.code() {
                Some(0) => (Health::Passing, text),
                Some(1) => (Health::Warning, text),
                _ => (Health::Critical, format!("{}: {text}", output.status)),
            }
        }
        Err(e) => (Health::Critical, format!("running {:?}: {e}", argv[0])),
    }
}

/// Serves the agent's local API on `listener`.
pub(crate) async fn serve_api(listener: TcpListener, board: TtlBoard, ttl_checks: Vec<String>) {
    let ttl_checks = Arc::new(ttl_checks);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (board, ttl_checks) = (Arc::clone(&board), Arc::clone(&ttl_checks));
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), answer(stream, &board, &ttl_checks))
                    .await;
        });
    }
}

async fn answer(stream: TcpStream, board: &TtlBoard, ttl_checks: &[String]) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    reader.read_line(&mut request_line).await?;
    // Skip the headers.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, body) = route(method, path, board, ttl_checks);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    reader.get_mut().write_all(response.as_bytes()).await
}

fn route(method: &str, path: &str, board: &TtlBoard, ttl_checks: &[String]) -> (u16, String) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "check", name, verdict] => {
            if method != "PUT" && method != "POST" {
                return (405, "use PUT\n".into());
            }
            if !ttl_checks.iter().any(|c| c == name) {
                return (404, format!("no TTL check named {name:?}\n"));
            }
            let health = match *verdict {
                "pass" => Health::Passing,
                "warn" => Health::Warning,
                "fail" => Health::Critical,
                _ => return (400, "the verdict is pass, warn or fail\n".into()),
            };
            board.lock().expect("ttl board").insert(
                name.to_string(),
                (Instant::now(), health, format!("reported {verdict}")),
            );
            (200, format!("{name} {health}\n"))
        }
        ["v1", "health"] => {
            let board = board.lock().expect("ttl board");
            let mut text = String::new();
            for name in ttl_checks {
                let state = board.get(name).map_or("none".to_string(), |(at, h, _)| {
                    format!("{h} {:?} ago", at.elapsed())
                });
                text.push_str(&format!("{name} {state}\n"));
            }
            (200, text)
        }
        _ => (404, "unknown path\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: Kind) -> Check {
        Check {
            name: "c".into(),
            kind,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            successes_before_passing: 1,
            failures_before_critical: 1,
        }
    }

    /// A one-shot HTTP server answering `status`.
    async fn server(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_status_codes_map_to_health() {
        for (status, health) in [
            ("200 OK", Health::Passing),
            ("204 No Content", Health::Passing),
            ("429 Too Many Requests", Health::Warning),
            ("500 Internal Server Error", Health::Critical),
            ("404 Not Found", Health::Critical),
        ] {
            let port = server(status).await;
            let (got, output) = http("127.0.0.1", port, "/health").await;
            assert_eq!(got, health, "{status}: {output}");
        }
    }

    #[tokio::test]
    async fn a_hung_or_absent_service_is_critical() {
        // Accepts, never answers: the probe's timeout makes it critical.
        let hung = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = hung.local_addr().unwrap().port();
        let c = check(Kind::Http {
            host: "127.0.0.1".into(),
            port,
            path: "/".into(),
        });
        let started = Instant::now();
        let outcome = tokio::time::timeout(c.timeout, probe(&c)).await;
        assert!(outcome.is_err(), "a hung service never answers");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(hung);
        let (health, _) = probe(&check(Kind::Tcp(format!("127.0.0.1:{port}")))).await;
        assert_eq!(health, Health::Critical);
    }

    #[tokio::test]
    async fn commands_map_exit_codes() {
        let sh =
            |code: &str| Kind::Command(vec!["/bin/sh".into(), "-c".into(), format!("exit {code}")]);
        assert_eq!(probe(&check(sh("0"))).await.0, Health::Passing);
        assert_eq!(probe(&check(sh("1"))).await.0, Health::Warning);
        assert_eq!(probe(&check(sh("2"))).await.0, Health::Critical);
        let missing = Kind::Command(vec!["/nonexistent/check".into()]);
        assert_eq!(probe(&check(missing)).await.0, Health::Critical);
    }

    #[tokio::test]
    async fn grpc_health_maps_serving_to_passing() {
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("api", ServingStatus::Serving)
            .await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let grpc = |service: &str| {
            check(Kind::Grpc {
                addr: addr.clone(),
                service: service.into(),
            })
        };
        assert_eq!(probe(&grpc("api")).await.0, Health::Passing);
        reporter
            .set_service_status("api", ServingStatus::NotServing)
            .await;
        assert_eq!(probe(&grpc("api")).await.0, Health::Critical);
        // An unknown service is NOT_FOUND: critical.
        assert_eq!(probe(&grpc("other")).await.0, Health::Critical);
        // Nothing listening: critical.
        let absent = check(Kind::Grpc {
            addr: "127.0.0.1:1".into(),
            service: String::new(),
        });
        assert_eq!(probe(&absent).await.0, Health::Critical);
    }

    #[test]
    fn the_api_takes_ttl_reports() {
        let board: TtlBoard = Arc::new(Mutex::new(HashMap::new()));
        let names = vec!["beat".to_string()];
        assert_eq!(route("PUT", "/v1/check/beat/pass", &board, &names).0, 200);
        let (health, _) = ttl_state(&board, "beat", Duration::from_secs(5), Instant::now());
        assert_eq!(health, Health::Passing);
        assert_eq!(route("PUT", "/v1/check/beat/warn", &board, &names).0, 200);
        assert_eq!(
            ttl_state(&board, "beat", Duration::from_secs(5), Instant::now()).0,
            Health::Warning
        );
        // Silence longer than the TTL is critical.
        assert_eq!(
            ttl_state(&board, "beat", Duration::ZERO, Instant::now()).0,
            Health::Critical
        );
        assert_eq!(route("PUT", "/v1/check/other/pass", &board, &names).0, 404);
        assert_eq!(route("PUT", "/v1/check/beat/maybe", &board, &names).0, 400);
        assert_eq!(route("GET", "/v1/check/beat/pass", &board, &names).0, 405);
        assert_eq!(route("GET", "/v1/health", &board, &names).0, 200);
    }
}
