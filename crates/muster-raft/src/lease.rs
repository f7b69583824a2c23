//! Lease operations only the leader can answer, reachable from any member.
//!
//! Lease expiry lives on the leader (muster-server's lessor): renewing a
//! lease or asking how long it has left must reach it. A member registers
//! its [`LeaseKeeper`] with [`crate::RaftNode::set_lease_keeper`];
//! [`crate::RaftNode::lease`] answers locally when this member leads and
//! otherwise forwards the [`LeaseOp`] over the peer service (`Lease`) to the
//! leader, whose keeper answers.
//!
//! Invariants:
//!
//! - A keeper answers only while its member leads ([`LeaseKeeper::answer`]
//!   returns `None` otherwise), so a deposed leader's stale timers are never
//!   consulted; the caller then retries against the leader it learns of.
//! - Renewals never go through the log: they are the leader's own state,
//!   as in etcd.

use std::sync::{Arc, OnceLock, Weak};

use serde::{Deserialize, Serialize};

/// A lease operation for the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseOp {
    /// Restart lease `id`'s timer (a keep-alive).
    Renew {
        /// The lease.
        id: i64,
    },
    /// How many seconds lease `id` has left.
    TimeToLive {
        /// The lease.
        id: i64,
    },
}

/// The leader's answer to a [`LeaseOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseAnswer {
    /// Renewed: the lease's TTL in seconds.
    Renewed {
        /// The granted TTL.
        ttl: i64,
    },
    /// Seconds left before the lease expires (rounded up).
    Remaining {
        /// Seconds left.
        ttl: i64,
    },
    /// No such lease.
    NotFound,
}

/// The leader-side keeper of lease timers (implemented by the server's
/// lessor).
pub trait LeaseKeeper: Send + Sync + 'static {
    /// Answers `op`, or `None` when this member does not lead (now).
    fn answer(&self, op: LeaseOp) -> Option<LeaseAnswer>;
}

/// Where a member's keeper is registered, shared by the node and its peer
/// service. The keeper is held weakly: it usually holds the node, and the
/// node must close its stores when its owners drop it.
pub(crate) type KeeperSlot = Arc<OnceLock<Weak<dyn LeaseKeeper>>>;
