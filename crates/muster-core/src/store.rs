//! The replicated state machine: key space plus lease table, changed only by
//! [`Store::apply`].
//!
//! `apply(index, command)` is a pure function of the store and its inputs:
//! the Raft log index is the only outside fact it sees (used to derive lease
//! IDs), so every replica that applies the same log reaches the same state,
//! byte for byte (see [`Store::hash_kv`] and the snapshot encoding).
//!
//! A command either fails before changing anything, or succeeds and returns
//! its response with the events it produced, in revision order, each with its
//! `prev_kv` when there was one. All changes of one command share one main
//! revision: the store's revision grows by one per command that wrote at
//! least one key.
//!
//! Txns follow etcd 3.5 exactly: all compares, nested ones included, are
//! evaluated against the store as it was before the txn; the chosen path is
//! checked (leases exist, `ignore_*` keys exist, range revisions valid)
//! before its first op runs; reads inside the txn see its earlier writes.
//! Header revisions inside a txn are what etcd reports: a put answers the
//! txn's revision, a delete the txn's revision once anything was written, a
//! range the revision it read at, a nested txn 0.

use std::ops::ControlFlow;

use bytes::Bytes;

use crate::cluster::{AlarmMember, AlarmType, ClusterTable, MemberInfo};
use crate::command::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpoint, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, Response,
    ResponseOp, TxnRequest, TxnResponse,
};
use crate::error::{Error, Result};
use crate::kv::{Event, EventKind, KeyValue};
use crate::lease::{LeaseInfo, LeaseTable, MAX_LEASE_TTL};
use crate::mvcc::{KeyRange, KeySpace, Version, live_at};
use crate::revision::Revision;
use crate::validate;

/// What a successful [`Store::apply`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The response for the client.
    pub response: Response,
    /// The changes, in revision order, for watchers.
    pub events: Vec<Event>,
}

/// A batch of events from history (see [`Store::events`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventBatch {
    /// The events, in revision order.
    pub events: Vec<Event>,
    /// The first main revision the batch does not cover: where to resume.
    pub next_revision: i64,
}

/// The answer to [`Store::hash_kv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// crc32c over the retained history up to `revision`.
    pub hash: u32,
    /// The revision hashed up to.
    pub revision: i64,
    /// The compaction point at the time of hashing.
    pub compact_revision: i64,
}

/// The state every replica holds: the MVCC key space and the lease table.
///
/// Cloning is O(1) (persistent maps): take a clone to snapshot while apply
/// goes on.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub(crate) keys: KeySpace,
    pub(crate) leases: LeaseTable,
    pub(crate) cluster: ClusterTable,
}

impl Store {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current main revision (1 for an empty store).
    pub fn revision(&self) -> i64 {
        self.keys.current()
    }

    /// The compaction point: reads and watches below it fail. -1 until the
    /// first compaction, as in etcd.
    pub fn compact_revision(&self) -> i64 {
        self.keys.compacted()
    }

    /// Number of keys the store holds history for (live or deleted but not
    /// yet compacted away).
    pub fn key_count(&self) -> usize {
        self.keys.key_count()
    }

    /// The bytes the retained history takes in a snapshot (keys and every
    /// version kept); it shrinks only with compaction. The space quota is
    /// checked against it.
    pub fn bytes(&self) -> u64 {
        self.keys.bytes()
    }

    /// What the cluster knows about each member, in ID order (members that
    /// left may linger until forgotten; Raft's membership says who is in).
    pub fn members(&self) -> impl Iterator<Item = (u64, &MemberInfo)> + '_ {
        self.cluster.members.iter().map(|(id, m)| (*id, m))
    }

    /// What the cluster knows about member `id`.
    pub fn member(&self, id: u64) -> Option<&MemberInfo> {
        self.cluster.members.get(&id)
    }

    /// The raised alarms, in member ID order.
    pub fn alarms(&self) -> impl Iterator<Item = AlarmMember> + '_ {
        self.cluster.alarms.iter().copied()
    }

    /// Whether any member has raised `alarm`.
    pub fn alarm_raised(&self, alarm: AlarmType) -> bool {
        self.cluster.raised(alarm)
    }

    /// Whether `command` adds data: what the NOSPACE alarm refuses (etcd's
    /// capped applier: puts, txns with a put in either top-level branch,
    /// lease grants). Deletes, compactions and revokes free space and go
    /// through.
    pub fn adds_data(command: &Command) -> bool {
        let has_put = |ops: &[RequestOp]| ops.iter().any(|op| matches!(op, RequestOp::Put(_)));
        match command {
            Command::Put(_) | Command::LeaseGrant { .. } => true,
            Command::Txn(txn) => has_put(&txn.success) || has_put(&txn.failure),
            _ => false,
        }
    }

    /// Applies a command taken from the log at `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> Result<Applied> {
        validate::check_command(&command, usize::MAX)?;
        if Store::adds_data(&command) && self.cluster.raised(AlarmType::NoSpace) {
            return Err(Error::NoSpace);
        }
        match command {
            Command::Put(req) => {
                // etcd's standalone put looks the lease up before the key.
                self.check_put_lease(&req)?;
                self.check_put_key(&req)?;
                let mut write = Write::begin(self, 1);
                let response = write.put(req);
                let events = write.finish();
                Ok(Applied {
                    response: Response::Put(response),
                    events,
                })
            }
            Command::DeleteRange(req) => {
                let mut write = Write::begin(self, 0);
                let response = write.delete_range(req);
                let events = write.finish();
                Ok(Applied {
                    response: Response::DeleteRange(response),
                    events,
                })
            }
            Command::Txn(req) => {
                let path = self.choose_path(&req);
                self.check_txn_path(&req, &path)?;
                let mut write = Write::begin(self, 0);
                let mut at = 0;
                let mut response = write.txn(req, &path, &mut at);
                response.revision = write.header_revision();
                let events = write.finish();
                Ok(Applied {
                    response: Response::Txn(response),
                    events,
                })
            }
            Command::Compact { revision } => {
                if revision <= self.keys.compacted() {
                    return Err(Error::Compacted);
                }
                if revision > self.keys.current() {
                    return Err(Error::FutureRevision);
                }
                self.keys.compact(revision);
                let response = Response::Compact {
                    revision: self.keys.current(),
                };
                Ok(Applied {
                    response,
                    events: Vec::new(),
                })
            }
            Command::LeaseGrant { id, ttl } => {
                if ttl > MAX_LEASE_TTL {
                    return Err(Error::LeaseTtlTooLarge);
                }
                let id = if id == 0 {
                    self.derive_lease_id(index)
                } else {
                    id
                };
                if self.leases.contains(id) {
                    return Err(Error::LeaseExists);
                }
                self.leases.grant(id, ttl);
                let response = Response::LeaseGrant {
                    revision: self.keys.current(),
                    id,
                    ttl,
                };
                Ok(Applied {
                    response,
                    events: Vec::new(),
                })
            }
            Command::LeaseRevoke { id } => {
                let lease = self.leases.get(id).ok_or(Error::LeaseNotFound)?;
                let keys = lease.keys.clone();
                let mut write = Write::begin(self, 0);
                for key in keys.iter() {
                    write.delete_range(DeleteRangeRequest {
                        key: key.clone(),
                        range_end: Bytes::new(),
                        prev_kv: false,
                    });
                }
                let revision = write.header_revision();
                let events = write.finish();
                self.leases.remove(id);
                Ok(Applied {
                    response: Response::LeaseRevoke { revision },
                    events,
                })
            }
            Command::LeaseCheckpoint { checkpoints } => {
                for LeaseCheckpoint { id, remaining_ttl } in checkpoints {
                    self.leases.checkpoint(id, remaining_ttl);
                }
                let response = Response::LeaseCheckpoint {
                    revision: self.keys.current(),
                };
                Ok(Applied {
                    response,
                    events: Vec::new(),
                })
            }
            Command::MemberPeerUrls { id, peer_urls } => {
                self.cluster.set_peer_urls(id, peer_urls);
                Ok(self.member_applied())
            }
            Command::MemberPublish {
                id,
                name,
                client_urls,
                peer_urls,
            } => {
                self.cluster.publish(id, name, client_urls, peer_urls);
                Ok(self.member_applied())
            }
            Command::MemberForget { id } => {
                self.cluster.forget(id);
                Ok(self.member_applied())
            }
            Command::Alarm {
                activate,
                member_id,
                alarm,
            } => {
                let alarm = AlarmMember { member_id, alarm };
                let changed = if activate {
                    self.cluster.activate(alarm)
                } else {
                    self.cluster.deactivate(alarm)
                };
                Ok(Applied {
                    response: Response::Alarm {
                        revision: self.keys.current(),
                        changed: if changed { vec![alarm] } else { Vec::new() },
                    },
                    events: Vec::new(),
                })
            }
            Command::Batch(commands) => {
                // Each command as if it had an entry of its own: a refusal
                // leaves the store as it was before that command only.
                let mut results = Vec::with_capacity(commands.len());
                let mut events = Vec::new();
                for command in commands {
                    results.push(self.apply(index, command).map(|applied| {
                        events.extend(applied.events);
                        applied.response
                    }));
                }
                Ok(Applied {
                    response: Response::Batch(results),
                    events,
                })
            }
        }
    }

    fn member_applied(&self) -> Applied {
        Applied {
            response: Response::Member {
                revision: self.keys.current(),
            },
            events: Vec::new(),
        }
    }

    /// Reads keys (serializable: from this store as it is).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        validate::check_range(req)?;
        self.keys.range(req, self.keys.current())
    }

    /// Evaluates a read-only txn without changing the store. Any write ops
    /// in it would be applied to a throwaway copy: route writing txns through
    /// the log ([`validate::is_read_only`] tells which is which).
    pub fn read_txn(&self, req: &TxnRequest) -> Result<TxnResponse> {
        let mut scratch = self.clone();
        match scratch.apply(0, Command::Txn(req.clone()))?.response {
            Response::Txn(response) => Ok(response),
            other => unreachable!("a txn answered {other:?}"),
        }
    }

    /// The events on keys of `key`/`range_end` with main revision in
    /// `start..=end` (`end <= 0`: up to the current revision), for watch
    /// catch-up. At most about `limit` events (0: no limit), never splitting
    /// a revision; [`EventBatch::next_revision`] says where to resume.
    ///
    /// Fails with [`Error::Compacted`] when `start` is below the compaction
    /// point and [`Error::FutureRevision`] when `end` is past the current
    /// revision.
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        start: i64,
        end: i64,
        limit: usize,
    ) -> Result<EventBatch> {
        let current = self.keys.current();
        let end = if end <= 0 { current } else { end };
        if end > current {
            return Err(Error::FutureRevision);
        }
        if start < self.keys.compacted() {
            return Err(Error::Compacted);
        }
        let (events, next_revision) =
            self.keys
                .events(KeyRange::new(key, range_end), start, end, limit);
        Ok(EventBatch {
            events,
            next_revision,
        })
    }

    /// The lease `id`, if it exists.
    pub fn lease(&self, id: i64) -> Option<LeaseInfo> {
        self.leases.get(id).map(|l| LeaseInfo {
            id,
            ttl: l.ttl,
            remaining_ttl: l.remaining_ttl,
        })
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Bytes>> {
        let lease = self.leases.get(id).ok_or(Error::LeaseNotFound)?;
        Ok(lease.keys.iter().cloned().collect())
    }

    /// Every lease, in ID order.
    pub fn leases(&self) -> impl Iterator<Item = LeaseInfo> + '_ {
        self.leases.iter()
    }

    /// Number of leases.
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// A hash of the key space's retained history up to `revision` (0: the
    /// current one), equal on every replica that applied the same log.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let current = self.keys.current();
        if revision > current {
            return Err(Error::FutureRevision);
        }
        let revision = if revision <= 0 { current } else { revision };
        if revision < self.keys.compacted() {
            return Err(Error::Compacted);
        }
        Ok(KvHash {
            hash: self.keys.hash(revision),
            revision,
            compact_revision: self.keys.compacted(),
        })
    }

    /// A lease ID for a grant that asked for none: a mix of the log index,
    /// positive, probed forward past IDs in use. Deterministic for a log.
    fn derive_lease_id(&self, index: u64) -> i64 {
        // splitmix64 finaliser: spreads consecutive indexes across the space.
        let mut x = index.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let mut id = (x & (i64::MAX as u64)) as i64;
        while id == 0 || self.leases.contains(id) {
            id = if id == i64::MAX { 1 } else { id + 1 };
        }
        id
    }

    /// A put with `ignore_value` or `ignore_lease` needs the key to exist.
    fn check_put_key(&self, req: &PutRequest) -> Result<()> {
        if (req.ignore_value || req.ignore_lease) && self.keys.latest_live(&req.key).is_none() {
            return Err(Error::KeyNotFound);
        }
        Ok(())
    }

    /// A put naming a lease needs the lease to exist.
    fn check_put_lease(&self, req: &PutRequest) -> Result<()> {
        if req.lease != 0 && !self.leases.contains(req.lease) {
            return Err(Error::LeaseNotFound);
        }
        Ok(())
    }

    /// Evaluates every compare on the path a txn will take, against the
    /// store as it is now: one bool per txn on the path, in pre-order.
    fn choose_path(&self, req: &TxnRequest) -> Vec<bool> {
        let mut path = Vec::new();
        self.choose_into(req, &mut path);
        path
    }

    fn choose_into(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req.compare.iter().all(|c| self.compare_holds(c));
        path.push(succeeded);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            if let RequestOp::Txn(nested) = op {
                self.choose_into(nested, path);
            }
        }
    }

    /// etcd's `applyCompare`: holds when it holds for every key of the range;
    /// an empty range compares as one absent key (all fields 0), except that
    /// a value compare on absent keys never holds.
    fn compare_holds(&self, cmp: &Compare) -> bool {
        let rev = self.keys.current();
        let mut seen = false;
        let mut holds = true;
        self.keys
            .visit(KeyRange::new(&cmp.key, &cmp.range_end), |_, history| {
                if let Some(version) = live_at(history, rev) {
                    seen = true;
                    if !compare_version(cmp, Some(version)) {
                        holds = false;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            });
        if seen {
            holds
        } else {
            !matches!(cmp.target, CompareTarget::Value(_)) && compare_version(cmp, None)
        }
    }

    /// Runs etcd's pre-execution checks over the chosen path: first every
    /// put (`ignore_*` keys, then leases), then every range revision.
    ///
    /// One check goes beyond etcd's: an `ignore_*` put of a key that an
    /// earlier op on the path deletes fails with [`Error::KeyNotFound`]. Its
    /// interval check lets that through when the delete's range ends in
    /// `"\0"`, and etcd then panics in apply; failing here keeps the txn
    /// atomic and the member serving.
    fn check_txn_path(&self, req: &TxnRequest, path: &[bool]) -> Result<()> {
        let mut deleted: Vec<(&[u8], &[u8])> = Vec::new();
        self.walk_path(req, path, &mut 0, &mut |op| match op {
            RequestOp::Put(put) => {
                let ignores = put.ignore_value || put.ignore_lease;
                if ignores
                    && deleted
                        .iter()
                        .any(|(k, end)| KeyRange::new(k, end).contains(&put.key))
                {
                    return Err(Error::KeyNotFound);
                }
                self.check_put_key(put)?;
                self.check_put_lease(put)
            }
            RequestOp::DeleteRange(del) => {
                deleted.push((&del.key, &del.range_end));
                Ok(())
            }
            _ => Ok(()),
        })?;
        let (current, compacted) = (self.keys.current(), self.keys.compacted());
        self.walk_path(req, path, &mut 0, &mut |op| match op {
            RequestOp::Range(r) if r.revision == 0 => Ok(()),
            RequestOp::Range(r) if r.revision > current => Err(Error::FutureRevision),
            RequestOp::Range(r) if r.revision < compacted => Err(Error::Compacted),
            _ => Ok(()),
        })
    }

    /// Calls `check` on every non-txn op of the chosen path, in order.
    fn walk_path<'r>(
        &self,
        req: &'r TxnRequest,
        path: &[bool],
        at: &mut usize,
        check: &mut impl FnMut(&'r RequestOp) -> Result<()>,
    ) -> Result<()> {
        let ops = if path[*at] {
            &req.success
        } else {
            &req.failure
        };
        *at += 1;
        for op in ops {
            match op {
                RequestOp::Txn(nested) => self.walk_path(nested, path, at, check)?,
                op => check(op)?,
            }
        }
        Ok(())
    }
}

/// etcd's `compareKV` on one version (`None`: an absent key, all zeros).
fn compare_version(cmp: &Compare, version: Option<&Version>) -> bool {
    let field = |f: fn(&Version) -> i64| version.map_or(0, f);
    let ordering = match &cmp.target {
        CompareTarget::Version(n) => field(|v| v.version).cmp(n),
        CompareTarget::Create(n) => field(|v| v.create_revision).cmp(n),
        CompareTarget::Mod(n) => field(|v| v.revision.main).cmp(n),
        CompareTarget::Lease(n) => field(|v| v.lease).cmp(n),
        CompareTarget::Value(value) => {
            let stored = version.and_then(|v| v.value.as_deref()).unwrap_or_default();
            stored.cmp(&value[..])
        }
    };
    match cmp.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::NotEqual => ordering.is_ne(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
    }
}

/// One command's writes: everything it changes lands at main revision `rev`,
/// with `sub` counting the changes. Checks have all passed before a `Write`
/// begins, so nothing here fails.
struct Write<'s> {
    store: &'s mut Store,
    rev: i64,
    sub: i64,
    events: Vec<Event>,
}

impl<'s> Write<'s> {
    /// Starts the writes of one command; `events` is how many events it is
    /// expected to produce (exact for a put, 0 when unknown).
    fn begin(store: &'s mut Store, events: usize) -> Self {
        let rev = store.keys.current() + 1;
        Self {
            store,
            rev,
            sub: 0,
            events: Vec::with_capacity(events),
        }
    }

    /// The revision reads inside this command see: the new one once
    /// something was written (etcd: `beginRev + 1` when there are changes).
    fn read_revision(&self) -> i64 {
        if self.sub > 0 { self.rev } else { self.rev - 1 }
    }

    /// The header revision of the command so far.
    fn header_revision(&self) -> i64 {
        self.read_revision()
    }

    fn next_revision(&mut self) -> Revision {
        let revision = Revision::new(self.rev, self.sub);
        self.sub += 1;
        revision
    }

    /// Commits the revision if anything was written; returns the events.
    fn finish(self) -> Vec<Event> {
        if self.sub > 0 {
            self.store.keys.set_current(self.rev);
        }
        self.events
    }

    fn put(&mut self, req: PutRequest) -> PutResponse {
        let revision = self.next_revision();
        let PutRequest {
            key,
            value,
            lease,
            prev_kv: want_prev,
            ignore_value,
            ignore_lease,
        } = req;
        let (event, prev_lease, lease) = self.store.keys.append_with(key, |key, prev| {
            let value = match (prev, ignore_value) {
                (Some(prev), true) => prev.value.clone().unwrap_or_default(),
                _ => value,
            };
            let lease = match (prev, ignore_lease) {
                (Some(prev), true) => prev.lease,
                _ => lease,
            };
            let (create_revision, version) = match prev {
                Some(prev) => (prev.create_revision, prev.version + 1),
                None => (revision.main, 1),
            };
            let new = Version {
                revision,
                create_revision,
                version,
                lease,
                value: Some(value),
            };
            let key = key.to_bytes();
            let event = Event {
                kind: EventKind::Put,
                prev_kv: prev.map(|p| p.to_kv(key.clone())),
                kv: new.to_kv(key),
            };
            (new, (event, prev.map_or(0, |p| p.lease), lease))
        });
        if prev_lease != lease {
            self.store.leases.detach(prev_lease, &event.kv.key);
            self.store.leases.attach(lease, &event.kv.key);
        }
        let prev_kv = if want_prev {
            event.prev_kv.clone()
        } else {
            None
        };
        self.events.push(event);
        PutResponse {
            revision: self.rev,
            prev_kv,
        }
    }

    fn delete_range(&mut self, req: DeleteRangeRequest) -> DeleteRangeResponse {
        let read = self.read_revision();
        let mut doomed: Vec<(Bytes, Version)> = Vec::new();
        self.store
            .keys
            .visit(KeyRange::new(&req.key, &req.range_end), |key, history| {
                if let Some(version) = live_at(history, read) {
                    doomed.push((key.to_bytes(), version.clone()));
                }
                ControlFlow::Continue(())
            });
        let deleted = doomed.len() as i64;
        let mut prev_kvs = Vec::new();
        for (key, prev) in doomed {
            let revision = self.next_revision();
            self.store.leases.detach(prev.lease, &key);
            let prev_kv = prev.to_kv(key.clone());
            let kv = KeyValue {
                key: key.clone(),
                mod_revision: revision.main,
                ..KeyValue::default()
            };
            if req.prev_kv {
                prev_kvs.push(prev_kv.clone());
            }
            self.events.push(Event {
                kind: EventKind::Delete,
                kv,
                prev_kv: Some(prev_kv),
            });
            self.store.keys.append(key, Version::tombstone(revision));
        }
        DeleteRangeResponse {
            revision: self.header_revision(),
            deleted,
            prev_kvs,
        }
    }

    fn range(&self, req: &RangeRequest) -> RangeResponse {
        // Revisions were checked against the store before the txn began, and
        // reads only move forward from there, so this cannot fail.
        self.store
            .keys
            .range(req, self.read_revision())
            .unwrap_or_else(|e| unreachable!("checked range failed: {e}"))
    }

    /// Runs the chosen branch of `req`; `path[*at]` says which.
    fn txn(&mut self, req: TxnRequest, path: &[bool], at: &mut usize) -> TxnResponse {
        let succeeded = path[*at];
        *at += 1;
        let ops = if succeeded { req.success } else { req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => ResponseOp::Range(self.range(&r)),
                RequestOp::Put(r) => ResponseOp::Put(self.put(r)),
                RequestOp::DeleteRange(r) => ResponseOp::DeleteRange(self.delete_range(r)),
                RequestOp::Txn(r) => ResponseOp::Txn(self.txn(r, path, at)),
            });
        }
        // Nested txns report revision 0, as etcd's; the top level sets it.
        TxnResponse {
            revision: 0,
            succeeded,
            responses,
        }
    }
}
