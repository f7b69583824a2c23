//! muster-check: the history format of the fault suite and the checkers
//! that judge a recorded history.
//!
//! The workload (`muster-workload`) writes a history of JSON lines
//! ([`history`]); [`check`] reads it back and reports every anomaly it
//! finds in a [`Report`]. A checker never passes a history it cannot
//! interpret: whatever it does not understand is an anomaly of kind
//! [`AnomalyKind::Malformed`], not a skip, and no input makes it panic.
//!
//! The checkers, each in its module with its own invariants:
//! - `index`: pairs invocations with completions; malformed histories;
//! - `linearizable`: per-key linearizability (WGL search with memoization);
//! - `revisions`: revisions against real time and each other;
//! - `watch`: watch order, uniqueness, atomicity, resumption, reliability;
//! - `lease`: lease keys kept while renewed, and expiring when abandoned;
//! - `final_state`: member convergence, hashes, no lost acknowledged write.
//!
//! Invariant: [`check`] is a pure function of the records and the options;
//! its report is deterministic (same input, same anomalies in the same
//! order).

use std::time::Duration;

pub mod history;

mod final_state;
mod index;
mod lease;
mod linearizable;
mod report;
mod revisions;
mod watch;

#[cfg(test)]
mod tests;

pub use report::{Anomaly, AnomalyKind, OutcomeCounts, Report};

/// How to judge a history.
#[derive(Clone, Debug)]
pub struct Options {
    /// Added to a lease's expiry deadline (TTL + election timeout) before an
    /// abandoned lease that still holds its keys is an anomaly. Default 2 s.
    pub lease_slack: Duration,
    /// How many anomalies the report's `Display` prints in full. Default 5.
    pub max_anomalies_printed: usize,
    /// Steps the linearizability search may take on one key before it gives
    /// up (reported as [`AnomalyKind::Malformed`]). Default 10 million.
    pub max_search_steps: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease_slack: Duration::from_secs(2),
            max_anomalies_printed: 5,
            max_search_steps: 10_000_000,
        }
    }
}

/// Runs every checker on `records` and reports what they found.
pub fn check(records: &[history::Record], options: &Options) -> Report {
    let mut anomalies = Vec::new();
    let h = index::History::build(records, &mut anomalies);
    let watches = watch::Watches::build(&h, &mut anomalies);
    let learned = revisions::learn(&h, &watches, &mut anomalies);
    linearizable::check(&h, &watches, &learned, options, &mut anomalies);
    revisions::check(&h, &watches, &learned, &mut anomalies);
    watches.check(&h, &mut anomalies);
    lease::check(&h, &watches, &learned, options, &mut anomalies);
    final_state::check(&h, &watches, &mut anomalies);
    // Stable: within a kind, the order the checkers found them.
    anomalies.sort_by_key(|a| a.kind);

    let mut report = Report {
        operations: h.ops.len(),
        faults: h.faults.iter().filter(|f| f.phase == "start").count(),
        anomalies,
        watchers: watches.streams.len(),
        watch_events: watches.events_received,
        final_states: h.finals.len(),
        print_limit: options.max_anomalies_printed,
        ..Report::default()
    };
    for op in &h.ops {
        let c = report.by_op.entry(op.name().to_string()).or_default();
        match op.outcome {
            index::Outcome::Ok => c.ok += 1,
            index::Outcome::Fail => c.fail += 1,
            index::Outcome::Info => c.info += 1,
            index::Outcome::Unfinished => c.unfinished += 1,
        }
    }
    report
}
