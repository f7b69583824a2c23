//! The replicated lease table.
//!
//! A lease here is only what every replica must agree on: its ID, granted
//! TTL, the last remaining-TTL checkpoint and the keys attached to it. Expiry
//! timers are not here: they live on the leader, which proposes a
//! `LeaseRevoke` when one fires. The core never reads a clock.
//!
//! Invariants:
//! - A key is in lease L's key set exactly when the key's newest version is
//!   live and carries lease L. Puts, deletes and revokes keep the two in step;
//!   a snapshot stores only the keys' versions and rebuilds the sets.
//! - Every lease named by a live newest version exists in the table.
//!
//! Key sets are `Arc`ed so that cloning the table (for a snapshot) and
//! copying a tree node on write cost a reference count, not a set copy.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What the store knows of one lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease ID.
    pub id: i64,
    /// The TTL it was granted, in seconds.
    pub ttl: i64,
    /// Seconds left at the last checkpoint; 0 when none was taken since the
    /// grant or the last renewal.
    pub remaining_ttl: i64,
}

/// One lease's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) ttl: i64,
    pub(crate) remaining_ttl: i64,
    pub(crate) keys: Arc<BTreeSet<Bytes>>,
}

/// Lease ID → lease.
#[derive(Clone, Debug, Default)]
pub(crate) struct LeaseTable {
    leases: OrdMap<i64, Lease>,
}

impl LeaseTable {
    /// Whether lease `id` exists.
    pub(crate) fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The lease `id`.
    pub(crate) fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Number of leases.
    pub(crate) fn len(&self) -> usize {
        self.leases.len()
    }

    /// Every lease in ID order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = LeaseInfo> + '_ {
        self.leases.iter().map(|(&id, l)| LeaseInfo {
            id,
            ttl: l.ttl,
            remaining_ttl: l.remaining_ttl,
        })
    }

    /// Adds a lease with no keys. The caller has checked that `id` is free.
    pub(crate) fn grant(&mut self, id: i64, ttl: i64) {
        self.leases.insert(
            id,
            Lease {
                ttl,
                ..Lease::default()
            },
        );
    }

    /// Restores a lease from a snapshot (keys are attached afterwards).
    pub(crate) fn restore(&mut self, id: i64, ttl: i64, remaining_ttl: i64) {
        self.leases.insert(
            id,
            Lease {
                ttl,
                remaining_ttl,
                keys: Arc::default(),
            },
        );
    }

    /// Removes lease `id`, returning it.
    pub(crate) fn remove(&mut self, id: i64) -> Option<Lease> {
        self.leases.remove(&id)
    }

    /// Records a remaining-TTL checkpoint; unknown leases are skipped (they
    /// may have been revoked after the checkpoint was proposed).
    pub(crate) fn checkpoint(&mut self, id: i64, remaining_ttl: i64) {
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.remaining_ttl = remaining_ttl;
        }
    }

    /// Attaches `key` to lease `id` (no-op for 0 or an unknown lease).
    pub(crate) fn attach(&mut self, id: i64, key: &Bytes) {
        if id == 0 {
            return;
        }
        if let Some(lease) = self.leases.get_mut(&id) {
            Arc::make_mut(&mut lease.keys).insert(key.clone());
        }
    }

    /// Detaches `key` from lease `id` (no-op for 0 or an unknown lease).
    pub(crate) fn detach(&mut self, id: i64, key: &[u8]) {
        if id == 0 {
            return;
        }
        if let Some(lease) = self.leases.get_mut(&id) {
            Arc::make_mut(&mut lease.keys).remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_and_detach_keep_key_sets() {
        let mut table = LeaseTable::default();
        table.grant(1, 10);
        let key = Bytes::from_static(b"k");
        table.attach(1, &key);
        table.attach(1, &key);
        assert_eq!(table.get(1).map(|l| l.keys.len()), Some(1));
        table.detach(1, &key);
        assert_eq!(table.get(1).map(|l| l.keys.len()), Some(0));
        // Lease 0 and unknown leases are ignored, not created.
        table.attach(0, &key);
        table.attach(9, &key);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_cloned_table_does_not_see_later_attachments() {
        let mut table = LeaseTable::default();
        table.grant(1, 10);
        let frozen = table.clone();
        table.attach(1, &Bytes::from_static(b"k"));
        table.checkpoint(1, 3);
        assert!(
            frozen
                .get(1)
                .is_some_and(|l| l.keys.is_empty() && l.remaining_ttl == 0)
        );
        assert!(
            table
                .get(1)
                .is_some_and(|l| l.keys.len() == 1 && l.remaining_ttl == 3)
        );
    }

    #[test]
    fn checkpoints_of_unknown_leases_are_skipped() {
        let mut table = LeaseTable::default();
        table.checkpoint(5, 10);
        assert_eq!(table.len(), 0);
        assert!(table.iter().next().is_none());
    }
}
