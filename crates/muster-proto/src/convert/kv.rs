//! Key-values, events, ranges, puts, deletes and compactions.

use muster_core as core;

use super::{ConvertError, header};
use crate::etcdserverpb as pb;
use crate::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::mvccpb;

impl From<core::KeyValue> for mvccpb::KeyValue {
    fn from(kv: core::KeyValue) -> Self {
        mvccpb::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl From<mvccpb::KeyValue> for core::KeyValue {
    fn from(kv: mvccpb::KeyValue) -> Self {
        core::KeyValue {
            key: kv.key,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: kv.value,
            lease: kv.lease,
        }
    }
}

impl From<core::Event> for mvccpb::Event {
    fn from(event: core::Event) -> Self {
        let kind = match event.kind {
            core::EventKind::Put => mvccpb::event::EventType::Put,
            core::EventKind::Delete => mvccpb::event::EventType::Delete,
        };
        mvccpb::Event {
            r#type: kind as i32,
            kv: Some(event.kv.into()),
            prev_kv: event.prev_kv.map(Into::into),
        }
    }
}

impl TryFrom<pb::RangeRequest> for core::RangeRequest {
    type Error = ConvertError;

    fn try_from(r: pb::RangeRequest) -> Result<Self, ConvertError> {
        let sort_order = match SortOrder::try_from(r.sort_order) {
            Ok(SortOrder::None) => core::SortOrder::None,
            Ok(SortOrder::Ascend) => core::SortOrder::Ascend,
            Ok(SortOrder::Descend) => core::SortOrder::Descend,
            Err(_) => return Err(core::Error::InvalidSortOption.into()),
        };
        let sort_target = match SortTarget::try_from(r.sort_target) {
            Ok(SortTarget::Key) => core::SortTarget::Key,
            Ok(SortTarget::Version) => core::SortTarget::Version,
            Ok(SortTarget::Create) => core::SortTarget::Create,
            Ok(SortTarget::Mod) => core::SortTarget::Mod,
            Ok(SortTarget::Value) => core::SortTarget::Value,
            Err(_) => return Err(core::Error::InvalidSortOption.into()),
        };
        Ok(core::RangeRequest {
            key: r.key,
            range_end: r.range_end,
            limit: r.limit,
            revision: r.revision,
            sort_order,
            sort_target,
            keys_only: r.keys_only,
            count_only: r.count_only,
            min_mod_revision: r.min_mod_revision,
            max_mod_revision: r.max_mod_revision,
            min_create_revision: r.min_create_revision,
            max_create_revision: r.max_create_revision,
        })
    }
}

impl From<core::RangeResponse> for pb::RangeResponse {
    fn from(r: core::RangeResponse) -> Self {
        pb::RangeResponse {
            header: Some(header(r.revision)),
            kvs: r.kvs.into_iter().map(Into::into).collect(),
            more: r.more,
            count: r.count,
        }
    }
}

impl From<pb::PutRequest> for core::PutRequest {
    fn from(r: pb::PutRequest) -> Self {
        core::PutRequest {
            key: r.key,
            value: r.value,
            lease: r.lease,
            prev_kv: r.prev_kv,
            ignore_value: r.ignore_value,
            ignore_lease: r.ignore_lease,
        }
    }
}

impl From<core::PutResponse> for pb::PutResponse {
    fn from(r: core::PutResponse) -> Self {
        pb::PutResponse {
            header: Some(header(r.revision)),
            prev_kv: r.prev_kv.map(Into::into),
        }
    }
}

impl From<pb::DeleteRangeRequest> for core::DeleteRangeRequest {
    fn from(r: pb::DeleteRangeRequest) -> Self {
        core::DeleteRangeRequest {
            key: r.key,
            range_end: r.range_end,
            prev_kv: r.prev_kv,
        }
    }
}

impl From<core::DeleteRangeResponse> for pb::DeleteRangeResponse {
    fn from(r: core::DeleteRangeResponse) -> Self {
        pb::DeleteRangeResponse {
            header: Some(header(r.revision)),
            deleted: r.deleted,
            prev_kvs: r.prev_kvs.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::CompactionRequest> for core::Command {
    /// `physical` has no meaning for an in-memory store: compaction is
    /// complete when the command is applied.
    fn from(r: pb::CompactionRequest) -> Self {
        core::Command::Compact {
            revision: r.revision,
        }
    }
}
