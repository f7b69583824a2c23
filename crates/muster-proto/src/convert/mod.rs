//! Conversions between the wire types and muster-core's types.
//!
//! Requests convert wire → core and can fail: an unknown sort option is
//! etcd's "invalid sort option", an empty op in a txn is etcd's "key not
//! found" (its `checkRequestOp` answer to a nil op). Responses and events
//! convert core → wire and cannot fail.
//!
//! Headers carry only the revision here; the server fills in cluster ID,
//! member ID and Raft term on the top-level header. Nested txn responses get
//! a present but zero header, as etcd sends them.
//!
//! The `serializable` flag of a range is a read-path choice of the server
//! and has no core counterpart.
//!
//! [`registry`] converts the registry service's instances to and from the
//! registry's data model.

mod kv;
pub mod registry;
mod txn;

use crate::etcdserverpb::ResponseHeader;

/// Why a request could not be converted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// An error etcd itself raises for this input (its exact message).
    #[error(transparent)]
    Core(#[from] muster_core::Error),
    /// A compare names a result or target enum value that does not exist.
    /// etcd evaluates such compares in an unspecified way; muster refuses
    /// them.
    #[error("etcdserver: unknown compare {field} {value}")]
    UnknownCompare {
        /// `result` or `target`.
        field: &'static str,
        /// The value received.
        value: i32,
    },
}

/// A response header carrying only `revision`.
pub fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}
