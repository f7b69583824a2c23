//! Lease safety (keys do not vanish while their lease is kept alive) and
//! liveness (an abandoned lease expires, with its keys, in bounded time).
//!
//! A lease is the id an `ok` grant returned; its TTL is the grant's answered
//! TTL (the requested one when none was answered). Keep-alives, revokes and
//! puts naming an id no `ok` grant returned are [`AnomalyKind::Malformed`].
//!
//! Held without a gap: from the grant's completion through the invocation of
//! the last `ok` keep-alive (answering a positive TTL) of the chain grant,
//! keep-alive, keep-alive, ... in which each next one completed less than
//! TTL after the previous one was invoked (each renewal happened after its
//! invocation, so the lease was alive without interruption). While held and
//! before any revoke that did not fail was invoked ([`AnomalyKind::LeaseKeyLost`]):
//! - no key attached to the lease may be deleted: a delete event whose
//!   revision existed before the end of the held stretch (the earliest of
//!   its receipt by a watcher and any header revision at or above it: an
//!   `ok` KV operation's completion, a watch response, a final state), for
//!   a key whose
//!   value (the newest change before the deletion, from the watch reference
//!   or the writes of known revision) carries the lease, is lost unless a
//!   delete of that key that did not fail was invoked by then;
//! - no keep-alive may answer TTL 0 (completing before the end of the held
//!   stretch).
//!
//! Expiry ([`AnomalyKind::LeaseNotExpired`]): let L be the latest moment the
//! lease may have been renewed (the completion of its grant and of every
//! `ok` keep-alive, and the completion record of every `info` keep-alive; a
//! keep-alive that never completed, or any revoke that did not fail, exempts
//! the lease). Its deadline is L + TTL + election timeout +
//! [`crate::Options::lease_slack`], extended by the whole duration of every
//! fault window (a fault's `start` to the next `heal` of the same name, or
//! to the `settled` record after that heal when there is one, on the wall
//! clock mapped onto `t` by the start record's `wall_ns`) that
//! overlaps [L, deadline], and at least to the end of any such window plus
//! TTL, 3 election timeouts and the slack, recomputed until no new window
//! overlaps:
//! a fault can legitimately delay expiry (no quorum to commit the
//! revocation), and a leader change restarts every lease at its TTL plus an
//! election timeout (muster's lessor), which can follow a fault's end by
//! two election timeouts, or by longer when a member that was cut off
//! rejoins with a higher term and forces an election (which is why a window
//! lasts until the cluster settled). Faults the script did not record count
//! too: the
//! stretches (merged) in which some operation ended `info` are suspected
//! fault windows. A fault never healed that overlaps exempts the lease.
//! After the deadline:
//! - no keep-alive may renew the lease (answer a positive TTL when invoked
//!   after the deadline of the previous renewal);
//! - no key may still hold a value attached to it: the next change after
//!   the attaching put (seen by a watcher, or a write of known revision)
//!   must be a deletion whose revision existed by the deadline (same bound)
//!   or a write invoked by it;
//!   without any change, evidence the key outlived the deadline is an
//!   anomaly: a final state taken after the deadline still holding it, a
//!   linearizable get invoked after the deadline reading it, or a watcher
//!   whose uninterrupted stream covered the put and went on past the
//!   deadline.
//!
//! The history must extend past a deadline for it to be judged (each check
//! needs an observation after it). Keys are only known attached through
//! `ok` puts and `info` puts whose value was observed.

use std::collections::{BTreeMap, HashMap};

use crate::Options;
use crate::history::{EventKind, Op};
use crate::index::{History, Operation, Outcome, fmt_t, lease_id};
use crate::report::{Anomaly, AnomalyKind};
use crate::revisions::{Learned, RevisionClock};
use crate::watch::Watches;

/// A fault window on the `t` axis.
#[derive(Clone, Debug)]
struct Window {
    name: String,
    start: u64,
    /// `None`: never healed.
    end: Option<u64>,
}

/// One change to a key, from the watch reference or a write of known revision.
#[derive(Clone, Copy, Debug)]
struct Change {
    /// For a put: the lease of the value written.
    put_lease: Option<Option<i64>>,
    /// When it had happened at the latest: the earliest a watcher received
    /// it or anything proved its revision existed (see [`RevisionClock`]).
    happened_by: Option<u64>,
    /// The write that made it, if known (index in ops).
    writer: Option<usize>,
}

struct Lease {
    grant: usize,
    ttl_s: i64,
    keep_alives: Vec<usize>,
    revokes: Vec<usize>,
}

/// Runs the lease checks.
pub(crate) fn check(
    h: &History<'_>,
    watches: &Watches<'_>,
    learned: &Learned,
    options: &Options,
    out: &mut Vec<Anomaly>,
) {
    let mut leases: BTreeMap<i64, Lease> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let (Op::LeaseGrant { ttl }, Some(r)) = (op.op, op.result)
            && let Some(id) = r.lease
        {
            if let Some(first) = leases.get(&id) {
                out.push(Anomaly::new(
                    AnomalyKind::Malformed,
                    format!(
                        "lease {id} was granted twice:\n  {}\n  {}",
                        h.ops[first.grant].describe(),
                        op.describe()
                    ),
                    vec![h.ops[first.grant].id, op.id],
                ));
                continue;
            }
            leases.insert(
                id,
                Lease {
                    grant: i,
                    ttl_s: r.ttl.filter(|&t| t > 0).unwrap_or(*ttl),
                    keep_alives: Vec::new(),
                    revokes: Vec::new(),
                },
            );
        }
    }
    for (i, op) in h.ops.iter().enumerate() {
        let lease = match op.op {
            Op::LeaseKeepAlive { lease } | Op::LeaseRevoke { lease } => *lease,
            Op::Put { .. } => match op.put_lease() {
                Some(l) => l,
                None => continue,
            },
            _ => continue,
        };
        let Some(l) = leases.get_mut(&lease) else {
            out.push(Anomaly::new(
                AnomalyKind::Malformed,
                format!(
                    "an operation names lease {lease}, which no ok grant returned: {}",
                    op.describe()
                ),
                vec![op.id],
            ));
            continue;
        };
        if !op.may_have_effect() {
            continue;
        }
        match op.op {
            Op::LeaseKeepAlive { .. } => l.keep_alives.push(i),
            Op::LeaseRevoke { .. } => l.revokes.push(i),
            _ => {}
        }
    }
    if leases.is_empty() {
        return;
    }

    let changes = key_changes(h, watches, learned, &RevisionClock::build(h));
    // Lease → (key, revision, deleted by) for every deletion of a key whose
    // value carried the lease.
    let mut deletions: HashMap<i64, Vec<(&str, i64, u64)>> = HashMap::new();
    for (&key, by_rev) in &changes {
        let mut attached: Option<i64> = None;
        for (&rev, ch) in by_rev {
            match ch.put_lease {
                Some(l) => attached = l,
                None => {
                    if let (Some(l), Some(t)) = (attached, ch.happened_by) {
                        deletions.entry(l).or_default().push((key, rev, t));
                    }
                    attached = None;
                }
            }
        }
    }
    // Key → the first invocation of a delete of it that did not fail.
    let mut first_delete: HashMap<&str, u64> = HashMap::new();
    for o in &h.ops {
        if let (Op::Delete { key }, true) = (o.op, o.may_have_effect()) {
            let e = first_delete.entry(key.as_str()).or_insert(o.invoke);
            *e = (*e).min(o.invoke);
        }
    }
    let windows = fault_windows(h);
    let (et_ns, have_start) = match h.start {
        Some(s) => (s.election_timeout_ms.saturating_mul(1_000_000), true),
        None => (0, false),
    };
    let slack_ns = u64::try_from(options.lease_slack.as_nanos()).unwrap_or(u64::MAX);

    for (&id, lease) in &leases {
        let grant = &h.ops[lease.grant];
        let ttl_ns = u64::try_from(lease.ttl_s)
            .unwrap_or(0)
            .saturating_mul(1_000_000_000);
        if ttl_ns == 0 {
            continue;
        }
        let revoke_t = lease
            .revokes
            .iter()
            .map(|&i| h.ops[i].invoke)
            .min()
            .unwrap_or(u64::MAX);
        let mut ok_kas: Vec<&Operation<'_>> = lease
            .keep_alives
            .iter()
            .map(|&i| &h.ops[i])
            .filter(|o| o.is_ok())
            .collect();
        ok_kas.sort_by_key(|o| o.invoke);

        // The held stretch.
        let mut held_end = grant.complete().unwrap_or(grant.invoke);
        let mut last_held: &Operation<'_> = grant;
        let mut prev_invoke = grant.invoke;
        for ka in ok_kas.iter().filter(|o| ka_ttl(o) > 0) {
            let c = ka.complete().unwrap_or(u64::MAX);
            if c.saturating_sub(prev_invoke) < ttl_ns {
                held_end = ka.invoke;
                last_held = ka;
                prev_invoke = ka.invoke;
            } else {
                break;
            }
        }
        let held = format!(
            "lease {id} (TTL {}s) was held without a gap from {} through {}: granted by {}; last renewed by {}",
            lease.ttl_s,
            fmt_t(grant.complete().unwrap_or(grant.invoke)),
            fmt_t(held_end),
            grant.describe(),
            last_held.describe()
        );
        for ka in ok_kas.iter().filter(|o| ka_ttl(o) == 0) {
            let c = ka.complete().unwrap_or(u64::MAX);
            if c < held_end && revoke_t >= c {
                out.push(Anomaly::new(
                    AnomalyKind::LeaseKeyLost,
                    format!(
                        "a keep-alive answered TTL 0 (lease gone) while the lease was held, unrevoked\n  {}\n  {held}",
                        ka.describe()
                    ),
                    vec![ka.id, last_held.id],
                ));
            }
        }
        for &(key, rev, t) in deletions.get(&id).map(Vec::as_slice).unwrap_or(&[]) {
            let explained = first_delete.get(key).is_some_and(|&d| d <= t);
            if t < held_end && revoke_t >= t && !explained {
                out.push(Anomaly::new(
                    AnomalyKind::LeaseKeyLost,
                    format!(
                        "{key}, attached to lease {id}, was deleted at revision {rev} (by {} at the latest) while the lease was held, unrevoked, and no delete of {key} had been invoked by then\n  {held}",
                        fmt_t(t)
                    ),
                    vec![last_held.id],
                ));
            }
        }

        // Expiry.
        if !have_start || !lease.revokes.is_empty() {
            continue;
        }
        let mut renewals: Vec<(u64, u64, usize)> = Vec::new(); // (invoke, latest renewal time, op)
        renewals.push((
            grant.invoke,
            grant.complete().unwrap_or(u64::MAX),
            lease.grant,
        ));
        let mut unbounded = false;
        for &i in &lease.keep_alives {
            let o = &h.ops[i];
            match o.outcome {
                Outcome::Ok if ka_ttl(o) > 0 => {
                    renewals.push((o.invoke, o.complete().unwrap_or(u64::MAX), i))
                }
                Outcome::Info => renewals.push((o.invoke, o.completed_at.unwrap_or(u64::MAX), i)),
                Outcome::Unfinished => unbounded = true,
                _ => {}
            }
        }
        if unbounded {
            continue;
        }
        renewals.sort_unstable();
        let deadline_after = |from: u64| -> Option<(u64, Vec<&Window>)> {
            let base = from
                .saturating_add(ttl_ns)
                .saturating_add(et_ns)
                .saturating_add(slack_ns);
            let mut d = base;
            loop {
                let mut sum = 0u64;
                let mut restart = 0u64;
                let mut used = Vec::new();
                for w in &windows {
                    if w.start <= d && w.end.is_none_or(|e| e >= from) {
                        let end = w.end?;
                        sum = sum.saturating_add(end - w.start);
                        restart = restart.max(
                            end.saturating_add(ttl_ns)
                                .saturating_add(et_ns.saturating_mul(3))
                                .saturating_add(slack_ns),
                        );
                        used.push(w);
                    }
                }
                let next = base.saturating_add(sum).max(restart);
                if next <= d {
                    return Some((d, used));
                }
                d = next;
            }
        };
        let explain = |d: u64, used: &[&Window]| -> String {
            let mut s = format!("deadline {}", fmt_t(d));
            if !used.is_empty() {
                s.push_str(" (extended by fault windows");
                for w in used {
                    s.push_str(&format!(
                        " {} {}..{}",
                        w.name,
                        fmt_t(w.start),
                        w.end.map(fmt_t).unwrap_or_default()
                    ));
                }
                s.push(')');
            }
            s
        };
        // A renewal after the lease should have expired.
        let mut latest = 0u64;
        let mut latest_op = lease.grant;
        let mut reported = false;
        for &(invoke, renewed, i) in &renewals {
            if i != lease.grant
                && h.ops[i].is_ok()
                && let Some((d, used)) = deadline_after(latest)
                && invoke > d
            {
                out.push(Anomaly::new(
                    AnomalyKind::LeaseNotExpired,
                    format!(
                        "lease {id} (TTL {}s) was renewed after it should have expired: not renewed since {} ({}), {}; yet\n  {}",
                        lease.ttl_s,
                        fmt_t(latest),
                        h.ops[latest_op].describe(),
                        explain(d, &used),
                        h.ops[i].describe()
                    ),
                    vec![h.ops[i].id, h.ops[latest_op].id],
                ));
                reported = true;
                break;
            }
            if renewed > latest || i == lease.grant {
                latest = latest.max(renewed);
                latest_op = i;
            }
        }
        if reported || latest == u64::MAX {
            continue;
        }
        let Some((d, used)) = deadline_after(latest) else {
            continue;
        };
        let why = format!(
            "lease {id} (TTL {}s) was last renewed by {} at the latest; {}",
            lease.ttl_s,
            h.ops[latest_op].describe(),
            explain(d, &used)
        );
        // Keys attached by puts of known revision: the latest per key.
        let mut attach: BTreeMap<&str, (i64, usize)> = BTreeMap::new();
        for (i, op) in h.ops.iter().enumerate() {
            if op.put_lease() != Some(id) {
                continue;
            }
            let (Some(key), Some(&rev)) = (op.key(), learned.revision_of.get(&i)) else {
                continue;
            };
            let e = attach.entry(key).or_insert((rev, i));
            if rev > e.0 {
                *e = (rev, i);
            }
        }
        let mut late: Vec<String> = Vec::new();
        let mut ops = vec![h.ops[latest_op].id];
        for (&key, &(rev, put)) in &attach {
            let mut problem: Option<String> = None;
            let mut changed = false;
            for (&r, ch) in changes
                .get(key)
                .into_iter()
                .flat_map(|m| m.range((std::ops::Bound::Excluded(rev), std::ops::Bound::Unbounded)))
            {
                changed = true;
                match ch.put_lease {
                    Some(Some(l)) if l == id => continue,
                    Some(_) => {
                        let invoked = ch.writer.map(|w| h.ops[w].invoke).unwrap_or(0);
                        if invoked > d {
                            problem = Some(format!(
                                "{key} still held a value attached to the lease until it was overwritten at revision {r}, by a write invoked at {}",
                                fmt_t(invoked)
                            ));
                        }
                    }
                    None => {
                        let by_delete = h.ops.iter().any(|o| {
                            matches!(o.op, Op::Delete { .. })
                                && o.key() == Some(key)
                                && o.may_have_effect()
                                && o.invoke <= d
                        });
                        if let Some(t) = ch.happened_by
                            && t > d
                            && !by_delete
                        {
                            problem = Some(format!(
                                "{key} was deleted only at revision {r}, which is not known to exist before {}",
                                fmt_t(t)
                            ));
                        }
                    }
                }
                break;
            }
            if !changed {
                let p = &h.ops[put];
                let value = p.value_written().unwrap_or("");
                if let Some(f) = h.finals.iter().find(|f| {
                    f.error.is_none()
                        && f.t > d
                        && f.kvs.iter().any(|kv| kv.key == key && kv.value == value)
                }) {
                    problem = Some(format!(
                        "{key} = {value:?} is still in member {}'s final state at {}",
                        f.member,
                        fmt_t(f.t)
                    ));
                } else if let Some(g) = h.ops.iter().find(|g| {
                    g.is_ok()
                        && g.is_linearizable_get()
                        && g.key() == Some(key)
                        && g.invoke > d
                        && g.result.and_then(|r| r.value.as_deref()) == Some(value)
                }) {
                    ops.push(g.id);
                    problem = Some(format!(
                        "{key} = {value:?} was still read by {}",
                        g.describe()
                    ));
                } else if let Some((w, seg)) = watches.streams.iter().find_map(|(w, s)| {
                    if !key.starts_with(s.prefix) {
                        return None;
                    }
                    s.segments
                        .iter()
                        .find(|seg| seg.covers(rev) && seg.last_t > d)
                        .map(|seg| (w, seg))
                }) {
                    problem = Some(format!(
                        "watcher {w} followed {key} without interruption from revision {rev} to {} (through revision {}) and saw it neither deleted nor overwritten",
                        fmt_t(seg.last_t),
                        seg.to
                    ));
                }
            }
            if let Some(p) = problem {
                ops.push(h.ops[put].id);
                late.push(format!("{p}; attached by {}", h.ops[put].describe()));
            }
        }
        // Final states holding keys of the lease, written by puts of unknown revision.
        if late.is_empty() {
            for f in h.finals.iter().filter(|f| f.error.is_none() && f.t > d) {
                for kv in &f.kvs {
                    let attached = lease_id(kv.lease) == Some(id)
                        || h.writer(&kv.value)
                            .is_some_and(|w| w.put_lease() == Some(id));
                    if attached && !attach.contains_key(kv.key.as_str()) {
                        late.push(format!(
                            "{} = {:?} (mod_revision {}) is still attached to the lease in member {}'s final state at {}",
                            kv.key,
                            kv.value,
                            kv.mod_revision,
                            f.member,
                            fmt_t(f.t)
                        ));
                    }
                }
            }
        }
        if !late.is_empty() {
            let mut msg = format!("{why}; but its keys did not expire by then:");
            for l in &late {
                msg.push_str("\n  ");
                msg.push_str(l);
            }
            out.push(Anomaly::new(AnomalyKind::LeaseNotExpired, msg, ops));
        }
    }
}

fn ka_ttl(op: &Operation<'_>) -> i64 {
    op.result.and_then(|r| r.ttl).unwrap_or(1)
}

/// key → revision → change, from the watch reference and the writes of
/// known revision.
fn key_changes<'a>(
    h: &History<'a>,
    watches: &Watches<'a>,
    learned: &Learned,
    clock: &RevisionClock,
) -> BTreeMap<&'a str, BTreeMap<i64, Change>> {
    let mut changes: BTreeMap<&'a str, BTreeMap<i64, Change>> = BTreeMap::new();
    for (&i, &rev) in &learned.revision_of {
        let op = &h.ops[i];
        let Some(key) = op.key() else { continue };
        let put_lease = match op.op {
            Op::Delete { .. } => None,
            _ => Some(op.put_lease()),
        };
        changes.entry(key).or_default().insert(
            rev,
            Change {
                put_lease,
                happened_by: None,
                writer: Some(i),
            },
        );
    }
    for (&rev, keys) in &watches.reference {
        for (&key, r) in keys {
            let writer = r
                .event
                .value
                .as_deref()
                .and_then(|v| h.writers.get(v).copied());
            let put_lease = match r.event.kind {
                EventKind::Delete => None,
                EventKind::Put => Some(
                    writer
                        .map(|w| h.ops[w].put_lease())
                        .unwrap_or(lease_id(r.event.lease)),
                ),
            };
            let ch = changes
                .entry(key)
                .or_default()
                .entry(rev)
                .or_insert(Change {
                    put_lease,
                    happened_by: None,
                    writer,
                });
            ch.happened_by = Some(r.first_t);
        }
    }
    for by_rev in changes.values_mut() {
        for (&rev, ch) in by_rev.iter_mut() {
            ch.happened_by = match (ch.happened_by, clock.existed_by(rev)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    changes
}

/// The fault windows on the `t` axis: the recorded ones (none without a
/// start record to map them), and the suspected ones: the stretches, merged,
/// in which some operation ended `info` (a timeout or a broken connection
/// is a fault, recorded or not).
fn fault_windows(h: &History<'_>) -> Vec<Window> {
    let mut suspected: Vec<(u64, u64)> = h
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Info)
        .filter_map(|o| Some((o.invoke, o.completed_at?)))
        .collect();
    suspected.sort_unstable();
    let mut windows: Vec<Window> = Vec::new();
    for (a, b) in suspected {
        match windows.last_mut() {
            Some(w) if w.end.is_some_and(|e| a <= e) => {
                w.end = w.end.map(|e| e.max(b));
            }
            _ => windows.push(Window {
                name: "operations timing out".into(),
                start: a,
                end: Some(b),
            }),
        }
    }
    let Some(start) = h.start else {
        return windows;
    };
    let mut faults: Vec<_> = h.faults.iter().collect();
    faults.sort_by_key(|f| f.wall_ns);
    let mut open: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut healed: HashMap<&str, usize> = HashMap::new();
    for f in faults {
        let t = f.wall_ns.saturating_sub(start.wall_ns);
        match f.phase.as_str() {
            "start" => {
                open.entry(f.fault.as_str())
                    .or_default()
                    .push(windows.len());
                windows.push(Window {
                    name: f.fault.clone(),
                    start: t,
                    end: None,
                });
            }
            "heal" => {
                if let Some(i) = open.get_mut(f.fault.as_str()).and_then(|v| {
                    if v.is_empty() {
                        None
                    } else {
                        Some(v.remove(0))
                    }
                }) {
                    windows[i].end = Some(t.max(windows[i].start));
                    healed.insert(f.fault.as_str(), i);
                }
            }
            "settled" => {
                if let Some(&i) = healed.get(f.fault.as_str()) {
                    windows[i].end = windows[i].end.map(|end| end.max(t));
                }
            }
            _ => {}
        }
    }
    windows
}
