//! Loopback ports for members under test, shared by this crate and the
//! `muster` binary's process tests (which include this file by path).
//!
//! Invariant: every port handed out lies below the kernel's ephemeral
//! range, so nothing that asks the kernel for "any port" (a bind to port
//! 0, an outgoing connection) can take it from a member between its
//! choice and its bind, or while a stopped member is down.

/// A loopback port free for TCP and UDP a moment ago, below the kernel's
/// ephemeral range: no outgoing connection and no bind to port 0 (another
/// member's, another test's) can take it before a member binds it, or
/// while a killed member is down before it binds it again. Each call in a
/// process returns a different port.
pub fn free_port() -> u16 {
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
