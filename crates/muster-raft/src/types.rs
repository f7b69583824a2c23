//! The openraft type configuration of muster and the Raft timing defaults.
//!
//! What goes through the log is a [`muster_core::Command`]; what applying an
//! entry yields is a [`CommandResult`]. A command the core refuses (a txn
//! naming a missing lease, say) is a *deterministic outcome* every replica
//! reaches identically, so it travels back to the client inside
//! [`CommandResult::Failed`], never as a storage error: storage errors stop
//! the Raft node.
//!
//! Timing follows etcd: heartbeat 100 ms, election timeout 1000 ms. How a
//! configured election timeout `t` maps onto openraft is explained at
//! [`raft_config`]: a follower that stops hearing from its leader campaigns
//! after a random `[1.5 t, 2 t)` of silence, inside etcd's `[t, 2 t)`.

use std::io::Cursor;

use muster_core::{Command, Response};
use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// The openraft type configuration of a muster member.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A member's ID within the cluster.
pub type NodeId = u64;
/// A Raft log entry of muster.
pub type Entry = openraft::Entry<TypeConfig>;
/// The position of an entry in the log.
pub type LogId = openraft::LogId<NodeId>;
/// A membership configuration together with the entry that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
/// The error every storage call returns to openraft.
pub type StorageError = openraft::StorageError<NodeId>;
/// The Raft node of a muster member.
pub type Raft = openraft::Raft<TypeConfig>;

/// What applying one log entry produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A blank or membership entry: nothing for a client.
    Noop,
    /// The command was applied; the response for the client.
    Applied(Response),
    /// The core refused the command; the store is unchanged. Every replica
    /// reaches the same refusal.
    Failed(muster_core::Error),
}

impl CommandResult {
    /// The client's view: the response, or the core's error. `None` for a
    /// blank or membership entry.
    pub fn into_result(self) -> Option<Result<Response, muster_core::Error>> {
        match self {
            CommandResult::Noop => None,
            CommandResult::Applied(response) => Some(Ok(response)),
            CommandResult::Failed(error) => Some(Err(error)),
        }
    }
}

/// etcd's default heartbeat interval, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 100;
/// etcd's default election timeout, in milliseconds.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// How long a follower may take to receive and install a snapshot, in
/// milliseconds. openraft's default (200 ms) is too short for a large store.
pub const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 10_000;

/// The openraft configuration for the given heartbeat interval and election
/// timeout `t` (etcd's defaults: [`DEFAULT_HEARTBEAT_MS`],
/// [`DEFAULT_ELECTION_TIMEOUT_MS`]), validated.
///
/// openraft's own election timer is off (`enable_elect: false`): it draws
/// one timeout per process, so members whose draws are close split the vote
/// round after round. muster's campaigner (the `election` module) decides
/// when to campaign instead, drawing afresh every round. What remains of
/// openraft's timing is the leader lease, which is `election_timeout_max`
/// (`t`) itself: a follower refuses votes for `t` after it last heard from
/// its leader (`Engine::handle_vote_req`), so the campaigner's first round
/// waits at least `t`. `election_timeout_min` is `t/2` only to satisfy
/// validation.
///
/// Fails when the heartbeat is not shorter than `t/2` (etcd itself wants
/// `t ≥ 5 × heartbeat`).
pub fn raft_config(
    heartbeat_ms: u64,
    election_timeout_ms: u64,
) -> Result<openraft::Config, crate::Error> {
    openraft::Config {
        cluster_name: "muster".to_string(),
        heartbeat_interval: heartbeat_ms,
        election_timeout_min: election_timeout_ms / 2,
        election_timeout_max: election_timeout_ms,
        install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
        enable_elect: false,
        ..Default::default()
    }
    .validate()
    .map_err(|e| crate::Error::Config(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_defaults_validate() {
        let config =
            raft_config(DEFAULT_HEARTBEAT_MS, DEFAULT_ELECTION_TIMEOUT_MS).expect("valid config");
        assert_eq!(config.heartbeat_interval, 100);
        assert_eq!(config.election_timeout_min, 500);
        assert_eq!(config.election_timeout_max, 1000);
        assert_eq!(config.install_snapshot_timeout, 10_000);
    }

    #[test]
    fn a_heartbeat_longer_than_the_election_timeout_is_refused() {
        assert!(raft_config(2000, 1000).is_err());
        // The heartbeat must fit inside half the election timeout.
        assert!(raft_config(500, 1000).is_err());
        assert!(raft_config(499, 1000).is_ok());
    }

    #[test]
    fn a_zero_election_timeout_is_refused() {
        assert!(raft_config(0, 0).is_err());
    }
}
