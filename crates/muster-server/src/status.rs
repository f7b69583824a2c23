//! The one place where errors become gRPC statuses, with etcd's codes and
//! messages byte for byte (clients such as etcdctl and the Go client's
//! `rpctypes` match on them).

use muster_core::Error as CoreError;
use muster_proto::convert::ConvertError;
use tonic::{Code, Status};

/// etcd's "request is too large".
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
/// etcd's "no leader".
pub const NO_LEADER: &str = "etcdserver: no leader";
/// etcd's "request timed out".
pub const TIMEOUT: &str = "etcdserver: request timed out";

/// The status etcd answers for a core error.
pub fn core_status(error: &CoreError) -> Status {
    let code = match error {
        CoreError::EmptyKey
        | CoreError::KeyNotFound
        | CoreError::ValueProvided
        | CoreError::LeaseProvided
        | CoreError::TooManyOps
        | CoreError::DuplicateKey
        | CoreError::InvalidSortOption => Code::InvalidArgument,
        CoreError::Compacted | CoreError::FutureRevision | CoreError::LeaseTtlTooLarge => {
            Code::OutOfRange
        }
        CoreError::LeaseNotFound => Code::NotFound,
        CoreError::LeaseExists => Code::FailedPrecondition,
        CoreError::NoSpace => Code::ResourceExhausted,
        CoreError::CorruptSnapshot(_) => Code::Internal,
    };
    Status::new(code, error.to_string())
}

/// The status for a request that could not be converted.
pub fn convert_status(error: &ConvertError) -> Status {
    match error {
        ConvertError::Core(e) => core_status(e),
        ConvertError::UnknownCompare { .. } => Status::invalid_argument(error.to_string()),
    }
}

/// The status for a failure of the replication layer: no leader reachable
/// is etcd's "no leader", anything else its "request timed out" (the
/// outcome is unknown to the client, as etcd's timeout is).
pub fn raft_status(error: &muster_raft::Error) -> Status {
    match error {
        muster_raft::Error::NotLeader { .. } => Status::unavailable(NO_LEADER),
        _ => Status::unavailable(TIMEOUT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages_are_etcds() {
        let cases = [
            (
                CoreError::EmptyKey,
                Code::InvalidArgument,
                "etcdserver: key is not provided",
            ),
            (
                CoreError::Compacted,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            (
                CoreError::FutureRevision,
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            (
                CoreError::LeaseNotFound,
                Code::NotFound,
                "etcdserver: requested lease not found",
            ),
            (
                CoreError::LeaseExists,
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
            ),
            (
                CoreError::DuplicateKey,
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                CoreError::NoSpace,
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (
                CoreError::TooManyOps,
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
        ];
        for (error, code, message) in cases {
            let status = core_status(&error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
