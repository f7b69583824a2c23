//! Helpers shared by the process tests: free loopback ports and `muster`
//! processes whose log lines are forwarded to the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

/// A loopback port free for TCP and UDP a moment ago, below the kernel's
/// ephemeral range: no outgoing connection and no bind to port 0 (another
/// member's, another test's) can take it before a member binds it, or
/// while a killed member is down before it binds it again. Each call in a
/// process returns a different port.
pub(crate) fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Ports from 10000 up to the kernel's ephemeral range, walked from a
    // per-process starting point.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&low| low > LOWEST + 1_000)
        .unwrap_or(32_768);
    let span = ephemeral - LOWEST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (LOWEST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let free = |addr: (&str, u16)| {
            std::net::TcpListener::bind(addr).is_ok() && std::net::UdpSocket::bind(addr).is_ok()
        };
        if free(("127.0.0.1", port)) {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral}");
}

/// The `muster` binary with `args`: its log (stderr) piped, `info` level.
pub(crate) fn muster(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_muster"));
    cmd.args(args)
        // Tests run members side by side: each gets its own metrics port
        // unless a test names one (the flag wins over the variable).
        .env(
            "MUSTER_LISTEN_METRICS_URLS",
            format!("http://127.0.0.1:{}", free_port()),
        )
        // and its own DNS port (0: any port free for both UDP and TCP).
        .env("MUSTER_LISTEN_DNS", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Spawns member `i` with `args`, its log lines going to `lines`.
pub(crate) fn spawn_member(
    i: usize,
    args: &[String],
    lines: &mpsc::Sender<(usize, String)>,
) -> Child {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = muster(&args).spawn().expect("spawn muster");
    let stderr = child.stderr.take().expect("stderr");
    let lines = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines.send((i, line));
        }
    });
    child
}

/// Whether `line` (text or JSON) is the member's "member started" line,
/// logged once its client listener is bound (not the Raft node's earlier
/// "raft member started").
pub(crate) fn is_started_line(line: &str) -> bool {
    line.contains(": member started") || line.contains("\"message\":\"member started\"")
}
