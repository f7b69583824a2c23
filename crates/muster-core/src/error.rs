//! The errors muster-core can raise.
//!
//! Every variant that etcd also raises carries etcd's exact message, byte for
//! byte: clients (etcdctl, the Go client's `rpctypes`) match on these strings.
//! Mapping a variant to a gRPC status code is the server's job and happens in
//! one place at the edge; the core only decides *which* error it is.

/// An error from applying a command or answering a query.
///
/// Commands that fail leave the store exactly as it was: every check runs
/// before the first change is made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// The requested revision is older than the compaction point.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// A lease ID names no live lease.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant asked for an ID that is already in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A grant asked for a TTL above [`crate::MAX_LEASE_TTL`].
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A txn writes the same key twice on one path (put/put or put/delete).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// A txn has more compares, success or failure ops than allowed.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A put with `ignore_value` or `ignore_lease` names a key that does not
    /// exist, or a txn holds an empty request op.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A request has an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// A put sets `ignore_value` and also provides a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put sets `ignore_lease` and also provides a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// A range names a sort order or sort target that does not exist.
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    /// A write that adds data while the NOSPACE alarm is raised.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A snapshot could not be decoded: wrong magic, version or checksum,
    /// truncated, or internally inconsistent. The text says which.
    #[error("corrupt snapshot: {0}")]
    CorruptSnapshot(String),
}

/// The result type of muster-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
