//! The `Watch` service of in-process clusters: through `etcd-client` (it
//! works unchanged) and through the raw gRPC stubs where the protocol
//! itself is checked (watch IDs, fragments, progress, `hasleader`).
//!
//! Every wait is bounded by [`WAIT`]; events are awaited, never slept for.

use etcd_client::{
    Client, EventType, GetOptions, PutOptions, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};
use muster_proto::etcdserverpb as pb;
use muster_tests::{TestCluster, WAIT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// One event as (type, key, value, mod revision).
type Seen = (EventType, String, String, i64);

/// The next response of `stream`, bounded.
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a watch response in time")
        .expect("watch stream healthy")
        .expect("watch stream open")
}

/// Opens a watch and consumes its created response; returns the stream and
/// the watch ID.
async fn watch(client: &mut Client, key: &str, options: WatchOptions) -> (WatchStream, i64) {
    let mut stream = client.watch(key, Some(options)).await.expect("watch");
    let created = next(&mut stream).await;
    assert!(
        created.created(),
        "first response is the created one: {created:?}"
    );
    assert!(!created.canceled(), "{}", created.cancel_reason());
    (stream, created.watch_id())
}

/// Reads events until one at `revision` or later arrives.
async fn events_until(stream: &mut WatchStream, revision: i64) -> Vec<Seen> {
    let mut seen: Vec<Seen> = Vec::new();
    while seen.last().is_none_or(|s| s.3 < revision) {
        let response = next(stream).await;
        assert!(!response.canceled(), "cancelled: {response:?}");
        for event in response.events() {
            let kv = event.kv().expect("kv");
            seen.push((
                event.event_type(),
                kv.key_str().expect("utf-8").to_string(),
                kv.value_str().expect("utf-8").to_string(),
                kv.mod_revision(),
            ));
        }
    }
    seen
}

async fn put(client: &mut Client, key: &str, value: &str) -> i64 {
    let response = client.put(key, value, None).await.expect("put");
    response.header().expect("header").revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_watch_on_a_follower_sees_puts_and_deletes_in_order() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let mut watcher = cluster.client(follower).await;
    let mut writer = cluster.client(leader).await;
    let (mut stream, _) = watch(&mut watcher, "svc/", WatchOptions::new().with_prefix()).await;

    put(&mut writer, "svc/a", "1").await;
    put(&mut writer, "other", "x").await;
    put(&mut writer, "svc/b", "2").await;
    let last = writer
        .delete("svc/a", None)
        .await
        .expect("delete")
        .header()
        .expect("header")
        .revision();
    let seen = events_until(&mut stream, last).await;
    assert_eq!(
        seen,
        vec![
            (EventType::Put, "svc/a".into(), "1".into(), 2),
            (EventType::Put, "svc/b".into(), "2".into(), 4),
            (EventType::Delete, "svc/a".into(), "".into(), 5),
        ]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_an_old_revision_replays_history_with_prev_kv_and_filters() {
    let cluster = TestCluster::start(1).await;
    let mut client = cluster.client(0).await;
    put(&mut client, "k", "1").await; // 2
    put(&mut client, "k", "2").await; // 3
    client.delete("k", None).await.expect("delete"); // 4
    let last = put(&mut client, "k", "3").await; // 5

    let (mut all, _) = watch(
        &mut client,
        "k",
        WatchOptions::new().with_start_revision(3).with_prev_key(),
    )
    .await;
    let response = next(&mut all).await;
    let events = response.events();
    assert_eq!(events.len(), 3, "{response:?}");
    assert_eq!(events[0].kv().expect("kv").value(), b"2");
    assert_eq!(events[0].prev_kv().expect("prev").value(), b"1");
    assert_eq!(events[1].event_type(), EventType::Delete);
    assert_eq!(events[1].prev_kv().expect("prev").value(), b"2");
    assert!(
        events[2].prev_kv().is_none(),
        "a put after a delete has no prev"
    );
    assert_eq!(events[2].kv().expect("kv").mod_revision(), last);

    let (mut puts_only, _) = watch(
        &mut client,
        "k",
        WatchOptions::new()
            .with_start_revision(2)
            .with_filters([WatchFilterType::NoDelete]),
    )
    .await;
    let seen = events_until(&mut puts_only, last).await;
    assert!(seen.iter().all(|s| s.0 == EventType::Put), "{seen:?}");
    assert_eq!(seen.len(), 3);
    // A delete then a put: the next response carries only the put (the
    // delete is filtered out), without prev_kv, which was not asked for.
    client.delete("k", None).await.expect("delete");
    let marker = put(&mut client, "k", "marker").await;
    let response = next(&mut puts_only).await;
    let events = response.events();
    assert_eq!(events.len(), 1, "{response:?}");
    assert_eq!(events[0].event_type(), EventType::Put);
    assert_eq!(events[0].kv().expect("kv").mod_revision(), marker);
    assert!(events[0].prev_kv().is_none());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_cancelled_with_the_compact_revision() {
    let cluster = TestCluster::start(1).await;
    let mut client = cluster.client(0).await;
    for i in 0..5 {
        put(&mut client, "k", &i.to_string()).await; // 2..=6
    }
    client.compact(5, None).await.expect("compact");
    let mut stream = client
        .watch("k", Some(WatchOptions::new().with_start_revision(3)))
        .await
        .expect("watch");
    let created = next(&mut stream).await;
    assert!(created.created());
    let cancelled = next(&mut stream).await;
    assert!(cancelled.canceled(), "{cancelled:?}");
    assert_eq!(cancelled.watch_id(), created.watch_id());
    assert_eq!(cancelled.compact_revision(), 5);

    // From the compaction revision itself, history is there.
    let (mut from_five, _) =
        watch(&mut client, "k", WatchOptions::new().with_start_revision(5)).await;
    let seen = events_until(&mut from_five, 6).await;
    assert_eq!(seen.iter().map(|s| s.3).collect::<Vec<_>>(), vec![5, 6]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_event_exactly_once_in_order() {
    let cluster = TestCluster::start(1).await;
    let mut watcher = cluster.client(0).await;
    let writer = cluster.client(0).await;
    let (mut stream, _) = watch(&mut watcher, "bulk/", WatchOptions::new().with_prefix()).await;
    // Far more entries than the state machine's event broadcast holds
    // (1,024), written by 8 writers while nobody reads the stream.
    let writes = 2_400;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let mut writer = writer.clone();
        tasks.spawn(async move {
            let mut last = 0;
            for i in (w..writes).step_by(8) {
                last = last.max(put(&mut writer, &format!("bulk/{i:05}"), "v").await);
            }
            last
        });
    }
    let mut last = 0;
    while let Some(done) = tasks.join_next().await {
        last = last.max(done.expect("writer"));
    }
    let writes = writes as i64;
    let seen = events_until(&mut stream, last).await;
    let revisions: Vec<i64> = seen.iter().map(|s| s.3).collect();
    let expected: Vec<i64> = (last - writes + 1..=last).collect();
    assert_eq!(revisions.len(), expected.len(), "events lost or repeated");
    assert_eq!(revisions, expected, "every revision once, in order");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_after_its_member_restarts() {
    let mut cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut watcher = cluster.client(follower).await;
    let (mut stream, _) = watch(&mut watcher, "r/", WatchOptions::new().with_prefix()).await;
    let mut writer = cluster.client(cluster.wait_leader().await).await;
    let first = put(&mut writer, "r/1", "a").await;
    let seen = events_until(&mut stream, first).await;
    let resume_from = seen.last().expect("an event").3 + 1;

    cluster.stop(follower).await;
    drop(stream);
    let mut writer = cluster.client(cluster.wait_leader().await).await;
    let mut expected = Vec::new();
    for i in 2..=6 {
        let revision = put(&mut writer, &format!("r/{i}"), "b").await;
        expected.push(revision);
    }
    cluster.restart(follower).await;

    let mut watcher = cluster.client(follower).await;
    let (mut resumed, _) = watch(
        &mut watcher,
        "r/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(resume_from),
    )
    .await;
    let seen = events_until(&mut resumed, *expected.last().expect("writes")).await;
    assert_eq!(seen.iter().map(|s| s.3).collect::<Vec<_>>(), expected);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_survives_a_leader_failover() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let mut watcher = cluster.client(follower).await;
    let (mut stream, _) = watch(&mut watcher, "f/", WatchOptions::new().with_prefix()).await;
    let mut writer = cluster.client(follower).await;
    let before = put(&mut writer, "f/before", "1").await;
    events_until(&mut stream, before).await;

    cluster.stop(leader).await;
    let after = loop {
        match writer.put("f/after", "2", None).await {
            Ok(response) => break response.header().expect("header").revision(),
            Err(_) => {
                // No leader yet: the new election takes an election timeout.
                tokio::time::timeout(WAIT, cluster.wait_leader())
                    .await
                    .expect("a new leader");
            }
        }
    };
    let seen = events_until(&mut stream, after).await;
    assert_eq!(seen.last().expect("event").1, "f/after");
    cluster.shutdown().await;
}

// ---------------------------------------------------------------------------
// Protocol details through the raw stubs
// ---------------------------------------------------------------------------

/// A raw watch stream: requests in, responses out.
struct Raw {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
}

impl Raw {
    async fn open(endpoint: String, require_leader: bool) -> Result<Raw, tonic::Status> {
        let mut client = pb::watch_client::WatchClient::connect(endpoint)
            .await
            .expect("connect");
        let (requests, receiver) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        if require_leader {
            request
                .metadata_mut()
                .insert("hasleader", "true".parse().expect("metadata"));
        }
        let responses = client.watch(request).await?.into_inner();
        Ok(Raw {
            requests,
            responses,
        })
    }

    async fn send(&self, request: pb::watch_request::RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("send");
    }

    async fn create(&self, create: pb::WatchCreateRequest) {
        self.send(pb::watch_request::RequestUnion::CreateRequest(create))
            .await;
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream healthy")
            .expect("stream open")
    }
}

fn create(key: &str, range_end: &str, watch_id: i64) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: range_end.as_bytes().to_vec().into(),
        watch_id,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_share_a_stream_with_ids_chosen_by_server_or_client() {
    let cluster = TestCluster::start(1).await;
    let mut raw = Raw::open(cluster.endpoint(0), false).await.expect("open");
    raw.create(create("a", "", 0)).await;
    raw.create(create("b", "", 0)).await;
    raw.create(create("c", "", 100)).await;
    raw.create(create("d", "", 100)).await; // duplicate
    raw.create(create("b", "a", 0)).await; // empty range
    let ids: Vec<(i64, bool, bool, String)> = {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let r = raw.next().await;
            ids.push((r.watch_id, r.created, r.canceled, r.cancel_reason));
        }
        ids
    };
    assert_eq!(
        ids,
        vec![
            (0, true, false, String::new()),
            (1, true, false, String::new()),
            (100, true, false, String::new()),
            (
                -1,
                true,
                true,
                muster_server::watch::DUPLICATE_ID.to_string()
            ),
            (
                -1,
                true,
                true,
                muster_server::watch::EMPTY_RANGE.to_string()
            ),
        ]
    );

    raw.send(pb::watch_request::RequestUnion::CancelRequest(
        pb::WatchCancelRequest { watch_id: 1 },
    ))
    .await;
    let cancelled = raw.next().await;
    assert_eq!((cancelled.watch_id, cancelled.canceled), (1, true));

    let mut client = cluster.client(0).await;
    put(&mut client, "b", "gone").await;
    let revision = put(&mut client, "c", "x").await;
    let response = raw.next().await;
    assert_eq!(response.watch_id, 100, "the cancelled watcher gets nothing");
    assert_eq!(response.events.len(), 1);
    assert_eq!(response.header.expect("header").revision, revision);

    // A progress request is answered with the current revision, ID -1.
    raw.send(pb::watch_request::RequestUnion::ProgressRequest(
        pb::WatchProgressRequest {},
    ))
    .await;
    let progress = raw.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty());
    assert_eq!(progress.header.expect("header").revision, revision);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_revision_comes_in_fragments_when_asked_and_whole_otherwise() {
    let cluster = TestCluster::start(1).await;
    let mut client = cluster.client(0).await;
    let big = "x".repeat(600 * 1024);
    for i in 0..4 {
        client
            .put(format!("big/{i}"), big.clone(), Some(PutOptions::new()))
            .await
            .expect("put");
    }
    let mut fragmented = Raw::open(cluster.endpoint(0), false).await.expect("open");
    fragmented
        .create(pb::WatchCreateRequest {
            prev_kv: true,
            fragment: true,
            ..create("big/", "big0", 0)
        })
        .await;
    assert!(fragmented.next().await.created);
    let mut whole = Raw::open(cluster.endpoint(0), false).await.expect("open");
    whole
        .create(pb::WatchCreateRequest {
            prev_kv: true,
            ..create("big/", "big0", 0)
        })
        .await;
    assert!(whole.next().await.created);

    // One delete: four events at one revision, ~2.4 MB with their prev_kv.
    client
        .delete(
            "big/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete");
    let mut parts = Vec::new();
    loop {
        let part = fragmented.next().await;
        let more = part.fragment;
        parts.push(part);
        if !more {
            break;
        }
    }
    assert!(parts.len() > 1, "split into fragments");
    let events: usize = parts.iter().map(|p| p.events.len()).sum();
    assert_eq!(events, 4, "every event once across the fragments");
    let single = whole.next().await;
    assert!(!single.fragment);
    assert_eq!(single.events.len(), 4, "not fragmented without the flag");
    assert!(
        client
            .get("big/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("get")
            .kvs()
            .is_empty()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_leader_stream_is_refused_by_a_member_without_a_leader() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let survivor = cluster.follower().await;
    let other = (0..3)
        .find(|&i| i != leader && i != survivor)
        .expect("third");
    cluster.stop(leader).await;
    cluster.stop(other).await;
    // The survivor campaigns alone and so forgets the old leader.
    let node = cluster.node(survivor);
    node.raft()
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_none(), "no leader")
        .await
        .expect("the survivor has no leader");

    let refused = Raw::open(cluster.endpoint(survivor), true).await;
    let status = refused.err().expect("refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "etcdserver: no leader");

    // Without the metadata the stream opens (and serves local history).
    let mut raw = Raw::open(cluster.endpoint(survivor), false)
        .await
        .expect("open without hasleader");
    raw.create(create("k", "", 0)).await;
    assert!(raw.next().await.created);
    cluster.shutdown().await;
}
