//! What a run did, counted from the records as they were written.
//!
//! Invariants: every count is taken from the records actually written to
//! the history (not from what the tasks meant to do), so the summary and
//! the history agree.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How the operations of one kind ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Invocations.
    pub invoked: u64,
    /// `ok` completions.
    pub ok: u64,
    /// `fail` completions (certainly no effect).
    pub fail: u64,
    /// `info` completions (unknown effect).
    pub info: u64,
}

/// What the watchers recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchCounts {
    /// Streams opened (`start` records).
    pub starts: u64,
    /// Responses carrying events.
    pub responses: u64,
    /// Events in those responses.
    pub events: u64,
    /// Progress notifications.
    pub progress: u64,
    /// Watches cancelled because their start revision was compacted.
    pub compacted: u64,
    /// Streams that broke.
    pub errors: u64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Number of members addressed.
    pub members: usize,
    /// How long the clients and registrants ran, including their last
    /// outstanding requests.
    pub elapsed: Duration,
    /// Operations by kind (`get`, `get (serializable)`, `put`,
    /// `put (leased)`, `delete`, `cas`, `lease grant`, `lease keep-alive`,
    /// `lease revoke`).
    pub ops: BTreeMap<String, OpCounts>,
    /// What the watchers saw.
    pub watch: WatchCounts,
    /// Number of watchers.
    pub watchers: usize,
    /// Watchers that covered the final revision before they stopped.
    pub watchers_covered: usize,
    /// The revision the final phase settled on (`None`: no member could be
    /// read).
    pub final_revision: Option<i64>,
    /// Members whose final state was read.
    pub finals_read: usize,
    /// Members that could not be read at the end.
    pub finals_failed: usize,
    /// Whether the members hashed at one revision agree (`None`: fewer than
    /// two hashes).
    pub hashes_agree: Option<bool>,
    /// Records written.
    pub records: u64,
    /// The history file.
    pub history: PathBuf,
}

impl Summary {
    /// Every operation kind together.
    pub fn total(&self) -> OpCounts {
        self.ops
            .values()
            .fold(OpCounts::default(), |a, c| OpCounts {
                invoked: a.invoked + c.invoked,
                ok: a.ok + c.ok,
                fail: a.fail + c.fail,
                info: a.info + c.info,
            })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        let seconds = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "ran {seconds:.1} s against {} members: {} ops ({:.0}/s)",
            self.members,
            total.invoked,
            if seconds > 0.0 {
                total.invoked as f64 / seconds
            } else {
                0.0
            }
        )?;
        writeln!(
            f,
            "  {:<20} {:>8} {:>8} {:>8} {:>8}",
            "op", "invoked", "ok", "fail", "info"
        )?;
        for (name, c) in self.ops.iter().chain([(&"total".to_string(), &total)]) {
            writeln!(
                f,
                "  {:<20} {:>8} {:>8} {:>8} {:>8}",
                name, c.invoked, c.ok, c.fail, c.info
            )?;
        }
        let w = &self.watch;
        writeln!(
            f,
            "watch: {} watchers, {} events in {} responses, {} progress, {} compacted, \
             {} errors, {} streams; {}/{} covered the final revision",
            self.watchers,
            w.events,
            w.responses,
            w.progress,
            w.compacted,
            w.errors,
            w.starts,
            self.watchers_covered,
            self.watchers
        )?;
        writeln!(
            f,
            "final: revision {}, {} members read, {} unreadable, hashes {}",
            self.final_revision
                .map_or_else(|| "unknown".to_string(), |r| r.to_string()),
            self.finals_read,
            self.finals_failed,
            match self.hashes_agree {
                Some(true) => "agree",
                Some(false) => "DIFFER",
                None => "not compared",
            }
        )?;
        write!(
            f,
            "history: {} ({} records)",
            self.history.display(),
            self.records
        )
    }
}
