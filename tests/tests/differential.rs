//! Differential test: the same random operation sequences sent to a real
//! etcd (Debian's `etcd-server`, started on free loopback ports) and to a
//! 3-member muster cluster (through a follower), every response compared
//! field by field except the member and cluster IDs and the Raft term;
//! errors compared by gRPC code and message.
//!
//! `DIFF_CASES` sequences (default 500) of 50 operations each: puts (with
//! prev_kv, some attached to a lease), ranges (single key, prefix, from-key;
//! at old revisions; with limit, sort, keys-only, count-only), deletes (with
//! prev_kv), txns (compares on version/create/mod/value, nested
//! puts/deletes/ranges), compactions, and lease grants (with IDs chosen by
//! the test, so both systems use the same), revokes, time-to-live queries
//! with keys and lease lists. Keys and leases are drawn from small
//! per-sequence sets so operations collide.
//!
//! Each sequence is also watched on both systems: a watch on its prefix
//! (with prev_kv) opened before its first operation, and after its last a
//! second watch from its first revision (replayed from history, or
//! cancelled as compacted). Both event streams are compared event by event
//! (how events are grouped into responses may differ), up to a sentinel
//! put that ends the sequence; a compacted watch by its compact revision.
//!
//! Lease TTLs are hours long, so no lease expires while the test runs
//! (expiry is timed separately by each system). Remaining TTLs are
//! compared only as "alive" (etcd and muster count
//! seconds from different instants) and lists whose order etcd leaves
//! unspecified (a lease's keys, the lease list) are sorted. Without etcd
//! installed the test is skipped with a loud message; scripts/test.sh
//! installs it, so CI never skips it.

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use muster_proto::etcdserverpb as pb;
use muster_tests::{RealEtcd, TestCluster, WAIT, installed};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// One operation, with keys as indexes into the sequence's key set.
#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u8,
        value: u8,
        prev_kv: bool,
        lease: Option<u8>,
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
    LeaseGrant {
        lease: u8,
        ttl: i64,
    },
    LeaseRevoke {
        lease: u8,
    },
    LeaseTimeToLive {
        lease: u8,
        keys: bool,
    },
    Leases,
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
/// Leases per sequence.
const LEASES: u8 = 3;

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
        4 => (0..KEYS, any::<u8>(), any::<bool>(), prop_oneof![3 => Just(None), 1 => (0..LEASES).prop_map(Some)])
            .prop_map(|(key, value, prev_kv, lease)| Op::Put { key, value, prev_kv, lease }),
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
        1 => (0..LEASES, 10_000i64..10_100).prop_map(|(lease, ttl)| Op::LeaseGrant { lease, ttl }),
        1 => (0..LEASES).prop_map(|lease| Op::LeaseRevoke { lease }),
        1 => (0..LEASES, any::<bool>()).prop_map(|(lease, keys)| Op::LeaseTimeToLive { lease, keys }),
        1 => Just(Op::Leases),
    ]
}

/// One system's clients.
struct Side {
    kv: pb::kv_client::KvClient<Channel>,
    lease: pb::lease_client::LeaseClient<Channel>,
    watch: pb::watch_client::WatchClient<Channel>,
}

impl Side {
    async fn connect(endpoint: String) -> Side {
        let channel = Channel::from_shared(endpoint)
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        Side {
            kv: pb::kv_client::KvClient::new(channel.clone()),
            lease: pb::lease_client::LeaseClient::new(channel.clone()),
            watch: pb::watch_client::WatchClient::new(channel),
        }
    }
}

/// Both systems.
struct Pair {
    etcd: Side,
    muster: Side,
}

/// Where one sequence's names live: its key prefix and its lease IDs.
struct Scope {
    prefix: String,
    /// Lease `n` of the sequence has ID `lease_base + n`.
    lease_base: i64,
}

impl Scope {
    fn lease(&self, n: u8) -> i64 {
        self.lease_base + i64::from(n)
    }
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

async fn apply(side: &mut Side, scope: &Scope, op: &Op, current: i64) -> Outcome {
    let prefix = scope.prefix.as_str();
    let client = &mut side.kv;
    match op {
        Op::Put {
            key: k,
            value,
            prev_kv,
            lease,
        } => outcome(
            client
                .put(pb::PutRequest {
                    key: key(prefix, *k),
                    value: Bytes::from(vec![*value]),
                    prev_kv: *prev_kv,
                    lease: lease.map_or(0, |n| scope.lease(n)),
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
        Op::LeaseGrant { lease, ttl } => outcome(
            side.lease
                .lease_grant(pb::LeaseGrantRequest {
                    ttl: *ttl,
                    id: scope.lease(*lease),
                })
                .await,
            |r| clear_header(&mut r.header),
        ),
        Op::LeaseRevoke { lease } => outcome(
            side.lease
                .lease_revoke(pb::LeaseRevokeRequest {
                    id: scope.lease(*lease),
                })
                .await,
            |r| clear_header(&mut r.header),
        ),
        Op::LeaseTimeToLive { lease, keys } => outcome(
            side.lease
                .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                    id: scope.lease(*lease),
                    keys: *keys,
                })
                .await,
            |r| {
                clear_header(&mut r.header);
                // Alive or not: the two count seconds from different
                // instants.
                r.ttl = r.ttl.signum();
                r.keys.sort();
            },
        ),
        Op::Leases => outcome(
            side.lease.lease_leases(pb::LeaseLeasesRequest {}).await,
            |r| {
                clear_header(&mut r.header);
                r.leases.sort_by_key(|l| l.id);
            },
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

async fn current_revision(side: &mut Side) -> i64 {
    side.kv
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

/// An open watch: the request sender (kept so the stream stays open) and
/// the response stream.
struct Watch {
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

/// Opens a watch on `prefix` from `start_revision` with prev_kv, and waits
/// for its created response.
async fn watch_prefix(side: &mut Side, prefix: &str, start_revision: i64) -> Watch {
    let (requests, rx) = mpsc::channel(1);
    let create = pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
        key: Bytes::from(format!("{prefix}/")),
        range_end: Bytes::from(format!("{prefix}0")),
        start_revision,
        prev_kv: true,
        ..Default::default()
    });
    requests
        .send(pb::WatchRequest {
            request_union: Some(create),
        })
        .await
        .expect("send create");
    let mut responses = side
        .watch
        .watch(ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let created = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("created in time")
        .expect("watch stream")
        .expect("a created response");
    assert!(
        created.created,
        "first response is not 'created': {created:?}"
    );
    Watch {
        _requests: requests,
        responses,
    }
}

/// What a watch delivered: every event (as text, in order) up to and
/// including the put of `sentinel`, or the cancellation with its compact
/// revision.
///
/// The `prev_kv` of a key's second write within one revision (one txn) is
/// cleared: etcd reports the version from before the txn, muster the one
/// the first write made (a documented difference, see the README).
async fn watched(watch: &mut Watch, sentinel: &[u8]) -> Result<Vec<String>, (i64, String)> {
    let mut events = Vec::new();
    let mut written: std::collections::HashSet<(i64, Bytes)> = std::collections::HashSet::new();
    loop {
        let response = tokio::time::timeout(WAIT, watch.responses.message())
            .await
            .expect("watch events in time")
            .expect("watch stream healthy")
            .expect("watch stream open");
        if response.canceled {
            return Err((response.compact_revision, response.cancel_reason));
        }
        for mut event in response.events {
            let end = event.kv.as_ref().is_some_and(|kv| kv.key == sentinel);
            if let Some(kv) = &event.kv
                && !written.insert((kv.mod_revision, kv.key.clone()))
            {
                event.prev_kv = None;
            }
            events.push(format!("{event:?}"));
            if end {
                return Ok(events);
            }
        }
    }
}

async fn run_sequence(pair: &mut Pair, scope: &Scope, ops: &[Op]) -> Result<(), TestCaseError> {
    let first = current_revision(&mut pair.etcd).await + 1;
    let mut live_etcd = watch_prefix(&mut pair.etcd, &scope.prefix, 0).await;
    let mut live_muster = watch_prefix(&mut pair.muster, &scope.prefix, 0).await;
    for (i, op) in ops.iter().enumerate() {
        let current = current_revision(&mut pair.etcd).await;
        let muster_current = current_revision(&mut pair.muster).await;
        prop_assert_eq!(
            current,
            muster_current,
            "revisions diverged before op {}",
            i
        );
        let want = tokio::time::timeout(WAIT, apply(&mut pair.etcd, scope, op, current))
            .await
            .expect("etcd answered in time");
        let got = tokio::time::timeout(WAIT, apply(&mut pair.muster, scope, op, current))
            .await
            .expect("muster answered in time");
        prop_assert_eq!(want, got, "op {} {:?}", i, op);
    }
    // The sentinel ends both event streams at the same revision.
    let sentinel = Bytes::from(format!("{}/end", scope.prefix));
    for side in [&mut pair.etcd, &mut pair.muster] {
        side.kv
            .put(pb::PutRequest {
                key: sentinel.clone(),
                ..Default::default()
            })
            .await
            .expect("sentinel put");
    }
    let want = watched(&mut live_etcd, &sentinel).await;
    let got = watched(&mut live_muster, &sentinel).await;
    prop_assert!(want.is_ok(), "etcd's live watch was cancelled: {:?}", want);
    prop_assert_eq!(want, got, "live watch events");
    let mut replay_etcd = watch_prefix(&mut pair.etcd, &scope.prefix, first).await;
    let mut replay_muster = watch_prefix(&mut pair.muster, &scope.prefix, first).await;
    let want = watched(&mut replay_etcd, &sentinel).await;
    let got = watched(&mut replay_muster, &sentinel).await;
    prop_assert_eq!(want, got, "watch from revision {} (history)", first);
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
        let pair = Pair {
            etcd: Side::connect(etcd.endpoint.clone()).await,
            muster: Side::connect(cluster.endpoint(follower)).await,
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
        let n = sequence.fetch_add(1, Ordering::Relaxed);
        let scope = Scope {
            prefix: format!("s{n}"),
            lease_base: 1 + i64::from(n) * i64::from(LEASES),
        };
        let mut pair = pair.lock().unwrap_or_else(|e| e.into_inner());
        runtime.block_on(run_sequence(&mut pair, &scope, &ops))
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
