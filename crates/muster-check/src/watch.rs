//! Watch guarantees, per watcher and across watchers, and the reference list
//! of changes the other checkers read.
//!
//! A watcher's records are read in file order as a stream of *segments*: a
//! segment opens at a `Start`, survives an `Error` followed by a correct
//! resume, and ends at a `Compacted` (a legitimate cut: the next `Start`
//! opens a fresh segment) or at a resume that skipped revisions (reported,
//! then a fresh segment opens, so one skip is reported once). A segment
//! *covers* the revisions from its start revision through the highest of
//! its events' mod_revisions and its progress notifications' header
//! revisions; an `Events` response's header revision is not coverage (a
//! catching-up watcher may have more events to come). A start revision of 0
//! or less ("from now") opens the coverage at the first event (or just after
//! the first progress revision).
//!
//! Checks:
//! - ordered ([`AnomalyKind::WatchOrder`]): mod_revisions never decrease
//!   along one watcher, across reconnects; no event precedes its segment's
//!   start; no event's mod_revision exceeds its response's header revision.
//! - unique ([`AnomalyKind::WatchDuplicate`]): no (key, mod_revision) twice
//!   for one watcher; a resume from a revision it had already seen.
//! - atomic ([`AnomalyKind::WatchAtomicity`]): the events of one revision
//!   arrive in one response.
//! - resumable ([`AnomalyKind::WatchGap`]): after an `Error`, the next
//!   `Start` resumes at most one past what the segment covered.
//! - reliable: the reference is the union of every watcher's events
//!   (revision → key → event); watchers that disagree on a (revision, key)
//!   are a [`AnomalyKind::WatchMismatch`]. Every segment must hold every
//!   reference revision it covers ([`AnomalyKind::WatchGap`], one anomaly
//!   per segment listing the missing revisions) and every key of it
//!   ([`AnomalyKind::WatchMismatch`] when only part of a revision arrived).
//!   Only keys under the watcher's own prefix are expected of it.
//! - consistent with the KV history: a put event's value must have been
//!   written to that key by a put or cas that did not fail, with the lease
//!   the put named, and at the event's mod_revision when the write is `ok`;
//!   the events at a revision an `ok` write created must be exactly that
//!   write's change ([`AnomalyKind::WatchMismatch`]); and an `ok` write's
//!   revision inside a segment's coverage must be in that watcher's stream
//!   even if no watcher saw it ([`AnomalyKind::WatchGap`]).
//!
//! Simplifications: lease revocations and expiries have no KV operation, so
//! the delete events they cause are checked only against the other
//! watchers, and `Compacted` is trusted (the revisions it skips are not
//! expected of the watcher).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::history::{EventKind, KvEvent, Op, WatchEvent};
use crate::index::{History, fmt_t, fmt_value, lease_id};
use crate::report::{Anomaly, AnomalyKind};

/// One change of the reference list, as the first watcher saw it.
#[derive(Clone, Debug)]
pub(crate) struct RefEvent<'a> {
    /// The event (from the watcher that received it first in the file).
    pub(crate) event: &'a KvEvent,
    /// The earliest time any watcher received it.
    pub(crate) first_t: u64,
    /// The watchers that received it.
    pub(crate) watchers: Vec<u32>,
}

/// A stretch of one watcher's stream without a legitimate cut.
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    /// The first revision covered (`None`: a "from now" start not yet pinned).
    pub(crate) from: Option<i64>,
    /// The last revision covered (`from - 1` when nothing is).
    pub(crate) to: i64,
    /// When the segment's last record was received.
    pub(crate) last_t: u64,
}

impl Segment {
    /// Whether the segment covers `rev`.
    pub(crate) fn covers(&self, rev: i64) -> bool {
        self.from.is_some_and(|f| f <= rev) && rev <= self.to
    }
}

/// What one watcher saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stream<'a> {
    /// The prefix it follows.
    pub(crate) prefix: &'a str,
    /// Its segments, in order.
    pub(crate) segments: Vec<Segment>,
    /// revision → key → (event, time received): the first copy of each.
    pub(crate) events: BTreeMap<i64, BTreeMap<&'a str, (&'a KvEvent, u64)>>,
}

/// Every watcher's stream and the reference list of changes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Watches<'a> {
    /// revision → key → the change.
    pub(crate) reference: BTreeMap<i64, BTreeMap<&'a str, RefEvent<'a>>>,
    /// key → the revisions of its changes in the reference, ascending.
    pub(crate) by_key: HashMap<&'a str, Vec<i64>>,
    /// watcher → its stream.
    pub(crate) streams: BTreeMap<u32, Stream<'a>>,
    /// Events received over all watchers.
    pub(crate) events_received: usize,
}

impl<'a> Watches<'a> {
    /// Reads every watcher's records, checking each stream (order,
    /// uniqueness, atomicity, resumption) and building the reference.
    pub(crate) fn build(h: &History<'a>, out: &mut Vec<Anomaly>) -> Watches<'a> {
        let mut w = Watches::default();
        for (&watcher, records) in &h.watches {
            let stream = read_stream(watcher, records, out, &mut w.events_received);
            w.streams.insert(watcher, stream);
        }
        let mut disagreements: HashSet<(i64, &str)> = HashSet::new();
        for (&watcher, stream) in &w.streams {
            for (&rev, keys) in &stream.events {
                for (&key, &(event, t)) in keys {
                    let slot = w.reference.entry(rev).or_default();
                    match slot.get_mut(key) {
                        None => {
                            slot.insert(
                                key,
                                RefEvent {
                                    event,
                                    first_t: t,
                                    watchers: vec![watcher],
                                },
                            );
                        }
                        Some(r) => {
                            if !same_event(r.event, event) && disagreements.insert((rev, key)) {
                                out.push(Anomaly::new(
                                    AnomalyKind::WatchMismatch,
                                    format!(
                                        "watchers disagree on revision {rev} of {key}: watcher {} received {}, watcher {watcher} received {} at {}",
                                        r.watchers[0],
                                        describe_event(r.event),
                                        describe_event(event),
                                        fmt_t(t)
                                    ),
                                    vec![],
                                ));
                            }
                            r.first_t = r.first_t.min(t);
                            r.watchers.push(watcher);
                        }
                    }
                }
            }
        }
        for (&rev, keys) in &w.reference {
            for &key in keys.keys() {
                w.by_key.entry(key).or_default().push(rev);
            }
        }
        w
    }

    /// The reference change to `key` at `rev`.
    pub(crate) fn change(&self, key: &str, rev: i64) -> Option<&RefEvent<'a>> {
        self.reference.get(&rev)?.get(key)
    }

    /// The reference changes to `key` after revision `rev`, ascending.
    pub(crate) fn changes_after(
        &self,
        key: &str,
        rev: i64,
    ) -> impl Iterator<Item = (i64, &RefEvent<'a>)> {
        let revs = self.by_key.get(key).map(Vec::as_slice).unwrap_or(&[]);
        let from = revs.partition_point(|&r| r <= rev);
        revs[from..]
            .iter()
            .filter_map(move |&r| Some((r, self.change(key, r)?)))
    }

    /// Checks the reference against the KV history and every segment
    /// against the reference (reliability).
    pub(crate) fn check(&self, h: &History<'a>, out: &mut Vec<Anomaly>) {
        self.check_against_writes(h, out);
        self.check_reliability(h, out);
    }

    fn check_against_writes(&self, h: &History<'a>, out: &mut Vec<Anomaly>) {
        for (&rev, keys) in &self.reference {
            for (&key, r) in keys {
                if r.event.kind != EventKind::Put {
                    continue;
                }
                let seen = format!(
                    "watcher{} {:?} received {} at {}",
                    if r.watchers.len() > 1 { "s" } else { "" },
                    r.watchers,
                    describe_event(r.event),
                    fmt_t(r.first_t)
                );
                let Some(value) = r.event.value.as_deref() else {
                    out.push(Anomaly::new(
                        AnomalyKind::WatchMismatch,
                        format!("{seen}: a put event without a value"),
                        vec![],
                    ));
                    continue;
                };
                if let Some(problem) = h.provenance_problem(key, value) {
                    let ops = h.writer(value).map(|w| vec![w.id]).unwrap_or_default();
                    out.push(Anomaly::new(
                        AnomalyKind::WatchMismatch,
                        format!("{seen}, but {problem}"),
                        ops,
                    ));
                    continue;
                }
                let Some(w) = h.writer(value) else { continue };
                if let Some(created) = w.created_revision()
                    && created != rev
                {
                    out.push(Anomaly::new(
                        AnomalyKind::WatchMismatch,
                        format!(
                            "{seen} (mod_revision {rev}), but the write of {value:?} created revision {created}: {}",
                            w.describe()
                        ),
                        vec![w.id],
                    ));
                }
                if let Op::Put { lease, .. } = w.op
                    && lease_id(*lease) != lease_id(r.event.lease)
                {
                    out.push(Anomaly::new(
                        AnomalyKind::WatchMismatch,
                        format!(
                            "{seen} with lease {:?}, but the put named lease {:?}: {}",
                            r.event.lease,
                            lease,
                            w.describe()
                        ),
                        vec![w.id],
                    ));
                }
            }
        }
        // The changes at a revision an ok write created must be exactly it.
        for op in &h.ops {
            let (Some(rev), Some(key)) = (op.created_revision(), op.key()) else {
                continue;
            };
            let Some(keys) = self.reference.get(&rev) else {
                continue;
            };
            let expected_kind = if matches!(op.op, Op::Delete { .. }) {
                EventKind::Delete
            } else {
                EventKind::Put
            };
            let matches = keys.len() == 1
                && keys.get(key).is_some_and(|r| {
                    r.event.kind == expected_kind
                        && (expected_kind == EventKind::Delete
                            || r.event.value.as_deref() == op.value_written())
                });
            if !matches {
                let mut seen = String::new();
                for (k, r) in keys {
                    let _ = write!(
                        seen,
                        "\n  {k}: {} (watchers {:?})",
                        describe_event(r.event),
                        r.watchers
                    );
                }
                out.push(Anomaly::new(
                    AnomalyKind::WatchMismatch,
                    format!(
                        "revision {rev} was created by {}, but watchers received at that revision:{seen}",
                        op.describe()
                    ),
                    vec![op.id],
                ));
            }
        }
    }

    fn check_reliability(&self, h: &History<'a>, out: &mut Vec<Anomaly>) {
        // Revision → (key, the ok write) for revisions no watcher saw.
        let mut unseen_writes: BTreeMap<i64, Vec<(&str, usize)>> = BTreeMap::new();
        for (i, op) in h.ops.iter().enumerate() {
            if let (Some(rev), Some(key)) = (op.created_revision(), op.key())
                && !self.reference.contains_key(&rev)
            {
                unseen_writes.entry(rev).or_default().push((key, i));
            }
        }
        for (&watcher, stream) in &self.streams {
            for seg in &stream.segments {
                let Some(from) = seg.from else { continue };
                if seg.to < from {
                    continue;
                }
                let mut missing: Vec<String> = Vec::new();
                let mut ops: Vec<u64> = Vec::new();
                let mut missing_revs = 0usize;
                let mut merged: BTreeMap<i64, ()> = BTreeMap::new();
                for &rev in self.reference.range(from..=seg.to).map(|(r, _)| r) {
                    merged.insert(rev, ());
                }
                for &rev in unseen_writes.range(from..=seg.to).map(|(r, _)| r) {
                    merged.insert(rev, ());
                }
                for &rev in merged.keys() {
                    let received = stream.events.get(&rev);
                    if let Some(keys) = self.reference.get(&rev) {
                        let expected: Vec<(&str, &RefEvent<'_>)> = keys
                            .iter()
                            .filter(|(k, _)| k.starts_with(stream.prefix))
                            .map(|(k, r)| (*k, r))
                            .collect();
                        if expected.is_empty() {
                            continue;
                        }
                        match received {
                            None => {
                                missing_revs += 1;
                                if missing.len() < 10 {
                                    let (k, r) = expected[0];
                                    missing.push(format!(
                                        "revision {rev}: {k} {} (received by watchers {:?}, first at {}){}",
                                        describe_event(r.event),
                                        r.watchers,
                                        fmt_t(r.first_t),
                                        if expected.len() > 1 {
                                            format!(" and {} more keys", expected.len() - 1)
                                        } else {
                                            String::new()
                                        }
                                    ));
                                }
                            }
                            Some(got) => {
                                let lacking: Vec<&str> = expected
                                    .iter()
                                    .map(|(k, _)| *k)
                                    .filter(|k| !got.contains_key(k))
                                    .collect();
                                if !lacking.is_empty() {
                                    out.push(Anomaly::new(
                                        AnomalyKind::WatchMismatch,
                                        format!(
                                            "watcher {watcher} received only part of revision {rev}: it got {:?} but not {:?}, which watchers {:?} received",
                                            got.keys().collect::<Vec<_>>(),
                                            lacking,
                                            keys[lacking[0]].watchers
                                        ),
                                        vec![],
                                    ));
                                }
                            }
                        }
                    } else if let Some(writes) = unseen_writes.get(&rev) {
                        for &(key, i) in writes {
                            if !key.starts_with(stream.prefix) {
                                continue;
                            }
                            missing_revs += 1;
                            ops.push(h.ops[i].id);
                            if missing.len() < 10 {
                                missing.push(format!(
                                    "revision {rev}: created by {} (no watcher received it)",
                                    h.ops[i].describe()
                                ));
                            }
                        }
                    }
                }
                if missing_revs > 0 {
                    let mut msg = format!(
                        "watcher {watcher} (prefix {:?}) covered revisions {from}..={} without a compaction or a skipping resume, but missed {missing_revs} revision(s):",
                        stream.prefix, seg.to
                    );
                    for m in &missing {
                        let _ = write!(msg, "\n  {m}");
                    }
                    if missing_revs > missing.len() {
                        let _ = write!(msg, "\n  ...");
                    }
                    out.push(Anomaly::new(AnomalyKind::WatchGap, msg, ops));
                }
            }
        }
    }
}

/// Whether two events are the same change (lease 0 being no lease).
fn same_event(a: &KvEvent, b: &KvEvent) -> bool {
    a.kind == b.kind
        && a.key == b.key
        && a.mod_revision == b.mod_revision
        && (a.kind == EventKind::Delete
            || (a.value == b.value && lease_id(a.lease) == lease_id(b.lease)))
}

/// An event, briefly.
pub(crate) fn describe_event(e: &KvEvent) -> String {
    match e.kind {
        EventKind::Put => match lease_id(e.lease) {
            Some(l) => format!(
                "put {} = {} @{} (lease {l})",
                e.key,
                fmt_value(e.value.as_deref()),
                e.mod_revision
            ),
            None => format!(
                "put {} = {} @{}",
                e.key,
                fmt_value(e.value.as_deref()),
                e.mod_revision
            ),
        },
        EventKind::Delete => format!("delete {} @{}", e.key, e.mod_revision),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first start.
    Idle,
    /// A stream is open.
    Open,
    /// The stream broke; a resume is due.
    Broken,
    /// The watch was cancelled (compacted); a fresh start is due.
    Cancelled,
}

fn read_stream<'a>(
    watcher: u32,
    records: &[&'a crate::history::WatchRecord],
    out: &mut Vec<Anomaly>,
    received: &mut usize,
) -> Stream<'a> {
    let mut stream = Stream {
        prefix: records.first().map(|r| r.prefix.as_str()).unwrap_or(""),
        ..Stream::default()
    };
    let mut state = State::Idle;
    let mut seg: Option<Segment> = None;
    let mut last_rev: Option<(i64, u64)> = None; // (mod_revision, t) of the newest event
    let mut seen: HashSet<(&str, i64)> = HashSet::new();
    let mut response_of_rev: HashMap<i64, usize> = HashMap::new();
    let mut split_reported: BTreeSet<i64> = BTreeSet::new();
    let mut response = 0usize;
    let mut prefix_reported = false;
    let mut flag = |kind: AnomalyKind, msg: String| out.push(Anomaly::new(kind, msg, vec![]));

    for r in records {
        let at = fmt_t(r.t);
        if r.prefix != stream.prefix && !prefix_reported {
            prefix_reported = true;
            flag(
                AnomalyKind::Malformed,
                format!(
                    "watcher {watcher} changes its prefix from {:?} to {:?} at {at}",
                    stream.prefix, r.prefix
                ),
            );
        }
        if let Some(s) = seg.as_mut() {
            s.last_t = r.t;
        }
        match &r.event {
            WatchEvent::Start { start_revision } => {
                let s = *start_revision;
                match state {
                    State::Idle | State::Cancelled => {
                        if let Some(old) = seg.take() {
                            stream.segments.push(old);
                        }
                        seg = Some(new_segment(s, r.t));
                    }
                    State::Open | State::Broken => {
                        if state == State::Open {
                            flag(
                                AnomalyKind::Malformed,
                                format!(
                                    "watcher {watcher} starts a new stream at {at} (from revision {s}) without the previous one breaking"
                                ),
                            );
                        }
                        let cur = seg
                            .as_ref()
                            .expect("an open or broken watcher has a segment");
                        let covered = cur.to;
                        let low = match (last_rev, cur.from) {
                            (Some((m, _)), _) => m + 1,
                            (None, Some(f)) => f,
                            (None, None) => i64::MIN,
                        };
                        if cur.from.is_none() {
                            // A "from now" stream that saw nothing: nothing to resume.
                            seg = Some(new_segment(s, r.t));
                        } else if s > covered + 1 {
                            flag(
                                AnomalyKind::WatchGap,
                                format!(
                                    "watcher {watcher} resumed at {at} from revision {s}, but had covered only through revision {covered}{}: revisions {}..={} were skipped",
                                    match last_rev {
                                        Some((m, t)) =>
                                            format!(" (last event @{m} at {})", fmt_t(t)),
                                        None => " (no event seen yet)".to_string(),
                                    },
                                    covered + 1,
                                    s - 1
                                ),
                            );
                            stream.segments.push(seg.take().expect("checked above"));
                            seg = Some(new_segment(s, r.t));
                        } else if s < low {
                            flag(
                                AnomalyKind::WatchDuplicate,
                                format!(
                                    "watcher {watcher} resumed at {at} from revision {s}, though it had already received revision {} (it must resume from {low})",
                                    low - 1
                                ),
                            );
                        }
                    }
                }
                state = State::Open;
            }
            WatchEvent::Events {
                header_revision,
                events,
            } => {
                response += 1;
                if state != State::Open {
                    flag(
                        AnomalyKind::Malformed,
                        format!("watcher {watcher} received events at {at} outside an open stream"),
                    );
                }
                let cur = seg.get_or_insert_with(|| new_segment(0, r.t));
                for e in events {
                    *received += 1;
                    let key = e.key.as_str();
                    let m = e.mod_revision;
                    if !key.starts_with(stream.prefix) {
                        flag(
                            AnomalyKind::WatchMismatch,
                            format!(
                                "watcher {watcher} (prefix {:?}) received an event outside its prefix at {at}: {}",
                                stream.prefix,
                                describe_event(e)
                            ),
                        );
                    }
                    if !seen.insert((key, m)) {
                        flag(
                            AnomalyKind::WatchDuplicate,
                            format!(
                                "watcher {watcher} received {} again at {at} (on {})",
                                describe_event(e),
                                r.member
                            ),
                        );
                        continue;
                    }
                    if cur.from.is_none() {
                        cur.from = Some(m);
                        cur.to = cur.to.max(m - 1);
                    }
                    if let Some((last, last_t)) = last_rev
                        && m < last
                    {
                        flag(
                            AnomalyKind::WatchOrder,
                            format!(
                                "watcher {watcher} received {} at {at} (on {}) after an event at revision {last} (received at {})",
                                describe_event(e),
                                r.member,
                                fmt_t(last_t)
                            ),
                        );
                    } else if let Some(from) = cur.from
                        && m < from
                    {
                        flag(
                            AnomalyKind::WatchOrder,
                            format!(
                                "watcher {watcher} received {} at {at}, before its stream's start revision {from}",
                                describe_event(e)
                            ),
                        );
                    }
                    if m > *header_revision {
                        flag(
                            AnomalyKind::WatchOrder,
                            format!(
                                "watcher {watcher} received {} at {at} in a response whose header revision is only {header_revision}",
                                describe_event(e)
                            ),
                        );
                    }
                    match response_of_rev.get(&m) {
                        Some(&first) if first != response && split_reported.insert(m) => {
                            flag(
                                AnomalyKind::WatchAtomicity,
                                format!(
                                    "watcher {watcher} received the events of revision {m} in more than one response: {} arrived at {at}, after other events of that revision",
                                    describe_event(e)
                                ),
                            );
                        }
                        Some(_) => {}
                        None => {
                            response_of_rev.insert(m, response);
                        }
                    }
                    if last_rev.is_none_or(|(l, _)| m >= l) {
                        last_rev = Some((m, r.t));
                    }
                    cur.to = cur.to.max(m);
                    stream
                        .events
                        .entry(m)
                        .or_default()
                        .entry(key)
                        .or_insert((e, r.t));
                }
            }
            WatchEvent::Progress { header_revision } => {
                if state != State::Open {
                    flag(
                        AnomalyKind::Malformed,
                        format!(
                            "watcher {watcher} received a progress notification at {at} outside an open stream"
                        ),
                    );
                }
                let cur = seg.get_or_insert_with(|| new_segment(0, r.t));
                if cur.from.is_none() {
                    cur.from = Some(header_revision + 1);
                }
                cur.to = cur.to.max(*header_revision);
            }
            WatchEvent::Compacted { .. } => {
                if let Some(old) = seg.take() {
                    stream.segments.push(old);
                }
                state = State::Cancelled;
            }
            WatchEvent::Error { .. } => {
                if state == State::Idle {
                    // Failing to open the first stream: nothing was covered.
                } else {
                    state = State::Broken;
                }
            }
        }
    }
    if let Some(old) = seg.take() {
        stream.segments.push(old);
    }
    stream
}

fn new_segment(start: i64, t: u64) -> Segment {
    if start > 0 {
        Segment {
            from: Some(start),
            to: start - 1,
            last_t: t,
        }
    } else {
        Segment {
            from: None,
            to: i64::MIN,
            last_t: t,
        }
    }
}
