//! The multi-version key space: every key's history, and a revision-ordered
//! log of changes for watch catch-up and compaction.
//!
//! Two persistent (structurally shared) maps hold the state, so cloning the
//! whole key space for a snapshot is O(1) and apply goes on while the clone
//! is serialized:
//!
//! - `index`: key → its history, a list of [`Version`]s in revision order.
//!   A live version holds the value; a tombstone (no value) ends a
//!   generation.
//! - `log`: (revision, key) for every version whose main revision is at or
//!   after the compaction point, in revision order. It answers "what changed
//!   between revisions r1 and r2" without scanning keys. Revisions only grow,
//!   so it is an append-only persistent vector (dense chunks, unlike a B-tree
//!   fed sorted keys, whose nodes split half-empty), cut at the front by
//!   compaction.
//!
//! ```text
//!   revision:   2       3       4       5       6
//!   key a:    put v1  put v2          del          history [2 live, 3 live, 5 tomb]
//!   key b:                    put v1          put  history [4 live, 6 live]
//!   log:      2→a     3→a     4→b     5→a     6→b
//!
//!   compact(4): b keeps {4, 6} (4 is at the compaction point); a keeps {3},
//!               the newest version below 4, which reads at 4 still need,
//!               and everything above; the log keeps 4.. only.
//!   compact(5): a was written at 5 (its deletion), so everything of a
//!               below 5 goes; the tombstone stays with the log entry for 5,
//!               so a watch from 5 still sees the delete; a reads as absent
//!               at every revision >= 5.
//!   compact(6): the tombstone at 5 < 6 goes, and with it key a.
//! ```
//!
//! Invariants:
//! - Each history is non-empty, sorted by revision, and never has two
//!   consecutive tombstones.
//! - After `compact(c)` a history holds every version at or above `c` and,
//!   below `c`, at most the newest one, only if it is live and the key was
//!   not written at `c` itself (so every change at `c` stays watchable, and
//!   reads at `c` and later are unchanged).
//! - `log` holds exactly the versions with main revision >= the compaction
//!   point, so it can be rebuilt from the histories (snapshots don't store it).
//! - Reads at a revision below the compaction point fail with
//!   [`Error::Compacted`]; above the current revision with
//!   [`Error::FutureRevision`].

use std::cmp::Ordering;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use bytes::Bytes;
use imbl::{OrdMap, Vector};

use crate::command::{RangeRequest, RangeResponse, SortOrder, SortTarget};
use crate::error::{Error, Result};
use crate::key::StoredKey;
use crate::kv::{Event, EventKind, KeyValue};
use crate::revision::Revision;

/// One version of one key inside its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    /// Where this change happened.
    pub(crate) revision: Revision,
    /// Main revision that started this generation (0 for a tombstone).
    pub(crate) create_revision: i64,
    /// Puts within the generation, from 1 (0 for a tombstone).
    pub(crate) version: i64,
    /// Attached lease, 0 for none (always 0 for a tombstone).
    pub(crate) lease: i64,
    /// The value; `None` marks a tombstone.
    pub(crate) value: Option<Bytes>,
}

impl Version {
    /// A tombstone at `revision`.
    pub(crate) fn tombstone(revision: Revision) -> Self {
        Self {
            revision,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: None,
        }
    }

    /// Bytes this version takes in a snapshot: five revisions, a tag, and
    /// a length-prefixed value when live (see [`KeySpace::bytes`]).
    pub(crate) fn encoded_len(&self) -> u64 {
        41 + self.value.as_ref().map_or(0, |v| 4 + v.len() as u64)
    }

    /// Whether this version holds a value (is not a tombstone).
    pub(crate) fn is_live(&self) -> bool {
        self.value.is_some()
    }

    /// This version as a [`KeyValue`] of `key`. A tombstone gives etcd's
    /// delete-event form: only key and mod revision.
    pub(crate) fn to_kv(&self, key: Bytes) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.revision.main,
            version: self.version,
            value: self.value.clone().unwrap_or_default(),
            lease: self.lease,
        }
    }
}

/// A key's versions, oldest first; shared between snapshots until written.
pub(crate) type History = Arc<Vec<Version>>;

/// The newest version of `history` at main revision `rev`, if it is live.
pub(crate) fn live_at(history: &[Version], rev: i64) -> Option<&Version> {
    let at = history.partition_point(|v| v.revision.main <= rev);
    history[..at].last().filter(|v| v.is_live())
}

/// The keys a request selects, from its `key` and `range_end` (etcd's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRange<'a> {
    /// Exactly one key (`range_end` empty).
    Single(&'a [u8]),
    /// Every key `>= start` and, when `end` is set, `< end`.
    /// `range_end = "\0"` gives an open end.
    Span {
        /// First key selected.
        start: &'a [u8],
        /// First key past the range; `None` for no end.
        end: Option<&'a [u8]>,
    },
}

impl<'a> KeyRange<'a> {
    /// The range a request's `key` and `range_end` select.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Span {
                start: key,
                end: None,
            },
            end => KeyRange::Span {
                start: key,
                end: Some(end),
            },
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match *self {
            KeyRange::Single(k) => k == key,
            KeyRange::Span { start, end } => key >= start && end.is_none_or(|end| key < end),
        }
    }

    /// True when the range can hold no key (`end <= start`).
    pub fn is_empty(&self) -> bool {
        matches!(*self, KeyRange::Span { start, end: Some(end) } if end <= start)
    }
}

/// The multi-version key space. See the module docs for its invariants.
#[derive(Clone, Debug)]
pub(crate) struct KeySpace {
    /// key → history.
    index: OrdMap<StoredKey, History>,
    /// (revision, key) for every version at or after the compaction point,
    /// in revision order.
    log: Vector<(Revision, StoredKey)>,
    /// The current main revision (1 for an empty store).
    current: i64,
    /// The compaction point; -1 until the first compaction (as etcd).
    compacted: i64,
    /// The snapshot-encoded size of `index`, kept up to date by every
    /// change (see [`KeySpace::bytes`]).
    bytes: u64,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self {
            index: OrdMap::new(),
            log: Vector::new(),
            current: 1,
            compacted: -1,
            bytes: 0,
        }
    }
}

/// Bytes a key takes in a snapshot besides its versions: its
/// length-prefixed bytes and the count of its versions.
fn key_encoded_len(key: &[u8]) -> u64 {
    8 + key.len() as u64
}

impl KeySpace {
    /// Rebuilds a key space from verified parts (snapshot restore). The log
    /// is derived from the histories.
    pub(crate) fn from_parts(
        index: OrdMap<StoredKey, History>,
        current: i64,
        compacted: i64,
    ) -> Self {
        let mut entries: Vec<(Revision, StoredKey)> = Vec::new();
        let mut bytes = 0;
        for (key, history) in &index {
            bytes += key_encoded_len(key.as_slice())
                + history.iter().map(Version::encoded_len).sum::<u64>();
            for version in history.iter().filter(|v| v.revision.main >= compacted) {
                entries.push((version.revision, key.clone()));
            }
        }
        entries.sort_unstable_by_key(|(revision, _)| *revision);
        Self {
            index,
            log: entries.into_iter().collect(),
            current,
            compacted,
            bytes,
        }
    }

    /// The bytes the retained history takes in a snapshot: every key and
    /// every version of it. It grows with each write and shrinks only
    /// with compaction; the quota is checked against it.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The current main revision.
    pub(crate) fn current(&self) -> i64 {
        self.current
    }

    /// Advances the current revision after a command wrote at `rev`.
    pub(crate) fn set_current(&mut self, rev: i64) {
        debug_assert!(rev > self.current);
        self.current = rev;
    }

    /// The compaction point (-1 when never compacted).
    pub(crate) fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Every key with its history, in key order.
    pub(crate) fn histories(&self) -> impl Iterator<Item = (&StoredKey, &History)> {
        self.index.iter()
    }

    /// Number of keys with any history (live or tombstoned).
    pub(crate) fn key_count(&self) -> usize {
        self.index.len()
    }

    /// The newest version of `key`, live or not.
    pub(crate) fn latest(&self, key: &[u8]) -> Option<&Version> {
        self.index.get(key).and_then(|h| h.last())
    }

    /// The newest version of `key` if it is live.
    pub(crate) fn latest_live(&self, key: &[u8]) -> Option<&Version> {
        self.latest(key).filter(|v| v.is_live())
    }

    /// Visits every key of `range` with its history, in key order, until
    /// `visit` breaks.
    pub(crate) fn visit<'s>(
        &'s self,
        range: KeyRange<'_>,
        mut visit: impl FnMut(&'s StoredKey, &'s [Version]) -> ControlFlow<()>,
    ) {
        match range {
            KeyRange::Single(key) => {
                if let Some((key, history)) = self.index.get_key_value(key) {
                    let _ = visit(key, history);
                }
            }
            KeyRange::Span { start, end } => {
                if range.is_empty() {
                    return;
                }
                let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
                for (key, history) in self.index.range::<_, [u8]>((Bound::Included(start), upper)) {
                    if visit(key, history).is_break() {
                        return;
                    }
                }
            }
        }
    }

    /// Appends `version` to `key`'s history and logs it.
    pub(crate) fn append(&mut self, key: Bytes, version: Version) {
        self.append_with(key, |_, _| (version, ()));
    }

    /// Appends the version `make` builds, with one index lookup. `make` gets
    /// the key as stored (an existing key's bytes are shared, not copied
    /// again) and the key's newest live version (`None` if the key is absent
    /// or deleted).
    pub(crate) fn append_with<R>(
        &mut self,
        key: Bytes,
        make: impl FnOnce(&StoredKey, Option<&Version>) -> (Version, R),
    ) -> R {
        if let Some((stored, history)) = self.index.get_key_value_mut(&key[..]) {
            let (version, made) = make(stored, history.last().filter(|v| v.is_live()));
            debug_assert!(version.revision.main > self.current);
            self.bytes += version.encoded_len();
            self.log.push_back((version.revision, stored.clone()));
            let versions = Arc::make_mut(history);
            // Most keys hold one or two versions between compactions: grow
            // short histories by one slot instead of jumping to four.
            if versions.len() == versions.capacity() && versions.len() < 4 {
                versions.reserve_exact(1);
            }
            versions.push(version);
            return made;
        }
        let key = StoredKey::new(key);
        let (version, made) = make(&key, None);
        debug_assert!(version.revision.main > self.current);
        self.bytes += key_encoded_len(key.as_slice()) + version.encoded_len();
        self.log.push_back((version.revision, key.clone()));
        self.index.insert(key, Arc::new(vec![version]));
        made
    }

    /// Checks a read revision: 0 or negative means `current`; errors follow
    /// etcd (future first, then compacted).
    pub(crate) fn read_revision(&self, requested: i64, current: i64) -> Result<i64> {
        if requested > current {
            return Err(Error::FutureRevision);
        }
        let rev = if requested <= 0 { current } else { requested };
        if rev < self.compacted {
            return Err(Error::Compacted);
        }
        Ok(rev)
    }

    /// Answers a range request as of `current` (the revision the reader
    /// sees; inside a txn that has written, the txn's own revision).
    ///
    /// Follows etcd 3.5: `count` is every key in the range at the read
    /// revision; filters, sort and limit apply to the returned kvs only;
    /// `more` is set when the limit cut them short.
    pub(crate) fn range(&self, req: &RangeRequest, current: i64) -> Result<RangeResponse> {
        let rev = self.read_revision(req.revision, current)?;
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Fetch one more than the limit to learn `more`, unless the result
        // is sorted or filtered afterwards: then everything is needed.
        let fetch = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
            usize::MAX
        } else {
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        };
        // Collect references first: filters and sorts work on them, and only
        // what is returned is turned into key-values.
        let mut count = 0i64;
        let mut found: Vec<(&StoredKey, &Version)> = Vec::new();
        self.visit(KeyRange::new(&req.key, &req.range_end), |key, history| {
            if let Some(version) = live_at(history, rev) {
                count += 1;
                if !req.count_only && found.len() < fetch {
                    found.push((key, version));
                }
            }
            ControlFlow::Continue(())
        });
        if filtered {
            found.retain(|(_, v)| {
                let (modified, created) = (v.revision.main, v.create_revision);
                (req.max_mod_revision == 0 || modified <= req.max_mod_revision)
                    && (req.min_mod_revision == 0 || modified >= req.min_mod_revision)
                    && (req.max_create_revision == 0 || created <= req.max_create_revision)
                    && (req.min_create_revision == 0 || created >= req.min_create_revision)
            });
        }
        // Results come in ascending key order; sort only when that is not
        // what was asked (etcd: a non-key target with no order means ascend).
        let order = match (req.sort_target, req.sort_order) {
            (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
            (SortTarget::Key, order) => order,
            (_, SortOrder::None) => SortOrder::Ascend,
            (_, order) => order,
        };
        if order != SortOrder::None {
            let target = req.sort_target;
            // Stable: ties stay in key order.
            match order {
                SortOrder::Ascend => found.sort_by(|a, b| compare_by(target, *a, *b)),
                _ => found.sort_by(|a, b| compare_by(target, *b, *a)),
            }
        }
        let mut more = false;
        if let Ok(limit) = usize::try_from(req.limit)
            && limit > 0
            && found.len() > limit
        {
            found.truncate(limit);
            more = true;
        }
        let kvs = found
            .into_iter()
            .map(|(key, version)| {
                let mut kv = version.to_kv(key.to_bytes());
                if req.keys_only {
                    kv.value = Bytes::new();
                }
                kv
            })
            .collect();
        Ok(RangeResponse {
            revision: current,
            kvs,
            more,
            count,
        })
    }

    /// The events on keys of `range` with main revision in `start..=end`,
    /// in revision order, each with its `prev_kv` when history holds it.
    ///
    /// At most about `limit` events (0 = no limit): the batch stops after
    /// the revision at which the limit was reached, never inside one, so a
    /// revision's events always arrive together. Returns the events and the
    /// first revision not covered.
    pub(crate) fn events(
        &self,
        range: KeyRange<'_>,
        start: i64,
        end: i64,
        limit: usize,
    ) -> (Vec<Event>, i64) {
        let mut events = Vec::new();
        let first = self.log_position(Revision::new(start, 0));
        for (revision, key) in self.log.skip(first).iter() {
            if revision.main > end {
                break;
            }
            if limit > 0
                && events.len() >= limit
                && events
                    .last()
                    .is_some_and(|e: &Event| e.kv.mod_revision != revision.main)
            {
                return (events, revision.main);
            }
            if !range.contains(key.as_slice()) {
                continue;
            }
            let Some(history) = self.index.get(key.as_slice()) else {
                debug_assert!(false, "log names a key with no history");
                continue;
            };
            let Ok(at) = history.binary_search_by(|v| v.revision.cmp(revision)) else {
                debug_assert!(false, "log names a version the history lacks");
                continue;
            };
            let version = &history[at];
            // etcd's compaction at C keeps, of a key's versions at or below
            // C, only the newest and only when it is live: a watch from C
            // sees no other change at C (a delete at C, or a put at C that
            // C itself deleted).
            if self.compacted > 0 && revision.main == self.compacted {
                let newest_at_or_below = history
                    .get(at + 1)
                    .is_none_or(|next| next.revision.main > self.compacted);
                if !(newest_at_or_below && version.is_live()) {
                    continue;
                }
            }
            let key = key.to_bytes();
            let prev_kv = at
                .checked_sub(1)
                .map(|p| &history[p])
                .filter(|p| p.is_live())
                .map(|p| p.to_kv(key.clone()));
            let kind = if version.is_live() {
                EventKind::Put
            } else {
                EventKind::Delete
            };
            events.push(Event {
                kind,
                kv: version.to_kv(key),
                prev_kv,
            });
        }
        (events, end.saturating_add(1))
    }

    /// The position of the first log entry at or after `revision`.
    fn log_position(&self, revision: Revision) -> usize {
        match self.log.binary_search_by(|(r, _)| r.cmp(&revision)) {
            Ok(at) | Err(at) => at,
        }
    }

    /// Drops history before `rev` (see the module docs for what is kept).
    /// The caller has checked `compacted < rev <= current`.
    ///
    /// The keys that can hold a droppable version are exactly those with a
    /// log entry at or below `rev`: any other key's history starts at or
    /// above `rev`, or is a single live version kept by an earlier
    /// compaction that nothing has superseded since.
    pub(crate) fn compact(&mut self, rev: i64) {
        let cut = self.log_position(Revision::new(rev, 0));
        let through = self.log_position(Revision::new(rev + 1, 0));
        let visit = self.log.take(through);
        self.log = self.log.skip(cut);
        self.compacted = rev;
        // Visit in key order: consecutive lookups then share the upper tree
        // nodes in cache, and each key is visited once.
        let mut keys: Vec<&StoredKey> = visit.iter().map(|(_, key)| key).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.compact_key(key, rev);
        }
    }

    /// Compacts one key's history at `rev`: keeps every version at or above
    /// `rev`, and the newest version below it only when that one is live and
    /// nothing was written at `rev` itself (reads at `rev` need it then).
    fn compact_key(&mut self, key: &StoredKey, rev: i64) {
        let Some(history) = self.index.get_mut(key.as_slice()) else {
            return;
        };
        let from_rev = history.partition_point(|v| v.revision.main < rev);
        let Some(newest_below) = from_rev.checked_sub(1) else {
            return;
        };
        let written_at_rev = history
            .get(from_rev)
            .is_some_and(|v| v.revision.main == rev);
        let drop = if written_at_rev || !history[newest_below].is_live() {
            from_rev
        } else {
            newest_below
        };
        if drop == 0 {
            return;
        }
        let versions = Arc::make_mut(history);
        let freed: u64 = versions.drain(..drop).map(|v| v.encoded_len()).sum();
        self.bytes -= freed;
        if versions.is_empty() {
            self.bytes -= key_encoded_len(key.as_slice());
            self.index.remove(key.as_slice());
        } else if versions.capacity() > 2 * versions.len() {
            versions.shrink_to_fit();
        }
    }

    /// A crc32c over every retained version with main revision <= `rev`,
    /// in key order: equal on every member that applied the same log.
    pub(crate) fn hash(&self, rev: i64) -> u32 {
        let mut crc = 0u32;
        for (key, history) in &self.index {
            for v in history.iter().take_while(|v| v.revision.main <= rev) {
                let key = key.as_slice();
                crc = crc32c::crc32c_append(crc, &(key.len() as u64).to_le_bytes());
                crc = crc32c::crc32c_append(crc, key);
                crc = crc32c::crc32c_append(crc, &v.revision.to_bytes());
                for n in [v.create_revision, v.version, v.lease] {
                    crc = crc32c::crc32c_append(crc, &n.to_le_bytes());
                }
                match &v.value {
                    Some(value) => {
                        crc = crc32c::crc32c_append(crc, &(value.len() as u64).to_le_bytes());
                        crc = crc32c::crc32c_append(crc, value);
                    }
                    None => crc = crc32c::crc32c_append(crc, &u64::MAX.to_le_bytes()),
                }
            }
        }
        crc
    }
}

/// Orders two found versions by a sort target.
fn compare_by(
    target: SortTarget,
    a: (&StoredKey, &Version),
    b: (&StoredKey, &Version),
) -> Ordering {
    let ((ka, va), (kb, vb)) = (a, b);
    match target {
        SortTarget::Key => ka.cmp(kb),
        SortTarget::Version => va.version.cmp(&vb.version),
        SortTarget::Create => va.create_revision.cmp(&vb.create_revision),
        SortTarget::Mod => va.revision.main.cmp(&vb.revision.main),
        SortTarget::Value => va.value.cmp(&vb.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_follows_etcd_rules() {
        assert_eq!(KeyRange::new(b"a", b""), KeyRange::Single(b"a"));
        assert!(KeyRange::new(b"a", b"\0").contains(b"zzz"));
        assert!(!KeyRange::new(b"b", b"\0").contains(b"a"));
        assert!(KeyRange::new(b"\0", b"\0").contains(b"\0"));
        let span = KeyRange::new(b"a", b"c");
        assert!(span.contains(b"a") && span.contains(b"bzz") && !span.contains(b"c"));
        assert!(KeyRange::new(b"c", b"a").is_empty());
        assert!(!KeyRange::new(b"c", b"a").contains(b"c"));
    }

    fn live(main: i64, value: &'static str) -> Version {
        Version {
            revision: Revision::new(main, 0),
            create_revision: main,
            version: 1,
            lease: 0,
            value: Some(Bytes::from_static(value.as_bytes())),
        }
    }

    /// Appends a version of `key` at the next revision.
    fn write(space: &mut KeySpace, key: &'static str, version: impl FnOnce(i64) -> Version) {
        let rev = space.current() + 1;
        space.append(Bytes::from_static(key.as_bytes()), version(rev));
        space.set_current(rev);
    }

    /// The log must hold exactly the versions at or after the compaction
    /// point, in revision order (the module's invariant).
    fn assert_log_matches_histories(space: &KeySpace) {
        let mut expected: Vec<(Revision, StoredKey)> = space
            .histories()
            .flat_map(|(key, h)| {
                h.iter()
                    .filter(|v| v.revision.main >= space.compacted())
                    .map(|v| (v.revision, key.clone()))
            })
            .collect();
        expected.sort();
        let actual: Vec<(Revision, StoredKey)> = space.log.iter().cloned().collect();
        assert_eq!(actual, expected);
        let rebuilt = KeySpace::from_parts(space.index.clone(), space.current, space.compacted);
        assert_eq!(rebuilt.log, space.log);
        assert_eq!(rebuilt.bytes, space.bytes, "incremental size drifted");
    }

    #[test]
    fn compaction_keeps_the_log_in_step_with_histories() {
        let mut space = KeySpace::default();
        for i in 0..12 {
            let key = ["a", "b", "c"][i % 3];
            if i % 5 == 4 {
                write(&mut space, key, |rev| {
                    Version::tombstone(Revision::new(rev, 0))
                });
            } else {
                write(&mut space, key, |rev| live(rev, "v"));
            }
        }
        assert_log_matches_histories(&space);
        for at in [3, 6, 7, 11, 13] {
            space.compact(at);
            assert_log_matches_histories(&space);
            for (_, history) in space.histories() {
                assert!(!history.is_empty());
                let first = &history[0];
                assert!(
                    first.is_live() || first.revision.main >= at,
                    "stale tombstone kept"
                );
            }
        }
    }

    #[test]
    fn compaction_shrinks_long_histories() {
        let mut space = KeySpace::default();
        for _ in 0..100 {
            write(&mut space, "hot", |rev| live(rev, "v"));
        }
        space.compact(space.current());
        let history = space.index.get(&b"hot"[..]).expect("hot key");
        assert_eq!(history.len(), 1);
        assert!(
            history.capacity() <= 2,
            "capacity {} kept after compaction",
            history.capacity()
        );
    }

    #[test]
    fn append_with_sees_only_live_predecessors() {
        let mut space = KeySpace::default();
        write(&mut space, "k", |rev| live(rev, "v"));
        write(&mut space, "k", |rev| {
            Version::tombstone(Revision::new(rev, 0))
        });
        let rev = space.current() + 1;
        let saw = space.append_with(Bytes::from_static(b"k"), |_, prev| {
            (live(rev, "w"), prev.is_some())
        });
        assert!(!saw, "a tombstone was offered as the previous version");
    }

    #[test]
    fn events_stop_at_end_and_resume_where_they_left() {
        let mut space = KeySpace::default();
        for _ in 0..10 {
            write(&mut space, "k", |rev| live(rev, "v"));
        }
        let all = KeyRange::new(b"\0", b"\0");
        let (events, next) = space.events(all, 3, 5, 0);
        assert_eq!(
            events.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(next, 6);
        let (events, next) = space.events(all, 3, 11, 2);
        assert_eq!((events.len(), next), (2, 5));
    }

    #[test]
    fn live_at_sees_generations() {
        let live = |main, create, version| Version {
            revision: Revision::new(main, 0),
            create_revision: create,
            version,
            lease: 0,
            value: Some(Bytes::from_static(b"v")),
        };
        let history = vec![
            live(2, 2, 1),
            live(3, 2, 2),
            Version::tombstone(Revision::new(5, 0)),
            live(6, 6, 1),
        ];
        assert!(live_at(&history, 1).is_none());
        assert_eq!(live_at(&history, 4).map(|v| v.version), Some(2));
        assert!(live_at(&history, 5).is_none());
        assert_eq!(live_at(&history, 9).map(|v| v.create_revision), Some(6));
    }
}
