//! Malformed, oversized and out-of-range requests to every client service
//! of a 3-member cluster, sent to a follower and to the leader through the
//! raw gRPC stubs (so nothing is filtered client-side). Each gets an error
//! (etcd's code where etcd has one) or a well-formed answer; afterwards
//! every member still serves reads and writes.

use bytes::Bytes;
use muster_proto::etcdserverpb as pb;
use muster_tests::{TestCluster, WAIT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Awaits `call` (bounded) and returns its status code (`Ok` on success).
async fn code<T>(call: impl Future<Output = Result<T, tonic::Status>>) -> Code {
    match tokio::time::timeout(WAIT, call)
        .await
        .expect("answered in time")
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

async fn kv_abuse(channel: Channel) {
    let mut kv = pb::kv_client::KvClient::new(channel).max_encoding_message_size(64 << 20);
    let put = |key: Bytes, value: Bytes, lease: i64| pb::PutRequest {
        key,
        value,
        lease,
        ..Default::default()
    };
    assert_eq!(
        code(kv.put(put(Bytes::new(), b("v"), 0))).await,
        Code::InvalidArgument
    );
    // Over --max-request-bytes (1.5 MiB): etcd's "request is too large".
    let oversized = Bytes::from(vec![b'x'; 1700 * 1024]);
    assert_eq!(
        code(kv.put(put(b("k"), oversized, 0))).await,
        Code::InvalidArgument
    );
    // Over the transport's limit too: refused before decoding.
    let huge = Bytes::from(vec![b'x'; 8 << 20]);
    let got = code(kv.put(put(b("k"), huge, 0))).await;
    assert!(
        matches!(got, Code::OutOfRange | Code::ResourceExhausted),
        "{got:?}"
    );
    assert_eq!(code(kv.put(put(b("k"), b("v"), -7))).await, Code::NotFound);
    let range = |key: &str, end: &str| pb::RangeRequest {
        key: b(key),
        range_end: b(end),
        ..Default::default()
    };
    assert_eq!(code(kv.range(range("", ""))).await, Code::InvalidArgument);
    assert_eq!(
        code(kv.range(range("b", "a"))).await,
        Code::Ok,
        "empty range reads nothing"
    );
    for bad in [
        pb::RangeRequest {
            sort_order: 99,
            ..range("a", "z")
        },
        pb::RangeRequest {
            sort_target: -3,
            ..range("a", "z")
        },
    ] {
        // etcd: "etcdserver: invalid sort option".
        assert_eq!(code(kv.range(bad)).await, Code::InvalidArgument);
    }
    for (revision, expected) in [(i64::MAX, Code::OutOfRange), (-5, Code::Ok)] {
        let got = code(kv.range(pb::RangeRequest {
            revision,
            ..range("a", "z")
        }))
        .await;
        assert_eq!(got, expected, "range at revision {revision}");
    }
    assert_eq!(
        code(kv.range(pb::RangeRequest {
            limit: -1,
            ..range("a", "z")
        }))
        .await,
        Code::Ok
    );
    let many = pb::TxnRequest {
        success: (0..200)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(put(
                    b(&format!("t{i}")),
                    b("v"),
                    0,
                ))),
            })
            .collect(),
        ..Default::default()
    };
    assert_eq!(code(kv.txn(many)).await, Code::InvalidArgument);
    let bad_compare = pb::TxnRequest {
        compare: vec![pb::Compare {
            result: 42,
            target: 17,
            key: b("k"),
            ..Default::default()
        }],
        ..Default::default()
    };
    let got = code(kv.txn(bad_compare)).await;
    assert!(matches!(got, Code::InvalidArgument), "{got:?}");
    let empty_op = pb::TxnRequest {
        success: vec![pb::RequestOp { request: None }],
        ..Default::default()
    };
    let got = code(kv.txn(empty_op)).await;
    assert!(matches!(got, Code::InvalidArgument | Code::Ok), "{got:?}");
    for revision in [i64::MAX, -1, 0] {
        let got = code(kv.compact(pb::CompactionRequest {
            revision,
            physical: true,
        }))
        .await;
        assert!(
            matches!(got, Code::OutOfRange | Code::Ok | Code::InvalidArgument),
            "compact {revision}: {got:?}"
        );
    }
}

async fn lease_abuse(channel: Channel, id: i64) {
    let mut lease = pb::lease_client::LeaseClient::new(channel);
    let grant = |ttl: i64, id: i64| pb::LeaseGrantRequest { ttl, id };
    assert_eq!(
        code(lease.lease_grant(grant(i64::MAX, 0))).await,
        Code::OutOfRange
    );
    assert_eq!(
        code(lease.lease_grant(grant(-100, 0))).await,
        Code::Ok,
        "raised to the minimum"
    );
    assert_eq!(code(lease.lease_grant(grant(10, id))).await, Code::Ok);
    assert_eq!(
        code(lease.lease_grant(grant(10, id))).await,
        Code::FailedPrecondition
    );
    for id in [0, -1, i64::MIN, 12345] {
        assert_eq!(
            code(lease.lease_revoke(pb::LeaseRevokeRequest { id })).await,
            Code::NotFound,
            "revoke {id}"
        );
        let ttl = tokio::time::timeout(
            WAIT,
            lease.lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true }),
        )
        .await
        .expect("in time")
        .expect("unknown lease is an answer")
        .into_inner()
        .ttl;
        assert_eq!(ttl, -1, "time to live of {id}");
    }
    let (requests, receiver) = mpsc::channel(8);
    let mut answers = lease
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .expect("keep-alive stream")
        .into_inner();
    for id in [0, -1, i64::MAX] {
        requests
            .send(pb::LeaseKeepAliveRequest { id })
            .await
            .expect("send");
        let answer = tokio::time::timeout(WAIT, answers.message())
            .await
            .expect("in time")
            .expect("healthy")
            .expect("an answer");
        assert_eq!((answer.id, answer.ttl), (id, 0));
    }
}

async fn watch_abuse(channel: Channel) {
    let mut watch = pb::watch_client::WatchClient::new(channel);
    let (requests, receiver) = mpsc::channel(16);
    let mut answers = watch
        .watch(ReceiverStream::new(receiver))
        .await
        .expect("watch stream")
        .into_inner();
    let create = |key: &str, end: &str, start: i64, filters: Vec<i32>| pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: b(key),
                range_end: b(end),
                start_revision: start,
                filters,
                ..Default::default()
            },
        )),
    };
    for request in [
        pb::WatchRequest {
            request_union: None,
        },
        pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CancelRequest(
                pb::WatchCancelRequest { watch_id: 999 },
            )),
        },
        create("b", "a", 0, vec![]),
        create("k", "", i64::MAX, vec![]),
        create("k", "", -5, vec![]),
        create("", "\0", 0, vec![7, -1]),
    ] {
        requests.send(request).await.expect("send");
    }
    // Four creates, four answers (the empty request and the unknown cancel
    // get none), then the stream still serves a progress request.
    for _ in 0..4 {
        let answer = tokio::time::timeout(WAIT, answers.message())
            .await
            .expect("in time")
            .expect("healthy")
            .expect("an answer");
        assert!(answer.created, "{answer:?}");
    }
    requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        })
        .await
        .expect("send");
    let progress = tokio::time::timeout(WAIT, answers.message())
        .await
        .expect("in time")
        .expect("healthy")
        .expect("an answer");
    assert_eq!(progress.watch_id, -1);
}

async fn maintenance_abuse(channel: Channel) {
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    for revision in [i64::MAX, -1] {
        let got = code(maintenance.hash_kv(pb::HashKvRequest { revision })).await;
        assert!(
            matches!(got, Code::OutOfRange | Code::Ok),
            "hash_kv {revision}: {got:?}"
        );
    }
    let got = code(maintenance.move_leader(pb::MoveLeaderRequest { target_id: 0 })).await;
    assert_eq!(got, Code::FailedPrecondition);
    let got = code(maintenance.alarm(pb::AlarmRequest {
        action: 99,
        member_id: 0,
        alarm: 42,
    }))
    .await;
    assert_ne!(got, Code::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_errors_and_every_member_keeps_serving() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    for member in [follower, leader] {
        let channel = Channel::from_shared(cluster.endpoint(member))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        kv_abuse(channel.clone()).await;
        lease_abuse(channel.clone(), 1000 + member as i64).await;
        watch_abuse(channel.clone()).await;
        maintenance_abuse(channel).await;
    }
    for member in 0..cluster.size() {
        let mut client = cluster.client(member).await;
        client
            .put(format!("after/{member}"), "ok", None)
            .await
            .expect("still takes writes");
        let got = client
            .get(format!("after/{member}"), None)
            .await
            .expect("still reads");
        assert_eq!(got.kvs()[0].value(), b"ok");
    }
    cluster.shutdown().await;
}
