//! Lease operations only the leader can answer, reachable from any member.
//!
//! Lease expiry lives on the leader (muster-server's lessor): renewing a
//! lease or asking how long it has left must reach it. A member registers
//! its [`LeaseKeeper`] with [`crate::RaftNode::set_lease_keeper`];
//! [`crate::RaftNode::lease`] answers locally when this member leads and
//! otherwise forwards the [`LeaseOp`] over the peer service (`LeaseBatch`) to the
//! leader, whose keeper answers.
//!
//! Invariants:
//!
//! - A keeper answers only while its member leads ([`LeaseKeeper::answer`]
//!   returns `None` otherwise), so a deposed leader's stale timers are never
//!   consulted; the caller then retries against the leader it learns of.
//! - Renewals never go through the log: they are the leader's own state,
//!   as in etcd. Before it renews, the leader confirms with a quorum that
//!   it still leads ([`answer_confirmed`], etcd's `ensureLeadership`): an
//!   isolated or deposed leader that still believes it leads would
//!   otherwise tell the client its lease lives while the real leader lets
//!   it expire. Its client gets an error instead and moves to another
//!   member.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::read_index::{ReadIndexError, ReadIndexGroup};
use crate::types::{NodeId, Raft};

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

/// Why [`answer_confirmed`] gave no answer.
#[derive(Clone, Debug)]
pub(crate) enum Unanswered {
    /// This member does not lead, or no quorum confirmed in time that it
    /// does; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    /// Leadership could not be confirmed, or openraft failed.
    Failed(String),
}

/// Answers `op` with `keeper`, confirming first, for a renewal, that this
/// member still leads with a quorum (within `within`). Concurrent renewals
/// share confirmation rounds with linearizable reads (`reads`): each round
/// starts after every renewal it confirms arrived, so the confirmation is
/// as fresh as one round per renewal.
pub(crate) async fn answer_confirmed(
    raft: &Raft,
    reads: &ReadIndexGroup,
    keeper: &dyn LeaseKeeper,
    op: LeaseOp,
    within: Duration,
) -> Result<LeaseAnswer, Unanswered> {
    answer_all_confirmed(raft, reads, keeper, vec![op], within)
        .await
        .pop()
        .expect("one answer per operation")
}

/// Answers each of `ops` as [`answer_confirmed`] would, in order, with one
/// leadership confirmation for all the renewals among them (it starts
/// after every one of them arrived).
pub(crate) async fn answer_all_confirmed(
    raft: &Raft,
    reads: &ReadIndexGroup,
    keeper: &dyn LeaseKeeper,
    ops: Vec<LeaseOp>,
    within: Duration,
) -> Vec<Result<LeaseAnswer, Unanswered>> {
    let confirmed = if ops.iter().any(|op| matches!(op, LeaseOp::Renew { .. })) {
        confirm(reads, within).await
    } else {
        Ok(())
    };
    ops.into_iter()
        .map(|op| {
            if matches!(op, LeaseOp::Renew { .. }) {
                confirmed.clone()?;
            }
            keeper
                .answer(op)
                .ok_or_else(|| Unanswered::NotLeader(raft.metrics().borrow().current_leader))
        })
        .collect()
}

/// Confirms, within `within`, that this member leads with a quorum, in a
/// round that starts after this call.
async fn confirm(reads: &ReadIndexGroup, within: Duration) -> Result<(), Unanswered> {
    match tokio::time::timeout(within, reads.read_index()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(ReadIndexError::NotLeader(leader))) => Err(Unanswered::NotLeader(leader)),
        // Unconfirmed: as good as not leading. The caller looks for the
        // leader again (the others may be electing one).
        Ok(Err(ReadIndexError::NoQuorum(_))) | Err(_) => Err(Unanswered::NotLeader(None)),
        Ok(Err(ReadIndexError::Failed(e))) => Err(Unanswered::Failed(e.to_string())),
    }
}
