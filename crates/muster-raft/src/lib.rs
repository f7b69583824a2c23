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
//! `<data>/state/snapshots`). Wiring them into an [`openraft::Raft`] with
//! [`raft_config`]'s timings is the server's job.

mod error;
mod log_store;
mod record;
mod snapshot_file;
mod state_machine;
mod types;

pub use error::Error;
pub use log_store::LogStore;
pub use state_machine::{AppliedEvents, DEFAULT_EVENT_CAPACITY, MAX_EVENT_CAPACITY, StateMachine};
pub use types::{
    CommandResult, DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS, Entry,
    INSTALL_SNAPSHOT_TIMEOUT_MS, LogId, NodeId, Raft, StorageError, StoredMembership, TypeConfig,
    raft_config,
};
