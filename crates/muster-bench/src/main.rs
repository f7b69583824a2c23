//! `muster-bench`: the load generator, as a command.
//!
//! Invariants: the flags map one to one onto [`muster_bench::Config`] and
//! [`muster_bench::Workload`]; the human table goes to stdout followed by
//! exactly one JSON line (starting with `{`) per run; the exit code is 0
//! when the run completed (errors, lost events and lost keys are in the
//! report), 1 when it could not run, 2 on bad flags.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use muster_bench::{Config, Workload, parse_duration};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "muster-bench",
    version,
    about = "Load generator for any etcd v3 endpoint list: the same binary measures muster and etcd."
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    workload: Command,
}

/// Flags every workload shares.
#[derive(Debug, Args)]
struct Common {
    /// Comma-separated client URLs or host:port pairs.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Concurrent clients.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// gRPC connections the clients share (default: the clients, at most 100).
    #[arg(long, global = true)]
    conns: Option<usize>,
    /// Operations in the measured phase (put, range, txn).
    #[arg(long, global = true, default_value_t = 10_000)]
    total: u64,
    /// End the measured phase after this long instead (`30s`, `2m`).
    #[arg(long, global = true, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Key length in bytes.
    #[arg(long, global = true, default_value_t = 32)]
    key_size: usize,
    /// Value length in bytes.
    #[arg(long, global = true, default_value_t = 256)]
    val_size: usize,
    /// Distinct keys the operations pick from.
    #[arg(long, global = true, default_value_t = 10_000)]
    key_space: u64,
    /// Prefix of every key.
    #[arg(long, global = true, default_value = "bench/")]
    prefix: String,
    /// Bound on every request.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Seed of the key choices.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Print only the JSON line.
    #[arg(long, global = true)]
    json: bool,
}

/// The workloads.
#[derive(Debug, Subcommand)]
enum Command {
    /// Puts of random keys; --lease attaches each client's puts to a lease.
    Put {
        /// Attach every put to a lease (one per client).
        #[arg(long)]
        lease: bool,
    },
    /// Single-key ranges of random prefilled keys.
    Range {
        /// `l` (linearizable, the default) or `s` (serializable).
        #[arg(long, default_value = "l", value_parser = ["l", "s", "linearizable", "serializable"])]
        consistency: String,
        /// Skip writing the key space first.
        #[arg(long)]
        no_prefill: bool,
    },
    /// Compare-and-swap transactions on random keys (compare the mod
    /// revision last seen, put on success, read on failure).
    Txn,
    /// Watch fan-out: W watchers of one key, P puts to it.
    Watch {
        /// Watchers.
        #[arg(long, default_value_t = 1000)]
        watchers: usize,
        /// Watch streams the watchers are spread over.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Puts (made by --clients clients).
        #[arg(long, default_value_t = 100)]
        puts: u64,
        /// How long to wait for the last deliveries after the last put.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        settle: Duration,
    },
    /// L leases with one key each: grants/s, each kept alive from its grant
    /// until --hold after the last, then the keys counted.
    Lease {
        /// Leases.
        #[arg(long, default_value_t = 10_000)]
        leases: u64,
        /// Their TTL in seconds (renewed every TTL/3).
        #[arg(long, default_value_t = 30)]
        ttl: i64,
        /// How long they are kept alive after the last grant.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        hold: Duration,
        /// Keep-alive streams.
        #[arg(long, default_value_t = 16)]
        streams: usize,
        /// Leave the leases to expire instead of revoking them at the end.
        #[arg(long)]
        no_cleanup: bool,
    },
    /// Instances registering with leases, keeping alive and deregistering
    /// while watchers follow the prefix.
    Registry {
        /// Service instances.
        #[arg(long, default_value_t = 200)]
        instances: usize,
        /// Watchers of the registry prefix.
        #[arg(long, default_value_t = 10)]
        watchers: usize,
        /// Lease TTL in seconds.
        #[arg(long, default_value_t = 5)]
        ttl: i64,
        /// How long the instances churn.
        #[arg(long = "for", default_value = "30s", value_parser = parse_duration)]
        run_for: Duration,
        /// Longest life of one registration.
        #[arg(long, default_value = "6s", value_parser = parse_duration)]
        max_life: Duration,
    },
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
    let c = cli.common;
    let mut config = Config::new(c.endpoints);
    config.clients = c.clients;
    config.conns = c.conns.unwrap_or_else(|| c.clients.clamp(1, 100));
    config.total = c.total;
    config.duration = c.duration;
    config.key_size = c.key_size;
    config.val_size = c.val_size;
    config.key_space = c.key_space;
    config.prefix = c.prefix;
    config.request_timeout = c.request_timeout;
    config.seed = c.seed;
    let workload = match cli.workload {
        Command::Put { lease } => Workload::Put { lease },
        Command::Range {
            consistency,
            no_prefill,
        } => Workload::Range {
            serializable: consistency.starts_with('s'),
            prefill: !no_prefill,
        },
        Command::Txn => Workload::Txn,
        Command::Watch {
            watchers,
            streams,
            puts,
            settle,
        } => Workload::Watch {
            watchers,
            streams,
            puts,
            settle,
        },
        Command::Lease {
            leases,
            ttl,
            hold,
            streams,
            no_cleanup,
        } => Workload::Lease {
            leases,
            ttl,
            hold,
            streams,
            cleanup: !no_cleanup,
        },
        Command::Registry {
            instances,
            watchers,
            ttl,
            run_for,
            max_life,
        } => Workload::Registry {
            instances,
            watchers,
            ttl,
            duration: run_for,
            max_life,
        },
    };
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
    match runtime.block_on(muster_bench::run(&config, &workload)) {
        Ok(report) => {
            // A closed pipe (`| head`) is not the run's failure.
            let mut out = std::io::stdout().lock();
            if !c.json {
                let _ = write!(out, "{report}");
            }
            let _ = writeln!(out, "{}", report.to_json());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}
