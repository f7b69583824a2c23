//! Differential test: the same random KV operation sequences sent to a real
//! etcd (Debian's `etcd-server`, started on free loopback ports) and to a
//! 3-member muster cluster (through a follower), every response compared
//! field by field except the member and cluster IDs and the Raft term;
//! errors compared by gRPC code and message.
//!
//! `DIFF_CASES` sequences (default 500) of 50 operations each: puts (with
//! prev_kv), ranges (single key, prefix, from-key; at old revisions; with
//! limit, sort, keys-only, count-only), deletes (with prev_kv), txns
//! (compares on version/create/mod/value, nested puts/deletes/ranges) and
//! compactions. Keys are drawn from a small per-sequence set so operations
//! collide. Without etcd installed the test is skipped with a loud
//! message; scripts/test.sh installs it, so CI never skips it.

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use muster_proto::etcdserverpb as pb;
use muster_tests::{RealEtcd, TestCluster, WAIT, installed};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tonic::transport::Channel;

/// One operation, with keys as indexes into the sequence's key set.
#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
        prev_kv: bool,
    },
    Range {
        range: Span,
        back: i64,
        limit: i64,
        sort: (i32, i32),
        keys_only: bool,
        count_only: bool,
    },
    Delete {
        range: Span,
        prev_kv: bool,
    },
    Txn {
        compare: Vec<(u8, i32, i32, i64)>,
        success: Vec<Inner>,
        failure: Vec<Inner>,
    },
    Compact {
        back: i64,
    },
}

/// A key, a prefix of the sequence, or every key from one on.
#[derive(Clone, Copy, Debug)]
enum Span {
    Key(u8),
    Prefix,
    From(u8),
}

#[derive(Clone, Debug)]
enum Inner {
    Put(u8, u8),
    Delete(Span),
    Range(Span),
}

const KEYS: u8 = 6;

fn span() -> impl Strategy<Value = Span> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Span::Key),
        1 => Just(Span::Prefix),
        1 => (0..KEYS).prop_map(Span::From),
    ]
}

fn inner() -> impl Strategy<Value = Inner> {
    prop_oneof![
        (0..KEYS, any::<u8>()).prop_map(|(k, v)| Inner::Put(k, v)),
        span().prop_map(Inner::Delete),
        span().prop_map(Inner::Range),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS, any::<u8>(), any::<bool>())
            .prop_map(|(key, value, prev_kv)| Op::Put { key, value, prev_kv }),
        3 => (span(), prop_oneof![3 => Just(0i64), 1 => 0i64..8], prop_oneof![3 => Just(0i64), 1 => 1i64..4],
              prop_oneof![3 => Just((0, 0)), 1 => (0i32..3, 0i32..5)], any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(range, back, limit, sort, keys_only, count_only)| Op::Range {
                range, back, limit, sort, keys_only, count_only,
            }),
        2 => (span(), any::<bool>()).prop_map(|(range, prev_kv)| Op::Delete { range, prev_kv }),
        2 => (
            prop::collection::vec((0..KEYS, 0i32..4, 0i32..4, 0i64..6), 0..3),
            prop::collection::vec(inner(), 0..4),
            prop::collection::vec(inner(), 0..3),
        )
            .prop_map(|(compare, success, failure)| Op::Txn { compare, success, failure }),
        1 => (0i64..12).prop_map(|back| Op::Compact { back }),
    ]
}

/// Both systems' KV clients and the current sequence's key prefix.
struct Pair {
    etcd: pb::kv_client::KvClient<Channel>,
    muster: pb::kv_client::KvClient<Channel>,
}

fn key(prefix: &str, k: u8) -> Bytes {
    Bytes::from(format!("{prefix}/k{k}"))
}

fn bounds(prefix: &str, span: Span) -> (Bytes, Bytes) {
    match span {
        Span::Key(k) => (key(prefix, k), Bytes::new()),
        Span::Prefix => (
            Bytes::from(format!("{prefix}/")),
            Bytes::from(format!("{prefix}0")),
        ),
        Span::From(k) => (key(prefix, k), Bytes::from_static(b"\0")),
    }
}

fn inner_request(prefix: &str, op: &Inner) -> pb::RequestOp {
    use pb::request_op::Request;
    let request = match op {
        Inner::Put(k, v) => Request::RequestPut(pb::PutRequest {
            key: key(prefix, *k),
            value: Bytes::from(vec![*v]),
            ..Default::default()
        }),
        Inner::Delete(span) => {
            let (key, range_end) = bounds(prefix, *span);
            Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv: true,
            })
        }
        Inner::Range(span) => {
            let (key, range_end) = bounds(prefix, *span);
            Request::RequestRange(pb::RangeRequest {
                key,
                range_end,
                ..Default::default()
            })
        }
    };
    pb::RequestOp {
        request: Some(request),
    }
}

/// What is compared: a response with its header's IDs and term cleared, or
/// an error's code and message.
type Outcome = Result<String, (tonic::Code, String)>;

fn clear_header(header: &mut Option<pb::ResponseHeader>) {
    if let Some(header) = header {
        header.cluster_id = 0;
        header.member_id = 0;
        header.raft_term = 0;
    }
}

fn outcome<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    clear: impl FnOnce(&mut T),
) -> Outcome {
    match result {
        Ok(response) => {
            let mut response = response.into_inner();
            clear(&mut response);
            Ok(format!("{response:?}"))
        }
        Err(status) => Err((status.code(), status.message().to_string())),
    }
}

fn clear_txn(response: &mut pb::TxnResponse) {
    clear_header(&mut response.header);
    for op in &mut response.responses {
        use pb::response_op::Response;
        match &mut op.response {
            Some(Response::ResponseRange(r)) => clear_header(&mut r.header),
            Some(Response::ResponsePut(r)) => clear_header(&mut r.header),
            Some(Response::ResponseDeleteRange(r)) => clear_header(&mut r.header),
            Some(Response::ResponseTxn(r)) => clear_txn(r),
            None => {}
        }
    }
}

async fn apply(
    client: &mut pb::kv_client::KvClient<Channel>,
    prefix: &str,
    op: &Op,
    current: i64,
) -> Outcome {
    match op {
        Op::Put {
            key: k,
            value,
            prev_kv,
        } => outcome(
            client
                .put(pb::PutRequest {
                    key: key(prefix, *k),
                    value: Bytes::from(vec![*value]),
                    prev_kv: *prev_kv,
                    ..Default::default()
                })
                .await,
            |r| clear_header(&mut r.header),
        ),
        Op::Range {
            range,
            back,
            limit,
            sort,
            keys_only,
            count_only,
        } => {
            let (key, range_end) = bounds(prefix, *range);
            let revision = if *back == 0 {
                0
            } else {
                (current - back).max(1)
            };
            // Sorting by anything but the key leaves the order of ties to
            // etcd's unstable sort (muster keeps them in key order, see the
            // README): compare such ranges whole, with ties in key order.
            let by_value = sort.1 != 0;
            outcome(
                client
                    .range(pb::RangeRequest {
                        key,
                        range_end,
                        revision,
                        limit: if by_value { 0 } else { *limit },
                        sort_order: sort.0,
                        sort_target: sort.1,
                        keys_only: *keys_only,
                        count_only: *count_only,
                        ..Default::default()
                    })
                    .await,
                |r| {
                    clear_header(&mut r.header);
                    if by_value {
                        order_ties_by_key(&mut r.kvs, sort.0 == 2, sort.1);
                    }
                },
            )
        }
        Op::Delete { range, prev_kv } => {
            let (key, range_end) = bounds(prefix, *range);
            outcome(
                client
                    .delete_range(pb::DeleteRangeRequest {
                        key,
                        range_end,
                        prev_kv: *prev_kv,
                    })
                    .await,
                |r| clear_header(&mut r.header),
            )
        }
        Op::Txn {
            compare,
            success,
            failure,
        } => {
            let compare = compare
                .iter()
                .map(|&(k, result, target, operand)| {
                    use pb::compare::TargetUnion;
                    let target_union = match target {
                        0 => TargetUnion::Version(operand),
                        1 => TargetUnion::CreateRevision(current - operand),
                        2 => TargetUnion::ModRevision(current - operand),
                        _ => TargetUnion::Value(Bytes::from(vec![operand as u8 * 40])),
                    };
                    pb::Compare {
                        result,
                        target,
                        key: key(prefix, k),
                        range_end: Bytes::new(),
                        target_union: Some(target_union),
                    }
                })
                .collect();
            let request = pb::TxnRequest {
                compare,
                success: success.iter().map(|op| inner_request(prefix, op)).collect(),
                failure: failure.iter().map(|op| inner_request(prefix, op)).collect(),
            };
            outcome(client.txn(request).await, clear_txn)
        }
        Op::Compact { back } => outcome(
            client
                .compact(pb::CompactionRequest {
                    revision: (current - back).max(1),
                    physical: false,
                })
                .await,
            |r| clear_header(&mut r.header),
        ),
    }
}

/// Re-sorts `kvs` by the sort target (descending if asked), ties in key
/// order.
fn order_ties_by_key(kvs: &mut [muster_proto::mvccpb::KeyValue], descending: bool, target: i32) {
    kvs.sort_by(|a, b| {
        let by_target = match target {
            1 => a.version.cmp(&b.version),
            2 => a.create_revision.cmp(&b.create_revision),
            3 => a.mod_revision.cmp(&b.mod_revision),
            _ => a.value.cmp(&b.value),
        };
        let by_target = if descending {
            by_target.reverse()
        } else {
            by_target
        };
        by_target.then_with(|| a.key.cmp(&b.key))
    });
}

async fn current_revision(client: &mut pb::kv_client::KvClient<Channel>) -> i64 {
    client
        .range(pb::RangeRequest {
            key: Bytes::from_static(b"\0"),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .header
        .expect("header")
        .revision
}

async fn run_sequence(pair: &mut Pair, prefix: &str, ops: &[Op]) -> Result<(), TestCaseError> {
    for (i, op) in ops.iter().enumerate() {
        let current = current_revision(&mut pair.etcd).await;
        let muster_current = current_revision(&mut pair.muster).await;
        prop_assert_eq!(
            current,
            muster_current,
            "revisions diverged before op {}",
            i
        );
        let want = tokio::time::timeout(WAIT, apply(&mut pair.etcd, prefix, op, current))
            .await
            .expect("etcd answered in time");
        let got = tokio::time::timeout(WAIT, apply(&mut pair.muster, prefix, op, current))
            .await
            .expect("muster answered in time");
        prop_assert_eq!(want, got, "op {} {:?}", i, op);
    }
    Ok(())
}

#[test]
fn random_sequences_get_the_same_responses_from_muster_and_etcd() {
    if !installed("etcd") {
        eprintln!(
            "SKIPPED: etcd is not installed; scripts/test.sh installs Debian's etcd-server, \
             and CI never skips this"
        );
        return;
    }
    let cases: u32 = std::env::var("DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let (etcd, cluster, pair) = runtime.block_on(async {
        let etcd = RealEtcd::start(dir.path()).await;
        let cluster = TestCluster::start(3).await;
        let follower = cluster.follower().await;
        let connect = |endpoint: String| async move {
            pb::kv_client::KvClient::new(
                Channel::from_shared(endpoint)
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect"),
            )
        };
        let pair = Pair {
            etcd: connect(etcd.endpoint.clone()).await,
            muster: connect(cluster.endpoint(follower)).await,
        };
        (etcd, cluster, pair)
    });

    let pair = std::sync::Mutex::new(pair);
    let sequence = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failed sequence leaves the two stores apart: report it as it is.
        max_shrink_iters: 0,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 50), |ops| {
        let prefix = format!("s{}", sequence.fetch_add(1, Ordering::Relaxed));
        let mut pair = pair.lock().unwrap_or_else(|e| e.into_inner());
        runtime.block_on(run_sequence(&mut pair, &prefix, &ops))
    });
    eprintln!(
        "differential: {} sequences of 50 operations compared",
        sequence.load(Ordering::Relaxed)
    );
    runtime.block_on(cluster.shutdown());
    drop(etcd);
    if let Err(failure) = result {
        panic!("muster and etcd disagree: {failure}");
    }
}
