//! Requests, responses and the [`Command`] that goes through the Raft log.
//!
//! These mirror etcd's `etcdserverpb` messages field for field, but they are
//! the core's own types: the wire format is converted at the edge (in
//! muster-proto), and what is replicated is a [`Command`], never a protobuf.
//!
//! Range semantics shared by every request with `key` and `range_end`
//! (see [`crate::KeyRange`]):
//!
//! | `range_end`          | keys selected                     |
//! |----------------------|-----------------------------------|
//! | empty                | exactly `key`                     |
//! | `"\0"`               | every key `>= key`                |
//! | anything else        | every key in `[key, range_end)`   |
//!
//! With `key = "\0"` and `range_end = "\0"` that is every key.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cluster::{AlarmMember, AlarmType};
use crate::kv::KeyValue;

/// Order of the keys a range returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// Key order, unless a non-key target is chosen (then ascending).
    #[default]
    None,
    /// Lowest target value first.
    Ascend,
    /// Highest target value first.
    Descend,
}

/// Field a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version within the generation.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value bytes.
    Value,
}

/// Read keys, as etcd's `RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key (or the only key, when `range_end` is empty).
    pub key: Bytes,
    /// End of the range; see the module docs.
    pub range_end: Bytes,
    /// Most keys to return; 0 or negative for no limit.
    pub limit: i64,
    /// Read at this revision; 0 or negative for the current one.
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Return keys without values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Drop keys whose mod revision is below this (0 = no bound).
    pub min_mod_revision: i64,
    /// Drop keys whose mod revision is above this (0 = no bound).
    pub max_mod_revision: i64,
    /// Drop keys whose create revision is below this (0 = no bound).
    pub min_create_revision: i64,
    /// Drop keys whose create revision is above this (0 = no bound).
    pub max_create_revision: i64,
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Header revision: the store revision the read saw.
    pub revision: i64,
    /// The selected key-values, after filters, sort and limit.
    pub kvs: Vec<KeyValue>,
    /// True when the limit cut the result short.
    pub more: bool,
    /// Number of keys in the range at the read revision (before the
    /// revision filters and the limit are applied, as etcd counts).
    pub count: i64,
}

/// Write one key, as etcd's `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key; must not be empty.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Lease to attach the key to; 0 for none.
    pub lease: i64,
    /// Return the previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist; `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist; `lease` must be 0).
    pub ignore_lease: bool,
}

/// The answer to a [`PutRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Header revision: the revision of the write.
    pub revision: i64,
    /// The replaced version, when asked for and one existed.
    pub prev_kv: Option<KeyValue>,
}

/// Delete a key or a range, as etcd's `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key (or the only key).
    pub key: Bytes,
    /// End of the range; see the module docs.
    pub range_end: Bytes,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// The answer to a [`DeleteRangeRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Header revision: the revision of the delete, or the current revision
    /// when nothing was deleted.
    pub revision: i64,
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values in key order, when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a [`Compare`] relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// stored == given
    Equal,
    /// stored > given
    Greater,
    /// stored < given
    Less,
    /// stored != given
    NotEqual,
}

/// The field a [`Compare`] reads, with the value to compare it to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The version within the generation (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    Create(i64),
    /// The mod revision (0 for a missing key).
    Mod(i64),
    /// The value; a compare on the value of a missing key is always false.
    Value(Bytes),
    /// The attached lease (0 for none or for a missing key).
    Lease(i64),
}

/// One condition of a txn, as etcd's `Compare`.
///
/// Over a range, the compare holds when it holds for every key in the range;
/// an empty range compares as one missing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key (or first key of the range).
    pub key: Bytes,
    /// End of the range; see the module docs.
    pub range_end: Bytes,
    /// The relation.
    pub result: CompareResult,
    /// The field and the value to compare with.
    pub target: CompareTarget,
}

/// One operation inside a txn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A write of one key.
    Put(PutRequest),
    /// A delete of a key or range.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// The answer to one [`RequestOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Answer to a range.
    Range(RangeResponse),
    /// Answer to a put.
    Put(PutResponse),
    /// Answer to a delete.
    DeleteRange(DeleteRangeResponse),
    /// Answer to a nested txn.
    Txn(TxnResponse),
}

/// A conditional, atomic batch, as etcd's `TxnRequest`.
///
/// Every compare is evaluated against the store as it was before the txn;
/// then the `success` ops run if all compares held, else the `failure` ops.
/// All writes happen at one main revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// The conditions, all of which must hold.
    pub compare: Vec<Compare>,
    /// Ops run when every compare held.
    pub success: Vec<RequestOp>,
    /// Ops run otherwise.
    pub failure: Vec<RequestOp>,
}

/// The answer to a [`TxnRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Header revision: the revision of the txn's writes, or the current one
    /// if it wrote nothing. Nested txns carry 0 here, as etcd's do.
    pub revision: i64,
    /// Whether every compare held.
    pub succeeded: bool,
    /// One answer per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// One remaining-TTL checkpoint of a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheckpoint {
    /// The lease.
    pub id: i64,
    /// Seconds left on its timer when the leader took the checkpoint.
    pub remaining_ttl: i64,
}

/// A change to the replicated state: what goes through the Raft log.
///
/// Reads are not commands; they are served from applied state
/// ([`crate::Store::range`] and friends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write one key.
    Put(PutRequest),
    /// Delete a key or range.
    DeleteRange(DeleteRangeRequest),
    /// A conditional batch.
    Txn(TxnRequest),
    /// Drop history before this main revision.
    Compact {
        /// The new compaction point.
        revision: i64,
    },
    /// Create a lease. An `id` of 0 lets the store choose one, derived from
    /// the log index the command is applied at.
    LeaseGrant {
        /// The requested ID, or 0.
        id: i64,
        /// The TTL in seconds, already raised to the cluster minimum.
        ttl: i64,
    },
    /// Delete a lease and every key attached to it, at one revision.
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// Record remaining TTLs so a new leader can restore its timers.
    LeaseCheckpoint {
        /// The checkpoints; unknown leases are skipped.
        checkpoints: Vec<LeaseCheckpoint>,
    },
    /// Record a member's peer URLs (it was added, or they were updated).
    MemberPeerUrls {
        /// The member.
        id: u64,
        /// Its peer URLs, sorted.
        peer_urls: Vec<String>,
    },
    /// What a member publishes about itself when it starts. The peer URLs
    /// are recorded only if the cluster knows none for it yet.
    MemberPublish {
        /// The member.
        id: u64,
        /// Its name.
        name: String,
        /// Its client URLs, sorted.
        client_urls: Vec<String>,
        /// Its advertised peer URLs, sorted.
        peer_urls: Vec<String>,
    },
    /// Forget a member that left the cluster, with its alarms.
    MemberForget {
        /// The member.
        id: u64,
    },
    /// Raise or clear an alarm.
    Alarm {
        /// True to raise, false to clear.
        activate: bool,
        /// Which member's alarm.
        member_id: u64,
        /// Which alarm.
        alarm: AlarmType,
    },
    /// Client writes proposed together as one log entry (group commit: one
    /// append and one fsync for all of them). Applied in order, each as if
    /// it were an entry of its own: its own revision, its own result in
    /// [`Response::Batch`], a refusal leaving the others applied. Only the
    /// leader's proposer builds batches, of client writes.
    Batch(Vec<Command>),
}

/// The answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Command::Put`].
    Put(PutResponse),
    /// Answer to [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Answer to [`Command::Txn`].
    Txn(TxnResponse),
    /// Answer to [`Command::Compact`]: the header revision.
    Compact {
        /// The current revision.
        revision: i64,
    },
    /// Answer to [`Command::LeaseGrant`].
    LeaseGrant {
        /// The current revision.
        revision: i64,
        /// The granted lease's ID.
        id: i64,
        /// Its TTL in seconds.
        ttl: i64,
    },
    /// Answer to [`Command::LeaseRevoke`].
    LeaseRevoke {
        /// The revision of the deletes, or the current one if the lease had
        /// no keys.
        revision: i64,
    },
    /// Answer to [`Command::LeaseCheckpoint`].
    LeaseCheckpoint {
        /// The current revision.
        revision: i64,
    },
    /// Answer to the member commands.
    Member {
        /// The current revision.
        revision: i64,
    },
    /// Answer to [`Command::Alarm`].
    Alarm {
        /// The current revision.
        revision: i64,
        /// The alarm raised or cleared; empty when it already was (raised)
        /// or was not (cleared).
        changed: Vec<AlarmMember>,
    },
    /// Answer to [`Command::Batch`]: each command's response or refusal,
    /// in order.
    Batch(Vec<Result<Response, crate::Error>>),
}

impl Response {
    /// The header revision of any response.
    pub fn revision(&self) -> i64 {
        match self {
            Response::Put(r) => r.revision,
            Response::DeleteRange(r) => r.revision,
            Response::Txn(r) => r.revision,
            Response::Compact { revision }
            | Response::LeaseGrant { revision, .. }
            | Response::LeaseRevoke { revision }
            | Response::LeaseCheckpoint { revision }
            | Response::Member { revision }
            | Response::Alarm { revision, .. } => *revision,
            Response::Batch(results) => results
                .iter()
                .filter_map(|result| result.as_ref().ok())
                .map(Response::revision)
                .max()
                .unwrap_or(0),
        }
    }
}
