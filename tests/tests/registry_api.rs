//! The registry service (`muster.registry.v1.Registry`) of a 3-member
//! in-process cluster, through its generated client: a registration is an
//! etcd key with a JSON value on a lease, held by its stream; SetHealth,
//! Deregister, List filters, Watch (snapshot, changes, resumption,
//! compaction), and every way a registration ends (dropped, closed, lease
//! revoked, deregistered, replaced, member stopping, connection silently
//! cut). Every wait is bounded by [`WAIT`] (or a shorter bound where
//! promptness is the point).

use std::time::Duration;

use etcd_client::{EventType, WatchOptions};
use muster_proto::registrypb::registry_client::RegistryClient;
use muster_proto::registrypb::{
    DeregisterRequest, Health, Instance, ListRequest, RegisterRequest, RegisterResponse,
    SetHealthRequest, WatchRequest, WatchResponse,
};
use muster_server::server::ClientApi;
use muster_tests::proxy::Proxy;
use muster_tests::{TestCluster, Timings, WAIT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

const PREFIX: &str = "/registry/services";

async fn registry(cluster: &TestCluster, i: usize) -> RegistryClient<Channel> {
    tokio::time::timeout(WAIT, RegistryClient::connect(cluster.endpoint(i)))
        .await
        .expect("connect in time")
        .expect("connect")
}

fn instance(service: &str, id: &str, port: u16, tags: &[&str], health: Health) -> Instance {
    Instance {
        service: service.into(),
        id: id.into(),
        addr: format!("10.0.0.1:{port}"),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        health: health as i32,
        ..Default::default()
    }
}

/// A live registration: its request side and its responses.
struct Held {
    requests: mpsc::Sender<RegisterRequest>,
    responses: Streaming<RegisterResponse>,
    first: RegisterResponse,
}

impl Held {
    /// Sends a health update and waits for its answer.
    async fn set_health(&mut self, health: Health) -> RegisterResponse {
        self.requests
            .send(RegisterRequest {
                health: health as i32,
                ..Default::default()
            })
            .await
            .expect("stream open");
        next(&mut self.responses)
            .await
            .expect("health update answered")
            .expect("stream open")
    }

    /// Waits for the stream to end with an error; its status.
    async fn ended(mut self) -> Status {
        loop {
            match next(&mut self.responses).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the registration ended without an error"),
                Err(status) => return status,
            }
        }
    }
}

async fn next<T>(stream: &mut Streaming<T>) -> Result<Option<T>, Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a message in time")
}

/// Opens a Register stream for `instance` with `ttl`; the first answer or
/// the status the stream ended with.
async fn register(
    client: &mut RegistryClient<Channel>,
    instance: Instance,
    ttl: i64,
) -> Result<Held, Status> {
    let (requests, receiver) = mpsc::channel(4);
    requests
        .send(RegisterRequest {
            instance: Some(instance),
            ttl,
            ..Default::default()
        })
        .await
        .expect("queue the first request");
    let mut responses = tokio::time::timeout(WAIT, client.register(ReceiverStream::new(receiver)))
        .await
        .expect("register in time")?
        .into_inner();
    let first = next(&mut responses).await?.expect("a first answer");
    Ok(Held {
        requests,
        responses,
        first,
    })
}

async fn registered(client: &mut RegistryClient<Channel>, instance: Instance, ttl: i64) -> Held {
    register(client, instance, ttl).await.expect("registered")
}

async fn list(
    client: &mut RegistryClient<Channel>,
    service: &str,
    tags: &[&str],
    health: &[Health],
) -> Vec<String> {
    let response = tokio::time::timeout(
        WAIT,
        client.list(ListRequest {
            service: service.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            health: health.iter().map(|h| *h as i32).collect(),
        }),
    )
    .await
    .expect("list in time")
    .expect("list")
    .into_inner();
    response
        .instances
        .iter()
        .map(|i| format!("{}/{}", i.service, i.id))
        .collect()
}

async fn set_health(
    client: &mut RegistryClient<Channel>,
    service: &str,
    id: &str,
    health: Health,
) -> Result<i64, Status> {
    tokio::time::timeout(
        WAIT,
        client.set_health(SetHealthRequest {
            service: service.into(),
            id: id.into(),
            health: health as i32,
        }),
    )
    .await
    .expect("set health in time")
    .map(|r| r.into_inner().revision)
}

async fn deregister(client: &mut RegistryClient<Channel>, service: &str, id: &str) -> (bool, i64) {
    let response = tokio::time::timeout(
        WAIT,
        client.deregister(DeregisterRequest {
            service: service.into(),
            id: id.into(),
        }),
    )
    .await
    .expect("deregister in time")
    .expect("deregister")
    .into_inner();
    (response.deleted, response.revision)
}

/// The value and lease of `key`, read through etcd's KV.
async fn etcd_get(etcd: &mut etcd_client::Client, key: &str) -> Option<(String, i64)> {
    let response = etcd.get(key, None).await.expect("etcd get");
    response
        .kvs()
        .first()
        .map(|kv| (kv.value_str().expect("utf-8").to_string(), kv.lease()))
}

/// Waits (within `bound`) for the delete of `key` after `revision`.
async fn await_delete(etcd: &mut etcd_client::Client, key: &str, after: i64, bound: Duration) {
    let mut stream = etcd
        .watch(
            key,
            Some(WatchOptions::new().with_start_revision(after + 1)),
        )
        .await
        .expect("etcd watch");
    loop {
        let response = tokio::time::timeout(bound, stream.message())
            .await
            .expect("the key is deleted in time")
            .expect("watch healthy")
            .expect("a response");
        if response
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_through_a_follower_is_an_etcd_key_whose_health_changes() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let other = (follower + 1) % 3;
    let mut client = registry(&cluster, follower).await;
    let mut held = registered(
        &mut client,
        instance("api", "api-1", 8080, &["v2"], Health::Passing),
        0,
    )
    .await;
    let key = format!("{PREFIX}/api/api-1");
    assert_eq!(held.first.key, key);
    assert_eq!(held.first.ttl, 10, "the default TTL");
    assert!(held.first.lease != 0 && held.first.revision > 0);

    let mut etcd = cluster.client(other).await;
    let (value, lease) = etcd_get(&mut etcd, &key).await.expect("the instance's key");
    assert_eq!(lease, held.first.lease);
    assert!(
        value.starts_with(r#"{"Addr":"10.0.0.1:8080","Metadata":{"version":1,"service":"api","id":"api-1","tags":["v2"]"#),
        "{value}"
    );
    assert!(value.contains(r#""health":"passing""#), "{value}");
    assert!(value.contains(r#""registered":"20"#), "{value}");

    // SetHealth through another member keeps the lease.
    let mut elsewhere = registry(&cluster, other).await;
    let revision = set_health(&mut elsewhere, "api", "api-1", Health::Critical)
        .await
        .expect("set health");
    assert!(revision > held.first.revision);
    let (value, lease) = etcd_get(&mut etcd, &key).await.expect("still there");
    assert!(value.contains(r#""health":"critical""#), "{value}");
    assert_eq!(lease, held.first.lease);
    // Setting the health it has writes nothing.
    let same = set_health(&mut elsewhere, "api", "api-1", Health::Critical).await;
    assert!(same.expect("set health") >= revision);

    // A health update on the stream is answered with its write, also when
    // it is the health the registrant registered with (SetHealth changed
    // the stored one since).
    let answer = held.set_health(Health::Passing).await;
    assert!(answer.revision > revision);
    assert_eq!(answer.lease, held.first.lease);
    let (value, lease) = etcd_get(&mut etcd, &key).await.expect("still there");
    assert!(value.contains(r#""health":"passing""#), "{value}");
    assert_eq!(lease, held.first.lease);
    let warning = held.set_health(Health::Warning).await;
    assert!(warning.revision > answer.revision);
    let (value, _) = etcd_get(&mut etcd, &key).await.expect("still there");
    assert!(value.contains(r#""health":"warning""#), "{value}");
    // The health it has: no write, the last write's revision.
    let again = held.set_health(Health::Warning).await;
    assert_eq!(again.revision, warning.revision);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_service_tags_and_health() {
    let cluster = TestCluster::start(3).await;
    let mut client = registry(&cluster, cluster.follower().await).await;
    let one = registered(
        &mut client,
        instance("api", "1", 8081, &["v2"], Health::Passing),
        0,
    )
    .await;
    let two = registered(
        &mut client,
        instance("api", "2", 8082, &["v2", "canary"], Health::Critical),
        0,
    )
    .await;
    let web = registered(
        &mut client,
        instance("web", "1", 8083, &["v2"], Health::Passing),
        0,
    )
    .await;
    // A value that is not an instance, written through etcd: skipped.
    let mut etcd = cluster.client(0).await;
    etcd.put(format!("{PREFIX}/api/3"), "not json", None)
        .await
        .expect("etcd put");

    assert_eq!(
        list(&mut client, "", &[], &[]).await,
        ["api/1", "api/2", "web/1"]
    );
    assert_eq!(list(&mut client, "api", &[], &[]).await, ["api/1", "api/2"]);
    assert_eq!(
        list(&mut client, "api", &["v2"], &[]).await,
        ["api/1", "api/2"]
    );
    assert_eq!(
        list(&mut client, "", &["v2", "canary"], &[]).await,
        ["api/2"]
    );
    assert_eq!(
        list(&mut client, "", &["v3"], &[]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list(&mut client, "", &["v2"], &[Health::Passing]).await,
        ["api/1", "web/1"]
    );
    assert_eq!(
        list(
            &mut client,
            "api",
            &[],
            &[Health::Warning, Health::Critical]
        )
        .await,
        ["api/2"]
    );

    // The read revision, and each instance's mod revision and lease.
    let response = client
        .list(ListRequest {
            service: "web".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(response.revision >= web.first.revision);
    let listed = &response.instances[0];
    assert_eq!(
        (
            listed.mod_revision,
            listed.lease,
            listed.weight,
            listed.health
        ),
        (
            web.first.revision,
            web.first.lease,
            1,
            Health::Passing as i32
        )
    );
    assert!(listed.registered_unix > 1_700_000_000);

    let refused = client
        .list(ListRequest {
            service: "Not A Label".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad service name");
    assert_eq!(refused.code(), Code::InvalidArgument);
    drop((one, two, web));
    cluster.shutdown().await;
}

/// The next watch response, as (revision, put ids, removed ids) with the
/// removed instances' health.
async fn change(stream: &mut Streaming<WatchResponse>) -> (i64, Vec<String>, Vec<(String, i32)>) {
    let response = next(stream)
        .await
        .expect("watch healthy")
        .expect("a response");
    assert!(response.snapshot.is_empty() && response.compact_revision == 0);
    (
        response.revision,
        response.put.iter().map(|i| i.id.clone()).collect(),
        response
            .removed
            .iter()
            .map(|i| (i.id.clone(), i.health))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_a_snapshot_then_the_changes_in_order() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut client = registry(&cluster, follower).await;
    let one = registered(
        &mut client,
        instance("api", "1", 8081, &[], Health::Passing),
        0,
    )
    .await;
    let mut watcher = registry(&cluster, (follower + 1) % 3).await;
    let mut stream = watcher
        .watch(WatchRequest {
            service: "api".into(),
            health: vec![Health::Passing as i32],
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let snapshot = next(&mut stream)
        .await
        .expect("watch healthy")
        .expect("the snapshot");
    let ids: Vec<_> = snapshot.snapshot.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["1"]);
    let start = snapshot.revision;
    assert!(start >= one.first.revision);

    // Another service's instance is not this watch's business.
    let _web = registered(
        &mut client,
        instance("web", "1", 8083, &[], Health::Passing),
        0,
    )
    .await;
    let two = registered(
        &mut client,
        instance("api", "2", 8082, &[], Health::Passing),
        0,
    )
    .await;
    set_health(&mut client, "api", "1", Health::Critical)
        .await
        .expect("set health");
    let two_revision = two.first.revision;
    drop(two);

    let (r1, put, removed) = change(&mut stream).await;
    assert_eq!(
        (r1, put, removed),
        (two_revision, vec!["2".to_string()], vec![])
    );
    assert!(r1 > start + 1, "the web registration came between");
    let (r2, put, removed) = change(&mut stream).await;
    assert!(r2 > r1);
    assert_eq!(
        (put, removed),
        (vec![], vec![("1".to_string(), Health::Critical as i32)]),
        "no longer passing: removed, as it now is"
    );
    let (r3, put, removed) = change(&mut stream).await;
    assert!(r3 > r2);
    assert_eq!(
        (put, removed),
        (vec![], vec![("2".to_string(), Health::Passing as i32)]),
        "the dropped registration, as last stored"
    );

    // Resuming from a revision replays the same changes.
    let mut resumed = watcher
        .watch(WatchRequest {
            service: "api".into(),
            health: vec![Health::Passing as i32],
            start_revision: start + 1,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let revisions = [
        change(&mut resumed).await.0,
        change(&mut resumed).await.0,
        change(&mut resumed).await.0,
    ];
    assert_eq!(revisions, [r1, r2, r3]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_told_so() {
    let cluster = TestCluster::start(3).await;
    let mut etcd = cluster.client(0).await;
    let mut last = 0;
    for i in 0..5 {
        let put = etcd
            .put(
                format!("{PREFIX}/api/{i}"),
                r#"{"Addr":"10.0.0.1:80"}"#,
                None,
            )
            .await
            .expect("etcd put");
        last = put.header().expect("header").revision();
    }
    etcd.compact(last, None).await.expect("compact");
    let mut client = registry(&cluster, cluster.follower().await).await;
    // A linearizable read first, so the follower has applied the
    // compaction (a watch serves from the member's applied state).
    assert_eq!(list(&mut client, "api", &[], &[]).await.len(), 5);
    let mut stream = client
        .watch(WatchRequest {
            start_revision: 2,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let response = next(&mut stream)
        .await
        .expect("watch healthy")
        .expect("a response");
    assert_eq!(response.compact_revision, last);
    assert!(response.put.is_empty() && response.removed.is_empty());
    assert!(
        next(&mut stream).await.expect("ends cleanly").is_none(),
        "the watch ends"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_ends_with_its_stream() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut client = registry(&cluster, follower).await;
    let mut etcd = cluster.client(follower).await;
    // A long TTL: the instance must go long before it could expire.
    let ttl = 60;
    let prompt = Duration::from_secs(5);

    // Dropped (the call cancelled): gone promptly.
    let held = registered(
        &mut client,
        instance("api", "dropped", 8081, &[], Health::Passing),
        ttl,
    )
    .await;
    assert_eq!(held.first.ttl, ttl);
    let key = held.first.key.clone();
    let revision = held.first.revision;
    drop(held);
    await_delete(&mut etcd, &key, revision, prompt).await;
    assert_eq!(etcd_get(&mut etcd, &key).await, None);

    // Closed by the client: the responses end once the lease is revoked.
    let mut held = registered(
        &mut client,
        instance("api", "closed", 8082, &[], Health::Passing),
        ttl,
    )
    .await;
    let key = held.first.key.clone();
    drop(held.requests);
    let end = tokio::time::timeout(prompt, held.responses.message())
        .await
        .expect("ends promptly");
    assert!(matches!(end, Ok(None)), "{end:?}");
    assert_eq!(etcd_get(&mut etcd, &key).await, None);

    // A lease revoked by someone else: NOT_FOUND, with etcd's message.
    let held = registered(
        &mut client,
        instance("api", "revoked", 8083, &[], Health::Passing),
        1,
    )
    .await;
    etcd.lease_revoke(held.first.lease).await.expect("revoke");
    let status = held.ended().await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    // Deregistered: the key goes at once, and the registration learns.
    let held = registered(
        &mut client,
        instance("api", "deregistered", 8084, &[], Health::Passing),
        1,
    )
    .await;
    let key = held.first.key.clone();
    let (deleted, revision) = deregister(&mut client, "api", "deregistered").await;
    assert!(deleted && revision > held.first.revision);
    assert_eq!(etcd_get(&mut etcd, &key).await, None);
    let status = held.ended().await;
    assert!(
        matches!(status.code(), Code::NotFound | Code::FailedPrecondition),
        "{status:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_an_existing_id_replaces_it_and_ends_the_old_registration() {
    let cluster = TestCluster::start(3).await;
    let mut client = registry(&cluster, cluster.follower().await).await;
    let mut etcd = cluster.client(0).await;
    // TTL 1 (the cluster's minimum): renewals, and so the owner check,
    // every third of a second.
    let old = registered(
        &mut client,
        instance("api", "1", 8081, &[], Health::Passing),
        1,
    )
    .await;
    let mut new = registered(
        &mut client,
        instance("api", "1", 9091, &[], Health::Warning),
        1,
    )
    .await;
    assert_ne!(new.first.lease, old.first.lease);
    let status = old.ended().await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    // The old registration's lease is revoked without taking the key.
    let (value, lease) = etcd_get(&mut etcd, &new.first.key).await.expect("kept");
    assert_eq!(lease, new.first.lease);
    assert!(value.contains("10.0.0.1:9091"), "{value}");
    let answer = new.set_health(Health::Passing).await;
    assert_eq!(answer.lease, new.first.lease);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused() {
    let cluster = TestCluster::start(3).await;
    let mut client = registry(&cluster, cluster.follower().await).await;
    let cases = [
        (instance("Api", "1", 80, &[], Health::Passing), 0, "service"),
        (instance("api", "a/b", 80, &[], Health::Passing), 0, "id"),
        (instance("api", "1", 0, &[], Health::Passing), 0, "port"),
        (
            instance("api", "1", 80, &["x", "x"], Health::Passing),
            0,
            "twice",
        ),
        (instance("api", "1", 80, &[], Health::Passing), -1, "ttl"),
    ];
    for (instance, ttl, word) in cases {
        let status = register(&mut client, instance, ttl)
            .await
            .err()
            .expect("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(word),
            "{status:?} should name {word}"
        );
    }
    // etcd's answer to a TTL above its maximum.
    let status = register(
        &mut client,
        instance("api", "1", 80, &[], Health::Passing),
        10_000_000_000,
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(
        (status.code(), status.message()),
        (Code::OutOfRange, "etcdserver: too large lease TTL")
    );
    // Nothing was written, nor a lease left behind.
    let mut etcd = cluster.client(0).await;
    let leases = etcd.leases().await.expect("leases");
    assert!(leases.leases().is_empty());
    assert_eq!(list(&mut client, "", &[], &[]).await, Vec::<String>::new());

    let (deleted, revision) = deregister(&mut client, "api", "unknown").await;
    assert!(!deleted && revision > 0);
    let status = set_health(&mut client, "api", "unknown", Health::Critical)
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = set_health(&mut client, "api", "1", Health::Unspecified)
        .await
        .expect_err("no health");
    assert_eq!(status.code(), Code::InvalidArgument);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_member_ends_its_streams_and_leaves_the_instance_to_its_lease() {
    let mut cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let other = (follower + 1) % 3;
    let mut client = registry(&cluster, follower).await;
    let held = registered(
        &mut client,
        instance("api", "1", 8081, &[], Health::Passing),
        60,
    )
    .await;
    let mut watch = client
        .watch(WatchRequest::default())
        .await
        .expect("watch")
        .into_inner();
    next(&mut watch)
        .await
        .expect("watch healthy")
        .expect("the snapshot");

    let old_lease = held.first.lease;
    cluster.stop(follower).await;
    let status = held.ended().await;
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "muster: the member is stopping")
    );
    let end = next(&mut watch).await;
    assert!(!matches!(end, Ok(Some(_))), "the watch ends: {end:?}");
    // The lease is left to expire (or to a registration through another
    // member to take the key over): the instance is still listed.
    let mut elsewhere = registry(&cluster, other).await;
    assert_eq!(list(&mut elsewhere, "api", &[], &[]).await, ["api/1"]);
    let again = registered(
        &mut elsewhere,
        instance("api", "1", 8081, &[], Health::Passing),
        60,
    )
    .await;
    assert_ne!(again.first.lease, old_lease);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registrant_cut_off_without_a_close_loses_its_instance_by_keepalive() {
    fn short_keepalive(api: ClientApi) -> ClientApi {
        api.with_keepalive(KEEPALIVE, KEEPALIVE)
    }
    const KEEPALIVE: Duration = Duration::from_secs(2);
    let cluster = TestCluster::start_configured(3, Timings::FAST, short_keepalive).await;
    let follower = cluster.follower().await;
    let proxy = Proxy::start(&cluster.endpoint(follower)).await;
    let mut client = tokio::time::timeout(WAIT, RegistryClient::connect(proxy.endpoint()))
        .await
        .expect("connect in time")
        .expect("connect");
    let held = registered(
        &mut client,
        instance("api", "1", 8081, &[], Health::Passing),
        60,
    )
    .await;
    let mut etcd = cluster.client(follower).await;
    // No FIN, no reset: only the member's keepalive can tell. The
    // instance goes long before its 60 s TTL could run out.
    proxy.cut();
    let bound = KEEPALIVE + KEEPALIVE + Duration::from_secs(5);
    await_delete(&mut etcd, &held.first.key, held.first.revision, bound).await;
    drop(held);
    cluster.shutdown().await;
}
