//! muster-raft: replication of the muster store through openraft.
//!
//! ```text
//!   openraft ──append/vote──▶ LogStore (sled: log + meta, flushed before ack)
//!      │
//!      └──apply(entries)────▶ StateMachine ──▶ muster_core::Store::apply
//!                                  │               (one call per entry)
//!                                  ├──▶ broadcast of AppliedEvents (watch hub)
//!                                  └──▶ snapshots/<id>.snap (built off the apply path)
//! ```
//!
//! The adapter holds no business logic: it decodes entries, calls the core,
//! persists and publishes. Every persisted byte carries a crc32c; a record or
//! snapshot that fails it is a startup error naming where it is.
//!
//! A member keeps the two in separate directories, e.g.
//! `<data>/raft-log` for [`LogStore::open`] (sled owns that directory) and
//! `<data>/state` for [`StateMachine::open`] (snapshots under
//! `<data>/state/snapshots`).
//!
//! [`RaftNode`] wires them into an [`openraft::Raft`] with
//! [`RaftNodeConfig`]'s timings and snapshot policy, and serves the peer
//! transport ([`network`]: a gRPC service for members only, carrying
//! openraft's messages bincode-encoded) on a listener the caller has bound:
//!
//! ```text
//!   member A                                      member B
//!   RaftNode::write ─▶ openraft ─▶ PeerNetwork ──gRPC──▶ PeerService ─▶ openraft
//! ```
//!
//! A write is acknowledged once it is applied on the leader, which is after
//! a majority flushed it to sled. [`RaftNode::submit`] works on any member
//! (a follower forwards the command to the leader over the peer service),
//! and [`RaftNode::read_barrier`] makes a read of any member's state machine
//! linearizable (read index from the leader, then wait to apply it). Members join and leave through the leader
//! ([`RaftNode::add_learner`], [`RaftNode::promote`], [`RaftNode::remove`];
//! see [`Members`]), and [`raft_config`] explains how etcd's election
//! timeout maps onto openraft's timers.

mod coalesce;
mod election;
mod error;
mod lease;
mod log_store;
mod members;
pub mod metrics;
pub mod network;
mod node;
mod proposer;
mod read_index;
mod record;
mod snapshot_file;
mod state_machine;
mod types;

pub use error::Error;
pub use lease::{LeaseAnswer, LeaseKeeper, LeaseOp};
pub use log_store::LogStore;
pub use members::{Directory, DirectoryEntry, MAX_LEARNERS, MembershipOp, Refusal};
pub use network::{
    FaultInjector, ForwardError, PeerNetwork, PeerNetworkFactory, PeerService, accept_nodelay,
    fetch_directory,
};
pub use node::{
    DEFAULT_SNAPSHOT_LOGS, MAX_SNAPSHOT_KEEP_LOGS, Members, MoveLeaderError, REQUEST_TIMEOUT,
    RaftNode, RaftNodeConfig,
};
pub use state_machine::{AppliedEvents, DEFAULT_EVENT_CAPACITY, MAX_EVENT_CAPACITY, StateMachine};
pub use types::{
    CommandResult, DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, Entry,
    INSTALL_SNAPSHOT_TIMEOUT_MS, LogId, NodeId, Raft, StorageError, StoredMembership, TypeConfig,
    raft_config,
};
