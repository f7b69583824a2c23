//! Membership changes requested from any member, and the member directory
//! a joining member reads before it starts.
//!
//! A [`MembershipOp`] runs on the leader ([`crate::RaftNode::change_members`]
//! forwards it over the peer service's `Membership` RPC from a follower).
//! The leader checks it against its own, newest membership, so two members
//! racing to add the same ID cannot both succeed, and answers a
//! [`Refusal`] for requests etcd refuses (unknown member, promoting a voter
//! or a lagging learner, a second learner).
//!
//! Invariants:
//! - An operation that returns `Ok` has its configuration committed, with
//!   one exception: adding a voter to a single-voter cluster. The new
//!   voter's vote is needed to commit that configuration, and it cannot
//!   vote before it is started with the configuration's members, so the
//!   leader answers once the joint configuration is in its log (etcd's
//!   single-member cluster answers once its own log has the change, and is
//!   likewise unavailable until the new member starts).
//! - A learner is promoted only when it has at least 90% of the leader's
//!   log (etcd's readiness rule), so a promotion never stalls commits.
//!
//! The [`Directory`] (peer service `Members` RPC, answered by any member
//! from its own view without a leader) lists the cluster ID and each
//! member's ID, peer URLs and role: a member started with
//! `--initial-cluster-state existing` finds its ID there by its peer URLs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};

use crate::network::ForwardError;
use crate::state_machine::StateMachine;
use crate::types::{NodeId, Raft};

/// Most learners a cluster may have at once (etcd's default
/// `--max-learners`).
pub const MAX_LEARNERS: usize = 1;

/// A membership change, run by the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Add member `id`, reachable at peer address `addr` (`host:port`), as
    /// a learner or straight as a voter.
    Add {
        /// The new member's ID.
        id: NodeId,
        /// Its peer address.
        addr: String,
        /// Whether it joins as a learner.
        learner: bool,
    },
    /// Make learner `id` a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove voter or learner `id`.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// Change the peer address of member `id`.
    SetAddr {
        /// The member.
        id: NodeId,
        /// Its new peer address.
        addr: String,
    },
}

/// Why the leader refused a [`MembershipOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The ID to add is already a member.
    #[error("member ID already exists")]
    Exists,
    /// The ID names no member.
    #[error("member not found")]
    NotFound,
    /// Only learners can be promoted.
    #[error("can only promote a learner member")]
    NotLearner,
    /// The learner is too far behind the leader's log to vote yet.
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The cluster has [`MAX_LEARNERS`] learners already.
    #[error("too many learner members in cluster")]
    TooManyLearners,
}

/// The cluster as one member sees it, for a member about to join.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// The cluster's ID (0 when the answering member does not know it).
    pub cluster_id: u64,
    /// Voters and learners, by ID.
    pub members: Vec<DirectoryEntry>,
}

/// One member in a [`Directory`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// Its ID.
    pub id: NodeId,
    /// Its peer URLs, sorted (`http://` + the peer address when the
    /// cluster has not recorded its URLs).
    pub peer_urls: Vec<String>,
    /// Whether it is a learner.
    pub learner: bool,
}

/// The directory of the member whose openraft is `raft`.
pub(crate) fn directory(raft: &Raft, state_machine: &StateMachine, cluster_id: u64) -> Directory {
    let membership = raft.metrics().borrow().membership_config.clone();
    let membership = membership.membership();
    let store = state_machine.store();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| DirectoryEntry {
            id: *id,
            peer_urls: store
                .member(*id)
                .map(|m| m.peer_urls.clone())
                .filter(|urls| !urls.is_empty())
                .unwrap_or_else(|| vec![format!("http://{}", node.addr)]),
            learner: !voters.contains(id),
        })
        .collect();
    Directory {
        cluster_id,
        members,
    }
}

fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ForwardError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ForwardError::NotLeader {
                leader: forward.leader_id,
            }
        }
        e => ForwardError::Raft(e.to_string()),
    }
}

/// Runs `op` on this member, which must lead (else
/// [`ForwardError::NotLeader`]). Waits at most `within` for a voter's
/// configuration to be committed (see the module docs).
pub(crate) async fn execute(
    raft: &Raft,
    op: MembershipOp,
    within: Duration,
) -> Result<Result<(), Refusal>, ForwardError> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Err(ForwardError::NotLeader {
            leader: metrics.current_leader,
        });
    }
    let membership = metrics.membership_config.membership().clone();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let is_member = |id: NodeId| membership.get_node(&id).is_some();
    match op {
        MembershipOp::Add { id, addr, learner } => {
            if is_member(id) {
                return Ok(Err(Refusal::Exists));
            }
            if learner && membership.learner_ids().count() >= MAX_LEARNERS {
                return Ok(Err(Refusal::TooManyLearners));
            }
            raft.add_learner(id, BasicNode::new(addr), false)
                .await
                .map_err(write_error)?;
            if !learner {
                let single_voter = voters.len() == 1;
                add_voter(raft, id, single_voter, within).await?;
            }
        }
        MembershipOp::Promote { id } => {
            if !is_member(id) {
                return Ok(Err(Refusal::NotFound));
            }
            if voters.contains(&id) {
                return Ok(Err(Refusal::NotLearner));
            }
            let leader_index = metrics.last_log_index.unwrap_or(0);
            let learner_index = metrics
                .replication
                .as_ref()
                .and_then(|replication| replication.get(&id).copied().flatten())
                .map_or(0, |log_id| log_id.index);
            // etcd: ready when the learner's match is at least 90% of the
            // leader's.
            if learner_index.saturating_mul(10) < leader_index.saturating_mul(9) {
                return Ok(Err(Refusal::LearnerNotReady));
            }
            add_voter(raft, id, false, within).await?;
        }
        MembershipOp::Remove { id } => {
            if !is_member(id) {
                return Ok(Err(Refusal::NotFound));
            }
            let ids = BTreeSet::from([id]);
            if voters.contains(&id) {
                raft.change_membership(ChangeMembers::RemoveVoters(ids), false)
                    .await
                    .map_err(write_error)?;
            } else {
                raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await
                    .map_err(write_error)?;
            }
        }
        MembershipOp::SetAddr { id, addr } => {
            if !is_member(id) {
                return Ok(Err(Refusal::NotFound));
            }
            let nodes = BTreeMap::from([(id, BasicNode::new(addr))]);
            raft.change_membership(ChangeMembers::SetNodes(nodes), true)
                .await
                .map_err(write_error)?;
        }
    }
    Ok(Ok(()))
}

/// Makes learner `id` a voter. With `proposed_is_enough` (a single-voter
/// cluster) answers once the configuration is in this leader's log;
/// otherwise once it is committed, within `within`.
async fn add_voter(
    raft: &Raft,
    id: NodeId,
    proposed_is_enough: bool,
    within: Duration,
) -> Result<(), ForwardError> {
    let change = {
        let raft = raft.clone();
        tokio::spawn(async move {
            raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
                .map(drop)
                .map_err(write_error)
        })
    };
    if proposed_is_enough {
        return raft
            .wait(Some(within))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .voter_ids()
                        .any(|v| v == id)
                },
                "the new voter is in the leader's configuration",
            )
            .await
            .map(drop)
            .map_err(|e| ForwardError::Raft(e.to_string()));
    }
    match tokio::time::timeout(within, change).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(ForwardError::Raft(join.to_string())),
        Err(_) => Err(ForwardError::Raft(format!(
            "the configuration with voter {id} was not committed within {within:?}"
        ))),
    }
}
