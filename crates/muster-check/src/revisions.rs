//! Revisions against real time and against each other (global, across
//! keys), and the revisions learned for writes of unknown outcome.
//!
//! The revision of an operation is its `ok` result's header revision: for a
//! write that changed the store (a put, a cas that succeeded, a delete that
//! deleted a key) the revision it created, otherwise the store revision it
//! observed. Lease operations are left out (their header revisions say
//! nothing the KV checks need).
//!
//! Checks, all [`AnomalyKind::RevisionOrder`]:
//! - real time: when `ok` A completed before `ok` B was invoked, rev(B) ≥
//!   rev(A), and rev(B) > rev(A) when B created a revision (a store revision
//!   someone already observed cannot be created again). Serializable gets
//!   may be stale, so they are only ever the A of such a pair.
//! - uniqueness: no two writes create one revision (the workload never
//!   batches writes in one txn).
//! - reads: a read (a get, or a cas whose compare failed) of value v at
//!   mod_revision m: the write of v created m when it is `ok` (when it is
//!   `info`, m is *learned* as its revision; two observations disagreeing
//!   on it are an anomaly); the read's header revision is ≥ m; and no known
//!   change to the key has a revision in (m, header] (the read claims the
//!   snapshot at its header revision, which would hold that newer change).
//!   The final state's mod_revisions are read the same way.
//!
//! Known changes are the `ok` writes, the learned `info` writes and every
//! change some watcher received. Watch events whose mod_revision differs
//! from their write's are reported by the watch checker, not here.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::Op;
use crate::index::{History, Outcome, fmt_value};
use crate::report::{Anomaly, AnomalyKind};
use crate::watch::{Watches, describe_event};

/// The revision each write created, where known.
#[derive(Clone, Debug, Default)]
pub(crate) struct Learned {
    /// Index in `History::ops` → the revision the write created: an `ok`
    /// write's own, or one learned from an observation of an `info` write.
    pub(crate) revision_of: HashMap<usize, i64>,
}

/// When revisions existed at the latest: an `ok` KV operation whose header
/// revision is R, a watch response or progress notification with header
/// revision R, or a final state at revision R, each prove that revision R
/// (and every revision below it) existed when they were received.
#[derive(Clone, Debug, Default)]
pub(crate) struct RevisionClock {
    /// (revision, the earliest time a revision ≥ it was known), ascending
    /// by revision; times are suffix minima.
    points: Vec<(i64, u64)>,
}

impl RevisionClock {
    /// Collects every proof of a revision's existence in the history.
    pub(crate) fn build(h: &History<'_>) -> RevisionClock {
        let mut points: Vec<(i64, u64)> = Vec::new();
        for op in &h.ops {
            if let (Some(r), Some(c), true) = (op.result, op.complete(), op.key().is_some()) {
                points.push((r.revision, c));
            }
        }
        for records in h.watches.values() {
            for w in records {
                match w.event {
                    crate::history::WatchEvent::Events {
                        header_revision, ..
                    }
                    | crate::history::WatchEvent::Progress { header_revision } => {
                        points.push((header_revision, w.t))
                    }
                    _ => {}
                }
            }
        }
        for f in h.finals.iter().filter(|f| f.error.is_none()) {
            points.push((f.revision, f.t));
        }
        points.sort_unstable();
        for i in (0..points.len().saturating_sub(1)).rev() {
            points[i].1 = points[i].1.min(points[i + 1].1);
        }
        RevisionClock { points }
    }

    /// The earliest time revision `rev` is known to have existed.
    pub(crate) fn existed_by(&self, rev: i64) -> Option<u64> {
        let i = self.points.partition_point(|&(r, _)| r < rev);
        self.points.get(i).map(|&(_, t)| t)
    }
}

/// Where a value was observed.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// An `ok` get or cas (index in `ops`).
    Op(usize),
    /// A watch event.
    Watch(u32),
    /// A member's final state.
    Final(&'a str),
}

struct Observation<'a> {
    key: &'a str,
    value: &'a str,
    mod_revision: i64,
    source: Source<'a>,
}

fn describe_source(h: &History<'_>, s: Source<'_>) -> String {
    match s {
        Source::Op(i) => h.ops[i].describe(),
        Source::Watch(w) => format!("watcher {w}'s event"),
        Source::Final(m) => format!("member {m}'s final state"),
    }
}

fn observations<'a>(h: &History<'a>, watches: &Watches<'a>) -> Vec<Observation<'a>> {
    let mut obs = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        let (Some(r), Some(key)) = (op.result, op.key()) else {
            continue;
        };
        let reads = match op.op {
            Op::Get { .. } => true,
            Op::Cas { .. } => r.succeeded == Some(false),
            _ => false,
        };
        if let (true, Some(value), Some(m)) = (reads, r.value.as_deref(), r.mod_revision) {
            obs.push(Observation {
                key,
                value,
                mod_revision: m,
                source: Source::Op(i),
            });
        }
    }
    for (&m, keys) in &watches.reference {
        for (&key, r) in keys {
            if let Some(value) = r.event.value.as_deref() {
                obs.push(Observation {
                    key,
                    value,
                    mod_revision: m,
                    source: Source::Watch(r.watchers[0]),
                });
            }
        }
    }
    for f in h.finals.iter().filter(|f| f.error.is_none()) {
        for kv in &f.kvs {
            obs.push(Observation {
                key: &kv.key,
                value: &kv.value,
                mod_revision: kv.mod_revision,
                source: Source::Final(&f.member),
            });
        }
    }
    obs
}

/// Learns the revisions of writes from their results and from every
/// observation of their values, reporting observations that contradict an
/// `ok` write's revision or each other.
pub(crate) fn learn(h: &History<'_>, watches: &Watches<'_>, out: &mut Vec<Anomaly>) -> Learned {
    let mut learned = Learned::default();
    for (i, op) in h.ops.iter().enumerate() {
        if let Some(rev) = op.created_revision() {
            learned.revision_of.insert(i, rev);
        }
    }
    let mut first_seen: HashMap<usize, (i64, String)> = HashMap::new();
    let mut reported: HashSet<(usize, i64)> = HashSet::new();
    for o in observations(h, watches) {
        let Some(&wi) = h.writers.get(o.value) else {
            continue;
        };
        let w = &h.ops[wi];
        if h.provenance_problem(o.key, o.value).is_some() {
            continue; // reported by the checker that owns the source
        }
        match w.outcome {
            Outcome::Ok => {
                let Some(created) = w.created_revision() else {
                    continue;
                };
                if created != o.mod_revision
                    && !matches!(o.source, Source::Watch(_))
                    && reported.insert((wi, o.mod_revision))
                {
                    let mut ops = vec![w.id];
                    if let Source::Op(i) = o.source {
                        ops.push(h.ops[i].id);
                    }
                    out.push(Anomaly::new(
                        AnomalyKind::RevisionOrder,
                        format!(
                            "{} = {:?} was read with mod_revision {}, but its write created revision {created}\n  read: {}\n  write: {}",
                            o.key,
                            o.value,
                            o.mod_revision,
                            describe_source(h, o.source),
                            w.describe()
                        ),
                        ops,
                    ));
                }
            }
            Outcome::Info | Outcome::Unfinished => match first_seen.get(&wi) {
                None => {
                    first_seen.insert(wi, (o.mod_revision, describe_source(h, o.source)));
                    learned.revision_of.insert(wi, o.mod_revision);
                }
                Some((m, first)) => {
                    if *m != o.mod_revision && reported.insert((wi, o.mod_revision)) {
                        out.push(Anomaly::new(
                            AnomalyKind::RevisionOrder,
                            format!(
                                "{} = {:?} was observed with mod_revision {m} and with mod_revision {}\n  first: {first}\n  then: {}\n  write: {}",
                                o.key,
                                o.value,
                                o.mod_revision,
                                describe_source(h, o.source),
                                w.describe()
                            ),
                            vec![w.id],
                        ));
                    }
                }
            },
            Outcome::Fail => {}
        }
    }
    learned
}

/// Runs the revision checks.
pub(crate) fn check(
    h: &History<'_>,
    watches: &Watches<'_>,
    learned: &Learned,
    out: &mut Vec<Anomaly>,
) {
    real_time(h, out);
    unique(h, learned, out);
    reads(h, watches, learned, out);
}

fn is_kv(op: &Op) -> bool {
    op.key().is_some()
}

fn real_time(h: &History<'_>, out: &mut Vec<Anomaly>) {
    let mut by_complete: Vec<(u64, usize)> = Vec::new();
    let mut by_invoke: Vec<(u64, usize)> = Vec::new();
    for (i, op) in h.ops.iter().enumerate() {
        if !op.is_ok() || !is_kv(op.op) || op.result.is_none() {
            continue;
        }
        if let Some(c) = op.complete() {
            by_complete.push((c, i));
        }
        if !matches!(
            op.op,
            Op::Get {
                serializable: true,
                ..
            }
        ) {
            by_invoke.push((op.invoke, i));
        }
    }
    by_complete.sort_unstable();
    by_invoke.sort_unstable();
    let rev = |i: usize| h.ops[i].result.map(|r| r.revision).unwrap_or(0);
    let mut max: Option<(i64, usize)> = None;
    let mut next = 0;
    for &(invoke, b) in &by_invoke {
        while next < by_complete.len() && by_complete[next].0 < invoke {
            let a = by_complete[next].1;
            if max.is_none_or(|(r, _)| rev(a) > r) {
                max = Some((rev(a), a));
            }
            next += 1;
        }
        let Some((max_rev, a)) = max else { continue };
        let creates = h.ops[b].created_revision().is_some();
        let rb = rev(b);
        if rb < max_rev || (creates && rb == max_rev) {
            out.push(Anomaly::new(
                AnomalyKind::RevisionOrder,
                format!(
                    "{} revision {rb} after an operation that completed before it was invoked had {}revision {max_rev}\n  earlier: {}\n  later: {}",
                    if creates { "a write created" } else { "an operation observed" },
                    if h.ops[a].created_revision().is_some() { "created " } else { "observed " },
                    h.ops[a].describe(),
                    h.ops[b].describe()
                ),
                vec![h.ops[b].id, h.ops[a].id],
            ));
        }
    }
}

fn unique(h: &History<'_>, learned: &Learned, out: &mut Vec<Anomaly>) {
    let mut by_rev: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
    for (&i, &rev) in &learned.revision_of {
        by_rev.entry(rev).or_default().push(i);
    }
    for (rev, mut ops) in by_rev {
        if ops.len() < 2 {
            continue;
        }
        ops.sort_unstable();
        let mut msg = format!("{} writes created revision {rev}:", ops.len());
        for &i in &ops {
            msg.push_str("\n  ");
            msg.push_str(&h.ops[i].describe());
            if !h.ops[i].is_ok() {
                msg.push_str(" (revision learned from a read of its value)");
            }
        }
        out.push(Anomaly::new(
            AnomalyKind::RevisionOrder,
            msg,
            ops.iter().map(|&i| h.ops[i].id).collect(),
        ));
    }
}

fn reads(h: &History<'_>, watches: &Watches<'_>, learned: &Learned, out: &mut Vec<Anomaly>) {
    // key → revision → what changed it.
    let mut changes: HashMap<&str, BTreeMap<i64, String>> = HashMap::new();
    for (&i, &rev) in &learned.revision_of {
        if let Some(key) = h.ops[i].key() {
            changes
                .entry(key)
                .or_default()
                .insert(rev, h.ops[i].describe());
        }
    }
    for (&rev, keys) in &watches.reference {
        for (&key, r) in keys {
            changes
                .entry(key)
                .or_default()
                .entry(rev)
                .or_insert_with(|| {
                    format!(
                        "{} (received by watchers {:?})",
                        describe_event(r.event),
                        r.watchers
                    )
                });
        }
    }
    for op in &h.ops {
        let (Some(r), Some(key)) = (op.result, op.key()) else {
            continue;
        };
        let reads = match op.op {
            Op::Get { .. } => true,
            Op::Cas { .. } => r.succeeded == Some(false),
            _ => false,
        };
        if !reads {
            continue;
        }
        let Some(m) = r.mod_revision.filter(|_| r.value.is_some()) else {
            continue;
        };
        if r.revision < m {
            out.push(Anomaly::new(
                AnomalyKind::RevisionOrder,
                format!(
                    "a read's header revision {} is below the mod_revision {m} of the value it returned: {}",
                    r.revision,
                    op.describe()
                ),
                vec![op.id],
            ));
            continue;
        }
        if let Some((newer, what)) = changes
            .get(key)
            .filter(|_| r.revision > m)
            .and_then(|c| c.range(m + 1..=r.revision).next())
        {
            out.push(Anomaly::new(
                AnomalyKind::RevisionOrder,
                format!(
                    "a read at header revision {} returned {key} = {} (mod_revision {m}), but {key} changed at revision {newer}, inside that snapshot\n  read: {}\n  change: {what}",
                    r.revision,
                    fmt_value(r.value.as_deref()),
                    op.describe()
                ),
                vec![op.id],
            ));
        }
    }
}
