//! Model-based property tests: `muster_core::Store` against a deliberately
//! naive reference model of etcd v3.5's key-value and lease semantics.
//!
//! The model ([`Model`]) is written from etcd's documented behaviour and its
//! `server/etcdserver/apply.go` and `server/mvcc` sources, not from the
//! core's code. It is naive on purpose: every key keeps a plain `Vec` of its
//! versions, every read is a linear scan, a lease's keys are found by
//! scanning every key, a txn is evaluated by building its decided tree and
//! walking it, and a failed command is undone by throwing away a cloned
//! model. Nothing is indexed, cached or shared, so the model is slow but
//! easy to check by eye against the etcd rules it transcribes. Where it
//! disagrees with the core, one of them is wrong about etcd.
//!
//! The properties generate random sequences of operations over a small key
//! alphabet (so that single keys, prefix ranges and `"\0"`-ended ranges
//! overlap often), apply each to the core and to the model, and require equal
//! validation errors, responses, errors, events, history queries and lease
//! state after every step. At the end of a sequence the snapshot must
//! round-trip byte for byte (with an equal `hash_kv`) and replaying the same
//! log on a fresh store must give the same snapshot bytes.
//!
//! Three places where etcd itself gives no usable answer are handled
//! explicitly rather than guessed:
//! - a lease grant with ID 0 gets an ID derived by the core; the model
//!   adopts whatever ID the core chose, provided it is positive and unused;
//! - a txn whose `ignore_value`/`ignore_lease` put targets a key that an
//!   earlier `"\0"`-ended delete of the same txn removed passes etcd's
//!   checks (they run against the pre-txn state) and then makes etcd panic
//!   mid-apply. muster rejects it up front with `KeyNotFound`, and so does
//!   the model; should a put still find no key mid-txn, the model reports
//!   [`ModelError::EtcdPanics`] and the sequence stops there;
//! - compacting at a revision where one txn wrote a key twice: see
//!   [`Model::compact`].
//!
//! `MODEL_CASES=N` overrides the number of sequences per property for soak
//! runs. The tests at the end of the file are minimal reproductions of
//! disagreements the properties found, kept as regression tests.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use muster_core::{
    Applied, Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Error, Event, EventBatch, EventKind, KeyValue, LeaseCheckpoint, LeaseInfo,
    MAX_LEASE_TTL, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, Response,
    ResponseOp, SortOrder, SortTarget, Store, TxnRequest, TxnResponse, validate,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// The op-count limit the server uses (etcd's default `--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;

/// One version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelVersion {
    main: i64,
    sub: i64,
    create_revision: i64,
    version: i64,
    lease: i64,
    /// `None` marks a tombstone.
    value: Option<Vec<u8>>,
}

impl ModelVersion {
    fn is_live(&self) -> bool {
        self.value.is_some()
    }

    /// The version as etcd hands it out. A tombstone is a delete event's
    /// `kv`: only the key and the deleting revision.
    fn kv(&self, key: &[u8]) -> KeyValue {
        match &self.value {
            Some(value) => KeyValue {
                key: Bytes::copy_from_slice(key),
                create_revision: self.create_revision,
                mod_revision: self.main,
                version: self.version,
                value: Bytes::copy_from_slice(value),
                lease: self.lease,
            },
            None => KeyValue {
                key: Bytes::copy_from_slice(key),
                mod_revision: self.main,
                ..KeyValue::default()
            },
        }
    }
}

/// Why the model refused a command.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ModelError {
    /// etcd answers with this error and changes nothing.
    Etcd(Error),
    /// etcd's apply loop would panic (its own checks passed, then a write
    /// inside the txn failed); no etcd-compatible answer exists.
    EtcdPanics(String),
}

impl From<Error> for ModelError {
    fn from(e: Error) -> Self {
        ModelError::Etcd(e)
    }
}

/// A write in progress: all of it lands at main revision `rev`.
struct Pending {
    rev: i64,
    sub: i64,
    events: Vec<Event>,
}

impl Pending {
    /// The revision reads inside the write see: the new one once anything
    /// was written (etcd's `storeTxnWrite.Range`).
    fn view(&self) -> i64 {
        if self.sub > 0 { self.rev } else { self.rev - 1 }
    }
}

/// A txn with every compare already evaluated: the branch that will run.
enum Decided<'a> {
    Range(&'a RangeRequest),
    Put(&'a PutRequest),
    Delete(&'a DeleteRangeRequest),
    Txn(DecidedTxn<'a>),
}

struct DecidedTxn<'a> {
    succeeded: bool,
    ops: Vec<Decided<'a>>,
}

impl<'a> DecidedTxn<'a> {
    /// The non-txn ops that will run, in execution order.
    fn leaves_into<'s>(&'s self, out: &mut Vec<&'s Decided<'a>>) {
        for op in &self.ops {
            match op {
                Decided::Txn(nested) => nested.leaves_into(out),
                leaf => out.push(leaf),
            }
        }
    }
}

/// The naive model: full lists of versions, a revision counter, a
/// compaction point and a lease table of `id -> (ttl, remaining_ttl)`.
#[derive(Clone, Debug)]
struct Model {
    keys: BTreeMap<Vec<u8>, Vec<ModelVersion>>,
    current: i64,
    compacted: i64,
    leases: BTreeMap<i64, (i64, i64)>,
}

/// Whether `candidate` is selected by a request's `key` / `range_end`.
fn selects(key: &[u8], range_end: &[u8], candidate: &[u8]) -> bool {
    if range_end.is_empty() {
        candidate == key
    } else if range_end == b"\0" {
        candidate >= key
    } else {
        candidate >= key && candidate < range_end
    }
}

impl Model {
    fn new() -> Self {
        Model {
            keys: BTreeMap::new(),
            current: 1,
            compacted: -1,
            leases: BTreeMap::new(),
        }
    }

    /// The version of `key` visible at revision `rev`, if it is live.
    fn live_at(&self, key: &[u8], rev: i64) -> Option<&ModelVersion> {
        let versions = self.keys.get(key)?;
        let mut newest = None;
        for v in versions {
            if v.main <= rev {
                newest = Some(v);
            }
        }
        newest.filter(|v| v.is_live())
    }

    /// Every key (with any history) the range selects, in key order.
    fn keys_in(&self, key: &[u8], range_end: &[u8]) -> Vec<Vec<u8>> {
        self.keys
            .keys()
            .filter(|k| selects(key, range_end, k))
            .cloned()
            .collect()
    }

    /// The keys attached to `lease`: those whose newest version is live and
    /// carries the lease.
    fn attached(&self, lease: i64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (key, versions) in &self.keys {
            if let Some(last) = versions.last()
                && last.is_live()
                && last.lease == lease
            {
                out.push(key.clone());
            }
        }
        out
    }

    fn begin(&self) -> Pending {
        Pending {
            rev: self.current + 1,
            sub: 0,
            events: Vec::new(),
        }
    }

    fn commit(&mut self, w: Pending) -> Vec<Event> {
        if w.sub > 0 {
            self.current = w.rev;
        }
        w.events
    }

    fn push_version(&mut self, key: &[u8], v: ModelVersion) {
        self.keys.entry(key.to_vec()).or_default().push(v);
    }

    // ----- reads -------------------------------------------------------

    /// etcd's `applierV3backend.Range` over a view whose current revision
    /// is `cur`.
    fn range_at(&self, req: &RangeRequest, cur: i64) -> Result<RangeResponse, Error> {
        // mvcc rangeKeys: future first, then "<= 0 means current", then
        // compacted.
        if req.revision > cur {
            return Err(Error::FutureRevision);
        }
        let rev = if req.revision <= 0 { cur } else { req.revision };
        if rev < self.compacted {
            return Err(Error::Compacted);
        }
        let mut all = Vec::new();
        for key in self.keys_in(&req.key, &req.range_end) {
            if let Some(v) = self.live_at(&key, rev) {
                all.push(v.kv(&key));
            }
        }
        let count = all.len() as i64;
        if req.count_only {
            return Ok(RangeResponse {
                revision: cur,
                kvs: Vec::new(),
                more: false,
                count,
            });
        }
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // apply.go: fetch limit+1 keys (in key order) unless the *requested*
        // sort order is set or a filter is: then fetch everything.
        let mut kvs = if req.sort_order == SortOrder::None && !filtered && req.limit > 0 {
            all.into_iter().take(req.limit as usize + 1).collect()
        } else {
            all
        };
        if req.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
        }
        if req.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
        }
        if req.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
        }
        if req.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
        }
        // A non-key target with no order sorts ascending; key/ascend is the
        // natural order already. Ties keep ascending key order.
        let mut order = req.sort_order;
        if req.sort_target != SortTarget::Key && order == SortOrder::None {
            order = SortOrder::Ascend;
        }
        if order != SortOrder::None {
            let target = req.sort_target;
            let field = |kv: &KeyValue| -> Vec<u8> {
                // Encode numeric targets so byte order is numeric order
                // (all are non-negative here).
                match target {
                    SortTarget::Key => kv.key.to_vec(),
                    SortTarget::Version => kv.version.to_be_bytes().to_vec(),
                    SortTarget::Create => kv.create_revision.to_be_bytes().to_vec(),
                    SortTarget::Mod => kv.mod_revision.to_be_bytes().to_vec(),
                    SortTarget::Value => kv.value.to_vec(),
                }
            };
            kvs.sort_by(|a, b| {
                let by_field = field(a).cmp(&field(b));
                let by_field = if order == SortOrder::Descend {
                    by_field.reverse()
                } else {
                    by_field
                };
                by_field.then_with(|| a.key.cmp(&b.key))
            });
        }
        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse {
            revision: cur,
            kvs,
            more,
            count,
        })
    }

    /// A serializable range, as `Store::range` answers it.
    fn read(&self, req: &RangeRequest) -> Result<RangeResponse, Error> {
        if req.key.is_empty() {
            return Err(Error::EmptyKey);
        }
        self.range_at(req, self.current)
    }

    /// History between `start` and `end` (inclusive; `end <= 0`: current),
    /// from the versions compaction kept.
    fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        start: i64,
        end: i64,
    ) -> Result<EventBatch, Error> {
        let end = if end <= 0 { self.current } else { end };
        if end > self.current {
            return Err(Error::FutureRevision);
        }
        if start < self.compacted {
            return Err(Error::Compacted);
        }
        let mut found: Vec<(i64, i64, Event)> = Vec::new();
        for (k, versions) in &self.keys {
            if !selects(key, range_end, k) {
                continue;
            }
            for (i, v) in versions.iter().enumerate() {
                if v.main < start || v.main > end {
                    continue;
                }
                // etcd keeps, of a key's versions at or below the
                // compaction point, only the newest and only when live.
                let newest_at_or_below = versions
                    .get(i + 1)
                    .is_none_or(|next| next.main > self.compacted);
                if v.main == self.compacted && !(newest_at_or_below && v.is_live()) {
                    continue;
                }
                let prev_kv = if i == 0 {
                    None
                } else {
                    Some(&versions[i - 1])
                        .filter(|p| p.is_live())
                        .map(|p| p.kv(k))
                };
                let kind = if v.is_live() {
                    EventKind::Put
                } else {
                    EventKind::Delete
                };
                found.push((
                    v.main,
                    v.sub,
                    Event {
                        kind,
                        kv: v.kv(k),
                        prev_kv,
                    },
                ));
            }
        }
        found.sort_by_key(|(main, sub, _)| (*main, *sub));
        Ok(EventBatch {
            events: found.into_iter().map(|(_, _, e)| e).collect(),
            next_revision: end + 1,
        })
    }

    fn lease_keys(&self, id: i64) -> Result<Vec<Bytes>, Error> {
        if !self.leases.contains_key(&id) {
            return Err(Error::LeaseNotFound);
        }
        Ok(self.attached(id).into_iter().map(Bytes::from).collect())
    }

    fn lease_infos(&self) -> Vec<LeaseInfo> {
        self.leases
            .iter()
            .map(|(&id, &(ttl, remaining_ttl))| LeaseInfo {
                id,
                ttl,
                remaining_ttl,
            })
            .collect()
    }

    // ----- writes ------------------------------------------------------

    /// Applies a validated command; on error the model is unchanged.
    /// `derived_id` is the ID the core chose for a grant with ID 0.
    fn apply(
        &mut self,
        cmd: &Command,
        derived_id: Option<i64>,
    ) -> Result<(Response, Vec<Event>), ModelError> {
        let mut next = self.clone();
        let out = next.apply_in_place(cmd, derived_id)?;
        *self = next;
        Ok(out)
    }

    fn apply_in_place(
        &mut self,
        cmd: &Command,
        derived_id: Option<i64>,
    ) -> Result<(Response, Vec<Event>), ModelError> {
        match cmd {
            Command::Put(req) => {
                // apply.go Put with txn == nil: the lease is looked up first,
                // then the previous kv for ignore_value / ignore_lease.
                if req.lease != 0 && !self.leases.contains_key(&req.lease) {
                    return Err(Error::LeaseNotFound.into());
                }
                if (req.ignore_value || req.ignore_lease)
                    && self.live_at(&req.key, self.current).is_none()
                {
                    return Err(Error::KeyNotFound.into());
                }
                let mut w = self.begin();
                let resp = self.put(&mut w, req)?;
                Ok((Response::Put(resp), self.commit(w)))
            }
            Command::DeleteRange(req) => {
                let mut w = self.begin();
                let resp = self.delete(&mut w, req);
                Ok((Response::DeleteRange(resp), self.commit(w)))
            }
            Command::Txn(req) => {
                let (resp, events) = self.txn(req)?;
                Ok((Response::Txn(resp), events))
            }
            Command::Compact { revision } => {
                let rev = *revision;
                if rev <= self.compacted {
                    return Err(Error::Compacted.into());
                }
                if rev > self.current {
                    return Err(Error::FutureRevision.into());
                }
                self.compact(rev);
                Ok((
                    Response::Compact {
                        revision: self.current,
                    },
                    Vec::new(),
                ))
            }
            Command::LeaseGrant { id, ttl } => {
                if *ttl > 9_000_000_000 {
                    return Err(Error::LeaseTtlTooLarge.into());
                }
                // ID 0: the server picks one; etcd leaves the choice open,
                // so the model takes the core's (checked by the caller).
                let id = if *id == 0 {
                    derived_id.expect("a grant with ID 0 needs the derived ID")
                } else {
                    *id
                };
                if self.leases.contains_key(&id) {
                    return Err(Error::LeaseExists.into());
                }
                self.leases.insert(id, (*ttl, 0));
                Ok((
                    Response::LeaseGrant {
                        revision: self.current,
                        id,
                        ttl: *ttl,
                    },
                    Vec::new(),
                ))
            }
            Command::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(Error::LeaseNotFound.into());
                }
                // lessor.Revoke: delete the attached keys in sorted order in
                // one write txn, then drop the lease.
                let mut w = self.begin();
                for key in self.attached(*id) {
                    self.delete(
                        &mut w,
                        &DeleteRangeRequest {
                            key: Bytes::from(key),
                            range_end: Bytes::new(),
                            prev_kv: false,
                        },
                    );
                }
                let revision = w.view();
                let events = self.commit(w);
                self.leases.remove(id);
                Ok((Response::LeaseRevoke { revision }, events))
            }
            Command::LeaseCheckpoint { checkpoints } => {
                for c in checkpoints {
                    if let Some(lease) = self.leases.get_mut(&c.id) {
                        lease.1 = c.remaining_ttl;
                    }
                }
                Ok((
                    Response::LeaseCheckpoint {
                        revision: self.current,
                    },
                    Vec::new(),
                ))
            }
            // Cluster metadata and alarms live outside the key space; the
            // operation generator never produces them (cluster.rs's unit
            // tests cover them).
            other => unreachable!("the model does not generate {other:?}"),
        }
    }

    /// etcd's `Put` inside a write txn (checks already done by the caller).
    fn put(&mut self, w: &mut Pending, req: &PutRequest) -> Result<PutResponse, ModelError> {
        let prev = self.live_at(&req.key, w.view()).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(ModelError::EtcdPanics(format!(
                "put {:?} with ignore_* finds no key mid-txn (etcd: ErrKeyNotFound -> lg.Panic)",
                req.key
            )));
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone().unwrap_or_default(),
            _ => req.value.to_vec(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (w.rev, 1),
        };
        let new = ModelVersion {
            main: w.rev,
            sub: w.sub,
            create_revision,
            version,
            lease,
            value: Some(value),
        };
        w.sub += 1;
        let prev_kv = prev.as_ref().map(|p| p.kv(&req.key));
        w.events.push(Event {
            kind: EventKind::Put,
            kv: new.kv(&req.key),
            prev_kv: prev_kv.clone(),
        });
        self.push_version(&req.key, new);
        Ok(PutResponse {
            revision: w.rev,
            prev_kv: if req.prev_kv { prev_kv } else { None },
        })
    }

    /// etcd's `DeleteRange` inside a write txn.
    fn delete(&mut self, w: &mut Pending, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let view = w.view();
        let mut doomed = Vec::new();
        for key in self.keys_in(&req.key, &req.range_end) {
            if let Some(v) = self.live_at(&key, view) {
                doomed.push((key.clone(), v.kv(&key)));
            }
        }
        let mut prev_kvs = Vec::new();
        for (key, prev) in &doomed {
            let tomb = ModelVersion {
                main: w.rev,
                sub: w.sub,
                create_revision: 0,
                version: 0,
                lease: 0,
                value: None,
            };
            w.sub += 1;
            w.events.push(Event {
                kind: EventKind::Delete,
                kv: tomb.kv(key),
                prev_kv: Some(prev.clone()),
            });
            self.push_version(key, tomb);
            if req.prev_kv {
                prev_kvs.push(prev.clone());
            }
        }
        // storeTxnWrite.DeleteRange: the new revision once this txn changed
        // anything (this delete included), else the old one.
        let revision = if w.sub > 0 { w.rev } else { w.rev - 1 };
        DeleteRangeResponse {
            revision,
            deleted: doomed.len() as i64,
            prev_kvs,
        }
    }

    /// etcd's `applyCompare` against the current (pre-txn) state.
    fn compare_holds(&self, c: &Compare) -> bool {
        let mut live = Vec::new();
        for key in self.keys_in(&c.key, &c.range_end) {
            if let Some(v) = self.live_at(&key, self.current) {
                live.push(v);
            }
        }
        if live.is_empty() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_one(c, None);
        }
        live.into_iter().all(|v| compare_one(c, Some(v)))
    }

    fn decide<'a>(&self, req: &'a TxnRequest) -> DecidedTxn<'a> {
        let succeeded = req.compare.iter().all(|c| self.compare_holds(c));
        let branch = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let ops = branch
            .iter()
            .map(|op| match op {
                RequestOp::Range(r) => Decided::Range(r),
                RequestOp::Put(p) => Decided::Put(p),
                RequestOp::DeleteRange(d) => Decided::Delete(d),
                RequestOp::Txn(t) => Decided::Txn(self.decide(t)),
            })
            .collect();
        DecidedTxn { succeeded, ops }
    }

    fn txn(&mut self, req: &TxnRequest) -> Result<(TxnResponse, Vec<Event>), ModelError> {
        let decided = self.decide(req);
        let mut leaves = Vec::new();
        decided.leaves_into(&mut leaves);
        // checkRequests(checkPut) over the whole path, then
        // checkRequests(checkRange): both against the pre-txn state.
        let mut deleted: Vec<&DeleteRangeRequest> = Vec::new();
        for leaf in &leaves {
            if let Decided::Delete(d) = leaf {
                deleted.push(d);
            }
            if let Decided::Put(p) = leaf {
                // Beyond etcd (which panics mid-apply here): an ignore_* put
                // of a key an earlier op of the path deletes finds no key.
                let ignores = p.ignore_value || p.ignore_lease;
                if ignores
                    && deleted
                        .iter()
                        .any(|d| selects(&d.key, &d.range_end, &p.key))
                {
                    return Err(Error::KeyNotFound.into());
                }
                if ignores && self.live_at(&p.key, self.current).is_none() {
                    return Err(Error::KeyNotFound.into());
                }
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Err(Error::LeaseNotFound.into());
                }
            }
        }
        for leaf in &leaves {
            if let Decided::Range(r) = leaf {
                if r.revision == 0 {
                    continue;
                }
                if r.revision > self.current {
                    return Err(Error::FutureRevision.into());
                }
                if r.revision < self.compacted {
                    return Err(Error::Compacted.into());
                }
            }
        }
        let mut w = self.begin();
        let mut resp = self.run_decided(&mut w, &decided)?;
        resp.revision = w.view();
        let events = self.commit(w);
        Ok((resp, events))
    }

    fn run_decided(
        &mut self,
        w: &mut Pending,
        t: &DecidedTxn<'_>,
    ) -> Result<TxnResponse, ModelError> {
        let mut responses = Vec::new();
        for op in &t.ops {
            responses.push(match op {
                Decided::Range(r) => match self.range_at(r, w.view()) {
                    Ok(resp) => ResponseOp::Range(resp),
                    Err(e) => {
                        return Err(ModelError::EtcdPanics(format!("range failed mid-txn: {e}")));
                    }
                },
                Decided::Put(p) => ResponseOp::Put(self.put(w, p)?),
                Decided::Delete(d) => ResponseOp::DeleteRange(self.delete(w, d)),
                Decided::Txn(nested) => {
                    // Nested txn responses carry no header revision.
                    ResponseOp::Txn(self.run_decided(w, nested)?)
                }
            });
        }
        Ok(TxnResponse {
            revision: 0,
            succeeded: t.succeeded,
            responses,
        })
    }

    /// Compaction, as the core documents it: a key keeps every version at
    /// or above `rev`; below `rev` it keeps only its newest version, and
    /// only if that is live and nothing was written to the key at `rev`
    /// itself. Reads at `rev` and later see what they saw before; a watch
    /// from `rev` sees every change made at `rev`, which etcd's rule (keep
    /// "the newest version at or below `rev`") loses when one txn wrote a
    /// key twice at `rev`.
    fn compact(&mut self, rev: i64) {
        let mut emptied = Vec::new();
        for (key, versions) in self.keys.iter_mut() {
            let written_at_rev = versions.iter().any(|v| v.main == rev);
            let below: Vec<usize> = (0..versions.len())
                .filter(|&i| versions[i].main < rev)
                .collect();
            let keep_below = match below.last() {
                Some(&newest) if !written_at_rev && versions[newest].is_live() => Some(newest),
                _ => None,
            };
            let mut i = 0;
            versions.retain(|v| {
                let keep = v.main >= rev || Some(i) == keep_below;
                i += 1;
                keep
            });
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        self.compacted = rev;
    }
}

/// etcd's `compareKV` on one key-value (`None`: the all-zero kv).
fn compare_one(c: &Compare, v: Option<&ModelVersion>) -> bool {
    let num = |f: fn(&ModelVersion) -> i64| v.map(f).unwrap_or(0);
    let ordering = match &c.target {
        CompareTarget::Version(n) => num(|v| v.version).cmp(n),
        CompareTarget::Create(n) => num(|v| v.create_revision).cmp(n),
        CompareTarget::Mod(n) => num(|v| v.main).cmp(n),
        CompareTarget::Lease(n) => num(|v| v.lease).cmp(n),
        CompareTarget::Value(want) => {
            let have: &[u8] = v.and_then(|v| v.value.as_deref()).unwrap_or(&[]);
            have.cmp(&want[..])
        }
    };
    match c.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => !ordering.is_eq(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

// ----- validation (etcd's gRPC-edge checks) ----------------------------

fn model_check_put(p: &PutRequest) -> Result<(), Error> {
    if p.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// `checkTxnRequest`: op count, compare keys, then each op (a nested txn
/// gets the op budget its parent leaves).
fn model_check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), Error> {
    let opc = t.compare.len().max(t.success.len()).max(t.failure.len());
    if opc > max_ops {
        return Err(Error::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in t.success.iter().chain(t.failure.iter()) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(Error::EmptyKey),
            RequestOp::Range(_) => {}
            RequestOp::Put(p) => model_check_put(p)?,
            RequestOp::DeleteRange(d) if d.key.is_empty() => return Err(Error::EmptyKey),
            RequestOp::DeleteRange(_) => {}
            RequestOp::Txn(nested) => model_check_txn(nested, max_ops - opc)?,
        }
    }
    Ok(())
}

/// A deleted interval as etcd's `checkIntervals` sees it: a point when the
/// end is empty, else `[start, end)` compared as plain byte strings (so a
/// `"\0"` end, or any end at or below the start, covers nothing).
fn covered(dels: &[(Vec<u8>, Vec<u8>)], key: &[u8]) -> bool {
    dels.iter().any(|(start, end)| {
        if end.is_empty() {
            key == &start[..]
        } else {
            &start[..] <= key && key < &end[..]
        }
    })
}

type PutsAndDels = (BTreeSet<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>);

/// etcd's `checkIntervals` over one list of ops.
fn model_intervals(ops: &[RequestOp]) -> Result<PutsAndDels, Error> {
    let mut dels: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for op in ops {
        if let RequestOp::DeleteRange(d) = op {
            dels.push((d.key.to_vec(), d.range_end.to_vec()));
        }
    }
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let RequestOp::Txn(t) = op else { continue };
        let (then_puts, then_dels) = model_intervals(&t.success)?;
        let (else_puts, else_dels) = model_intervals(&t.failure)?;
        for k in &then_puts {
            if puts.contains(k) || covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
        }
        puts.extend(then_puts.iter().cloned());
        for k in &else_puts {
            if puts.contains(k) && !then_puts.contains(k) {
                return Err(Error::DuplicateKey);
            }
            if covered(&dels, k) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        dels.extend(then_dels);
        dels.extend(else_dels);
    }
    for op in ops {
        let RequestOp::Put(p) = op else { continue };
        if puts.contains(&p.key[..]) || covered(&dels, &p.key) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(p.key.to_vec());
    }
    Ok((puts, dels))
}

fn model_validate(cmd: &Command) -> Result<(), Error> {
    match cmd {
        Command::Put(p) => model_check_put(p),
        Command::DeleteRange(d) if d.key.is_empty() => Err(Error::EmptyKey),
        Command::Txn(t) => {
            model_check_txn(t, MAX_TXN_OPS)?;
            model_intervals(&t.success)?;
            model_intervals(&t.failure)?;
            Ok(())
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Generated operations (templates resolved against the model's state)
// ---------------------------------------------------------------------------

const KEYS: &[&str] = &["\0", "a", "a\0", "ab", "b", "c", "d", "e", "f"];
const RANGE_ENDS: &[&str] = &["\0\0", "a", "a\0", "ab", "b", "c", "d", "f", "g"];
const VALUES: &[&str] = &["", "x", "y", "z", "xy"];
/// Leases the generator grants and names (7 is rarely granted).
const LEASES: &[i64] = &[1, 2, 3, 7];

/// A revision chosen relative to the state at the time the op runs.
#[derive(Clone, Debug)]
enum RevT {
    Zero,
    Neg(i64),
    Current,
    Next,
    Back(i64),
    AtCompact,
    BelowCompact,
    Abs(i64),
}

impl RevT {
    fn resolve(&self, m: &Model) -> i64 {
        match *self {
            RevT::Zero => 0,
            RevT::Neg(n) => -n,
            RevT::Current => m.current,
            RevT::Next => m.current + 1,
            RevT::Back(k) => m.current - k,
            RevT::AtCompact => m.compacted,
            RevT::BelowCompact => m.compacted - 1,
            RevT::Abs(n) => n,
        }
    }
}

#[derive(Clone, Debug)]
struct PutT {
    key: &'static str,
    value: &'static str,
    lease: i64,
    prev_kv: bool,
    ignore_value: bool,
    ignore_lease: bool,
}

#[derive(Clone, Debug)]
struct DelT {
    key: &'static str,
    end: &'static str,
    prev_kv: bool,
}

#[derive(Clone, Debug)]
struct RangeT {
    key: &'static str,
    end: &'static str,
    limit: i64,
    revision: RevT,
    order: SortOrder,
    target: SortTarget,
    keys_only: bool,
    count_only: bool,
    min_mod: RevT,
    max_mod: RevT,
    min_create: RevT,
    max_create: RevT,
}

#[derive(Clone, Debug)]
enum TargetT {
    Version(i64),
    Create(RevT),
    Mod(RevT),
    Value(&'static str),
    Lease(i64),
}

#[derive(Clone, Debug)]
struct CompareT {
    key: &'static str,
    end: &'static str,
    result: CompareResult,
    target: TargetT,
}

#[derive(Clone, Debug)]
enum OpT {
    Range(RangeT),
    Put(PutT),
    Delete(DelT),
    Txn(TxnT),
}

#[derive(Clone, Debug)]
struct TxnT {
    compare: Vec<CompareT>,
    success: Vec<OpT>,
    failure: Vec<OpT>,
}

/// One step of a sequence.
#[derive(Clone, Debug)]
enum Op {
    Put(PutT),
    Delete(DelT),
    Range(RangeT),
    Txn(TxnT),
    Compact(RevT),
    Grant {
        id: i64,
        ttl: i64,
    },
    Revoke(i64),
    Checkpoint(Vec<(i64, i64)>),
    Events {
        key: &'static str,
        end: &'static str,
        start: RevT,
        stop: RevT,
    },
}

/// What a step does once resolved.
enum Action {
    Write(Command),
    Read(RangeRequest),
    History {
        key: Bytes,
        end: Bytes,
        start: i64,
        stop: i64,
    },
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

impl PutT {
    fn request(&self) -> PutRequest {
        PutRequest {
            key: b(self.key),
            value: b(self.value),
            lease: self.lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        }
    }
}

impl DelT {
    fn request(&self) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: b(self.key),
            range_end: b(self.end),
            prev_kv: self.prev_kv,
        }
    }
}

impl RangeT {
    fn request(&self, m: &Model) -> RangeRequest {
        RangeRequest {
            key: b(self.key),
            range_end: b(self.end),
            limit: self.limit,
            revision: self.revision.resolve(m),
            sort_order: self.order,
            sort_target: self.target,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod.resolve(m),
            max_mod_revision: self.max_mod.resolve(m),
            min_create_revision: self.min_create.resolve(m),
            max_create_revision: self.max_create.resolve(m),
        }
    }
}

impl TxnT {
    fn request(&self, m: &Model) -> TxnRequest {
        let ops = |ops: &[OpT]| -> Vec<RequestOp> {
            ops.iter()
                .map(|op| match op {
                    OpT::Range(r) => RequestOp::Range(r.request(m)),
                    OpT::Put(p) => RequestOp::Put(p.request()),
                    OpT::Delete(d) => RequestOp::DeleteRange(d.request()),
                    OpT::Txn(t) => RequestOp::Txn(t.request(m)),
                })
                .collect()
        };
        TxnRequest {
            compare: self
                .compare
                .iter()
                .map(|c| Compare {
                    key: b(c.key),
                    range_end: b(c.end),
                    result: c.result,
                    target: match &c.target {
                        TargetT::Version(n) => CompareTarget::Version(*n),
                        TargetT::Create(r) => CompareTarget::Create(r.resolve(m)),
                        TargetT::Mod(r) => CompareTarget::Mod(r.resolve(m)),
                        TargetT::Value(v) => CompareTarget::Value(b(v)),
                        TargetT::Lease(l) => CompareTarget::Lease(*l),
                    },
                })
                .collect(),
            success: ops(&self.success),
            failure: ops(&self.failure),
        }
    }
}

impl Op {
    fn resolve(&self, m: &Model) -> Action {
        match self {
            Op::Put(p) => Action::Write(Command::Put(p.request())),
            Op::Delete(d) => Action::Write(Command::DeleteRange(d.request())),
            Op::Range(r) => Action::Read(r.request(m)),
            Op::Txn(t) => Action::Write(Command::Txn(t.request(m))),
            Op::Compact(r) => Action::Write(Command::Compact {
                revision: r.resolve(m),
            }),
            Op::Grant { id, ttl } => Action::Write(Command::LeaseGrant { id: *id, ttl: *ttl }),
            Op::Revoke(id) => Action::Write(Command::LeaseRevoke { id: *id }),
            Op::Checkpoint(cps) => Action::Write(Command::LeaseCheckpoint {
                checkpoints: cps
                    .iter()
                    .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect(),
            }),
            Op::Events {
                key,
                end,
                start,
                stop,
            } => Action::History {
                key: b(key),
                end: b(end),
                start: start.resolve(m),
                stop: stop.resolve(m),
            },
        }
    }
}

// ----- strategies ------------------------------------------------------

fn key_s() -> BoxedStrategy<&'static str> {
    prop_oneof![250 => select(KEYS), 1 => Just("")].boxed()
}

/// A range end: mostly a single key, often `"\0"` (open), else a bound.
fn end_s() -> BoxedStrategy<&'static str> {
    prop_oneof![10 => Just(""), 2 => Just("\0"), 4 => select(RANGE_ENDS)].boxed()
}

/// A range end for ranges that should usually select several keys.
fn span_end_s() -> BoxedStrategy<&'static str> {
    prop_oneof![2 => Just(""), 3 => Just("\0"), 5 => select(RANGE_ENDS)].boxed()
}

/// A key with a range end that usually lies above it (an end at or below
/// the key selects nothing: kept now and then).
fn span_s() -> BoxedStrategy<(&'static str, &'static str)> {
    (key_s(), span_end_s(), 0u8..6)
        .prop_map(|(key, end, keep)| {
            let bounded = !end.is_empty() && end != "\0";
            if bounded && !key.is_empty() && end <= key && keep != 0 {
                (end, key)
            } else {
                (key, end)
            }
        })
        .boxed()
}

fn value_s() -> BoxedStrategy<&'static str> {
    select(VALUES).boxed()
}

fn lease_ref_s() -> BoxedStrategy<i64> {
    prop_oneof![12 => Just(0i64), 4 => select(LEASES), 1 => Just(99i64)].boxed()
}

fn rev_s() -> BoxedStrategy<RevT> {
    prop_oneof![
        3 => Just(RevT::Zero),
        1 => (1i64..3).prop_map(RevT::Neg),
        2 => Just(RevT::Current),
        1 => Just(RevT::Next),
        5 => (1i64..8).prop_map(RevT::Back),
        1 => Just(RevT::AtCompact),
        1 => Just(RevT::BelowCompact),
        1 => (1i64..24).prop_map(RevT::Abs),
    ]
    .boxed()
}

fn filter_s() -> BoxedStrategy<RevT> {
    prop_oneof![24 => Just(RevT::Zero), 2 => rev_s()].boxed()
}

fn put_s() -> BoxedStrategy<PutT> {
    (
        key_s(),
        value_s(),
        lease_ref_s(),
        any::<bool>(),
        0u8..10,
        0u8..10,
        0u8..20,
    )
        .prop_map(|(key, value, lease, prev_kv, iv, il, bad)| {
            let ignore_value = iv == 0;
            let ignore_lease = il == 0;
            // Mostly well-formed: ignore_* without a value / lease; now and
            // then a violation for the validation checks.
            let value = if ignore_value && bad != 0 { "" } else { value };
            let lease = if ignore_lease && bad != 1 { 0 } else { lease };
            PutT {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            }
        })
        .boxed()
}

fn del_s() -> BoxedStrategy<DelT> {
    (key_s(), end_s(), any::<bool>())
        .prop_map(|(key, end, prev_kv)| DelT { key, end, prev_kv })
        .boxed()
}

fn order_s() -> BoxedStrategy<SortOrder> {
    prop_oneof![3 => Just(SortOrder::None), 1 => Just(SortOrder::Ascend), 2 => Just(SortOrder::Descend)]
    .boxed()
}

fn target_s() -> BoxedStrategy<SortTarget> {
    prop_oneof![
        3 => Just(SortTarget::Key),
        1 => Just(SortTarget::Version),
        1 => Just(SortTarget::Create),
        1 => Just(SortTarget::Mod),
        1 => Just(SortTarget::Value),
    ]
    .boxed()
}

fn range_s() -> BoxedStrategy<RangeT> {
    let revision = prop_oneof![4 => Just(RevT::Zero), 3 => rev_s()];
    let limit = prop_oneof![4 => Just(0i64), 4 => 1i64..4, 1 => Just(-1i64)];
    (
        (span_s(), limit, revision),
        (order_s(), target_s(), 0u8..5, 0u8..8),
        (filter_s(), filter_s(), filter_s(), filter_s()),
    )
        .prop_map(
            |(((key, end), limit, revision), (order, target, ko, co), (a, b, c, d))| RangeT {
                key,
                end,
                limit,
                revision,
                order,
                target,
                keys_only: ko == 0,
                count_only: co == 0,
                min_mod: a,
                max_mod: b,
                min_create: c,
                max_create: d,
            },
        )
        .boxed()
}

fn compare_s() -> BoxedStrategy<CompareT> {
    let target = prop_oneof![
        2 => (0i64..4).prop_map(TargetT::Version),
        2 => rev_s().prop_map(TargetT::Create),
        2 => rev_s().prop_map(TargetT::Mod),
        2 => value_s().prop_map(TargetT::Value),
        1 => lease_ref_s().prop_map(TargetT::Lease),
    ];
    let result = select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    (
        key_s(),
        prop_oneof![4 => Just(""), 1 => span_end_s()],
        result,
        target,
    )
        .prop_map(|(key, end, result, target)| CompareT {
            key,
            end,
            result,
            target,
        })
        .boxed()
}

fn leaf_op_s() -> BoxedStrategy<OpT> {
    prop_oneof![
        2 => range_s().prop_map(OpT::Range),
        4 => put_s().prop_map(OpT::Put),
        2 => del_s().prop_map(OpT::Delete),
    ]
    .boxed()
}

/// A txn; with `nest`, its ops may include one level of nested txns.
fn txn_s(nest: bool) -> BoxedStrategy<TxnT> {
    let op = if nest {
        prop_oneof![6 => leaf_op_s(), 1 => txn_s(false).prop_map(OpT::Txn)].boxed()
    } else {
        leaf_op_s().boxed()
    };
    (
        prop::collection::vec(compare_s(), 0..=3),
        prop::collection::vec(op.clone(), 0..=3),
        prop::collection::vec(op, 0..=3),
    )
        .prop_map(|(compare, success, failure)| TxnT {
            compare,
            success,
            failure,
        })
        .boxed()
}

fn compact_s() -> BoxedStrategy<RevT> {
    prop_oneof![
        6 => (1i64..6).prop_map(RevT::Back),
        1 => Just(RevT::Current),
        1 => Just(RevT::Next),
        1 => Just(RevT::AtCompact),
        1 => Just(RevT::BelowCompact),
        1 => Just(RevT::Zero),
    ]
    .boxed()
}

fn grant_s() -> BoxedStrategy<Op> {
    let id = prop_oneof![8 => select(&[1i64, 2, 3][..]), 1 => Just(7i64), 1 => Just(0i64)];
    let ttl = prop_oneof![
        8 => select(&[5i64, 10, 60][..]),
        1 => Just(MAX_LEASE_TTL),
        1 => Just(MAX_LEASE_TTL + 1),
    ];
    (id, ttl)
        .prop_map(|(id, ttl)| Op::Grant { id, ttl })
        .boxed()
}

fn events_s() -> BoxedStrategy<Op> {
    let start = prop_oneof![
        3 => Just(RevT::AtCompact),
        1 => Just(RevT::BelowCompact),
        4 => (0i64..8).prop_map(RevT::Back),
        1 => Just(RevT::Next),
    ];
    let stop = prop_oneof![4 => Just(RevT::Zero), 3 => (0i64..5).prop_map(RevT::Back), 1 => Just(RevT::Next)];
    (span_s(), start, stop)
        .prop_map(|((key, end), start, stop)| Op::Events {
            key,
            end,
            start,
            stop,
        })
        .boxed()
}

/// Every kind of step, weighted towards writes.
fn op_s() -> BoxedStrategy<Op> {
    prop_oneof![
        14 => put_s().prop_map(Op::Put),
        4 => del_s().prop_map(Op::Delete),
        5 => range_s().prop_map(Op::Range),
        7 => txn_s(true).prop_map(Op::Txn),
        2 => compact_s().prop_map(Op::Compact),
        3 => grant_s(),
        2 => prop_oneof![6 => select(&[1i64, 2, 3][..]), 1 => Just(7i64), 1 => Just(99i64)].prop_map(Op::Revoke),
        1 => prop::collection::vec((select(LEASES), 0i64..60), 0..3).prop_map(Op::Checkpoint),
        2 => events_s(),
    ]
    .boxed()
}

/// Writes only, to set up state for the read-focused property.
fn setup_op_s() -> BoxedStrategy<Op> {
    prop_oneof![
        8 => put_s().prop_map(Op::Put),
        2 => del_s().prop_map(Op::Delete),
        1 => compact_s().prop_map(Op::Compact),
        1 => grant_s(),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// Running a sequence against both
// ---------------------------------------------------------------------------

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    ctx: &str,
    expected: &T,
    actual: &T,
) -> Result<(), TestCaseError> {
    if expected == actual {
        Ok(())
    } else {
        Err(fail(format!(
            "{what} differs at {ctx}\n  model (expected): {expected:#?}\n  core  (actual):   {actual:#?}"
        )))
    }
}

/// Everything observable about the state, compared after each step.
fn check_state(store: &Store, model: &Model, ctx: &str) -> Result<(), TestCaseError> {
    expect_eq("revision", ctx, &model.current, &store.revision())?;
    expect_eq(
        "compact revision",
        ctx,
        &model.compacted,
        &store.compact_revision(),
    )?;
    expect_eq(
        "leases",
        ctx,
        &model.lease_infos(),
        &store.leases().collect::<Vec<_>>(),
    )?;
    let mut ids: BTreeSet<i64> = model.leases.keys().copied().collect();
    ids.extend(LEASES.iter().copied());
    ids.insert(99);
    for id in ids {
        expect_eq(
            &format!("lease_keys({id})"),
            ctx,
            &model.lease_keys(id),
            &store.lease_keys(id),
        )?;
        let info = model
            .leases
            .get(&id)
            .map(|&(ttl, remaining_ttl)| LeaseInfo {
                id,
                ttl,
                remaining_ttl,
            });
        expect_eq(&format!("lease({id})"), ctx, &info, &store.lease(id))?;
    }
    // The whole retained history, from the compaction point on.
    let start = model.compacted;
    expect_eq(
        "full history",
        ctx,
        &model.events(b"\0", b"\0", start, 0),
        &store.events(b"\0", b"\0", start, 0, 0),
    )?;
    // Every key as of the compaction point (the oldest readable state).
    if model.compacted >= 1 {
        let at_compact = RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            revision: model.compacted,
            ..RangeRequest::default()
        };
        expect_eq(
            "range at compaction point",
            ctx,
            &model.read(&at_compact),
            &store.range(&at_compact),
        )?;
    }
    Ok(())
}

/// What happened to one step, for the loop in [`run_sequence`].
enum Step {
    Continue,
    /// etcd would panic on this command: nothing more to compare.
    Stop,
}

/// Applies one step to both sides and compares the outcomes.
fn run_step(
    store: &mut Store,
    model: &mut Model,
    index: u64,
    action: Action,
    ctx: &str,
) -> Result<Step, TestCaseError> {
    match action {
        Action::Write(cmd) => {
            let checked = validate::check_command(&cmd, MAX_TXN_OPS);
            expect_eq("validation", ctx, &model_validate(&cmd), &checked)?;
            // A read-only txn can also be served without the log.
            if let Command::Txn(txn) = &cmd
                && checked.is_ok()
                && validate::is_read_only(txn)
            {
                let expected = match model.clone().apply(&cmd, None) {
                    Ok((Response::Txn(resp), _)) => Ok(resp),
                    Ok((other, _)) => {
                        return Err(fail(format!("model answered a txn with {other:?}")));
                    }
                    Err(ModelError::Etcd(e)) => Err(e),
                    Err(ModelError::EtcdPanics(why)) => {
                        return Err(fail(format!("a read-only txn cannot panic etcd: {why}")));
                    }
                };
                expect_eq("read_txn", ctx, &expected, &store.read_txn(txn))?;
            }
            let actual = store.apply(index, cmd.clone());
            if let Err(e) = checked {
                expect_eq(
                    "apply of an invalid command",
                    ctx,
                    &Err(e),
                    &actual.map(|_| ()),
                )?;
                return Ok(Step::Continue);
            }
            // A grant with ID 0 must succeed (unless its TTL is too large)
            // with a positive ID no lease has.
            let mut derived_id = None;
            if let Command::LeaseGrant { id: 0, ttl } = &cmd
                && *ttl <= MAX_LEASE_TTL
            {
                match &actual {
                    Ok(Applied {
                        response: Response::LeaseGrant { id, .. },
                        ..
                    }) if *id > 0 && !model.leases.contains_key(id) => {
                        derived_id = Some(*id);
                    }
                    other => {
                        return Err(fail(format!(
                            "a grant with ID 0 should get a fresh positive ID, got {other:?} at {ctx}"
                        )));
                    }
                }
            }
            match model.apply(&cmd, derived_id) {
                Ok((response, events)) => {
                    expect_eq("apply", ctx, &Ok(Applied { response, events }), &actual)?;
                }
                Err(ModelError::Etcd(e)) => {
                    expect_eq("apply", ctx, &Err(e), &actual.map(|_| ()))?;
                }
                // No etcd answer to compare with: stop the sequence here.
                Err(ModelError::EtcdPanics(_)) => return Ok(Step::Stop),
            }
        }
        Action::Read(req) => {
            expect_eq("range", ctx, &model.read(&req), &store.range(&req))?;
        }
        Action::History {
            key,
            end,
            start,
            stop,
        } => {
            expect_eq(
                "events",
                ctx,
                &model.events(&key, &end, start, stop),
                &store.events(&key, &end, start, stop, 0),
            )?;
        }
    }
    check_state(store, model, ctx)?;
    Ok(Step::Continue)
}

/// Applies `ops` to a fresh store and a fresh model, comparing everything.
fn run_sequence(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut store = Store::new();
    let mut model = Model::new();
    let mut log = Vec::new();
    let mut index = 0u64;
    let mut in_sync = true;
    // The resolved steps so far, printed with any failure.
    let mut trace = String::new();
    for (step, op) in ops.iter().enumerate() {
        let action = op.resolve(&model);
        match &action {
            Action::Write(cmd) => {
                index += 1;
                log.push((index, cmd.clone()));
                trace.push_str(&format!("\n  {step:>2}: apply({index}) {cmd:?}"));
            }
            Action::Read(req) => trace.push_str(&format!("\n  {step:>2}: range {req:?}")),
            Action::History {
                key,
                end,
                start,
                stop,
            } => trace.push_str(&format!(
                "\n  {step:>2}: events({key:?}, {end:?}, {start}, {stop})"
            )),
        }
        let ctx = format!("step {step}; sequence so far:{trace}\n");
        // A panic in the core is a failure of this step, not of the harness.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_step(&mut store, &mut model, index, action, &ctx)
        }))
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            fail(format!("core panicked ({what}) at {ctx}"))
        })??;
        if let Step::Stop = outcome {
            in_sync = false;
            break;
        }
    }

    // Snapshot round trip: identical bytes and hash, same observable state.
    let snapshot = store.snapshot();
    let restored = Store::restore(&snapshot[..])
        .map_err(|e| fail(format!("restoring a fresh snapshot failed: {e}")))?;
    expect_eq(
        "snapshot bytes after restore",
        "end",
        &snapshot,
        &restored.snapshot(),
    )?;
    expect_eq(
        "hash_kv(0) after restore",
        "end",
        &store.hash_kv(0),
        &restored.hash_kv(0),
    )?;
    if in_sync {
        check_state(&restored, &model, "restored store")?;
    }

    // Determinism: the same log on a fresh store gives the same bytes.
    let mut replica = Store::new();
    for (index, cmd) in &log {
        let _ = replica.apply(*index, cmd.clone());
    }
    expect_eq(
        "snapshot bytes of a replica",
        "end",
        &snapshot,
        &replica.snapshot(),
    )?;
    Ok(())
}

/// `cases` sequences, or `MODEL_CASES` of them when set (for soak runs).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// Random sequences of every op kind: core and model agree on every
    /// response, error, event and history query, and snapshots round-trip.
    #[test]
    fn core_matches_model(ops in prop::collection::vec(op_s(), 20..=60)) {
        run_sequence(&ops)?;
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Reads only after a burst of writes: every range option, at every
    /// interesting revision.
    #[test]
    fn ranges_match_model(
        setup in prop::collection::vec(setup_op_s(), 5..=30),
        reads in prop::collection::vec(range_s(), 10..=40),
    ) {
        let ops: Vec<Op> = setup.into_iter().chain(reads.into_iter().map(Op::Range)).collect();
        run_sequence(&ops)?;
    }

    /// Txn-heavy sequences with leases, including nested txns.
    #[test]
    fn txns_match_model(
        ops in prop::collection::vec(
            prop_oneof![
                3 => txn_s(true).prop_map(Op::Txn),
                1 => put_s().prop_map(Op::Put),
                1 => grant_s(),
            ],
            10..=40,
        )
    ) {
        run_sequence(&ops)?;
    }
}

// ---------------------------------------------------------------------------
// Minimal reproductions of disagreements the properties found
// ---------------------------------------------------------------------------

fn put_req(key: &'static str, value: &'static str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    }
}

fn delete_req(key: &'static str, range_end: &'static str) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: b(key),
        range_end: b(range_end),
        prev_kv: false,
    }
}

/// A txn without compares, so `ops` run.
fn txn_req(ops: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare: Vec::new(),
        success: ops,
        failure: Vec::new(),
    }
}

/// Applies `commands` to a fresh store at log indexes 1, 2, ...; each must
/// succeed.
fn store_after(commands: Vec<Command>) -> Store {
    let mut store = Store::new();
    for (i, command) in commands.into_iter().enumerate() {
        let shown = format!("{command:?}");
        if let Err(e) = store.apply(i as u64 + 1, command) {
            panic!("setup command {shown} failed: {e}");
        }
    }
    store
}

/// etcd's standalone `Put` (apply.go, `txn == nil`) looks the lease up
/// before it reads the previous kv for `ignore_value`, so a put naming both
/// a missing lease and a missing key fails with "lease not found". (Inside a
/// txn, `checkRequestPut` checks the key first; the core gets that right.)
#[test]
fn standalone_put_reports_a_missing_lease_before_a_missing_key() {
    let mut store = Store::new();
    let req = PutRequest {
        ignore_value: true,
        lease: 42,
        ..put_req("k", "")
    };
    assert_eq!(
        store.apply(1, Command::Put(req)).map(|_| ()),
        Err(Error::LeaseNotFound)
    );
}

/// `compact(3)` keeps "a"@2 (its newest version at or below 3). After
/// "a"@4 and `compact(4)`, "a"@2 is below the newest version at or below 4
/// and must go, so the event at the compaction point has no `prev_kv` (as
/// in etcd, where the watch's range at revision 3 is compacted).
#[test]
fn compaction_trims_keys_untouched_since_the_previous_compaction() {
    let store = store_after(vec![
        Command::Put(put_req("a", "1")), // rev 2
        Command::Put(put_req("b", "1")), // rev 3
        Command::Compact { revision: 3 },
        Command::Put(put_req("a", "2")), // rev 4
        Command::Compact { revision: 4 },
    ]);
    let expected = vec![Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: b("a"),
            create_revision: 2,
            mod_revision: 4,
            version: 2,
            value: b("2"),
            lease: 0,
        },
        prev_kv: None,
    }];
    assert_eq!(
        store.events(b"a", b"", 4, 0, 0).map(|b| b.events),
        Ok(expected)
    );
}

/// One txn deletes "k" through a `"\0"`-ended range (which etcd's
/// `checkIntervals` lets through next to a put of a covered key) and puts it
/// again: a tombstone at {3,0}, a new generation at {3,1}. After
/// `compact(3)` a watch from 3 sees what etcd's compaction keeps at 3: of
/// k's versions at or below 3 only the newest, the put, and only because it
/// is live (the differential test against etcd found the difference).
#[test]
fn compaction_at_a_delete_then_put_revision() {
    let txn = txn_req(vec![
        RequestOp::DeleteRange(delete_req("a", "\0")),
        RequestOp::Put(put_req("k", "2")),
    ]);
    let store = store_after(vec![
        Command::Put(put_req("k", "1")),
        Command::Txn(txn),
        Command::Compact { revision: 3 },
    ]);
    let put = KeyValue {
        key: b("k"),
        create_revision: 3,
        mod_revision: 3,
        version: 1,
        value: b("2"),
        lease: 0,
    };
    let expected = vec![Event {
        kind: EventKind::Put,
        kv: put,
        prev_kv: None,
    }];
    assert_eq!(
        store.events(b"k", b"", 3, 0, 0).map(|b| b.events),
        Ok(expected)
    );
}

/// Sibling nested txns put "k" and then delete it (etcd's `checkIntervals`
/// only checks a nested txn's puts against the deletes seen before it):
/// {3,0} put, {3,1} tombstone. After `compact(3)` a watch from 3 sees
/// neither: etcd's compaction keeps only the newest version at or below 3,
/// and not even that one, a tombstone.
fn put_then_delete_in_one_txn(existed_before: bool) {
    let nested = |op| RequestOp::Txn(txn_req(vec![op]));
    let txn = txn_req(vec![
        nested(RequestOp::Put(put_req("k", "2"))),
        nested(RequestOp::DeleteRange(delete_req("k", ""))),
    ]);
    let first = if existed_before {
        put_req("k", "1")
    } else {
        put_req("other", "1")
    };
    let store = store_after(vec![
        Command::Put(first),
        Command::Txn(txn),
        Command::Compact { revision: 3 },
    ]);
    assert_eq!(
        store.events(b"k", b"", 3, 0, 0).map(|b| b.events),
        Ok(Vec::new())
    );
}

#[test]
fn compaction_at_a_put_then_delete_revision_of_an_old_key() {
    put_then_delete_in_one_txn(true);
}

#[test]
fn compaction_at_a_put_then_delete_revision_of_a_new_key() {
    put_then_delete_in_one_txn(false);
}
