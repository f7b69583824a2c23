//! Linearizability of the KV operations, key by key: the Wing & Gong search
//! with Lowe's memoization (as in porcupine), over a register model.
//!
//! Model: per key, the state is the value held (`None`: absent); values are
//! unique in a history, so the state is exact. Operations: `put v` → `v`;
//! `delete` → absent (an `ok` one must report `deleted` 1 when the key
//! held a value and 0 when it did not); `cas(e, v)`: when the state is `e`,
//! `v`, and an `ok` one must report success; otherwise unchanged, and an
//! `ok` one must report failure and read the state; a linearizable `get`
//! must read the state. Gets that are serializable, `fail`ed operations and
//! gets of unknown outcome take no part. `info` (and unfinished) writes may
//! take effect at any time after their invocation, or never: their return
//! is at +infinity, so the search may leave them to the end, where they
//! change nothing anyone observed.
//!
//! Leases: a key attached to a lease disappears when the lease is revoked
//! or expires. Each key written with lease L gets extra operations on L:
//! every `lease_revoke L` that did not fail (with its own window), and one
//! implicit optional *expiry of L* from the invocation of the last operation
//! that proved L alive (its grant, a keep-alive answering a positive TTL, a
//! put attached to it) to +infinity. Both delete the key exactly when the
//! value it holds was written with lease L. When lease keys may disappear
//! is the lease checker's business; here they may disappear once.
//! A revoke spans keys, but each key is checked on its own: that is a sound
//! relaxation (it may miss a cross-key anomaly, never invents one).
//!
//! Revisions speed the search up: the writes whose created revision is
//! known (`ok` writes, and `info` writes whose revision was learned from an
//! observation of their value) are linearized in revision order. When that
//! constrained search fails, it is run again without the constraint (with a
//! tenth of the step budget): if that one succeeds, the key is linearizable
//! only against its revisions, a [`AnomalyKind::RevisionOrder`]; otherwise
//! [`AnomalyKind::NotLinearizable`] with the furthest point the constrained
//! search reached (the operation it could not place, the value then held,
//! the last operations placed and the ones still pending). A search that
//! exceeds [`crate::Options::max_search_steps`] gives up with a
//! [`AnomalyKind::Malformed`] anomaly, never hangs.
//!
//! Pruning, each rule exact (it never changes the verdict; a test checks the
//! search against brute force on random small histories):
//! - a read-only operation (a get, a cas whose compare failed, a delete of
//!   nothing) that can be placed now is placed without branching: any
//!   linearization placing it later stays valid with it moved here;
//! - an optional operation is placed only where it changes the state and
//!   where that is *useful*: some candidate becomes effective, or ends in
//!   another state, because of it (in a linearization with the fewest
//!   optional placements, every one is useful);
//! - a value nothing ever observes (written by an `info` put or cas that no
//!   read, cas, watch event or final state mentions) is one *ghost* value
//!   per lease, so such writes have identical effects; optional operations
//!   with identical effects are interchangeable, and a configuration counts
//!   how many of each class it placed rather than which;
//! - configurations are memoized: a configuration equal to, or with more
//!   optional operations of each class placed than, one already visited
//!   (which therefore failed) is not explored; the operations that must be
//!   placed are tried before the optional ones, so the dominating
//!   configurations come first. The memo keys are 128-bit fingerprints
//!   (Zobrist hashes of the operations placed, with the state): a collision
//!   could only prune a configuration never visited, with negligible
//!   probability.
//!
//! Serializable gets are not linearizable, but the value one returns must
//! still have been written to its key by a write that did not fail; that is
//! checked here too ([`AnomalyKind::NotLinearizable`]).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};

use crate::Options;
use crate::history::Op;
use crate::index::{History, Outcome, fmt_t, fmt_value};
use crate::report::{Anomaly, AnomalyKind};
use crate::revisions::Learned;
use crate::watch::Watches;

/// The state "absent".
const NONE: u32 = u32::MAX;

/// What an operation does, in the register model, with what it returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum F {
    /// A linearizable get that read this value.
    Get(u32),
    /// A put of this value.
    Put(u32),
    /// A delete; `Some(deleted_any)` when it is `ok` and says.
    Delete(Option<bool>),
    /// A cas.
    Cas {
        expect: u32,
        value: u32,
        /// `None`: unknown outcome; `Some(None)`: succeeded;
        /// `Some(Some(v))`: failed, reading v.
        outcome: Option<Option<u32>>,
    },
    /// A lease revoke or expiry: deletes the key if its value carries the lease.
    Vanish(i64),
}

#[derive(Clone, Debug)]
struct KOp {
    /// Index in `History::ops`, or `None` for an implicit expiry.
    src: Option<usize>,
    f: F,
    call: u64,
    /// `None`: +infinity.
    ret: Option<u64>,
    /// Position among the writes of known revision.
    rank: Option<u32>,
    /// For an optional operation (return at +infinity, no rank): its class
    /// of interchangeable operations (same effect; they differ only in when
    /// they were invoked).
    class: Option<u32>,
}

/// Per key: the values interned, and the lease each was written with.
///
/// A value no one ever observed (written by a write of unknown outcome that
/// no read, cas, watch event or final state mentions) is indistinguishable
/// from any other such value but by its lease: they all intern to one
/// *ghost* value per lease, which makes those writes interchangeable.
#[derive(Default)]
struct Values<'a> {
    ids: HashMap<&'a str, u32>,
    ghosts: HashMap<Option<i64>, u32>,
    /// `None` for a ghost.
    names: Vec<Option<&'a str>>,
    lease: Vec<Option<i64>>,
}

impl<'a> Values<'a> {
    fn intern(&mut self, v: Option<&'a str>) -> u32 {
        let Some(v) = v else { return NONE };
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(v, id);
        self.names.push(Some(v));
        self.lease.push(None);
        id
    }

    fn ghost(&mut self, lease: Option<i64>) -> u32 {
        if let Some(&id) = self.ghosts.get(&lease) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ghosts.insert(lease, id);
        self.names.push(None);
        self.lease.push(lease);
        id
    }

    /// The value's name; `None` for absence and for a ghost.
    fn name(&self, id: u32) -> Option<&'a str> {
        if id == NONE {
            None
        } else {
            self.names[id as usize]
        }
    }

    fn is_ghost(&self, id: u32) -> bool {
        id != NONE && self.names[id as usize].is_none()
    }
}

/// Runs the per-key searches and the serializable-read check.
pub(crate) fn check(
    h: &History<'_>,
    watches: &Watches<'_>,
    learned: &Learned,
    options: &Options,
    out: &mut Vec<Anomaly>,
) {
    serializable_reads(h, out);

    // Every value anything mentions (other than its own write).
    let mut referenced: HashSet<&str> = HashSet::new();
    for op in &h.ops {
        if let Some(v) = op.result.and_then(|r| r.value.as_deref()) {
            referenced.insert(v);
        }
        if let Op::Cas {
            expect: Some(e), ..
        } = op.op
        {
            referenced.insert(e);
        }
    }
    for keys in watches.reference.values() {
        for r in keys.values() {
            if let Some(v) = r.event.value.as_deref() {
                referenced.insert(v);
            }
        }
    }
    for f in &h.finals {
        for kv in &f.kvs {
            referenced.insert(&kv.value);
        }
    }

    // Leases: proof of life (latest invocation) per lease.
    let mut alive_since: HashMap<i64, u64> = HashMap::new();
    for op in &h.ops {
        let (lease, alive) = match (op.op, op.result) {
            (Op::LeaseGrant { .. }, Some(r)) => (r.lease, true),
            (Op::LeaseKeepAlive { lease }, Some(r)) => (Some(*lease), r.ttl.unwrap_or(0) > 0),
            (Op::Put { .. }, Some(_)) => (op.put_lease(), true),
            _ => (None, false),
        };
        if let (Some(l), true) = (lease, alive) {
            let e = alive_since.entry(l).or_insert(op.invoke);
            *e = (*e).max(op.invoke);
        }
    }
    let mut revokes: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if let Op::LeaseRevoke { lease } = op.op
            && op.may_have_effect()
        {
            revokes.entry(*lease).or_default().push(i);
        }
    }

    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        let Some(key) = op.key() else { continue };
        if op.outcome == Outcome::Fail {
            continue;
        }
        if matches!(op.op, Op::Get { .. }) && !(op.is_ok() && op.is_linearizable_get()) {
            continue;
        }
        by_key.entry(key).or_default().push(i);
    }

    for (key, indices) in by_key {
        let mut values = Values::default();
        let mut kops: Vec<KOp> = Vec::new();
        let mut leases: BTreeSet<i64> = BTreeSet::new();
        for &i in &indices {
            let op = &h.ops[i];
            let r = op.result;
            let f = match op.op {
                Op::Get { .. } => {
                    let Some(r) = r else { continue };
                    F::Get(values.intern(r.value.as_deref()))
                }
                Op::Put { value, .. } if !op.is_ok() && !referenced.contains(value.as_str()) => {
                    if let Some(l) = op.put_lease() {
                        leases.insert(l);
                    }
                    F::Put(values.ghost(op.put_lease()))
                }
                Op::Put { value, .. } => {
                    let v = values.intern(Some(value));
                    values.lease[v as usize] = op.put_lease();
                    if let Some(l) = op.put_lease() {
                        leases.insert(l);
                    }
                    F::Put(v)
                }
                Op::Delete { .. } => F::Delete(r.and_then(|r| r.deleted).map(|d| d > 0)),
                Op::Cas { expect, value, .. } => {
                    let expect = values.intern(expect.as_deref());
                    let value = if !op.is_ok() && !referenced.contains(value.as_str()) {
                        values.ghost(None)
                    } else {
                        values.intern(Some(value))
                    };
                    let outcome = r.map(|r| {
                        if r.succeeded == Some(true) {
                            None
                        } else {
                            Some(values.intern(r.value.as_deref()))
                        }
                    });
                    F::Cas {
                        expect,
                        value,
                        outcome,
                    }
                }
                _ => continue,
            };
            kops.push(KOp {
                src: Some(i),
                f,
                call: op.invoke,
                ret: op.complete(),
                rank: None,
                class: None,
            });
        }
        for &l in &leases {
            for &i in revokes.get(&l).map(Vec::as_slice).unwrap_or(&[]) {
                let op = &h.ops[i];
                kops.push(KOp {
                    src: Some(i),
                    f: F::Vanish(l),
                    call: op.invoke,
                    ret: op.complete(),
                    rank: None,
                    class: None,
                });
            }
            kops.push(KOp {
                src: None,
                f: F::Vanish(l),
                call: alive_since.get(&l).copied().unwrap_or(0),
                ret: None,
                rank: None,
                class: None,
            });
        }
        // Ranks: writes with a unique known revision, in revision order.
        let mut revs: Vec<(i64, usize)> = Vec::new();
        for (k, kop) in kops.iter().enumerate() {
            if let (Some(i), false) = (kop.src, matches!(kop.f, F::Vanish(_)))
                && let Some(&rev) = learned.revision_of.get(&i)
            {
                revs.push((rev, k));
            }
        }
        revs.sort_unstable();
        let mut rank = 0u32;
        for j in 0..revs.len() {
            let dup = (j > 0 && revs[j - 1].0 == revs[j].0)
                || (j + 1 < revs.len() && revs[j + 1].0 == revs[j].0);
            if !dup {
                kops[revs[j].1].rank = Some(rank);
                rank += 1;
            }
        }

        // Classes of interchangeable optional operations.
        let mut classes: HashMap<F, u32> = HashMap::new();
        for kop in kops.iter_mut() {
            if kop.ret.is_none() && kop.rank.is_none() {
                let next = classes.len() as u32;
                kop.class = Some(*classes.entry(kop.f).or_insert(next));
            }
        }

        let constrained = search(&kops, &values, true, options.max_search_steps);
        let verdict = match constrained {
            Search::Linearizable => continue,
            Search::GaveUp(steps) => {
                out.push(Anomaly::new(
                    AnomalyKind::Malformed,
                    format!(
                        "key {key}: the linearizability search gave up after {steps} steps over {} operations; the key was not checked",
                        kops.len()
                    ),
                    vec![],
                ));
                continue;
            }
            Search::Fails(failure) => failure,
        };
        // Only to tell a revision anomaly from a linearizability one: a
        // tenth of the budget (without the ranks, concurrent writes may be
        // permuted, which a failing search must all refute).
        match search(&kops, &values, false, options.max_search_steps / 10) {
            Search::Linearizable => out.push(Anomaly::new(
                AnomalyKind::RevisionOrder,
                format!(
                    "key {key}: the operations are linearizable, but only in an order that contradicts the revisions the writes created; no linearization orders them by revision.\n{}",
                    describe_failure(h, &kops, &values, &verdict)
                ),
                failure_ops(h, &kops, &verdict),
            )),
            Search::Fails(failure) => out.push(Anomaly::new(
                AnomalyKind::NotLinearizable,
                format!(
                    "key {key}: no linearization of its {} operations exists.\n{}",
                    kops.len(),
                    describe_failure(h, &kops, &values, &failure)
                ),
                failure_ops(h, &kops, &failure),
            )),
            Search::GaveUp(_) => out.push(Anomaly::new(
                AnomalyKind::NotLinearizable,
                format!(
                    "key {key}: no linearization of its {} operations orders the writes by the revisions they created (whether one ignoring the revisions exists is unknown: that search gave up).\n{}",
                    kops.len(),
                    describe_failure(h, &kops, &values, &verdict)
                ),
                failure_ops(h, &kops, &verdict),
            )),
        }
    }
}

/// A serializable get must read a value some write that did not fail wrote
/// to its key (or absence).
fn serializable_reads(h: &History<'_>, out: &mut Vec<Anomaly>) {
    for op in &h.ops {
        let (
            Op::Get {
                key,
                serializable: true,
            },
            Some(r),
        ) = (op.op, op.result)
        else {
            continue;
        };
        let Some(v) = r.value.as_deref() else {
            continue;
        };
        if let Some(problem) = h.provenance_problem(key, v) {
            let mut ops = vec![op.id];
            ops.extend(h.writer(v).map(|w| w.id));
            out.push(Anomaly::new(
                AnomalyKind::NotLinearizable,
                format!(
                    "a serializable get read {v:?} from {key}, but {problem}\n  read: {}",
                    op.describe()
                ),
                ops,
            ));
        }
    }
}

/// Applies `f` to `state`; `None` when the operation's result is impossible.
fn step(state: u32, f: F, values: &Values<'_>) -> Option<u32> {
    match f {
        F::Get(v) => (state == v).then_some(state),
        F::Put(v) => Some(v),
        F::Delete(None) => Some(NONE),
        F::Delete(Some(deleted)) => (deleted == (state != NONE)).then_some(NONE),
        F::Cas {
            expect,
            value,
            outcome,
        } => {
            let holds = state == expect;
            match outcome {
                None => Some(if holds { value } else { state }),
                Some(None) => holds.then_some(value),
                Some(Some(read)) => (!holds && read == state).then_some(state),
            }
        }
        F::Vanish(l) => {
            if state != NONE && values.lease[state as usize] == Some(l) {
                Some(NONE)
            } else {
                Some(state)
            }
        }
    }
}

/// Where a failed search got furthest.
#[derive(Clone, Debug, Default)]
struct Failure {
    /// How many operations with a finite return were placed.
    placed: usize,
    /// Of how many.
    total: usize,
    /// The operation whose return came before it could be placed.
    stuck: usize,
    /// The state then.
    state: u32,
    /// The last operations placed, oldest first.
    recent: Vec<usize>,
    /// The operations invoked, not placed, and concurrent with `stuck`.
    pending: Vec<usize>,
    /// Steps searched.
    steps: u64,
}

enum Search {
    Linearizable,
    Fails(Failure),
    GaveUp(u64),
}

/// A hasher for keys that are random already (fingerprints).
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One placed operation.
struct Frame {
    /// The operation.
    k: usize,
    /// The state before it.
    before: u32,
    /// Placed because it dominated every alternative (it changed nothing):
    /// when it is undone, its configuration has failed as a whole.
    forced: bool,
    /// The count vector before it.
    counts_before: u32,
}

/// The search's working state: the entry list (calls and returns in time
/// order, with placed operations lifted out), the stack of placed
/// operations and the memo of configurations visited.
///
/// A configuration is the set of operations placed and the state. The
/// optional operations of one class are interchangeable, so only how many
/// of each class are placed matters (the *count vector*); and a
/// configuration with more of them placed, everything else equal, has fewer
/// options left than one with fewer: it is *dominated*. The memo maps (the
/// other operations placed, the state) to the count vectors visited with
/// them; a configuration dominated by (or equal to) a visited one is not
/// explored again, since every configuration visited and left has failed.
struct Wgl<'k, 'v> {
    kops: &'k [KOp],
    values: &'k Values<'v>,
    use_ranks: bool,
    /// (time, is_return, op), sorted; calls before returns at equal times.
    entries: Vec<(u64, bool, usize)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
    tail: usize,
    call_entry: Vec<usize>,
    ret_entry: Vec<Option<usize>>,
    zobrist: Vec<[u64; 2]>,
    /// Operations with a finite return not yet placed.
    remaining: usize,
    /// The rank of the next write of known revision (with `use_ranks`).
    rank_next: u32,
    state: u32,
    /// Hash of the placed operations outside any class.
    hash: [u64; 2],
    /// Per class: how many are placed.
    counts: Vec<u32>,
    /// The classes with a nonzero count.
    used: Vec<u32>,
    /// The interned current count vector.
    counts_id: u32,
    /// Interned count vectors: sparse, sorted by class.
    vectors: Vec<Box<[(u32, u32)]>>,
    vector_ids: HashMap<Box<[(u32, u32)]>, u32>,
    stack: Vec<Frame>,
    /// Fingerprint of (other operations placed, state) → the first count
    /// vector visited with them; `more` holds any further ones.
    memo: HashMap<[u64; 2], u32, BuildHasherDefault<PassThrough>>,
    more: HashMap<[u64; 2], Vec<u32>, BuildHasherDefault<PassThrough>>,
    /// For the configuration `useful_at`: the states an optional operation
    /// may lead to, and whether that is useful.
    useful_at: ([u64; 2], u32, u32, usize),
    useful_memo: Vec<(u32, bool)>,
}

impl<'k, 'v> Wgl<'k, 'v> {
    fn new(kops: &'k [KOp], values: &'k Values<'v>, use_ranks: bool) -> Self {
        let n = kops.len();
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (k, op) in kops.iter().enumerate() {
            entries.push((op.call, false, k));
            if let Some(ret) = op.ret {
                entries.push((ret.max(op.call), true, k));
            }
        }
        entries.sort_unstable();
        let m = entries.len();
        let (head, tail) = (m, m + 1);
        // Entries 0..m in order between the sentinels head and tail.
        let mut next: Vec<usize> = (1..=m + 2).collect();
        let mut prev: Vec<usize> = (0..m + 2).map(|e| e.wrapping_sub(1)).collect();
        if m > 0 {
            next[m - 1] = tail;
            prev[0] = head;
        }
        next[head] = if m > 0 { 0 } else { tail };
        prev[tail] = if m > 0 { m - 1 } else { head };
        let mut call_entry = vec![0usize; n];
        let mut ret_entry: Vec<Option<usize>> = vec![None; n];
        for (e, &(_, is_ret, k)) in entries.iter().enumerate() {
            if is_ret {
                ret_entry[k] = Some(e);
            } else {
                call_entry[k] = e;
            }
        }
        let mut seed = 0x5eed_u64;
        let zobrist = (0..n)
            .map(|_| [splitmix(&mut seed), splitmix(&mut seed)])
            .collect();
        let classes = kops
            .iter()
            .filter_map(|k| k.class)
            .max()
            .map_or(0, |c| c as usize + 1);
        let empty: Box<[(u32, u32)]> = Box::new([]);
        Wgl {
            kops,
            values,
            use_ranks,
            entries,
            next,
            prev,
            head,
            tail,
            call_entry,
            ret_entry,
            zobrist,
            remaining: kops.iter().filter(|k| k.ret.is_some()).count(),
            rank_next: 0,
            state: NONE,
            hash: [0, 0],
            counts: vec![0; classes],
            used: Vec::new(),
            counts_id: 0,
            vectors: vec![empty.clone()],
            vector_ids: HashMap::from([(empty, 0)]),
            stack: Vec::new(),
            memo: HashMap::default(),
            more: HashMap::default(),
            useful_at: ([0, 0], 0, 0, usize::MAX),
            useful_memo: Vec::new(),
        }
    }

    /// The state after placing `k` now, if it can be placed now.
    fn try_step(&self, k: usize) -> Option<u32> {
        let op = &self.kops[k];
        if self.use_ranks && op.rank.is_some_and(|r| r != self.rank_next) {
            return None;
        }
        step(self.state, op.f, self.values)
    }

    /// Interns the current count vector.
    fn intern_counts(&mut self) -> u32 {
        let mut v: Vec<(u32, u32)> = self
            .used
            .iter()
            .map(|&c| (c, self.counts[c as usize]))
            .collect();
        v.sort_unstable();
        let v = v.into_boxed_slice();
        if let Some(&id) = self.vector_ids.get(&v) {
            return id;
        }
        let id = self.vectors.len() as u32;
        self.vectors.push(v.clone());
        self.vector_ids.insert(v, id);
        id
    }

    /// Whether the count vector `id` is at most the current one everywhere.
    fn at_most_current(&self, id: u32) -> bool {
        self.vectors[id as usize]
            .iter()
            .all(|&(c, n)| self.counts[c as usize] >= n)
    }

    fn add_count(&mut self, c: u32) {
        self.counts[c as usize] += 1;
        if self.counts[c as usize] == 1 {
            self.used.push(c);
        }
    }

    fn remove_count(&mut self, c: u32) {
        self.counts[c as usize] -= 1;
        if self.counts[c as usize] == 0
            && let Some(i) = self.used.iter().position(|&u| u == c)
        {
            self.used.swap_remove(i);
        }
    }

    /// Places `k`, reaching state `ns`; `false` (and nothing done) when that
    /// configuration, or one dominating it, was visited before.
    fn place(&mut self, k: usize, ns: u32, forced: bool) -> bool {
        let class = self.kops[k].class;
        let hash = match class {
            None => [
                self.hash[0] ^ self.zobrist[k][0],
                self.hash[1] ^ self.zobrist[k][1],
            ],
            Some(_) => self.hash,
        };
        let counts_id = match class {
            None => self.counts_id,
            Some(c) => {
                self.add_count(c);
                self.intern_counts()
            }
        };
        let mut x = u64::from(ns) ^ 0xa5a5_5a5a;
        let key = [hash[0] ^ splitmix(&mut x), hash[1] ^ splitmix(&mut x)];
        let seen = match self.memo.get(&key) {
            None => false,
            Some(&first) => {
                self.at_most_current(first)
                    || self
                        .more
                        .get(&key)
                        .is_some_and(|ids| ids.iter().any(|&id| self.at_most_current(id)))
            }
        };
        if seen {
            if let Some(c) = class {
                self.remove_count(c);
            }
            return false;
        }
        match self.memo.entry(key) {
            Entry::Occupied(_) => self.more.entry(key).or_default().push(counts_id),
            Entry::Vacant(v) => {
                v.insert(counts_id);
            }
        }
        self.stack.push(Frame {
            k,
            before: self.state,
            forced,
            counts_before: self.counts_id,
        });
        self.state = ns;
        self.hash = hash;
        self.counts_id = counts_id;
        let op = &self.kops[k];
        if op.ret.is_some() {
            self.remaining -= 1;
        }
        if self.use_ranks && op.rank.is_some() {
            self.rank_next += 1;
        }
        self.unlink(self.call_entry[k]);
        if let Some(r) = self.ret_entry[k] {
            self.unlink(r);
        }
        true
    }

    /// Undoes the last placement.
    fn unplace(&mut self) -> Option<Frame> {
        let f = self.stack.pop()?;
        let k = f.k;
        self.state = f.before;
        self.counts_id = f.counts_before;
        match self.kops[k].class {
            None => {
                self.hash[0] ^= self.zobrist[k][0];
                self.hash[1] ^= self.zobrist[k][1];
            }
            Some(c) => self.remove_count(c),
        }
        let op = &self.kops[k];
        if op.ret.is_some() {
            self.remaining += 1;
        }
        if self.use_ranks && op.rank.is_some() {
            self.rank_next -= 1;
        }
        if let Some(r) = self.ret_entry[k] {
            self.relink(r);
        }
        self.relink(self.call_entry[k]);
        Some(f)
    }

    /// Undoes placements up to the last free choice; where to go on there
    /// (the entry after the undone operation's call, and its pass), or
    /// `None` when every choice failed.
    fn backtrack(&mut self) -> Option<(usize, Pass)> {
        loop {
            let f = self.unplace()?;
            if !f.forced {
                let pass = if self.kops[f.k].class.is_some() {
                    Pass::Optional
                } else {
                    Pass::Mandatory
                };
                return Some((self.next[self.call_entry[f.k]], pass));
            }
        }
    }

    /// A read-only operation (one that never changes the state wherever
    /// it is valid: a get, a cas whose compare failed, a delete of nothing)
    /// that can be placed now and must be placed some time (a finite
    /// return). Placing it now dominates every alternative: any
    /// linearization from here that places it later stays valid with it
    /// moved here (it is invoked already, no unplaced operation returned
    /// before its invocation, and it changes no state, neither here nor
    /// there), so it need not be branched on.
    fn forced(&self) -> Option<usize> {
        let mut e = self.next[self.head];
        while e != self.tail {
            let (_, is_ret, k) = self.entries[e];
            if is_ret {
                return None;
            }
            let op = &self.kops[k];
            let read_only = matches!(
                op.f,
                F::Get(_)
                    | F::Delete(Some(false))
                    | F::Cas {
                        outcome: Some(Some(_)),
                        ..
                    }
            );
            if read_only && op.ret.is_some() && self.try_step(k).is_some() {
                return Some(k);
            }
            e = self.next[e];
        }
        None
    }

    /// Whether placing an optional operation that leads to state `ns` can
    /// be part of a linearization with the fewest optional placements: only
    /// if some candidate is effective after it and was not before, or ends
    /// in another state than it would have. (Otherwise, in any
    /// linearization, the operation placed next would leave the same state
    /// without it, so dropping it keeps the linearization valid.) Puts and
    /// unconditional deletes are never enabled by anything and end the same
    /// whatever came before, so they are not consulted.
    fn useful(&mut self, ns: u32) -> bool {
        let at = (self.hash, self.state, self.counts_id, self.stack.len());
        if self.useful_at != at {
            self.useful_at = at;
            self.useful_memo.clear();
        }
        if let Some(&(_, u)) = self.useful_memo.iter().find(|(s, _)| *s == ns) {
            return u;
        }
        let effective = |w: &Self, from: u32, k: usize| -> Option<u32> {
            let op = &w.kops[k];
            if w.use_ranks && op.rank.is_some_and(|r| r != w.rank_next) {
                return None;
            }
            let to = step(from, op.f, w.values)?;
            (op.ret.is_some() || to != from).then_some(to)
        };
        let mut useful = false;
        let mut e = self.next[self.head];
        while e != self.tail {
            let (_, is_ret, k) = self.entries[e];
            if is_ret {
                break;
            }
            e = self.next[e];
            if matches!(self.kops[k].f, F::Put(_) | F::Delete(None)) {
                continue;
            }
            if let Some(after) = effective(self, ns, k)
                && effective(self, self.state, k) != Some(after)
            {
                useful = true;
                break;
            }
        }
        self.useful_memo.push((ns, useful));
        useful
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }
}

/// Which candidates a scan of the entry list considers: every
/// configuration tries the operations that must be placed before the
/// optional ones, so the configurations using fewer optional operations
/// (which dominate) are visited first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Mandatory,
    Optional,
}

/// The WGL search with memoization.
fn search(kops: &[KOp], values: &Values<'_>, use_ranks: bool, max_steps: u64) -> Search {
    let mut w = Wgl::new(kops, values, use_ranks);
    let total = w.remaining;
    let mut best = Failure {
        total,
        ..Failure::default()
    };
    let mut best_set = false;
    let mut steps = 0u64;
    let mut entry = w.next[w.head];
    let mut pass = Pass::Mandatory;
    // Just reached by a placement: look for a forced operation first.
    let mut fresh = true;
    loop {
        if w.remaining == 0 {
            return Search::Linearizable;
        }
        steps += 1;
        if steps > max_steps {
            return Search::GaveUp(steps - 1);
        }
        if fresh {
            fresh = false;
            if let Some(k) = w.forced() {
                if w.place(k, w.state, true) {
                    fresh = true;
                    entry = w.next[w.head];
                    pass = Pass::Mandatory;
                } else {
                    // Its configuration failed before; so does this one.
                    match w.backtrack() {
                        Some((e, p)) => (entry, pass) = (e, p),
                        None => {
                            best.steps = steps;
                            return Search::Fails(best);
                        }
                    }
                }
                continue;
            }
        }
        if entry == w.tail {
            // Unreachable while operations remain (their returns are ahead).
            return Search::GaveUp(steps);
        }
        let (_, is_ret, k) = w.entries[entry];
        if !is_ret {
            let optional = kops[k].class.is_some();
            // An optional operation (return at +infinity) that would change
            // nothing is never worth placing: leaving it unplaced keeps every
            // option open.
            if optional == (pass == Pass::Optional)
                && let Some(ns) = w.try_step(k)
                && (!optional || (ns != w.state && w.useful(ns)))
                && w.place(k, ns, false)
            {
                fresh = true;
                entry = w.next[w.head];
                pass = Pass::Mandatory;
                continue;
            }
            entry = w.next[entry];
            continue;
        }
        if pass == Pass::Mandatory {
            pass = Pass::Optional;
            entry = w.next[w.head];
            continue;
        }
        // Stuck: `k` returned before it could be placed.
        let placed = total - w.remaining;
        if !best_set || placed > best.placed {
            best_set = true;
            best.placed = placed;
            best.stuck = k;
            best.state = w.state;
            best.recent = w.stack.iter().rev().take(8).rev().map(|f| f.k).collect();
            best.pending.clear();
            let mut e = w.next[w.head];
            while e != entry && e != w.tail && best.pending.len() < 8 {
                let (_, r, j) = w.entries[e];
                if !r {
                    best.pending.push(j);
                }
                e = w.next[e];
            }
        }
        match w.backtrack() {
            Some((e, p)) => (entry, pass) = (e, p),
            None => {
                best.steps = steps;
                return Search::Fails(best);
            }
        }
    }
}

fn describe_kop(h: &History<'_>, kop: &KOp) -> String {
    match (kop.src, kop.f) {
        (Some(i), _) => h.ops[i].describe(),
        (None, F::Vanish(l)) => format!(
            "the implicit expiry of lease {l} (possible from {} on)",
            fmt_t(kop.call)
        ),
        (None, _) => "an implicit operation".to_string(),
    }
}

fn describe_state(h: &History<'_>, values: &Values<'_>, state: u32) -> String {
    if values.is_ghost(state) {
        return "a value nothing ever read, from a write of unknown outcome".to_string();
    }
    match values.name(state) {
        None => "absent".to_string(),
        Some(v) => match h.writer(v) {
            Some(w) => format!("{v:?}, written by op {}", w.id),
            None => format!("{v:?}"),
        },
    }
}

fn describe_failure(h: &History<'_>, kops: &[KOp], values: &Values<'_>, f: &Failure) -> String {
    let stuck = &kops[f.stuck];
    let mut s = format!(
        "The search got furthest after placing {} of the {} completed operations ({} steps); it could not place\n  {}\nwhen the key held {}",
        f.placed,
        f.total,
        f.steps,
        describe_kop(h, stuck),
        describe_state(h, values, f.state)
    );
    let read = match stuck.f {
        F::Get(v) => Some(v),
        F::Cas {
            outcome: Some(Some(v)),
            ..
        } => Some(v),
        _ => None,
    };
    if let (Some(v), Some(i)) = (read, stuck.src)
        && let (Some(name), Some(key)) = (values.name(v), h.ops[i].key())
    {
        match h.provenance_problem(key, name) {
            Some(problem) => {
                let _ = write!(s, "; it read {}, and {problem}", fmt_value(Some(name)));
            }
            None => {
                if let Some(w) = h.writer(name) {
                    let _ = write!(s, "; the value it read was written by {}", w.describe());
                }
            }
        }
    }
    s.push('.');
    if !f.recent.is_empty() {
        s.push_str("\nThe last operations placed, in order:");
        for &k in &f.recent {
            let _ = write!(s, "\n  {}", describe_kop(h, &kops[k]));
        }
    }
    let others: Vec<usize> = f
        .pending
        .iter()
        .copied()
        .filter(|&k| k != f.stuck)
        .collect();
    if !others.is_empty() {
        s.push_str("\nOperations invoked but not placed then:");
        for k in others {
            let _ = write!(s, "\n  {}", describe_kop(h, &kops[k]));
        }
    }
    s
}

fn failure_ops(h: &History<'_>, kops: &[KOp], f: &Failure) -> Vec<u64> {
    let mut ops: Vec<u64> = Vec::new();
    let mut push = |k: usize| {
        if let Some(i) = kops[k].src
            && !ops.contains(&h.ops[i].id)
        {
            ops.push(h.ops[i].id);
        }
    };
    push(f.stuck);
    for &k in f.recent.iter().rev() {
        push(k);
    }
    for &k in &f.pending {
        push(k);
    }
    ops
}

#[cfg(test)]
mod tests {
    //! The search against brute force on random tiny per-key histories:
    //! every pruning rule (forced placements, useful optional placements,
    //! interchangeable classes, dominated configurations, skipped no-ops)
    //! must keep exactly the verdict of trying every order.

    use super::*;

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Whether some order of a subset of `kops` holding every operation with
    /// a finite return respects real time, the ranks (when `use_ranks`)
    /// and the register model.
    fn brute(kops: &[KOp], values: &Values<'_>, use_ranks: bool) -> bool {
        fn go(
            kops: &[KOp],
            values: &Values<'_>,
            use_ranks: bool,
            placed: &mut Vec<bool>,
            state: u32,
            rank_next: u32,
        ) -> bool {
            if kops
                .iter()
                .zip(placed.iter())
                .all(|(k, &p)| p || k.ret.is_none())
            {
                return true;
            }
            for b in 0..kops.len() {
                if placed[b] {
                    continue;
                }
                let op = &kops[b];
                let must_wait = kops
                    .iter()
                    .enumerate()
                    .any(|(a, o)| a != b && !placed[a] && o.ret.is_some_and(|r| r < op.call));
                if must_wait || (use_ranks && op.rank.is_some_and(|r| r != rank_next)) {
                    continue;
                }
                let Some(ns) = step(state, op.f, values) else {
                    continue;
                };
                placed[b] = true;
                let next_rank = rank_next + u32::from(use_ranks && op.rank.is_some());
                let ok = go(kops, values, use_ranks, placed, ns, next_rank);
                placed[b] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        go(
            kops,
            values,
            use_ranks,
            &mut vec![false; kops.len()],
            NONE,
            0,
        )
    }

    fn random_case(rng: &mut Rng) -> (Vec<KOp>, Values<'static>) {
        let mut values = Values::default();
        for name in ["a", "b", "c"] {
            let v = values.intern(Some(name));
            values.lease[v as usize] = [None, Some(1), Some(2)][rng.below(3) as usize];
        }
        values.ghost(Some(1));
        values.ghost(None);
        let value = |rng: &mut Rng| rng.below(5) as u32;
        let maybe = |rng: &mut Rng| {
            if rng.below(4) == 0 {
                NONE
            } else {
                rng.below(5) as u32
            }
        };
        let n = 1 + rng.below(7) as usize;
        let mut kops: Vec<KOp> = Vec::new();
        for _ in 0..n {
            let call = rng.below(12);
            let optional = rng.below(3) == 0;
            let f = match rng.below(6) {
                0 => F::Get(maybe(rng)),
                1 => F::Put(value(rng)),
                2 if optional => F::Delete(None),
                2 => F::Delete([None, Some(true), Some(false)][rng.below(3) as usize]),
                3 | 4 => F::Cas {
                    expect: maybe(rng),
                    value: value(rng),
                    outcome: if optional {
                        None
                    } else if rng.below(2) == 0 {
                        Some(None)
                    } else {
                        Some(Some(maybe(rng)))
                    },
                },
                _ => F::Vanish(1 + rng.below(2) as i64),
            };
            let optional = optional && !matches!(f, F::Get(_));
            kops.push(KOp {
                src: None,
                f,
                call,
                ret: (!optional).then(|| call + rng.below(6)),
                rank: None,
                class: None,
            });
        }
        if rng.below(2) == 0 {
            let mut writes: Vec<usize> = (0..kops.len())
                .filter(|&k| {
                    matches!(
                        kops[k].f,
                        F::Put(_)
                            | F::Delete(Some(true))
                            | F::Cas {
                                outcome: Some(None),
                                ..
                            }
                    ) && rng.below(3) != 0
                })
                .collect();
            for i in (1..writes.len()).rev() {
                writes.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for (r, &k) in writes.iter().enumerate() {
                kops[k].rank = Some(r as u32);
            }
        }
        let mut classes: HashMap<F, u32> = HashMap::new();
        for kop in kops.iter_mut() {
            if kop.ret.is_none() && kop.rank.is_none() {
                let next = classes.len() as u32;
                kop.class = Some(*classes.entry(kop.f).or_insert(next));
            }
        }
        (kops, values)
    }

    #[test]
    fn the_search_agrees_with_brute_force() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let (mut valid, mut invalid) = (0, 0);
        for case in 0..30_000 {
            let (kops, values) = random_case(&mut rng);
            for use_ranks in [true, false] {
                let expected = brute(&kops, &values, use_ranks);
                let got = match search(&kops, &values, use_ranks, 10_000_000) {
                    Search::Linearizable => true,
                    Search::Fails(_) => false,
                    Search::GaveUp(_) => panic!("case {case}: gave up on {kops:?}"),
                };
                assert_eq!(got, expected, "case {case} (ranks {use_ranks}): {kops:?}");
                if expected {
                    valid += 1;
                } else {
                    invalid += 1;
                }
            }
        }
        eprintln!("{valid} linearizable, {invalid} not");
        assert!(valid > 10_000 && invalid > 10_000);
    }
}
