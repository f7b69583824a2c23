//! `muster-workload`: the fault suite's recording workload, as a command.
//!
//! Invariants: the flags map one to one onto [`muster_workload::Config`];
//! the exit code is 0 whenever the workload ran (anomalies are the
//! checker's business) and 1 only when it could not run at all (bad flags
//! exit 2, as clap reports them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_workload::{Config, parse_duration, parse_endpoints};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "muster-workload",
    version,
    about = "Concurrent etcd v3 clients against every member of a cluster, \
             every operation recorded to a JSON-lines history."
)]
struct Cli {
    /// Members: `m1=http://127.0.0.1:23791,m2=...`, or bare URLs (named m1,
    /// m2, ... in order).
    #[arg(long, value_parser = parse_endpoints)]
    endpoints: BTreeMap<String, String>,
    /// How long the clients run (`30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Number of KV clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Number of keys the KV clients share.
    #[arg(long, default_value_t = 10)]
    keys: usize,
    /// The prefix every key lives under.
    #[arg(long, default_value = "/fault/")]
    prefix: String,
    /// Number of watchers of the prefix.
    #[arg(long, default_value_t = 3)]
    watchers: usize,
    /// Number of lease clients (service registrants).
    #[arg(long, default_value_t = 2)]
    registrants: usize,
    /// TTL of the registrants' leases, in seconds.
    #[arg(long, default_value_t = 5)]
    lease_ttl: i64,
    /// The cluster's election timeout in milliseconds (recorded for the
    /// lease checker).
    #[arg(long, default_value_t = 1000)]
    election_timeout_ms: u64,
    /// Bound on every request.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Bound on the start-up wait, the final reads and the watchers' final
    /// coverage.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    final_timeout: Duration,
    /// Seed of the clients' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the history is written.
    #[arg(long, default_value = "history.jsonl")]
    history: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::new(cli.endpoints, cli.history);
    config.duration = cli.duration;
    config.clients = cli.clients;
    config.keys = cli.keys;
    config.prefix = cli.prefix;
    config.watchers = cli.watchers;
    config.registrants = cli.registrants;
    config.lease_ttl = cli.lease_ttl;
    config.election_timeout_ms = cli.election_timeout_ms;
    config.request_timeout = cli.request_timeout;
    config.final_timeout = cli.final_timeout;
    config.seed = cli.seed;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(muster_workload::run(config)) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}
