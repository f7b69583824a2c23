//! The verdict on a history: the anomalies found and a summary of what was
//! judged.
//!
//! Invariants:
//! - A [`Report`] is valid exactly when it holds no [`Anomaly`]; there is no
//!   "warning" level: whatever a checker could not interpret is an anomaly
//!   of kind [`AnomalyKind::Malformed`].
//! - [`Report::anomalies`] is sorted by kind (in the declaration order of
//!   [`AnomalyKind`]), and within a kind in the order the checkers found
//!   them, so the printed report leads with the most fundamental failures.
//! - Every [`Anomaly::message`] is self-contained: it names the operations
//!   (id, process, member, times, request, outcome), keys, values and
//!   revisions involved, so a reader needs nothing but the report to start
//!   digging in the history.

use std::collections::BTreeMap;
use std::fmt;

/// What kind of guarantee a history breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// The operations on one key admit no linearization (a stale read, a
    /// lost update, a read of a value no write produced, ...).
    NotLinearizable,
    /// Revisions contradict real time or each other (a later operation saw
    /// an older revision, two writes created one revision, a read's
    /// mod_revision differs from the revision its write created, ...).
    RevisionOrder,
    /// A watcher received events out of revision order (or before its start).
    WatchOrder,
    /// A watcher received the same change (key, mod_revision) twice.
    WatchDuplicate,
    /// The events of one revision were split across watch responses.
    WatchAtomicity,
    /// A watcher missed changes in the range it covered, or resumed past
    /// what it had seen.
    WatchGap,
    /// Watch events disagree with each other or with the KV history.
    WatchMismatch,
    /// A key attached to a lease vanished while the lease was kept alive.
    LeaseKeyLost,
    /// A lease that stopped being renewed did not expire in time.
    LeaseNotExpired,
    /// An acknowledged write is missing from the final state.
    LostWrite,
    /// Members ended with different key spaces.
    FinalDivergence,
    /// Members reported different HashKV hashes at one revision.
    HashMismatch,
    /// The history itself is inconsistent or could not be judged.
    Malformed,
}

impl AnomalyKind {
    /// Every kind, in declaration order.
    pub const ALL: [AnomalyKind; 13] = [
        AnomalyKind::NotLinearizable,
        AnomalyKind::RevisionOrder,
        AnomalyKind::WatchOrder,
        AnomalyKind::WatchDuplicate,
        AnomalyKind::WatchAtomicity,
        AnomalyKind::WatchGap,
        AnomalyKind::WatchMismatch,
        AnomalyKind::LeaseKeyLost,
        AnomalyKind::LeaseNotExpired,
        AnomalyKind::LostWrite,
        AnomalyKind::FinalDivergence,
        AnomalyKind::HashMismatch,
        AnomalyKind::Malformed,
    ];

    /// The kind's name as printed (e.g. `NotLinearizable`).
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::NotLinearizable => "NotLinearizable",
            AnomalyKind::RevisionOrder => "RevisionOrder",
            AnomalyKind::WatchOrder => "WatchOrder",
            AnomalyKind::WatchDuplicate => "WatchDuplicate",
            AnomalyKind::WatchAtomicity => "WatchAtomicity",
            AnomalyKind::WatchGap => "WatchGap",
            AnomalyKind::WatchMismatch => "WatchMismatch",
            AnomalyKind::LeaseKeyLost => "LeaseKeyLost",
            AnomalyKind::LeaseNotExpired => "LeaseNotExpired",
            AnomalyKind::LostWrite => "LostWrite",
            AnomalyKind::FinalDivergence => "FinalDivergence",
            AnomalyKind::HashMismatch => "HashMismatch",
            AnomalyKind::Malformed => "Malformed",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One broken guarantee.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// What kind of guarantee.
    pub kind: AnomalyKind,
    /// A full description: the operations (ids, processes, times, requests,
    /// outcomes), keys, values and revisions involved. May span lines.
    pub message: String,
    /// The ids of the operations involved, most relevant first.
    pub ops: Vec<u64>,
}

impl Anomaly {
    /// An anomaly of `kind` described by `message`, involving `ops`.
    pub fn new(kind: AnomalyKind, message: impl Into<String>, ops: Vec<u64>) -> Anomaly {
        Anomaly {
            kind,
            message: message.into(),
            ops,
        }
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// How the operations of one kind ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Completed `ok`.
    pub ok: usize,
    /// Completed `fail`.
    pub fail: usize,
    /// Completed `info` (unknown outcome).
    pub info: usize,
    /// Never completed (read as `info`).
    pub unfinished: usize,
}

impl OutcomeCounts {
    /// All operations of the kind.
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.info + self.unfinished
    }
}

/// The verdict on a history.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Operations invoked.
    pub operations: usize,
    /// Faults injected (`fault` records of phase `start`).
    pub faults: usize,
    /// Every anomaly found, sorted by kind.
    pub anomalies: Vec<Anomaly>,
    /// Operation name (`get`, `put`, `lease_grant`, ...) → how they ended.
    pub by_op: BTreeMap<String, OutcomeCounts>,
    /// Distinct watchers.
    pub watchers: usize,
    /// Watch events received, over all watchers.
    pub watch_events: usize,
    /// `final` records.
    pub final_states: usize,
    /// How many anomalies [`Display`](fmt::Display) prints in full.
    pub print_limit: usize,
}

impl Report {
    /// Whether the history broke no guarantee.
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// How many anomalies of `kind` were found.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind == kind).count()
    }

    /// The anomalies of `kind`.
    pub fn of_kind(&self, kind: AnomalyKind) -> impl Iterator<Item = &Anomaly> {
        self.anomalies.iter().filter(move |a| a.kind == kind)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history: {} operations, {} faults, {} watchers ({} events), {} final states",
            self.operations, self.faults, self.watchers, self.watch_events, self.final_states
        )?;
        if !self.by_op.is_empty() {
            writeln!(f, "operations:")?;
            for (name, c) in &self.by_op {
                writeln!(
                    f,
                    "  {name:<16} {:>7} total  {:>7} ok  {:>5} fail  {:>5} info  {:>5} unfinished",
                    c.total(),
                    c.ok,
                    c.fail,
                    c.info,
                    c.unfinished
                )?;
            }
        }
        if self.anomalies.is_empty() {
            return writeln!(f, "valid: no anomalies");
        }
        writeln!(f, "INVALID: {} anomalies", self.anomalies.len())?;
        for kind in AnomalyKind::ALL {
            let n = self.count(kind);
            if n > 0 {
                writeln!(f, "  {:<16} {n}", kind.name())?;
            }
        }
        let shown = self.anomalies.len().min(self.print_limit);
        if shown > 0 {
            writeln!(f, "first {shown} of {}:", self.anomalies.len())?;
        }
        for (i, a) in self.anomalies.iter().take(shown).enumerate() {
            let mut lines = a.message.lines();
            writeln!(f, "[{}] {}: {}", i + 1, a.kind, lines.next().unwrap_or(""))?;
            for line in lines {
                writeln!(f, "    {line}")?;
            }
        }
        Ok(())
    }
}
