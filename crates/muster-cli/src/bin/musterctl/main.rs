//! `musterctl`: the command-line client of muster, with etcdctl 3.4's command
//! names, arguments and simple output.
//!
//! It speaks the etcd v3 gRPC API through the tonic clients generated in
//! `muster_proto::etcdserverpb`, so it works against muster and against etcd
//! alike.
//!
//! Invariants this binary keeps:
//!
//! - Every request is bounded: connecting by `--dial-timeout`, each unary
//!   request (and each message of a streamed snapshot) by
//!   `--command-timeout`. The only commands that run longer are `watch` and
//!   `lease keep-alive`, which run until Ctrl-C or until their own bound
//!   (`--max-events`, `--timeout`, `--once`) is reached.
//! - Exit codes: 0 on success, 1 when a request fails (the message goes to
//!   stderr as `Error: <grpc message>`, exactly as etcdctl prints it), 2 for
//!   usage errors (reported by clap).
//! - `-w simple` prints what etcdctl prints; `-w json` prints one JSON object
//!   per response with etcdctl's field names (keys and values base64, zero
//!   fields omitted as Go's `omitempty` does); `-w table` prints etcdctl's
//!   bordered tables for the list-like commands (and falls back to simple
//!   output for the others, as etcdctl does).
//!
//! Layout: [`session`] dials endpoints and bounds requests, [`output`] turns
//! responses into text and JSON, [`kv`] holds get, put, del, txn, compaction
//! and watch, [`lease`], [`member`] and [`maintenance`] the rest, and
//! [`service`] the service registry (through muster-client).

mod kv;
mod lease;
mod maintenance;
mod member;
mod output;
mod service;
mod session;
#[path = "../../shutdown.rs"]
mod shutdown;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::output::WriteOut;
use crate::session::Session;

/// The command line: global flags, then one command.
#[derive(Debug, Parser)]
#[command(
    name = "musterctl",
    version,
    about = "A command-line client for muster (and any etcd v3 endpoint)."
)]
pub(crate) struct Cli {
    /// gRPC endpoints, comma-separated (`host:port` or `http://host:port`).
    #[arg(
        long,
        global = true,
        env = "MUSTER_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub(crate) endpoints: Vec<String>,

    /// Bound on connecting to an endpoint (Go duration: 500ms, 2s, 1m).
    #[arg(long, global = true, default_value = "2s", value_parser = parse_duration)]
    pub(crate) dial_timeout: Duration,

    /// Bound on each request, excluding watch and keep-alive streams.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub(crate) command_timeout: Duration,

    /// Output format.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        value_enum,
        default_value = "simple"
    )]
    pub(crate) write_out: WriteOut,

    /// The command to run.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands, named as etcdctl names them.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Gets the key or a range of keys.
    Get(kv::GetArgs),
    /// Puts the given key into the store.
    Put(kv::PutArgs),
    /// Removes the specified key or range of keys [key, range_end).
    Del(kv::DelArgs),
    /// Txn processes all the requests in one transaction (read from stdin).
    Txn(kv::TxnArgs),
    /// Watches events stream on keys or prefixes.
    Watch(kv::WatchArgs),
    /// Compacts the event history in muster.
    Compaction(kv::CompactionArgs),
    /// Lease related commands.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Membership related commands.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Endpoint related commands (run against every endpoint).
    #[command(subcommand)]
    Endpoint(maintenance::EndpointCommand),
    /// Alarm related commands.
    #[command(subcommand)]
    Alarm(maintenance::AlarmCommand),
    /// Snapshot related commands.
    #[command(subcommand)]
    Snapshot(maintenance::SnapshotCommand),
    /// Transfers leadership to another member.
    MoveLeader(maintenance::MoveLeaderArgs),
    /// Service registry commands: register, deregister, list, watch, resolve.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Prints a shell completion script.
    Completion(CompletionArgs),
}

/// Arguments of `completion`.
#[derive(Debug, Args)]
pub(crate) struct CompletionArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

/// Parses a Go-style duration: `<number><unit>` pairs (`2s`, `1m30s`,
/// `1.5s`); a bare number is seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    muster_server::duration::parse(text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completion(args) = &cli.command {
        let mut command = Cli::command();
        clap_complete::generate(
            args.shell,
            &mut command,
            "musterctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", session::error_message(&e));
            ExitCode::from(1)
        }
    }
}

/// Runs one command to completion.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let session = Session::new(
        &cli.endpoints,
        cli.dial_timeout,
        cli.command_timeout,
        cli.write_out,
    );
    match cli.command {
        Command::Get(args) => kv::get(&session, args).await,
        Command::Put(args) => kv::put(&session, args).await,
        Command::Del(args) => kv::del(&session, args).await,
        Command::Txn(args) => kv::txn(&session, args).await,
        Command::Watch(args) => kv::watch(&session, args).await,
        Command::Compaction(args) => kv::compaction(&session, args).await,
        Command::Lease(command) => lease::run(&session, command).await,
        Command::Member(command) => member::run(&session, command).await,
        Command::Endpoint(command) => maintenance::endpoint(&session, command).await,
        Command::Alarm(command) => maintenance::alarm(&session, command).await,
        Command::Snapshot(command) => maintenance::snapshot(&session, command).await,
        Command::MoveLeader(args) => maintenance::move_leader(&session, args).await,
        Command::Service(command) => service::run(&session, command).await,
        Command::Completion(_) => unreachable!("handled before the runtime starts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
