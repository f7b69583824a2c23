//! The indexed history: operations paired from their records, the other
//! records grouped, and everything that makes a history malformed reported.
//!
//! Invariants:
//! - Every [`Operation`] comes from exactly one `invoke` record; its outcome
//!   is the first completion with the same id. Later completions, completions
//!   without an invocation, a second invocation of an id, an invocation by a
//!   process with an operation still outstanding, `t` going backwards for one
//!   process or watcher, and completions that disagree with their invocation
//!   are reported as [`AnomalyKind::Malformed`] and otherwise ignored.
//! - An `ok` completion whose result lacks what the operation needs (no
//!   result; a cas without `succeeded`; a grant without a lease id) is
//!   reported and downgraded to `info`, so no checker ever reads a missing
//!   result.
//! - A completion's time `t` is the end of the operation only for `ok` and
//!   `fail`; `info` and unfinished operations may take effect at any time
//!   after their invocation ([`Operation::complete`] is `None`: +infinity).
//! - Written values are unique: [`History::writers`] maps each value to the
//!   one operation (put or cas, any outcome) that tried to write it; a value
//!   written twice is reported and keeps its first writer.
//! - Nothing here panics on any input.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::history::{
    FaultRecord, FinalRecord, Op, OpKind, OpResult, Record, StartRecord, WatchRecord,
};
use crate::report::{Anomaly, AnomalyKind};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Took effect, with a result.
    Ok,
    /// Certainly took no effect.
    Fail,
    /// Unknown (an `info` completion).
    Info,
    /// Unknown (no completion at all).
    Unfinished,
}

/// Whether an operation wrote its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// It certainly did.
    Yes,
    /// It may have.
    Maybe,
    /// It certainly did not (failed, or a cas whose compare failed).
    No,
}

/// One operation: its invocation and how it ended.
#[derive(Clone, Debug)]
pub(crate) struct Operation<'a> {
    /// The operation id.
    pub(crate) id: u64,
    /// The client.
    pub(crate) process: u32,
    /// The member the request went to.
    pub(crate) member: &'a str,
    /// The request.
    pub(crate) op: &'a Op,
    /// When it was invoked.
    pub(crate) invoke: u64,
    /// How it ended.
    pub(crate) outcome: Outcome,
    /// The time of its completion record, whatever the outcome.
    pub(crate) completed_at: Option<u64>,
    /// The result, exactly when `outcome` is `Ok`.
    pub(crate) result: Option<&'a OpResult>,
    /// The error of a `fail` or `info` completion.
    pub(crate) error: Option<&'a str>,
}

impl<'a> Operation<'a> {
    /// Whether it completed `ok`.
    pub(crate) fn is_ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// Whether it may have taken effect (anything but `fail`).
    pub(crate) fn may_have_effect(&self) -> bool {
        self.outcome != Outcome::Fail
    }

    /// When it certainly had ended: its completion for `ok` and `fail`,
    /// `None` (+infinity) for `info` and unfinished operations.
    pub(crate) fn complete(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Ok | Outcome::Fail => self.completed_at,
            Outcome::Info | Outcome::Unfinished => None,
        }
    }

    /// The key of a KV operation.
    pub(crate) fn key(&self) -> Option<&'a str> {
        self.op.key()
    }

    /// The value a put or cas tries to write.
    pub(crate) fn value_written(&self) -> Option<&'a str> {
        match self.op {
            Op::Put { value, .. } | Op::Cas { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Whether a put or cas wrote its value.
    pub(crate) fn wrote(&self) -> Wrote {
        match (self.outcome, self.op) {
            (Outcome::Fail, _) => Wrote::No,
            (Outcome::Info | Outcome::Unfinished, _) => Wrote::Maybe,
            (Outcome::Ok, Op::Cas { .. }) => {
                if self.result.and_then(|r| r.succeeded) == Some(true) {
                    Wrote::Yes
                } else {
                    Wrote::No
                }
            }
            (Outcome::Ok, _) => Wrote::Yes,
        }
    }

    /// The lease a put attaches its key to (lease 0 is no lease, as in etcd).
    pub(crate) fn put_lease(&self) -> Option<i64> {
        match self.op {
            Op::Put { lease, .. } => lease_id(*lease),
            _ => None,
        }
    }

    /// The revision an `ok` KV write created: a put, a cas that succeeded,
    /// a delete that deleted something.
    pub(crate) fn created_revision(&self) -> Option<i64> {
        let r = self.result?;
        match self.op {
            Op::Put { .. } => Some(r.revision),
            Op::Cas { .. } if r.succeeded == Some(true) => Some(r.revision),
            Op::Delete { .. } if r.deleted.unwrap_or(0) >= 1 => Some(r.revision),
            _ => None,
        }
    }

    /// Whether this is a linearizable (non-serializable) get.
    pub(crate) fn is_linearizable_get(&self) -> bool {
        matches!(
            self.op,
            Op::Get {
                serializable: false,
                ..
            }
        )
    }

    /// The operation's name, as in the history's `f` field.
    pub(crate) fn name(&self) -> &'static str {
        op_name(self.op)
    }

    /// A one-line description: id, process, member, request, times, outcome.
    pub(crate) fn describe(&self) -> String {
        let mut s = format!(
            "op {} (process {} on {}) {}, invoked {}, ",
            self.id,
            self.process,
            self.member,
            describe_op(self.op),
            fmt_t(self.invoke)
        );
        match self.outcome {
            Outcome::Ok => {
                let _ = write!(s, "ok {}", self.completed_at.map(fmt_t).unwrap_or_default());
                if let Some(r) = self.result {
                    let _ = write!(s, ": {}", describe_result(self.op, r));
                }
            }
            Outcome::Fail => {
                let _ = write!(
                    s,
                    "fail {}: {}",
                    self.completed_at.map(fmt_t).unwrap_or_default(),
                    self.error.unwrap_or("no error given")
                );
            }
            Outcome::Info => {
                let _ = write!(
                    s,
                    "info {} (may have taken effect): {}",
                    self.completed_at.map(fmt_t).unwrap_or_default(),
                    self.error.unwrap_or("no error given")
                );
            }
            Outcome::Unfinished => s.push_str("never completed (may have taken effect)"),
        }
        s
    }
}

/// A lease field: `Some(0)` is no lease (etcd's encoding of "none").
pub(crate) fn lease_id(lease: Option<i64>) -> Option<i64> {
    lease.filter(|&l| l != 0)
}

/// The name of an operation (the history's `f`).
pub(crate) fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Get { .. } => "get",
        Op::Put { .. } => "put",
        Op::Delete { .. } => "delete",
        Op::Cas { .. } => "cas",
        Op::LeaseGrant { .. } => "lease_grant",
        Op::LeaseKeepAlive { .. } => "lease_keep_alive",
        Op::LeaseRevoke { .. } => "lease_revoke",
    }
}

/// A time `t` (nanoseconds) as seconds, to the microsecond.
pub(crate) fn fmt_t(t: u64) -> String {
    format!(
        "t={}.{:06}s",
        t / 1_000_000_000,
        (t % 1_000_000_000) / 1_000
    )
}

/// A value or absence, quoted.
pub(crate) fn fmt_value(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}

fn describe_op(op: &Op) -> String {
    match op {
        Op::Get { key, serializable } => {
            format!(
                "get {key}{}",
                if *serializable { " (serializable)" } else { "" }
            )
        }
        Op::Put { key, value, lease } => match lease {
            Some(l) => format!("put {key} = {value:?} with lease {l}"),
            None => format!("put {key} = {value:?}"),
        },
        Op::Delete { key } => format!("delete {key}"),
        Op::Cas { key, expect, value } => {
            format!(
                "cas {key}: if {} then put {value:?}",
                fmt_value(expect.as_deref())
            )
        }
        Op::LeaseGrant { ttl } => format!("lease_grant ttl {ttl}s"),
        Op::LeaseKeepAlive { lease } => format!("lease_keep_alive {lease}"),
        Op::LeaseRevoke { lease } => format!("lease_revoke {lease}"),
    }
}

fn describe_result(op: &Op, r: &OpResult) -> String {
    let read = |r: &OpResult| match (&r.value, r.mod_revision) {
        (Some(v), Some(m)) => format!("{v:?} (mod_revision {m})"),
        (Some(v), None) => format!("{v:?}"),
        (None, _) => "absent".to_string(),
    };
    match op {
        Op::Get { .. } => format!("{}, header revision {}", read(r), r.revision),
        Op::Put { .. } => format!("revision {}", r.revision),
        Op::Delete { .. } => match r.deleted {
            Some(d) => format!("deleted {d}, revision {}", r.revision),
            None => format!("revision {}", r.revision),
        },
        Op::Cas { .. } => match r.succeeded {
            Some(true) => format!("succeeded, revision {}", r.revision),
            _ => format!(
                "compare failed, read {}, header revision {}",
                read(r),
                r.revision
            ),
        },
        Op::LeaseGrant { .. } => format!(
            "lease {}, ttl {}s, header revision {}",
            r.lease.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            r.ttl.map(|l| l.to_string()).unwrap_or_else(|| "?".into()),
            r.revision
        ),
        Op::LeaseKeepAlive { .. } => format!(
            "ttl {}s",
            r.ttl.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
        ),
        Op::LeaseRevoke { .. } => format!("header revision {}", r.revision),
    }
}

/// The history, indexed.
pub(crate) struct History<'a> {
    /// The start record, if there is one.
    pub(crate) start: Option<&'a StartRecord>,
    /// Every operation, in invocation order (file order of the invocations).
    pub(crate) ops: Vec<Operation<'a>>,
    /// Watcher → its records, in file order.
    pub(crate) watches: BTreeMap<u32, Vec<&'a WatchRecord>>,
    /// The fault records.
    pub(crate) faults: Vec<&'a FaultRecord>,
    /// One final record per member (the first, if a member has several).
    pub(crate) finals: Vec<&'a FinalRecord>,
    /// Written value → index in `ops` of the put or cas that tried to write it.
    pub(crate) writers: HashMap<&'a str, usize>,
}

impl<'a> History<'a> {
    /// Indexes `records`, reporting malformations into `out`.
    pub(crate) fn build(records: &'a [Record], out: &mut Vec<Anomaly>) -> History<'a> {
        let mut h = History {
            start: None,
            ops: Vec::new(),
            watches: BTreeMap::new(),
            faults: Vec::new(),
            finals: Vec::new(),
            writers: HashMap::new(),
        };
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        // process → (index of its outstanding operation, last t seen)
        let mut outstanding: HashMap<u32, usize> = HashMap::new();
        let mut last_t_of_process: HashMap<u32, u64> = HashMap::new();
        let mut backwards_processes: Vec<u32> = Vec::new();
        let mut last_t_of_watcher: HashMap<u32, u64> = HashMap::new();
        let mut backwards_watchers: Vec<u32> = Vec::new();

        for (line, record) in records.iter().enumerate() {
            let line = line + 1;
            match record {
                Record::Start(s) => {
                    if h.start.is_some() {
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!("record {line}: a second start record (ignored)"),
                            vec![],
                        ));
                    } else {
                        h.start = Some(s);
                    }
                }
                Record::Fault(f) => h.faults.push(f),
                Record::Final(f) => {
                    if h.finals.iter().any(|g| g.member == f.member) {
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: a second final record for member {} (ignored)",
                                f.member
                            ),
                            vec![],
                        ));
                    } else {
                        h.finals.push(f);
                    }
                }
                Record::Watch(w) => {
                    let last = last_t_of_watcher.entry(w.watcher).or_insert(w.t);
                    if w.t < *last && !backwards_watchers.contains(&w.watcher) {
                        backwards_watchers.push(w.watcher);
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: watcher {}'s time goes backwards: {} after {}",
                                w.watcher,
                                fmt_t(w.t),
                                fmt_t(*last)
                            ),
                            vec![],
                        ));
                    }
                    *last = (*last).max(w.t);
                    h.watches.entry(w.watcher).or_default().push(w);
                }
                Record::Op(o) => {
                    let last = last_t_of_process.entry(o.process).or_insert(o.t);
                    if o.t < *last && !backwards_processes.contains(&o.process) {
                        backwards_processes.push(o.process);
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: process {}'s time goes backwards: {} after {} (op {})",
                                o.process,
                                fmt_t(o.t),
                                fmt_t(*last),
                                o.id
                            ),
                            vec![o.id],
                        ));
                    }
                    *last = (*last).max(o.t);
                    if o.kind == OpKind::Invoke {
                        if let Some(&i) = by_id.get(&o.id) {
                            out.push(Anomaly::new(
                                AnomalyKind::Malformed,
                                format!(
                                    "record {line}: op {} invoked a second time (ignored); first: {}",
                                    o.id,
                                    h.ops[i].describe()
                                ),
                                vec![o.id],
                            ));
                            continue;
                        }
                        if let Some(&prev) = outstanding.get(&o.process) {
                            out.push(Anomaly::new(
                                AnomalyKind::Malformed,
                                format!(
                                    "record {line}: process {} invokes op {} at {} while {} is outstanding",
                                    o.process,
                                    o.id,
                                    fmt_t(o.t),
                                    h.ops[prev].describe()
                                ),
                                vec![o.id, h.ops[prev].id],
                            ));
                        }
                        let i = h.ops.len();
                        h.ops.push(Operation {
                            id: o.id,
                            process: o.process,
                            member: &o.member,
                            op: &o.op,
                            invoke: o.t,
                            outcome: Outcome::Unfinished,
                            completed_at: None,
                            result: None,
                            error: None,
                        });
                        by_id.insert(o.id, i);
                        outstanding.insert(o.process, i);
                        continue;
                    }
                    // A completion.
                    let Some(&i) = by_id.get(&o.id) else {
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: a {:?} completion of op {} (process {}) without an invocation",
                                o.kind, o.id, o.process
                            ),
                            vec![o.id],
                        ));
                        continue;
                    };
                    let op = &mut h.ops[i];
                    if op.completed_at.is_some() {
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: a second completion ({:?}) of op {} (ignored); first: {}",
                                o.kind,
                                o.id,
                                op.describe()
                            ),
                            vec![o.id],
                        ));
                        continue;
                    }
                    if o.process != op.process || o.op != *op.op {
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: op {}'s completion (process {}, {}) disagrees with its invocation (process {}, {}); the invocation is believed",
                                o.id,
                                o.process,
                                describe_op(&o.op),
                                op.process,
                                describe_op(op.op)
                            ),
                            vec![o.id],
                        ));
                    }
                    if o.t < op.invoke {
                        out.push(Anomaly::new(
                            AnomalyKind::Malformed,
                            format!(
                                "record {line}: op {} completes at {} before its invocation at {}",
                                o.id,
                                fmt_t(o.t),
                                fmt_t(op.invoke)
                            ),
                            vec![o.id],
                        ));
                    }
                    if outstanding.get(&op.process) == Some(&i) {
                        outstanding.remove(&op.process);
                    }
                    op.completed_at = Some(o.t.max(op.invoke));
                    op.error = o.error.as_deref();
                    op.outcome = match o.kind {
                        OpKind::Fail => Outcome::Fail,
                        OpKind::Info => Outcome::Info,
                        OpKind::Ok => match result_problem(op.op, o.result.as_ref()) {
                            None => {
                                op.result = o.result.as_ref();
                                Outcome::Ok
                            }
                            Some(problem) => {
                                out.push(Anomaly::new(
                                    AnomalyKind::Malformed,
                                    format!(
                                        "record {line}: op {} completed ok but {problem}; read as info",
                                        o.id
                                    ),
                                    vec![o.id],
                                ));
                                Outcome::Info
                            }
                        },
                        // Invocations were handled above.
                        OpKind::Invoke => Outcome::Info,
                    };
                }
            }
        }

        if h.start.is_none() {
            out.push(Anomaly::new(
                AnomalyKind::Malformed,
                "the history has no start record (no prefix, lease TTL, election timeout or clock origin for faults)",
                vec![],
            ));
        }

        for (i, op) in h.ops.iter().enumerate() {
            let Some(v) = op.value_written() else {
                continue;
            };
            if let Some(&first) = h.writers.get(v) {
                out.push(Anomaly::new(
                    AnomalyKind::Malformed,
                    format!(
                        "value {v:?} is written twice (values must be unique): {} and {}",
                        h.ops[first].describe(),
                        op.describe()
                    ),
                    vec![h.ops[first].id, op.id],
                ));
            } else {
                h.writers.insert(v, i);
            }
        }
        h
    }

    /// The operation that tried to write `value`.
    pub(crate) fn writer(&self, value: &str) -> Option<&Operation<'a>> {
        self.writers.get(value).map(|&i| &self.ops[i])
    }

    /// Describes where a read value came from when it is not a value the key
    /// could hold: `None` when some put or cas on `key` that did not fail
    /// wrote it.
    pub(crate) fn provenance_problem(&self, key: &str, value: &str) -> Option<String> {
        match self.writer(value) {
            None => Some(format!("no operation wrote {value:?}")),
            Some(w) if w.key() != Some(key) => Some(format!(
                "{value:?} was written to another key: {}",
                w.describe()
            )),
            Some(w) if w.wrote() == Wrote::No => Some(format!(
                "{value:?} was written by an operation that took no effect: {}",
                w.describe()
            )),
            Some(_) => None,
        }
    }
}

/// What an `ok` result lacks for its operation, if anything.
fn result_problem(op: &Op, result: Option<&OpResult>) -> Option<&'static str> {
    let Some(r) = result else {
        return Some("has no result");
    };
    match op {
        Op::Cas { .. } if r.succeeded.is_none() => Some("its cas result lacks `succeeded`"),
        Op::LeaseGrant { .. } if r.lease.is_none() => Some("its grant result lacks the lease id"),
        Op::Get { .. } if r.value.is_some() && r.mod_revision.is_none() => {
            Some("its get result has a value without a mod_revision")
        }
        _ => None,
    }
}
