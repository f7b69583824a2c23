//! Wire compatibility between `muster-proto` and the `etcd-client` crate.
//!
//! `etcd-client` generates its types from etcd's own `.proto` files (a newer,
//! post-3.5 copy), `muster-proto` from our hand-written v3.5 protos in
//! `proto/`. For each message kind these tests build a message with
//! `etcd-client`'s types (through its public builder API where it has one, so
//! the bytes are exactly what a real client sends), then:
//!
//! 1. encode it and decode the bytes with our type;
//! 2. check every field of the decoded value against an independently
//!    written expected value;
//! 3. re-encode with our type and check the bytes are identical;
//! 4. decode those bytes with `etcd-client`'s type and check it equals the
//!    original.
//!
//! A few proptests do the same for generated messages, and separate tests
//! check enum numbering, gRPC service names, and that etcd 3.6-only fields
//! are skipped cleanly by our 3.5 types.

use std::fmt::Debug;

use bytes::Bytes;
use etcd_client::proto as ec;
use etcd_client::{
    AlarmAction, AlarmType, CompareOp, DeleteOptions, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, MemberAddOptions, Permission, PermissionType, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, UserAddOptions, WatchFilterType, WatchOptions,
};
use muster_proto::etcdserverpb as pb;
use muster_proto::{authpb, mvccpb};
use prost::Message;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The core check: `theirs` (an `etcd-client` message) and `expected` (the
/// same message written with our types) must be interchangeable on the wire.
fn assert_wire_compat<T, O>(theirs: &T, expected: &O)
where
    T: Message + Default + PartialEq + Debug,
    O: Message + Default + PartialEq + Debug,
{
    let wire = theirs.encode_to_vec();

    // etcd-client bytes -> ours, field by field.
    let ours = O::decode(wire.as_slice()).expect("muster-proto failed to decode etcd-client bytes");
    assert_eq!(
        &ours, expected,
        "decoded fields differ from the expected values"
    );

    // ours -> bytes: identical to what etcd-client produced.
    let rewire = ours.encode_to_vec();
    assert_eq!(
        rewire, wire,
        "muster-proto re-encoding differs from etcd-client encoding"
    );
    assert_eq!(
        expected.encode_to_vec(),
        wire,
        "expected value encodes differently"
    );
    assert_eq!(ours.encoded_len(), theirs.encoded_len());

    // ours bytes -> etcd-client: equal to the original.
    let back =
        T::decode(rewire.as_slice()).expect("etcd-client failed to decode muster-proto bytes");
    assert_eq!(
        &back, theirs,
        "etcd-client decodes our bytes to a different message"
    );
}

/// `Bytes` from a static byte string.
fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn their_header(revision: i64) -> ec::PbResponseHeader {
    ec::PbResponseHeader {
        cluster_id: 0xdead_beef_0000_0001,
        member_id: u64::MAX,
        revision,
        raft_term: 7,
    }
}

fn our_header(revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: 0xdead_beef_0000_0001,
        member_id: u64::MAX,
        revision,
        raft_term: 7,
    }
}

fn their_kv(key: &[u8], value: &[u8], rev: i64, lease: i64) -> ec::PbKeyValue {
    ec::PbKeyValue {
        key: key.to_vec(),
        create_revision: rev - 1,
        mod_revision: rev,
        version: 2,
        value: value.to_vec(),
        lease,
    }
}

fn our_kv(key: &'static [u8], value: &'static [u8], rev: i64, lease: i64) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: b(key),
        create_revision: rev - 1,
        mod_revision: rev,
        version: 2,
        value: b(value),
        lease,
    }
}

// ---------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------

#[test]
fn put_request() {
    // Every flag, written directly.
    let theirs = ec::PbPutRequest {
        key: b"/services/web/1".to_vec(),
        value: b"10.0.0.1:8080".to_vec(),
        lease: 0x7fff_ffff_ffff_fff0,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    let ours = pb::PutRequest {
        key: b(b"/services/web/1"),
        value: b(b"10.0.0.1:8080"),
        lease: 0x7fff_ffff_ffff_fff0,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    assert_wire_compat(&theirs, &ours);

    // Through etcd-client's builder, as `KvClient::put` sends it.
    let mut theirs: ec::PbPutRequest = PutOptions::new()
        .with_lease(42)
        .with_prev_key()
        .with_ignore_lease()
        .into();
    theirs.key = b"k".to_vec();
    theirs.value = vec![0, 0xff, 0x80];
    let ours = pb::PutRequest {
        key: b(b"k"),
        value: Bytes::from(vec![0, 0xff, 0x80]),
        lease: 42,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: true,
    };
    assert_wire_compat(&theirs, &ours);

    // All defaults encode to nothing on both sides.
    assert_wire_compat(&ec::PbPutRequest::default(), &pb::PutRequest::default());
    assert!(pb::PutRequest::default().encode_to_vec().is_empty());
}

#[test]
fn put_response() {
    let theirs = ec::PbPutResponse {
        header: Some(their_header(12)),
        prev_kv: Some(their_kv(b"a", b"old", 11, 3)),
    };
    let ours = pb::PutResponse {
        header: Some(our_header(12)),
        prev_kv: Some(our_kv(b"a", b"old", 11, 3)),
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn range_request_all_options() {
    let orders = [
        (SortOrder::None, pb::range_request::SortOrder::None),
        (SortOrder::Ascend, pb::range_request::SortOrder::Ascend),
        (SortOrder::Descend, pb::range_request::SortOrder::Descend),
    ];
    let targets = [
        (SortTarget::Key, pb::range_request::SortTarget::Key),
        (SortTarget::Version, pb::range_request::SortTarget::Version),
        (SortTarget::Create, pb::range_request::SortTarget::Create),
        (SortTarget::Mod, pb::range_request::SortTarget::Mod),
        (SortTarget::Value, pb::range_request::SortTarget::Value),
    ];
    for (their_order, our_order) in orders {
        for (their_target, our_target) in targets {
            let mut theirs: ec::PbRangeRequest = GetOptions::new()
                .with_range(b"/services0".to_vec())
                .with_limit(100)
                .with_revision(77)
                .with_sort(their_target, their_order)
                .with_serializable()
                .with_keys_only()
                .with_count_only()
                .with_min_mod_revision(3)
                .with_max_mod_revision(70)
                .with_min_create_revision(2)
                .with_max_create_revision(60)
                .into();
            theirs.key = b"/services/".to_vec();
            // Like Go's clientv3.WithSort, etcd-client turns (KEY, ASCEND)
            // into (KEY, NONE): keys come back ascending anyway, and a set
            // sort order makes the server sort the whole range. muster's
            // server must therefore treat NONE as ascending-by-key.
            let our_order = match (our_target, our_order) {
                (pb::range_request::SortTarget::Key, pb::range_request::SortOrder::Ascend) => {
                    pb::range_request::SortOrder::None
                }
                (_, order) => order,
            };
            let ours = pb::RangeRequest {
                key: b(b"/services/"),
                range_end: b(b"/services0"),
                limit: 100,
                revision: 77,
                sort_order: our_order as i32,
                sort_target: our_target as i32,
                serializable: true,
                keys_only: true,
                count_only: true,
                min_mod_revision: 3,
                max_mod_revision: 70,
                min_create_revision: 2,
                max_create_revision: 60,
            };
            assert_wire_compat(&theirs, &ours);
        }
    }

    // Prefix and from-key ranges as computed by etcd-client's TxnOp::get.
    let prefix = TxnOp::get("ab", Some(GetOptions::new().with_prefix()));
    let ec::PbTxnOpRequest::RequestRange(theirs) = ec::PbTxnOpRequest::from(prefix) else {
        panic!("TxnOp::get did not produce a range request");
    };
    let ours = pb::RangeRequest {
        key: b(b"ab"),
        range_end: b(b"ac"),
        ..Default::default()
    };
    assert_wire_compat(&theirs, &ours);

    let from_key = TxnOp::get("ab", Some(GetOptions::new().with_from_key()));
    let ec::PbTxnOpRequest::RequestRange(theirs) = ec::PbTxnOpRequest::from(from_key) else {
        panic!("TxnOp::get did not produce a range request");
    };
    let ours = pb::RangeRequest {
        key: b(b"ab"),
        range_end: b(b"\0"),
        ..Default::default()
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn range_response() {
    let theirs = ec::PbRangeResponse {
        header: Some(their_header(100)),
        kvs: vec![
            their_kv(b"/a", b"1", 10, 0),
            their_kv(b"/b", b"", 20, 5),
            their_kv(b"/c", &[0u8; 300], 30, i64::MAX),
        ],
        more: true,
        count: 1_000_000,
    };
    let ours = pb::RangeResponse {
        header: Some(our_header(100)),
        kvs: vec![
            our_kv(b"/a", b"1", 10, 0),
            our_kv(b"/b", b"", 20, 5),
            our_kv(b"/c", &[0u8; 300], 30, i64::MAX),
        ],
        more: true,
        count: 1_000_000,
    };
    assert_wire_compat(&theirs, &ours);

    // Header only (count_only responses look like this).
    let theirs = ec::PbRangeResponse {
        header: Some(their_header(1)),
        count: 3,
        ..Default::default()
    };
    let ours = pb::RangeResponse {
        header: Some(our_header(1)),
        count: 3,
        ..Default::default()
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn delete_range_request_and_response() {
    let del = TxnOp::delete(
        "/x/",
        Some(DeleteOptions::new().with_prefix().with_prev_key()),
    );
    let ec::PbTxnOpRequest::RequestDeleteRange(theirs) = ec::PbTxnOpRequest::from(del) else {
        panic!("TxnOp::delete did not produce a delete request");
    };
    let ours = pb::DeleteRangeRequest {
        key: b(b"/x/"),
        range_end: b(b"/x0"),
        prev_kv: true,
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbDeleteRequest {
        key: b"k".to_vec(),
        range_end: vec![0],
        prev_kv: false,
    };
    let ours = pb::DeleteRangeRequest {
        key: b(b"k"),
        range_end: b(b"\0"),
        prev_kv: false,
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbDeleteResponse {
        header: Some(their_header(55)),
        deleted: 2,
        prev_kvs: vec![
            their_kv(b"/x/1", b"v1", 50, 0),
            their_kv(b"/x/2", b"v2", 51, 9),
        ],
    };
    let ours = pb::DeleteRangeResponse {
        header: Some(our_header(55)),
        deleted: 2,
        prev_kvs: vec![our_kv(b"/x/1", b"v1", 50, 0), our_kv(b"/x/2", b"v2", 51, 9)],
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn compaction_request_and_response() {
    // CompactionOptions only converts through tonic's IntoRequest.
    let options = etcd_client::CompactionOptions::new().with_physical();
    let mut theirs: ec::PbCompactionRequest =
        tonic::IntoRequest::into_request(options).into_inner();
    theirs.revision = 1234;
    let ours = pb::CompactionRequest {
        revision: 1234,
        physical: true,
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbCompactionResponse {
        header: Some(their_header(1235)),
    };
    let ours = pb::CompactionResponse {
        header: Some(our_header(1235)),
    };
    assert_wire_compat(&theirs, &ours);
}

// ---------------------------------------------------------------------------
// Txn
// ---------------------------------------------------------------------------

fn our_compare(
    result: pb::compare::CompareResult,
    target: pb::compare::CompareTarget,
    key: &'static [u8],
    operand: pb::compare::TargetUnion,
    range_end: &'static [u8],
) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        target: target as i32,
        key: b(key),
        target_union: Some(operand),
        range_end: b(range_end),
    }
}

#[test]
fn txn_request_every_compare_target_and_result() {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};

    let results = [
        (CompareOp::Equal, R::Equal),
        (CompareOp::Greater, R::Greater),
        (CompareOp::Less, R::Less),
        (CompareOp::NotEqual, R::NotEqual),
    ];
    for (their_op, our_op) in results {
        let compares = vec![
            etcd_client::Compare::version("k1", their_op, 3),
            etcd_client::Compare::create_revision("k2", their_op, 4),
            etcd_client::Compare::mod_revision("k3", their_op, 5),
            etcd_client::Compare::value("k4", their_op, "v"),
            etcd_client::Compare::lease("k5", their_op, 6),
            etcd_client::Compare::version("p/", their_op, 0).with_prefix(),
            etcd_client::Compare::mod_revision("a", their_op, i64::MAX).with_range("z"),
        ];
        let theirs: ec::PbTxnRequest = Txn::new()
            .when(compares)
            .and_then([TxnOp::put("k", "v", None)])
            .into();
        let ours = pb::TxnRequest {
            compare: vec![
                our_compare(our_op, T::Version, b"k1", U::Version(3), b""),
                our_compare(our_op, T::Create, b"k2", U::CreateRevision(4), b""),
                our_compare(our_op, T::Mod, b"k3", U::ModRevision(5), b""),
                our_compare(our_op, T::Value, b"k4", U::Value(b(b"v")), b""),
                our_compare(our_op, T::Lease, b"k5", U::Lease(6), b""),
                our_compare(our_op, T::Version, b"p/", U::Version(0), b"p0"),
                our_compare(our_op, T::Mod, b"a", U::ModRevision(i64::MAX), b"z"),
            ],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: b(b"k"),
                    value: b(b"v"),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        assert_wire_compat(&theirs, &ours);
    }

    // A compare whose oneof operand is explicitly zero/empty still carries the
    // oneof field on the wire (proto3 oneof presence) on both sides.
    let theirs = ec::PbCompare {
        key: b"k".to_vec(),
        target: ec::PbCompareTarget::Value as i32,
        target_union: Some(ec::PbTargetUnion::Value(Vec::new())),
        ..Default::default()
    };
    let ours = our_compare(R::Equal, T::Value, b"k", U::Value(Bytes::new()), b"");
    assert_wire_compat(&theirs, &ours);
    assert!(!ours.encode_to_vec().is_empty());
}

#[test]
fn txn_request_with_every_op_kind_and_nested_txn() {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    use pb::request_op::Request;

    let nested = Txn::new()
        .when([etcd_client::Compare::value(
            "inner",
            CompareOp::NotEqual,
            "x",
        )])
        .and_then([TxnOp::delete("inner", None)])
        .or_else([TxnOp::get(
            "inner",
            Some(GetOptions::new().with_keys_only()),
        )]);
    let theirs: ec::PbTxnRequest = Txn::new()
        .when([etcd_client::Compare::create_revision(
            "lock",
            CompareOp::Equal,
            0,
        )])
        .and_then([
            TxnOp::put(
                "lock",
                "owner-1",
                Some(PutOptions::new().with_lease(99).with_prev_key()),
            ),
            TxnOp::get(
                "/cfg/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Mod, SortOrder::Descend)
                        .with_limit(10),
                ),
            ),
            TxnOp::txn(nested),
        ])
        .or_else([
            TxnOp::get("lock", None),
            TxnOp::delete("/tmp/", Some(DeleteOptions::new().with_prefix())),
        ])
        .into();

    let put = |key: &'static [u8], value: &'static [u8], lease, prev_kv| pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest {
            key: b(key),
            value: b(value),
            lease,
            prev_kv,
            ..Default::default()
        })),
    };
    let ours = pb::TxnRequest {
        compare: vec![our_compare(
            R::Equal,
            T::Create,
            b"lock",
            U::CreateRevision(0),
            b"",
        )],
        success: vec![
            put(b"lock", b"owner-1", 99, true),
            pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    key: b(b"/cfg/"),
                    range_end: b(b"/cfg0"),
                    limit: 10,
                    sort_order: pb::range_request::SortOrder::Descend as i32,
                    sort_target: pb::range_request::SortTarget::Mod as i32,
                    ..Default::default()
                })),
            },
            pb::RequestOp {
                request: Some(Request::RequestTxn(pb::TxnRequest {
                    compare: vec![our_compare(
                        R::NotEqual,
                        T::Value,
                        b"inner",
                        U::Value(b(b"x")),
                        b"",
                    )],
                    success: vec![pb::RequestOp {
                        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key: b(b"inner"),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![pb::RequestOp {
                        request: Some(Request::RequestRange(pb::RangeRequest {
                            key: b(b"inner"),
                            keys_only: true,
                            ..Default::default()
                        })),
                    }],
                })),
            },
        ],
        failure: vec![
            pb::RequestOp {
                request: Some(Request::RequestRange(pb::RangeRequest {
                    key: b(b"lock"),
                    ..Default::default()
                })),
            },
            pb::RequestOp {
                request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: b(b"/tmp/"),
                    range_end: b(b"/tmp0"),
                    prev_kv: false,
                })),
            },
        ],
    };
    assert_wire_compat(&theirs, &ours);

    // An op with no request set (empty oneof) survives too.
    let theirs = ec::PbTxnRequest {
        success: vec![ec::PbTxnRequestOp { request: None }],
        ..Default::default()
    };
    let ours = pb::TxnRequest {
        success: vec![pb::RequestOp { request: None }],
        ..Default::default()
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn txn_response_with_nested_responses() {
    use pb::response_op::Response;

    let theirs = ec::PbTxnResponse {
        header: Some(their_header(500)),
        succeeded: true,
        responses: vec![
            ec::PbResponseOp {
                response: Some(ec::PbTxnOpResponse::ResponsePut(ec::PbPutResponse {
                    header: Some(their_header(500)),
                    prev_kv: Some(their_kv(b"lock", b"old", 400, 0)),
                })),
            },
            ec::PbResponseOp {
                response: Some(ec::PbTxnOpResponse::ResponseRange(ec::PbRangeResponse {
                    header: Some(their_header(500)),
                    kvs: vec![their_kv(b"/cfg/a", b"1", 300, 0)],
                    more: false,
                    count: 1,
                })),
            },
            ec::PbResponseOp {
                response: Some(ec::PbTxnOpResponse::ResponseDeleteRange(
                    ec::PbDeleteResponse {
                        header: Some(their_header(500)),
                        deleted: 4,
                        prev_kvs: vec![],
                    },
                )),
            },
            ec::PbResponseOp {
                response: Some(ec::PbTxnOpResponse::ResponseTxn(ec::PbTxnResponse {
                    header: Some(their_header(500)),
                    succeeded: false,
                    responses: vec![ec::PbResponseOp {
                        response: Some(ec::PbTxnOpResponse::ResponseRange(
                            ec::PbRangeResponse::default(),
                        )),
                    }],
                })),
            },
        ],
    };
    let ours = pb::TxnResponse {
        header: Some(our_header(500)),
        succeeded: true,
        responses: vec![
            pb::ResponseOp {
                response: Some(Response::ResponsePut(pb::PutResponse {
                    header: Some(our_header(500)),
                    prev_kv: Some(our_kv(b"lock", b"old", 400, 0)),
                })),
            },
            pb::ResponseOp {
                response: Some(Response::ResponseRange(pb::RangeResponse {
                    header: Some(our_header(500)),
                    kvs: vec![our_kv(b"/cfg/a", b"1", 300, 0)],
                    more: false,
                    count: 1,
                })),
            },
            pb::ResponseOp {
                response: Some(Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                    header: Some(our_header(500)),
                    deleted: 4,
                    prev_kvs: vec![],
                })),
            },
            pb::ResponseOp {
                response: Some(Response::ResponseTxn(pb::TxnResponse {
                    header: Some(our_header(500)),
                    succeeded: false,
                    responses: vec![pb::ResponseOp {
                        response: Some(Response::ResponseRange(pb::RangeResponse::default())),
                    }],
                })),
            },
        ],
    };
    assert_wire_compat(&theirs, &ours);
}

// ---------------------------------------------------------------------------
// Watch
// ---------------------------------------------------------------------------

#[test]
fn watch_create_request() {
    let theirs: ec::PbWatchRequest = WatchOptions::new()
        .with_key("/services/")
        .with_prefix()
        .with_start_revision(17)
        .with_progress_notify()
        .with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete])
        .with_prev_key()
        .with_watch_id(5)
        .with_fragment()
        .into();
    let ours = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b(b"/services/"),
                range_end: b(b"/services0"),
                start_revision: 17,
                progress_notify: true,
                filters: vec![
                    pb::watch_create_request::FilterType::Noput as i32,
                    pb::watch_create_request::FilterType::Nodelete as i32,
                ],
                prev_kv: true,
                watch_id: 5,
                fragment: true,
            },
        )),
    };
    assert_wire_compat(&theirs, &ours);

    // Minimal create request: a single key, everything else default.
    let theirs: ec::PbWatchRequest = WatchOptions::new().with_key("k").into();
    let ours = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b(b"k"),
                ..Default::default()
            },
        )),
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn watch_cancel_and_progress_requests() {
    // etcd-client does not export WatchCancelRequest/WatchProgressRequest by
    // name; build them through the (exported) oneof and fill in the fields.
    let mut union = ec::PbWatchRequestUnion::CancelRequest(Default::default());
    if let ec::PbWatchRequestUnion::CancelRequest(cancel) = &mut union {
        cancel.watch_id = 123_456_789;
    }
    let theirs = ec::PbWatchRequest {
        request_union: Some(union),
    };
    let ours = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CancelRequest(
            pb::WatchCancelRequest {
                watch_id: 123_456_789,
            },
        )),
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbWatchRequest {
        request_union: Some(ec::PbWatchRequestUnion::ProgressRequest(Default::default())),
    };
    let ours = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
            pb::WatchProgressRequest {},
        )),
    };
    assert_wire_compat(&theirs, &ours);
    // An empty progress request is still a present oneof field: tag 3, length 0.
    assert_eq!(ours.encode_to_vec(), vec![(3 << 3) | 2, 0]);
}

#[test]
fn watch_response_with_events() {
    let theirs = ec::PbWatchResponse {
        header: Some(their_header(900)),
        watch_id: 5,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        fragment: true,
        events: vec![
            ec::PbEvent {
                r#type: EventType::Put as i32,
                kv: Some(their_kv(b"/a", b"new", 899, 1)),
                prev_kv: Some(their_kv(b"/a", b"old", 850, 1)),
            },
            ec::PbEvent {
                r#type: EventType::Delete as i32,
                kv: Some(ec::PbKeyValue {
                    key: b"/b".to_vec(),
                    mod_revision: 900,
                    ..Default::default()
                }),
                prev_kv: None,
            },
        ],
    };
    let ours = pb::WatchResponse {
        header: Some(our_header(900)),
        watch_id: 5,
        created: false,
        canceled: false,
        compact_revision: 0,
        cancel_reason: String::new(),
        fragment: true,
        events: vec![
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Put as i32,
                kv: Some(our_kv(b"/a", b"new", 899, 1)),
                prev_kv: Some(our_kv(b"/a", b"old", 850, 1)),
            },
            mvccpb::Event {
                r#type: mvccpb::event::EventType::Delete as i32,
                kv: Some(mvccpb::KeyValue {
                    key: b(b"/b"),
                    mod_revision: 900,
                    ..Default::default()
                }),
                prev_kv: None,
            },
        ],
    };
    assert_wire_compat(&theirs, &ours);

    // Created / cancelled-by-compaction notifications.
    let theirs = ec::PbWatchResponse {
        header: Some(their_header(10)),
        watch_id: -1,
        created: true,
        canceled: true,
        compact_revision: 8,
        cancel_reason: "mvcc: required revision has been compacted".into(),
        ..Default::default()
    };
    let ours = pb::WatchResponse {
        header: Some(our_header(10)),
        watch_id: -1,
        created: true,
        canceled: true,
        compact_revision: 8,
        cancel_reason: "mvcc: required revision has been compacted".into(),
        ..Default::default()
    };
    assert_wire_compat(&theirs, &ours);
}

// ---------------------------------------------------------------------------
// Lease
// ---------------------------------------------------------------------------

#[test]
fn lease_grant_and_revoke() {
    let mut theirs: ec::PbLeaseGrantRequest = LeaseGrantOptions::new().with_id(0x1234).into();
    theirs.ttl = 30;
    let ours = pb::LeaseGrantRequest {
        ttl: 30,
        id: 0x1234,
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseGrantResponse {
        header: Some(their_header(3)),
        id: 0x1234,
        ttl: 30,
        error: "lease already exists".into(),
    };
    let ours = pb::LeaseGrantResponse {
        header: Some(our_header(3)),
        id: 0x1234,
        ttl: 30,
        error: "lease already exists".into(),
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseRevokeRequest { id: -5 };
    let ours = pb::LeaseRevokeRequest { id: -5 };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseRevokeResponse {
        header: Some(their_header(4)),
    };
    let ours = pb::LeaseRevokeResponse {
        header: Some(our_header(4)),
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn lease_keep_alive() {
    let theirs = ec::PbLeaseKeepAliveRequest { id: 7 };
    let ours = pb::LeaseKeepAliveRequest { id: 7 };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseKeepAliveResponse {
        header: Some(their_header(8)),
        id: 7,
        ttl: 60,
    };
    let ours = pb::LeaseKeepAliveResponse {
        header: Some(our_header(8)),
        id: 7,
        ttl: 60,
    };
    assert_wire_compat(&theirs, &ours);

    // Expired lease: TTL 0 is omitted on the wire by both.
    let theirs = ec::PbLeaseKeepAliveResponse {
        header: None,
        id: 7,
        ttl: 0,
    };
    let ours = pb::LeaseKeepAliveResponse {
        header: None,
        id: 7,
        ttl: 0,
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn lease_time_to_live_and_leases() {
    let mut theirs: ec::PbLeaseTimeToLiveRequest = LeaseTimeToLiveOptions::new().with_keys().into();
    theirs.id = 11;
    let ours = pb::LeaseTimeToLiveRequest { id: 11, keys: true };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseTimeToLiveResponse {
        header: Some(their_header(20)),
        id: 11,
        ttl: -1,
        granted_ttl: 90,
        keys: vec![b"/a".to_vec(), Vec::new(), b"/c".to_vec()],
    };
    let ours = pb::LeaseTimeToLiveResponse {
        header: Some(our_header(20)),
        id: 11,
        ttl: -1,
        granted_ttl: 90,
        keys: vec![b(b"/a"), Bytes::new(), b(b"/c")],
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseLeasesRequest {};
    let ours = pb::LeaseLeasesRequest {};
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbLeaseLeasesResponse {
        header: Some(their_header(21)),
        leases: vec![
            ec::PbLeaseStatus { id: 1 },
            ec::PbLeaseStatus { id: 0 },
            ec::PbLeaseStatus { id: i64::MIN },
        ],
    };
    let ours = pb::LeaseLeasesResponse {
        header: Some(our_header(21)),
        leases: vec![
            pb::LeaseStatus { id: 1 },
            pb::LeaseStatus { id: 0 },
            pb::LeaseStatus { id: i64::MIN },
        ],
    };
    assert_wire_compat(&theirs, &ours);
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

fn their_member(id: u64, learner: bool) -> ec::PbMember {
    ec::PbMember {
        id,
        name: format!("node-{id}"),
        peer_ur_ls: vec![format!("http://10.0.0.{id}:2380")],
        client_ur_ls: vec![
            format!("http://10.0.0.{id}:2379"),
            format!("https://node-{id}:2379"),
        ],
        is_learner: learner,
    }
}

fn our_member(id: u64, learner: bool) -> pb::Member {
    pb::Member {
        id,
        name: format!("node-{id}"),
        peer_ur_ls: vec![format!("http://10.0.0.{id}:2380")],
        client_ur_ls: vec![
            format!("http://10.0.0.{id}:2379"),
            format!("https://node-{id}:2379"),
        ],
        is_learner: learner,
    }
}

#[test]
fn member_messages() {
    let mut theirs: ec::PbMemberAddRequest = MemberAddOptions::new().with_is_learner().into();
    theirs.peer_ur_ls = vec!["http://10.0.0.4:2380".into(), "http://n4:2380".into()];
    let ours = pb::MemberAddRequest {
        peer_ur_ls: vec!["http://10.0.0.4:2380".into(), "http://n4:2380".into()],
        is_learner: true,
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbMemberAddResponse {
        header: Some(their_header(0)),
        member: Some(their_member(4, true)),
        members: vec![their_member(1, false), their_member(4, true)],
    };
    let ours = pb::MemberAddResponse {
        header: Some(our_header(0)),
        member: Some(our_member(4, true)),
        members: vec![our_member(1, false), our_member(4, true)],
    };
    assert_wire_compat(&theirs, &ours);

    assert_wire_compat(
        &ec::PbMemberRemoveRequest { id: u64::MAX },
        &pb::MemberRemoveRequest { id: u64::MAX },
    );
    assert_wire_compat(
        &ec::PbMemberRemoveResponse {
            header: Some(their_header(0)),
            members: vec![their_member(1, false)],
        },
        &pb::MemberRemoveResponse {
            header: Some(our_header(0)),
            members: vec![our_member(1, false)],
        },
    );

    assert_wire_compat(
        &ec::PbMemberUpdateRequest {
            id: 2,
            peer_ur_ls: vec!["http://new:2380".into()],
        },
        &pb::MemberUpdateRequest {
            id: 2,
            peer_ur_ls: vec!["http://new:2380".into()],
        },
    );
    assert_wire_compat(
        &ec::PbMemberUpdateResponse {
            header: Some(their_header(0)),
            members: vec![their_member(2, false)],
        },
        &pb::MemberUpdateResponse {
            header: Some(our_header(0)),
            members: vec![our_member(2, false)],
        },
    );

    // `linearizable` is field 1 of MemberListRequest since etcd 3.5.
    assert_wire_compat(
        &ec::PbMemberListRequest { linearizable: true },
        &pb::MemberListRequest { linearizable: true },
    );
    assert_eq!(
        pb::MemberListRequest { linearizable: true }.encode_to_vec(),
        vec![0x08, 0x01]
    );
    assert_wire_compat(
        &ec::PbMemberListResponse {
            header: Some(their_header(0)),
            members: vec![
                their_member(1, false),
                their_member(2, false),
                their_member(3, true),
            ],
        },
        &pb::MemberListResponse {
            header: Some(our_header(0)),
            members: vec![
                our_member(1, false),
                our_member(2, false),
                our_member(3, true),
            ],
        },
    );

    assert_wire_compat(
        &ec::PbMemberPromoteRequest { id: 3 },
        &pb::MemberPromoteRequest { id: 3 },
    );
    assert_wire_compat(
        &ec::PbMemberPromoteResponse {
            header: Some(their_header(0)),
            members: vec![their_member(3, false)],
        },
        &pb::MemberPromoteResponse {
            header: Some(our_header(0)),
            members: vec![our_member(3, false)],
        },
    );
}

// ---------------------------------------------------------------------------
// Maintenance
// ---------------------------------------------------------------------------

#[test]
fn status_response() {
    let theirs = ec::PbStatusResponse {
        header: Some(their_header(77)),
        version: "3.5.17".into(),
        db_size: 1 << 30,
        leader: 0xabc,
        raft_index: 1000,
        raft_term: 9,
        raft_applied_index: 999,
        errors: vec!["NOSPACE".into(), "slow disk".into()],
        db_size_in_use: 1 << 20,
        is_learner: true,
        ..Default::default()
    };
    let ours = pb::StatusResponse {
        header: Some(our_header(77)),
        version: "3.5.17".into(),
        db_size: 1 << 30,
        leader: 0xabc,
        raft_index: 1000,
        raft_term: 9,
        raft_applied_index: 999,
        errors: vec!["NOSPACE".into(), "slow disk".into()],
        db_size_in_use: 1 << 20,
        is_learner: true,
    };
    assert_wire_compat(&theirs, &ours);
    assert_wire_compat(&ec::PbStatusRequest {}, &pb::StatusRequest {});
}

#[test]
fn alarm_request_and_response() {
    let actions = [
        (AlarmAction::Get, pb::alarm_request::AlarmAction::Get),
        (
            AlarmAction::Activate,
            pb::alarm_request::AlarmAction::Activate,
        ),
        (
            AlarmAction::Deactivate,
            pb::alarm_request::AlarmAction::Deactivate,
        ),
    ];
    let types = [
        (AlarmType::None, pb::AlarmType::None),
        (AlarmType::Nospace, pb::AlarmType::Nospace),
        (AlarmType::Corrupt, pb::AlarmType::Corrupt),
    ];
    for (their_action, our_action) in actions {
        for (their_type, our_type) in types {
            let theirs = ec::PbAlarmRequest {
                action: their_action as i32,
                member_id: 0x1122_3344_5566_7788,
                alarm: their_type as i32,
            };
            let ours = pb::AlarmRequest {
                action: our_action as i32,
                member_id: 0x1122_3344_5566_7788,
                alarm: our_type as i32,
            };
            assert_wire_compat(&theirs, &ours);
        }
    }

    // etcd-client's own default AlarmOptions (GET, all members, all alarms).
    let theirs: ec::PbAlarmRequest = etcd_client::AlarmOptions::new().into();
    assert_wire_compat(&theirs, &pb::AlarmRequest::default());

    let theirs = ec::PbAlarmResponse {
        header: Some(their_header(0)),
        alarms: vec![
            ec::PbAlarmMember {
                member_id: 1,
                alarm: AlarmType::Nospace as i32,
            },
            ec::PbAlarmMember {
                member_id: 2,
                alarm: AlarmType::Corrupt as i32,
            },
        ],
    };
    let ours = pb::AlarmResponse {
        header: Some(our_header(0)),
        alarms: vec![
            pb::AlarmMember {
                member_id: 1,
                alarm: pb::AlarmType::Nospace as i32,
            },
            pb::AlarmMember {
                member_id: 2,
                alarm: pb::AlarmType::Corrupt as i32,
            },
        ],
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn hash_and_hash_kv() {
    assert_wire_compat(&ec::PbHashRequest {}, &pb::HashRequest {});
    assert_wire_compat(
        &ec::PbHashKvRequest { revision: 4321 },
        &pb::HashKvRequest { revision: 4321 },
    );
    assert_wire_compat(
        &ec::PbHashResponse {
            header: Some(their_header(5)),
            hash: u32::MAX,
        },
        &pb::HashResponse {
            header: Some(our_header(5)),
            hash: u32::MAX,
        },
    );

    let theirs = ec::PbHashKvResponse {
        header: Some(their_header(4321)),
        hash: 0xcafe_babe,
        compact_revision: 4000,
        // hash_revision (field 4) is etcd 3.6; see `etcd_3_6_fields_are_skipped`.
        hash_revision: 0,
    };
    let ours = pb::HashKvResponse {
        header: Some(our_header(4321)),
        hash: 0xcafe_babe,
        compact_revision: 4000,
    };
    assert_wire_compat(&theirs, &ours);
}

#[test]
fn snapshot_response() {
    let blob: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let theirs = ec::PbSnapshotResponse {
        header: Some(their_header(6)),
        remaining_bytes: 3 * 64 * 1024,
        blob: blob.clone(),
        // version (field 4) is etcd 3.6; see `etcd_3_6_fields_are_skipped`.
        version: String::new(),
    };
    let ours = pb::SnapshotResponse {
        header: Some(our_header(6)),
        remaining_bytes: 3 * 64 * 1024,
        blob: Bytes::from(blob),
    };
    assert_wire_compat(&theirs, &ours);

    // The final chunk: no header, nothing remaining.
    let theirs = ec::PbSnapshotResponse {
        blob: vec![1, 2, 3],
        ..Default::default()
    };
    let ours = pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: b(&[1, 2, 3]),
    };
    assert_wire_compat(&theirs, &ours);
    assert_wire_compat(&ec::PbSnapshotRequest {}, &pb::SnapshotRequest {});
}

#[test]
fn misc_maintenance_messages() {
    assert_wire_compat(&ec::PbDefragmentRequest {}, &pb::DefragmentRequest {});
    assert_wire_compat(
        &ec::PbDefragmentResponse {
            header: Some(their_header(1)),
        },
        &pb::DefragmentResponse {
            header: Some(our_header(1)),
        },
    );
    assert_wire_compat(
        &ec::PbMoveLeaderRequest { target_id: 3 },
        &pb::MoveLeaderRequest { target_id: 3 },
    );
    assert_wire_compat(
        &ec::PbMoveLeaderResponse {
            header: Some(their_header(2)),
        },
        &pb::MoveLeaderResponse {
            header: Some(our_header(2)),
        },
    );

    let cases = [
        (
            etcd_client::DowngradeOptions::Validate("3.4".into()),
            pb::downgrade_request::DowngradeAction::Validate,
            "3.4",
        ),
        (
            etcd_client::DowngradeOptions::Enable("3.4".into()),
            pb::downgrade_request::DowngradeAction::Enable,
            "3.4",
        ),
        (
            etcd_client::DowngradeOptions::Cancel,
            pb::downgrade_request::DowngradeAction::Cancel,
            "",
        ),
    ];
    for (options, action, version) in cases {
        let theirs: ec::PbDowngradeRequest = options.into();
        let ours = pb::DowngradeRequest {
            action: action as i32,
            version: version.into(),
        };
        assert_wire_compat(&theirs, &ours);
    }
    assert_wire_compat(
        &ec::PbDowngradeResponse {
            header: Some(their_header(3)),
            version: "3.5.0".into(),
        },
        &pb::DowngradeResponse {
            header: Some(our_header(3)),
            version: "3.5.0".into(),
        },
    );
}

// ---------------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------------

#[test]
fn auth_messages() {
    let theirs = ec::PbAuthenticateRequest {
        name: "root".into(),
        password: "p@ss wörd".into(),
    };
    let ours = pb::AuthenticateRequest {
        name: "root".into(),
        password: "p@ss wörd".into(),
    };
    assert_wire_compat(&theirs, &ours);
    assert_wire_compat(
        &ec::PbAuthenticateResponse {
            header: Some(their_header(0)),
            token: "abc.def".into(),
        },
        &pb::AuthenticateResponse {
            header: Some(our_header(0)),
            token: "abc.def".into(),
        },
    );

    // UserAdd with options (authpb.UserAddOptions) via etcd-client's builder.
    let mut theirs: ec::PbAuthUserAddRequest = UserAddOptions::new().with_no_pwd().into();
    theirs.name = "svc".into();
    theirs.hashed_password = "$2a$10$abcdefghijklmnopqrstuv".into();
    let ours = pb::AuthUserAddRequest {
        name: "svc".into(),
        password: String::new(),
        options: Some(authpb::UserAddOptions { no_password: true }),
        hashed_password: "$2a$10$abcdefghijklmnopqrstuv".into(),
    };
    assert_wire_compat(&theirs, &ours);

    // RoleGrantPermission with an authpb.Permission over a prefix.
    let theirs = ec::PbAuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(
            Permission::new(PermissionType::Readwrite, "/app/")
                .with_prefix()
                .into(),
        ),
    };
    let ours = pb::AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(authpb::Permission {
            perm_type: authpb::permission::Type::Readwrite as i32,
            key: b(b"/app/"),
            range_end: b(b"/app0"),
        }),
    };
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbAuthRoleGetResponse {
        header: Some(their_header(0)),
        perm: vec![
            Permission::new(PermissionType::Read, "a").into(),
            Permission::new(PermissionType::Write, "b")
                .with_range_end("c")
                .into(),
        ],
    };
    let ours = pb::AuthRoleGetResponse {
        header: Some(our_header(0)),
        perm: vec![
            authpb::Permission {
                perm_type: authpb::permission::Type::Read as i32,
                key: b(b"a"),
                range_end: Bytes::new(),
            },
            authpb::Permission {
                perm_type: authpb::permission::Type::Write as i32,
                key: b(b"b"),
                range_end: b(b"c"),
            },
        ],
    };
    assert_wire_compat(&theirs, &ours);

    assert_wire_compat(
        &ec::PbAuthUserGetResponse {
            header: Some(their_header(0)),
            roles: vec!["reader".into(), "root".into()],
        },
        &pb::AuthUserGetResponse {
            header: Some(our_header(0)),
            roles: vec!["reader".into(), "root".into()],
        },
    );
    assert_wire_compat(
        &ec::PbAuthUserGrantRoleRequest {
            user: "svc".into(),
            role: "reader".into(),
        },
        &pb::AuthUserGrantRoleRequest {
            user: "svc".into(),
            role: "reader".into(),
        },
    );
    assert_wire_compat(
        &ec::PbAuthRoleRevokePermissionRequest {
            role: "reader".into(),
            key: b"/app/".to_vec(),
            range_end: b"/app0".to_vec(),
        },
        &pb::AuthRoleRevokePermissionRequest {
            role: "reader".into(),
            key: b(b"/app/"),
            range_end: b(b"/app0"),
        },
    );
    assert_wire_compat(
        &ec::PbAuthUserChangePasswordRequest {
            name: "svc".into(),
            password: "new".into(),
            hashed_password: "h".into(),
        },
        &pb::AuthUserChangePasswordRequest {
            name: "svc".into(),
            password: "new".into(),
            hashed_password: "h".into(),
        },
    );
}

// ---------------------------------------------------------------------------
// Enums, service names, and etcd 3.6 additions
// ---------------------------------------------------------------------------

/// Checks that an enum of ours and etcd-client's have the same value names
/// and numbers, in both directions, via prost's `as_str_name`/`from_str_name`.
macro_rules! assert_same_enum {
    ($ours:ty, $theirs:ty, [$($variant:ident),+ $(,)?]) => {{
        let ours = [$(<$ours>::$variant),+];
        let theirs = [$(<$theirs>::$variant),+];
        for (o, t) in ours.into_iter().zip(theirs) {
            assert_eq!(o as i32, t as i32, "{} numbering", o.as_str_name());
            assert_eq!(o.as_str_name(), t.as_str_name());
            assert_eq!(<$theirs>::from_str_name(o.as_str_name()), Some(t));
            assert_eq!(<$ours>::from_str_name(t.as_str_name()), Some(o));
            assert_eq!(<$ours>::try_from(t as i32), Ok(o));
        }
    }};
}

#[test]
fn enum_numbering_matches() {
    assert_same_enum!(
        pb::range_request::SortOrder,
        SortOrder,
        [None, Ascend, Descend]
    );
    assert_same_enum!(
        pb::range_request::SortTarget,
        SortTarget,
        [Key, Version, Create, Mod, Value]
    );
    assert_same_enum!(
        pb::compare::CompareResult,
        CompareOp,
        [Equal, Greater, Less, NotEqual]
    );
    assert_same_enum!(
        pb::compare::CompareTarget,
        ec::PbCompareTarget,
        [Version, Create, Mod, Value, Lease]
    );
    assert_same_enum!(mvccpb::event::EventType, EventType, [Put, Delete]);
    assert_same_enum!(
        pb::alarm_request::AlarmAction,
        AlarmAction,
        [Get, Activate, Deactivate]
    );
    assert_same_enum!(pb::AlarmType, AlarmType, [None, Nospace, Corrupt]);
    assert_same_enum!(
        authpb::permission::Type,
        PermissionType,
        [Read, Write, Readwrite]
    );
    // etcd-client's watch filter enum is hand-written, not generated.
    assert_eq!(
        pb::watch_create_request::FilterType::Noput as i32,
        WatchFilterType::NoPut as i32
    );
    assert_eq!(
        pb::watch_create_request::FilterType::Nodelete as i32,
        WatchFilterType::NoDelete as i32
    );
}

#[test]
fn grpc_service_names_match() {
    use tonic::server::NamedService;

    assert_eq!(
        pb::kv_server::SERVICE_NAME,
        <ec::PbKvServer<()> as NamedService>::NAME
    );
    assert_eq!(
        pb::watch_server::SERVICE_NAME,
        <ec::PbWatchServer<()> as NamedService>::NAME
    );
    assert_eq!(
        pb::lease_server::SERVICE_NAME,
        <ec::PbLeaseServer<()> as NamedService>::NAME
    );
    assert_eq!(
        pb::cluster_server::SERVICE_NAME,
        <ec::PbClusterServer<()> as NamedService>::NAME
    );
    assert_eq!(
        pb::maintenance_server::SERVICE_NAME,
        <ec::PbMaintenanceServer<()> as NamedService>::NAME
    );
    assert_eq!(
        pb::auth_server::SERVICE_NAME,
        <ec::PbAuthServer<()> as NamedService>::NAME
    );
    assert_eq!(pb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
}

/// etcd-client's protos are newer than 3.5 and carry a few etcd 3.6 fields.
/// Our 3.5 types must decode such messages (skipping the unknown fields) and
/// keep every 3.5 field; re-encoding then yields the message without them.
#[test]
fn etcd_3_6_fields_are_skipped() {
    let mut theirs = ec::PbStatusResponse {
        header: Some(their_header(1)),
        version: "3.6.0".into(),
        db_size: 10,
        leader: 1,
        raft_index: 2,
        raft_term: 3,
        raft_applied_index: 2,
        errors: vec!["e".into()],
        db_size_in_use: 5,
        is_learner: false,
        storage_version: "3.6.0".into(),
        db_size_quota: 1 << 31,
        downgrade_info: Some(ec::PbDowngradeInfo {
            enabled: true,
            target_version: "3.5.0".into(),
        }),
    };
    let ours = pb::StatusResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        ours,
        pb::StatusResponse {
            header: Some(our_header(1)),
            version: "3.6.0".into(),
            db_size: 10,
            leader: 1,
            raft_index: 2,
            raft_term: 3,
            raft_applied_index: 2,
            errors: vec!["e".into()],
            db_size_in_use: 5,
            is_learner: false,
        }
    );
    theirs.storage_version.clear();
    theirs.db_size_quota = 0;
    theirs.downgrade_info = None;
    assert_wire_compat(&theirs, &ours);

    let theirs = ec::PbHashKvResponse {
        header: None,
        hash: 1,
        compact_revision: 2,
        hash_revision: 3,
    };
    let ours = pb::HashKvResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        ours,
        pb::HashKvResponse {
            header: None,
            hash: 1,
            compact_revision: 2,
        }
    );

    let theirs = ec::PbSnapshotResponse {
        header: None,
        remaining_bytes: 1,
        blob: vec![9],
        version: "3.6.0".into(),
    };
    let ours = pb::SnapshotResponse::decode(theirs.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        ours,
        pb::SnapshotResponse {
            header: None,
            remaining_bytes: 1,
            blob: b(&[9]),
        }
    );
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

mod props {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn bytes_strategy(max: usize) -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..max)
    }

    /// A KeyValue in both type systems.
    fn kv_pair() -> impl Strategy<Value = (ec::PbKeyValue, mvccpb::KeyValue)> {
        (
            bytes_strategy(24),
            bytes_strategy(64),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
        )
            .prop_map(|(key, value, create, modr, version, lease)| {
                (
                    ec::PbKeyValue {
                        key: key.clone(),
                        create_revision: create,
                        mod_revision: modr,
                        version,
                        value: value.clone(),
                        lease,
                    },
                    mvccpb::KeyValue {
                        key: key.into(),
                        create_revision: create,
                        mod_revision: modr,
                        version,
                        value: value.into(),
                        lease,
                    },
                )
            })
    }

    /// Converts our message to etcd-client's by value, recursively. Used to
    /// check generated (possibly deeply nested) transactions.
    fn to_their_request_op(op: &pb::RequestOp) -> ec::PbTxnRequestOp {
        use pb::request_op::Request;
        let request = op.request.as_ref().map(|r| match r {
            Request::RequestRange(r) => ec::PbTxnOpRequest::RequestRange(ec::PbRangeRequest {
                key: r.key.to_vec(),
                range_end: r.range_end.to_vec(),
                limit: r.limit,
                revision: r.revision,
                sort_order: r.sort_order,
                sort_target: r.sort_target,
                serializable: r.serializable,
                keys_only: r.keys_only,
                count_only: r.count_only,
                min_mod_revision: r.min_mod_revision,
                max_mod_revision: r.max_mod_revision,
                min_create_revision: r.min_create_revision,
                max_create_revision: r.max_create_revision,
            }),
            Request::RequestPut(p) => ec::PbTxnOpRequest::RequestPut(ec::PbPutRequest {
                key: p.key.to_vec(),
                value: p.value.to_vec(),
                lease: p.lease,
                prev_kv: p.prev_kv,
                ignore_value: p.ignore_value,
                ignore_lease: p.ignore_lease,
            }),
            Request::RequestDeleteRange(d) => {
                ec::PbTxnOpRequest::RequestDeleteRange(ec::PbDeleteRequest {
                    key: d.key.to_vec(),
                    range_end: d.range_end.to_vec(),
                    prev_kv: d.prev_kv,
                })
            }
            Request::RequestTxn(t) => ec::PbTxnOpRequest::RequestTxn(to_their_txn(t)),
        });
        ec::PbTxnRequestOp { request }
    }

    fn to_their_txn(txn: &pb::TxnRequest) -> ec::PbTxnRequest {
        use pb::compare::TargetUnion;
        ec::PbTxnRequest {
            compare: txn
                .compare
                .iter()
                .map(|c| ec::PbCompare {
                    result: c.result,
                    target: c.target,
                    key: c.key.to_vec(),
                    target_union: c.target_union.as_ref().map(|u| match u {
                        TargetUnion::Version(v) => ec::PbTargetUnion::Version(*v),
                        TargetUnion::CreateRevision(v) => ec::PbTargetUnion::CreateRevision(*v),
                        TargetUnion::ModRevision(v) => ec::PbTargetUnion::ModRevision(*v),
                        TargetUnion::Value(v) => ec::PbTargetUnion::Value(v.to_vec()),
                        TargetUnion::Lease(v) => ec::PbTargetUnion::Lease(*v),
                    }),
                    range_end: c.range_end.to_vec(),
                })
                .collect(),
            success: txn.success.iter().map(to_their_request_op).collect(),
            failure: txn.failure.iter().map(to_their_request_op).collect(),
        }
    }

    fn compare_strategy() -> impl Strategy<Value = pb::Compare> {
        use pb::compare::TargetUnion;
        let operand = prop_oneof![
            any::<i64>().prop_map(TargetUnion::Version),
            any::<i64>().prop_map(TargetUnion::CreateRevision),
            any::<i64>().prop_map(TargetUnion::ModRevision),
            bytes_strategy(16).prop_map(|v| TargetUnion::Value(v.into())),
            any::<i64>().prop_map(TargetUnion::Lease),
        ];
        (
            0..4i32,
            0..5i32,
            bytes_strategy(16),
            proptest::option::of(operand),
            bytes_strategy(16),
        )
            .prop_map(
                |(result, target, key, target_union, range_end)| pb::Compare {
                    result,
                    target,
                    key: key.into(),
                    target_union,
                    range_end: range_end.into(),
                },
            )
    }

    fn leaf_op_strategy() -> impl Strategy<Value = pb::RequestOp> {
        use pb::request_op::Request;
        let range = (
            bytes_strategy(16),
            bytes_strategy(16),
            any::<i64>(),
            any::<i64>(),
            any::<i32>(), // unknown enum values must survive too
            0..5i32,
            any::<(bool, bool, bool)>(),
            any::<(i64, i64, i64, i64)>(),
        )
            .prop_map(
                |(key, range_end, limit, revision, order, target, flags, revs)| {
                    Request::RequestRange(pb::RangeRequest {
                        key: key.into(),
                        range_end: range_end.into(),
                        limit,
                        revision,
                        sort_order: order,
                        sort_target: target,
                        serializable: flags.0,
                        keys_only: flags.1,
                        count_only: flags.2,
                        min_mod_revision: revs.0,
                        max_mod_revision: revs.1,
                        min_create_revision: revs.2,
                        max_create_revision: revs.3,
                    })
                },
            );
        let put = (
            bytes_strategy(16),
            bytes_strategy(32),
            any::<i64>(),
            any::<(bool, bool, bool)>(),
        )
            .prop_map(|(key, value, lease, flags)| {
                Request::RequestPut(pb::PutRequest {
                    key: key.into(),
                    value: value.into(),
                    lease,
                    prev_kv: flags.0,
                    ignore_value: flags.1,
                    ignore_lease: flags.2,
                })
            });
        let delete = (bytes_strategy(16), bytes_strategy(16), any::<bool>()).prop_map(
            |(key, range_end, prev_kv)| {
                Request::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: key.into(),
                    range_end: range_end.into(),
                    prev_kv,
                })
            },
        );
        proptest::option::of(prop_oneof![range, put, delete])
            .prop_map(|request| pb::RequestOp { request })
    }

    fn txn_strategy() -> impl Strategy<Value = pb::TxnRequest> {
        let leaf = (
            vec(compare_strategy(), 0..4),
            vec(leaf_op_strategy(), 0..4),
            vec(leaf_op_strategy(), 0..4),
        )
            .prop_map(|(compare, success, failure)| pb::TxnRequest {
                compare,
                success,
                failure,
            });
        leaf.prop_recursive(3, 32, 4, |inner| {
            let op = prop_oneof![
                leaf_op_strategy(),
                inner.prop_map(|t| pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestTxn(t)),
                }),
            ];
            (
                vec(compare_strategy(), 0..3),
                vec(op.clone(), 0..4),
                vec(op, 0..4),
            )
                .prop_map(|(compare, success, failure)| pb::TxnRequest {
                    compare,
                    success,
                    failure,
                })
        })
    }

    proptest! {
        #[test]
        fn prop_key_value((theirs, ours) in kv_pair()) {
            assert_wire_compat(&theirs, &ours);
        }

        #[test]
        fn prop_watch_response(
            header in any::<(u64, u64, i64, u64)>(),
            watch_id in any::<i64>(),
            flags in any::<(bool, bool, bool)>(),
            compact_revision in any::<i64>(),
            cancel_reason in ".{0,20}",
            events in vec((0..2i32, kv_pair(), proptest::option::of(kv_pair())), 0..6),
        ) {
            let theirs = ec::PbWatchResponse {
                header: Some(ec::PbResponseHeader {
                    cluster_id: header.0,
                    member_id: header.1,
                    revision: header.2,
                    raft_term: header.3,
                }),
                watch_id,
                created: flags.0,
                canceled: flags.1,
                compact_revision,
                cancel_reason: cancel_reason.clone(),
                fragment: flags.2,
                events: events
                    .iter()
                    .map(|(ty, (kv, _), prev)| ec::PbEvent {
                        r#type: *ty,
                        kv: Some(kv.clone()),
                        prev_kv: prev.as_ref().map(|(p, _)| p.clone()),
                    })
                    .collect(),
            };
            let ours = pb::WatchResponse {
                header: Some(pb::ResponseHeader {
                    cluster_id: header.0,
                    member_id: header.1,
                    revision: header.2,
                    raft_term: header.3,
                }),
                watch_id,
                created: flags.0,
                canceled: flags.1,
                compact_revision,
                cancel_reason,
                fragment: flags.2,
                events: events
                    .into_iter()
                    .map(|(ty, (_, kv), prev)| mvccpb::Event {
                        r#type: ty,
                        kv: Some(kv),
                        prev_kv: prev.map(|(_, p)| p),
                    })
                    .collect(),
            };
            assert_wire_compat(&theirs, &ours);
        }

        #[test]
        fn prop_nested_txn_request(ours in txn_strategy()) {
            let theirs = to_their_txn(&ours);
            assert_wire_compat(&theirs, &ours);
        }
    }
}
