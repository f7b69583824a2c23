//! `muster-check`: runs every checker on a saved history and prints the
//! report.
//!
//! Exit status: 0 when the history is valid, 1 when any anomaly was found,
//! 2 when an input cannot be read or parsed (or the arguments are wrong).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use muster_check::history::{self, FaultRecord, Record};
use muster_check::{Options, check};

/// Judge a fault-suite history: linearizability, revisions, watch
/// guarantees, lease safety, the final state.
#[derive(Parser, Debug)]
#[command(name = "muster-check", version)]
struct Args {
    /// The history (JSON lines) the workload wrote.
    history: PathBuf,
    /// A file of fault records (JSON lines) from the fault script, merged
    /// into the history.
    #[arg(long, value_name = "FAULTS.jsonl")]
    faults: Option<PathBuf>,
    /// Slack, in milliseconds, added to a lease's expiry deadline.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    lease_slack_ms: u64,
    /// How many anomalies to print in full.
    #[arg(long, value_name = "N", default_value_t = 5)]
    print: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut records = match history::read(&args.history) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("muster-check: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.faults {
        match read_faults(path) {
            Ok(faults) => records.extend(faults),
            Err(e) => {
                eprintln!("muster-check: {e:#}");
                return ExitCode::from(2);
            }
        }
    }
    let options = Options {
        lease_slack: Duration::from_millis(args.lease_slack_ms),
        max_anomalies_printed: args.print,
        ..Options::default()
    };
    let report = check(&records, &options);
    print!("{report}");
    if report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Reads the fault script's file: lines that are history records (tagged
/// `"record":"fault"`) or bare fault records (untagged).
fn read_faults(path: &Path) -> anyhow::Result<Vec<Record>> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = match serde_json::from_str::<Record>(line) {
            Ok(r) => r,
            Err(tagged) => match serde_json::from_str::<FaultRecord>(line) {
                Ok(f) => Record::Fault(f),
                Err(_) => anyhow::bail!("{}: line {}: {tagged}: {line}", path.display(), n + 1),
            },
        };
        records.push(record);
    }
    Ok(records)
}
