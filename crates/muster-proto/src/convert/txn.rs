//! Txns: compares, request ops and their responses, nested to any depth.

use muster_core as core;

use super::{ConvertError, header};
use crate::etcdserverpb as pb;
use crate::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::etcdserverpb::request_op::Request;
use crate::etcdserverpb::response_op::Response;

impl TryFrom<pb::Compare> for core::Compare {
    type Error = ConvertError;

    /// etcd reads the value from `target_union` only when it matches
    /// `target`; otherwise it compares against zero (or the empty value).
    fn try_from(c: pb::Compare) -> Result<Self, ConvertError> {
        let result = match CompareResult::try_from(c.result) {
            Ok(CompareResult::Equal) => core::CompareResult::Equal,
            Ok(CompareResult::Greater) => core::CompareResult::Greater,
            Ok(CompareResult::Less) => core::CompareResult::Less,
            Ok(CompareResult::NotEqual) => core::CompareResult::NotEqual,
            Err(_) => {
                return Err(ConvertError::UnknownCompare {
                    field: "result",
                    value: c.result,
                });
            }
        };
        let union = c.target_union;
        let target = match CompareTarget::try_from(c.target) {
            Ok(CompareTarget::Version) => core::CompareTarget::Version(match union {
                Some(TargetUnion::Version(v)) => v,
                _ => 0,
            }),
            Ok(CompareTarget::Create) => core::CompareTarget::Create(match union {
                Some(TargetUnion::CreateRevision(v)) => v,
                _ => 0,
            }),
            Ok(CompareTarget::Mod) => core::CompareTarget::Mod(match union {
                Some(TargetUnion::ModRevision(v)) => v,
                _ => 0,
            }),
            Ok(CompareTarget::Value) => core::CompareTarget::Value(match union {
                Some(TargetUnion::Value(v)) => v,
                _ => Default::default(),
            }),
            Ok(CompareTarget::Lease) => core::CompareTarget::Lease(match union {
                Some(TargetUnion::Lease(v)) => v,
                _ => 0,
            }),
            Err(_) => {
                return Err(ConvertError::UnknownCompare {
                    field: "target",
                    value: c.target,
                });
            }
        };
        Ok(core::Compare {
            key: c.key,
            range_end: c.range_end,
            result,
            target,
        })
    }
}

impl TryFrom<pb::RequestOp> for core::RequestOp {
    type Error = ConvertError;

    fn try_from(op: pb::RequestOp) -> Result<Self, ConvertError> {
        Ok(match op.request {
            Some(Request::RequestRange(r)) => core::RequestOp::Range(r.try_into()?),
            Some(Request::RequestPut(r)) => core::RequestOp::Put(r.into()),
            Some(Request::RequestDeleteRange(r)) => core::RequestOp::DeleteRange(r.into()),
            Some(Request::RequestTxn(r)) => core::RequestOp::Txn(r.try_into()?),
            // etcd's checkRequestOp answers an empty op with "key not found".
            None => return Err(core::Error::KeyNotFound.into()),
        })
    }
}

impl TryFrom<pb::TxnRequest> for core::TxnRequest {
    type Error = ConvertError;

    fn try_from(t: pb::TxnRequest) -> Result<Self, ConvertError> {
        let ops = |ops: Vec<pb::RequestOp>| {
            ops.into_iter()
                .map(TryInto::try_into)
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(core::TxnRequest {
            compare: t
                .compare
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            success: ops(t.success)?,
            failure: ops(t.failure)?,
        })
    }
}

impl From<core::ResponseOp> for pb::ResponseOp {
    fn from(op: core::ResponseOp) -> Self {
        let response = match op {
            core::ResponseOp::Range(r) => Response::ResponseRange(r.into()),
            core::ResponseOp::Put(r) => Response::ResponsePut(r.into()),
            core::ResponseOp::DeleteRange(r) => Response::ResponseDeleteRange(r.into()),
            core::ResponseOp::Txn(r) => Response::ResponseTxn(r.into()),
        };
        pb::ResponseOp {
            response: Some(response),
        }
    }
}

impl From<core::TxnResponse> for pb::TxnResponse {
    /// Nested txns carry revision 0 in the core; on the wire that is a
    /// present, zero header, as etcd sends it.
    fn from(t: core::TxnResponse) -> Self {
        pb::TxnResponse {
            header: Some(header(t.revision)),
            succeeded: t.succeeded,
            responses: t.responses.into_iter().map(Into::into).collect(),
        }
    }
}
