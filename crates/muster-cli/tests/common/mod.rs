//! Helpers shared by the process tests: free loopback ports and `muster`
//! processes whose log lines are forwarded to the test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

// muster-tests exports it; here it is crate-private.
#[allow(unreachable_pub)]
#[path = "../../../../tests/src/ports.rs"]
mod ports;
pub(crate) use ports::free_port;

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
