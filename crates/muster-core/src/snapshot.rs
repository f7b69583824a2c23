//! Snapshot encoding: the whole store as one checksummed byte stream.
//!
//! Layout (integers little-endian):
//!
//! ```text
//!   "MUSTRSNP"  u32 format=2
//!   i64 revision  i64 compact_revision
//!   u64 keys,   per key (key order):    u32 len, key bytes,
//!                                       u32 versions, per version:
//!                                         i64 main, i64 sub, i64 create,
//!                                         i64 version, i64 lease,
//!                                         u8 live, [u32 len, value bytes]
//!   u64 leases, per lease (ID order):   i64 id, i64 ttl, i64 remaining_ttl
//!   u64 members, per member (ID order): u64 id, [u32 len, name],
//!                                       u32 n, n × [u32 len, peer URL],
//!                                       u32 n, n × [u32 len, client URL]
//!   u64 alarms, per alarm (order):      u64 member id, i32 alarm type
//!   u32 crc32c of every byte before it
//! ```
//!
//! Format 1 (before member attributes and alarms were replicated) is the
//! same without the members and alarms sections; it is still read.
//!
//! ```text
//! ```
//!
//! Only what cannot be derived is stored: the revision log and the leases'
//! key sets are rebuilt on restore. Everything is written in key and ID
//! order, so two stores that applied the same commands encode to the same
//! bytes. A restore verifies the checksum and every invariant the store
//! relies on (sorted keys and versions, revisions in bounds, no dangling
//! lease) and reports the first violation as [`Error::CorruptSnapshot`].
//!
//! Encoding reads a [`Store`] clone, so it can run on another thread while
//! the original keeps applying.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;

use crate::cluster::{AlarmMember, AlarmType, ClusterTable, MemberInfo};
use crate::error::{Error, Result};
use crate::key::StoredKey;
use crate::lease::LeaseTable;
use crate::mvcc::{History, KeySpace, Version};
use crate::revision::Revision;
use crate::store::Store;

const MAGIC: &[u8; 8] = b"MUSTRSNP";
const FORMAT: u32 = 2;
/// The format without members and alarms, still restored.
const FORMAT_WITHOUT_CLUSTER: u32 = 1;
/// Most URLs one member may list; guards allocations on restore.
const MAX_URLS: u32 = 1024;
/// Largest key or value a snapshot may hold; guards allocations on restore.
const MAX_ITEM: u32 = 256 << 20;

/// A writer that keeps a running crc32c of what passed through it.
struct Checksummed<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Checksummed<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }
    fn put_i64(&mut self, n: i64) -> io::Result<()> {
        self.put(&n.to_le_bytes())
    }
    fn put_len(&mut self, n: usize) -> io::Result<()> {
        let n = u32::try_from(n).map_err(|_| io::Error::other("item too large for a snapshot"))?;
        self.put(&n.to_le_bytes())
    }
    fn put_str(&mut self, s: &str) -> io::Result<()> {
        self.put_len(s.len())?;
        self.put(s.as_bytes())
    }
    fn put_strs(&mut self, strs: &[String]) -> io::Result<()> {
        self.put_len(strs.len())?;
        strs.iter().try_for_each(|s| self.put_str(s))
    }
}

/// A reader that keeps a running crc32c of what it read.
struct Verified<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Verified<R> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(read_error)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf);
        Ok(buf)
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn bytes(&mut self) -> Result<Bytes> {
        let len = self.u32()?;
        if len > MAX_ITEM {
            return Err(corrupt(format!("item of {len} bytes exceeds the limit")));
        }
        // Read through `take` so a corrupt length cannot force a large
        // allocation before the stream runs out.
        let mut buf = Vec::new();
        (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut buf)
            .map_err(read_error)?;
        if buf.len() != len as usize {
            return Err(corrupt("truncated"));
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf);
        Ok(Bytes::from(buf))
    }
    fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| corrupt("a name or URL is not UTF-8"))
    }
    fn strings(&mut self) -> Result<Vec<String>> {
        let count = self.u32()?;
        if count > MAX_URLS {
            return Err(corrupt(format!("{count} URLs exceed the limit")));
        }
        (0..count).map(|_| self.string()).collect()
    }
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::CorruptSnapshot(what.into())
}

fn read_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        corrupt("truncated")
    } else {
        corrupt(format!("read failed: {e}"))
    }
}

impl Store {
    /// Writes the whole store to `out` in the snapshot format; returns the
    /// checksum written at the end.
    pub fn write_snapshot<W: Write>(&self, out: W) -> io::Result<u32> {
        let mut w = Checksummed { inner: out, crc: 0 };
        w.put(MAGIC)?;
        w.put(&FORMAT.to_le_bytes())?;
        w.put_i64(self.keys.current())?;
        w.put_i64(self.keys.compacted())?;
        w.put(&(self.keys.key_count() as u64).to_le_bytes())?;
        for (key, history) in self.keys.histories() {
            let key = key.as_slice();
            w.put_len(key.len())?;
            w.put(key)?;
            w.put_len(history.len())?;
            for v in history.iter() {
                for n in [
                    v.revision.main,
                    v.revision.sub,
                    v.create_revision,
                    v.version,
                    v.lease,
                ] {
                    w.put_i64(n)?;
                }
                match &v.value {
                    Some(value) => {
                        w.put(&[1])?;
                        w.put_len(value.len())?;
                        w.put(value)?;
                    }
                    None => w.put(&[0])?,
                }
            }
        }
        w.put(&(self.leases.len() as u64).to_le_bytes())?;
        for lease in self.leases.iter() {
            for n in [lease.id, lease.ttl, lease.remaining_ttl] {
                w.put_i64(n)?;
            }
        }
        w.put(&(self.cluster.members.len() as u64).to_le_bytes())?;
        for (id, member) in &self.cluster.members {
            w.put(&id.to_le_bytes())?;
            w.put_str(&member.name)?;
            w.put_strs(&member.peer_urls)?;
            w.put_strs(&member.client_urls)?;
        }
        w.put(&(self.cluster.alarms.len() as u64).to_le_bytes())?;
        for alarm in &self.cluster.alarms {
            w.put(&alarm.member_id.to_le_bytes())?;
            w.put(&alarm.alarm.number().to_le_bytes())?;
        }
        let crc = w.crc;
        w.inner.write_all(&crc.to_le_bytes())?;
        Ok(crc)
    }

    /// The snapshot as bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_snapshot(&mut out)
            .expect("writing to a Vec cannot fail");
        out
    }

    /// Restores a store from a snapshot, verifying its checksum and
    /// invariants.
    pub fn restore<R: Read>(input: R) -> Result<Store> {
        let mut r = Verified {
            inner: input,
            crc: 0,
        };
        if &r.take::<8>()? != MAGIC {
            return Err(corrupt("not a muster snapshot (bad magic)"));
        }
        let format = r.u32()?;
        if format != FORMAT && format != FORMAT_WITHOUT_CLUSTER {
            return Err(corrupt(format!("unsupported format {format}")));
        }
        let current = r.i64()?;
        let compacted = r.i64()?;
        if current < 1 || compacted < -1 || compacted > current {
            return Err(corrupt(format!(
                "revision {current} / compaction {compacted} out of bounds"
            )));
        }
        let mut index: OrdMap<StoredKey, History> = OrdMap::new();
        let mut attachments: Vec<(i64, Bytes)> = Vec::new();
        let mut previous_key: Option<Bytes> = None;
        for _ in 0..r.u64()? {
            let key = r.bytes()?;
            if key.is_empty() || previous_key.as_ref().is_some_and(|p| *p >= key) {
                return Err(corrupt("keys empty or out of order"));
            }
            let count = r.u32()?;
            if count == 0 {
                return Err(corrupt("key with no history"));
            }
            let mut history = Vec::with_capacity(count.min(1024) as usize);
            for _ in 0..count {
                let revision = Revision::new(r.i64()?, r.i64()?);
                let (create_revision, version, lease) = (r.i64()?, r.i64()?, r.i64()?);
                let value = match r.take::<1>()? {
                    [1] => Some(r.bytes()?),
                    [0] => None,
                    [b] => return Err(corrupt(format!("bad version tag {b}"))),
                };
                let v = Version {
                    revision,
                    create_revision,
                    version,
                    lease,
                    value,
                };
                check_version(&v, history.last(), current)?;
                history.push(v);
            }
            if let Some(latest) = history.last().filter(|v| v.is_live() && v.lease != 0) {
                attachments.push((latest.lease, key.clone()));
            }
            previous_key = Some(key.clone());
            index.insert(StoredKey::new(key), Arc::new(history));
        }
        let mut leases = LeaseTable::default();
        let mut previous_id = None;
        for _ in 0..r.u64()? {
            let (id, ttl, remaining) = (r.i64()?, r.i64()?, r.i64()?);
            if previous_id.is_some_and(|p| p >= id) {
                return Err(corrupt("leases out of order"));
            }
            previous_id = Some(id);
            leases.restore(id, ttl, remaining);
        }
        for (id, key) in &attachments {
            if !leases.contains(*id) {
                return Err(corrupt(format!("key attached to missing lease {id}")));
            }
            leases.attach(*id, key);
        }
        let mut cluster = ClusterTable::default();
        if format == FORMAT {
            for _ in 0..r.u64()? {
                let id = r.u64()?;
                if cluster.members.keys().next_back().is_some_and(|&p| p >= id) {
                    return Err(corrupt("members out of order"));
                }
                let member = MemberInfo {
                    name: r.string()?,
                    peer_urls: r.strings()?,
                    client_urls: r.strings()?,
                };
                cluster.members.insert(id, member);
            }
            for _ in 0..r.u64()? {
                let member_id = r.u64()?;
                let number = i32::from_le_bytes(r.take()?);
                let alarm = AlarmType::from_number(number)
                    .ok_or_else(|| corrupt(format!("unknown alarm type {number}")))?;
                let alarm = AlarmMember { member_id, alarm };
                if cluster.alarms.get_max().is_some_and(|p| *p >= alarm) {
                    return Err(corrupt("alarms out of order"));
                }
                cluster.alarms.insert(alarm);
            }
        }
        let computed = r.crc;
        let mut trailer = [0u8; 4];
        r.inner.read_exact(&mut trailer).map_err(read_error)?;
        let stored = u32::from_le_bytes(trailer);
        if stored != computed {
            return Err(corrupt(format!(
                "checksum mismatch: stored {stored:08x}, computed {computed:08x}"
            )));
        }
        Ok(Store {
            keys: KeySpace::from_parts(index, current, compacted),
            leases,
            cluster,
        })
    }
}

/// One version must follow its predecessor and fit the store's revision.
fn check_version(v: &Version, prev: Option<&Version>, current: i64) -> Result<()> {
    let ordered = prev.is_none_or(|p| p.revision < v.revision && (p.is_live() || v.is_live()));
    let in_bounds = v.revision.main >= 1 && v.revision.sub >= 0 && v.revision.main <= current;
    let shaped = if v.is_live() {
        v.version >= 1 && v.create_revision >= 1 && v.create_revision <= v.revision.main
    } else {
        v.version == 0 && v.create_revision == 0 && v.lease == 0
    };
    if ordered && in_bounds && shaped {
        Ok(())
    } else {
        Err(corrupt(format!(
            "inconsistent version at revision {}",
            v.revision
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, PutRequest};

    fn store_with(keys: usize) -> Store {
        let mut store = Store::new();
        store
            .apply(1, Command::LeaseGrant { id: 3, ttl: 10 })
            .expect("grant");
        for i in 0..keys {
            let put = PutRequest {
                key: Bytes::from(format!("key{i}")),
                value: Bytes::from(vec![i as u8; i]),
                lease: if i % 2 == 0 { 3 } else { 0 },
                ..Default::default()
            };
            store.apply(i as u64 + 2, Command::Put(put)).expect("put");
        }
        store
    }

    #[test]
    fn the_written_checksum_is_the_trailer() {
        let store = store_with(5);
        let mut out = Vec::new();
        let crc = store.write_snapshot(&mut out).expect("write");
        assert_eq!(out[out.len() - 4..], crc.to_le_bytes());
        assert_eq!(crc32c::crc32c(&out[..out.len() - 4]), crc);
    }

    #[test]
    fn restore_reattaches_lease_keys() {
        let restored = Store::restore(&store_with(6).snapshot()[..]).expect("restore");
        let keys = restored.lease_keys(3).expect("lease 3");
        assert_eq!(
            keys,
            ["key0", "key2", "key4"].map(|k| Bytes::from_static(k.as_bytes()))
        );
    }

    #[test]
    fn a_key_attached_to_a_missing_lease_is_refused() {
        // Re-encode a snapshot whose lease table was emptied by hand.
        let mut store = store_with(2);
        store.leases = LeaseTable::default();
        let err = Store::restore(&store.snapshot()[..]).map(|_| ());
        assert_eq!(err, Err(corrupt("key attached to missing lease 3")));
    }

    #[test]
    fn trailing_garbage_after_the_trailer_is_not_read() {
        // The format is self-delimiting: a reader stops at the trailer, so a
        // snapshot can be followed by other data in the same stream.
        let mut bytes = store_with(3).snapshot();
        let len = bytes.len();
        bytes.extend_from_slice(b"next record");
        let mut reader = &bytes[..];
        Store::restore(&mut reader).expect("restore");
        assert_eq!(reader, b"next record");
        assert_eq!(len + 11, bytes.len());
    }

    #[test]
    fn members_and_alarms_survive_a_restore() {
        let mut store = store_with(2);
        let urls = |u: &str| vec![u.to_string()];
        let commands = [
            Command::MemberPublish {
                id: 7,
                name: "a".into(),
                client_urls: urls("http://a:2379"),
                peer_urls: urls("http://a:2380"),
            },
            Command::MemberPeerUrls {
                id: 9,
                peer_urls: urls("http://b:2380"),
            },
            Command::Alarm {
                activate: true,
                member_id: 9,
                alarm: AlarmType::NoSpace,
            },
        ];
        for (i, command) in commands.into_iter().enumerate() {
            store.apply(10 + i as u64, command).expect("apply");
        }
        let bytes = store.snapshot();
        let restored = Store::restore(&bytes[..]).expect("restore");
        assert_eq!(restored.snapshot(), bytes);
        let members: Vec<_> = restored.members().map(|(id, m)| (id, m.clone())).collect();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].1.name, "a");
        assert_eq!(members[1].1.peer_urls, urls("http://b:2380"));
        assert!(restored.alarm_raised(AlarmType::NoSpace));
    }

    #[test]
    fn a_format_1_snapshot_restores_without_members() {
        // Format 1 is format 2 without the two trailing sections.
        let store = store_with(3);
        let mut bytes = store.snapshot();
        bytes.truncate(bytes.len() - 4 - 16);
        bytes[8..12].copy_from_slice(&FORMAT_WITHOUT_CLUSTER.to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let restored = Store::restore(&bytes[..]).expect("restore");
        assert_eq!(restored.snapshot(), store.snapshot());
    }

    #[test]
    fn the_tracked_size_is_the_encoded_key_space() {
        // Everything a snapshot holds besides keys: header, counts of
        // keys, leases (three i64 each), members and alarms, trailer.
        let overhead = |store: &Store| 8 + 4 + 16 + 8 + 8 + 24 * store.leases.len() + 8 + 8 + 4;
        let mut store = store_with(6);
        assert_eq!(
            store.bytes() as usize,
            store.snapshot().len() - overhead(&store)
        );
        let revision = store.revision();
        store
            .apply(20, Command::Compact { revision })
            .expect("compact");
        assert_eq!(
            store.bytes() as usize,
            store.snapshot().len() - overhead(&store)
        );
    }
}
