//! The final state: convergence of the members and durability of every
//! acknowledged write.
//!
//! Only `final` records without an error are judged.
//!
//! Checks:
//! - convergence ([`AnomalyKind::FinalDivergence`]): every member reports
//!   the same key space (keys, values, mod_revisions, leases), compared
//!   against the first member's, listing the keys that differ;
//! - hashes ([`AnomalyKind::HashMismatch`]): members reporting a HashKV hash
//!   at the same hash revision report the same hash;
//! - provenance: a final value must have been written to its key by a put
//!   or cas; one no operation wrote at all is [`AnomalyKind::Malformed`]
//!   (an unknown reference), one written by an operation that failed (or a
//!   cas whose compare failed) or to another key is [`AnomalyKind::LostWrite`]
//!   (the key space does not follow from the acknowledged writes);
//! - durability ([`AnomalyKind::LostWrite`]): for every `ok` put and every
//!   `ok` cas that succeeded, to key k at revision r, each member holds k
//!   with mod_revision ≥ r; an older mod_revision is always a loss, and an
//!   absent key is one unless a deletion could explain it: a delete of k
//!   that did not fail and did not complete before the write was invoked, a
//!   delete event for k after r in some watcher, or k having been written
//!   with a lease at all (leased keys vanish by revocation or expiry, which
//!   the lease checker judges).
//!
//! Final mod_revisions that contradict their write's revision are reported
//! by the revision checker.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::{EventKind, FinalKv, FinalRecord, Op};
use crate::index::{History, fmt_t};
use crate::report::{Anomaly, AnomalyKind};
use crate::watch::Watches;

/// Runs the final-state checks.
pub(crate) fn check(h: &History<'_>, watches: &Watches<'_>, out: &mut Vec<Anomaly>) {
    let finals: Vec<&FinalRecord> = h
        .finals
        .iter()
        .copied()
        .filter(|f| f.error.is_none())
        .collect();
    if finals.is_empty() {
        return;
    }
    let maps: Vec<BTreeMap<&str, &FinalKv>> = finals
        .iter()
        .map(|f| f.kvs.iter().map(|kv| (kv.key.as_str(), kv)).collect())
        .collect();
    for (f, kvs) in finals.iter().zip(&maps) {
        if kvs.len() != f.kvs.len() {
            out.push(Anomaly::new(
                AnomalyKind::Malformed,
                format!("member {}'s final state lists a key twice", f.member),
                vec![],
            ));
        }
    }
    convergence(&finals, &maps, out);
    hashes(&finals, out);
    provenance(h, &finals, out);
    durability(h, watches, &finals, &maps, out);
}

fn fmt_kv(kv: Option<&&FinalKv>) -> String {
    match kv {
        None => "absent".to_string(),
        Some(kv) => match kv.lease {
            Some(l) => format!("{:?} @{} (lease {l})", kv.value, kv.mod_revision),
            None => format!("{:?} @{}", kv.value, kv.mod_revision),
        },
    }
}

fn convergence(finals: &[&FinalRecord], maps: &[BTreeMap<&str, &FinalKv>], out: &mut Vec<Anomaly>) {
    let (first, reference) = (finals[0], &maps[0]);
    for (f, kvs) in finals.iter().zip(maps).skip(1) {
        let keys: BTreeSet<&str> = reference.keys().chain(kvs.keys()).copied().collect();
        let diffs: Vec<String> = keys
            .into_iter()
            .filter(|k| reference.get(k) != kvs.get(k))
            .map(|k| {
                format!(
                    "{k}: {} on {}, {} on {}",
                    fmt_kv(reference.get(k)),
                    first.member,
                    fmt_kv(kvs.get(k)),
                    f.member
                )
            })
            .collect();
        if !diffs.is_empty() {
            let mut msg = format!(
                "members {} (revision {}, read {}) and {} (revision {}, read {}) ended with different key spaces: {} keys differ",
                first.member,
                first.revision,
                fmt_t(first.t),
                f.member,
                f.revision,
                fmt_t(f.t),
                diffs.len()
            );
            for d in diffs.iter().take(10) {
                msg.push_str("\n  ");
                msg.push_str(d);
            }
            if diffs.len() > 10 {
                msg.push_str("\n  ...");
            }
            out.push(Anomaly::new(AnomalyKind::FinalDivergence, msg, vec![]));
        }
    }
}

fn hashes(finals: &[&FinalRecord], out: &mut Vec<Anomaly>) {
    let mut by_rev: BTreeMap<i64, Vec<(&str, u32)>> = BTreeMap::new();
    for f in finals {
        if let (Some(hash), Some(rev)) = (f.hash, f.hash_revision) {
            by_rev.entry(rev).or_default().push((&f.member, hash));
        }
    }
    for (rev, members) in by_rev {
        let distinct: BTreeSet<u32> = members.iter().map(|&(_, h)| h).collect();
        if distinct.len() > 1 {
            let list: Vec<String> = members.iter().map(|(m, h)| format!("{m}: {h}")).collect();
            out.push(Anomaly::new(
                AnomalyKind::HashMismatch,
                format!(
                    "members disagree on the HashKV hash at revision {rev}: {}",
                    list.join(", ")
                ),
                vec![],
            ));
        }
    }
}

fn provenance(h: &History<'_>, finals: &[&FinalRecord], out: &mut Vec<Anomaly>) {
    // (key, value) → members holding it.
    let mut held: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for f in finals {
        for kv in &f.kvs {
            held.entry((&kv.key, &kv.value))
                .or_default()
                .push(&f.member);
        }
    }
    for ((key, value), members) in held {
        match h.writer(value) {
            None => out.push(Anomaly::new(
                AnomalyKind::Malformed,
                format!(
                    "the final state of {members:?} holds {key} = {value:?}, a value no operation in the history wrote"
                ),
                vec![],
            )),
            Some(_) => {
                if let Some(problem) = h.provenance_problem(key, value) {
                    out.push(Anomaly::new(
                        AnomalyKind::LostWrite,
                        format!("the final state of {members:?} holds {key} = {value:?}, but {problem}"),
                        h.writer(value).map(|w| vec![w.id]).unwrap_or_default(),
                    ));
                }
            }
        }
    }
}

fn durability(
    h: &History<'_>,
    watches: &Watches<'_>,
    finals: &[&FinalRecord],
    maps: &[BTreeMap<&str, &FinalKv>],
    out: &mut Vec<Anomaly>,
) {
    let leased_keys: BTreeSet<&str> = h
        .ops
        .iter()
        .filter(|o| o.put_lease().is_some() && o.may_have_effect())
        .filter_map(|o| o.key())
        .collect();
    // key → the latest completion of a delete that did not fail (MAX: unknown).
    let mut deletes: BTreeMap<&str, u64> = BTreeMap::new();
    for d in &h.ops {
        if let (Op::Delete { key }, true) = (d.op, d.may_have_effect()) {
            let c = d.complete().unwrap_or(u64::MAX);
            let e = deletes.entry(key.as_str()).or_insert(c);
            *e = (*e).max(c);
        }
    }
    for op in &h.ops {
        if !matches!(op.op, Op::Put { .. } | Op::Cas { .. }) {
            continue;
        }
        let (Some(rev), Some(key)) = (op.created_revision(), op.key()) else {
            continue;
        };
        let mut lost: Vec<String> = Vec::new();
        for (f, kvs) in finals.iter().zip(maps) {
            match kvs.get(key) {
                Some(kv) if kv.mod_revision >= rev => {}
                Some(kv) => lost.push(format!(
                    "member {} holds {key} = {:?} at the older mod_revision {} (its revision {}, read {})",
                    f.member,
                    kv.value,
                    kv.mod_revision,
                    f.revision,
                    fmt_t(f.t)
                )),
                None => {
                    let deleted_by_op = deletes.get(key).is_some_and(|&c| c >= op.invoke);
                    let deleted_by_event = watches
                        .changes_after(key, rev)
                        .any(|(_, r)| r.event.kind == EventKind::Delete);
                    if !deleted_by_op && !deleted_by_event && !leased_keys.contains(key) {
                        lost.push(format!(
                            "member {} lacks {key} (its revision {}, read {}), and no delete could explain it",
                            f.member,
                            f.revision,
                            fmt_t(f.t)
                        ));
                    }
                }
            }
        }
        if !lost.is_empty() {
            let mut msg = format!(
                "an acknowledged write is missing from the final state: {}",
                op.describe()
            );
            for l in &lost {
                msg.push_str("\n  ");
                msg.push_str(l);
            }
            out.push(Anomaly::new(AnomalyKind::LostWrite, msg, vec![op.id]));
        }
    }
}
