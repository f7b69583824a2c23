//! muster-core: the deterministic state machine of the muster registry.
//!
//! Everything a replica agrees on through Raft lives here: a revisioned,
//! multi-version key space (etcd's MVCC model), the lease table, txn
//! evaluation, compaction, watch catch-up from history, and snapshots. The
//! crate does no I/O of its own, reads no clock and knows nothing of tokio,
//! openraft, sled or protobuf: the Raft log index is the one outside fact
//! [`Store::apply`] takes, so every replica applying the same log reaches
//! byte-identical state.
//!
//! ```text
//!   Command ──apply(index)──▶ Store ──▶ (Response, Vec<Event>)
//!                              │
//!         range / read_txn / events / lease / hash_kv   (queries, &self)
//!         snapshot / restore                            (whole state)
//! ```
//!
//! Semantics follow etcd v3.5 wherever a client could tell the difference:
//! revisions start at 1, errors carry etcd's exact messages ([`Error`]),
//! range options, txn compares and header revisions behave as etcd's do.
//! Module docs state each part's invariants.

mod cluster;
mod command;
mod error;
mod key;
mod kv;
mod lease;
mod mvcc;
mod revision;
mod snapshot;
mod store;
pub mod validate;

pub use cluster::{AlarmMember, AlarmType, MemberInfo};
pub use command::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpoint, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, Response,
    ResponseOp, SortOrder, SortTarget, TxnRequest, TxnResponse,
};
pub use error::{Error, Result};
pub use kv::{Event, EventKind, KeyValue};
pub use lease::{LeaseInfo, MAX_LEASE_TTL};
pub use mvcc::KeyRange;
pub use revision::{REVISION_BYTES, Revision};
pub use store::{Applied, EventBatch, KvHash, Store};
