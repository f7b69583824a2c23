//! muster-client's `Registration` and `Discovery` against a 3-member
//! in-process cluster: many instances, a registrant that dies, a lost
//! lease, health updates, a partition between the client and the cluster,
//! a compacted resume point, and the cache file.
//!
//! Every wait is bounded ([`WAIT`] or a bound the test states).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use muster_client::{
    Client, ClientConfig, Discovery, DiscoveryConfig, Freshness, Health, Instance, Registration,
    RegistrationConfig, RegistrationState, View,
};
use muster_tests::proxy::Proxy;
use muster_tests::{TestCluster, WAIT};

const PREFIX: &str = "/registry/services";

fn client(endpoints: &[String]) -> Client {
    let mut config = ClientConfig::new(endpoints.to_vec());
    config.request_timeout = Duration::from_secs(3);
    config.dial_timeout = Duration::from_secs(1);
    Client::new(config).expect("client")
}

fn instance(service: &str, n: usize) -> Instance {
    Instance::new(
        service,
        format!("{service}-{n}"),
        format!("10.0.{}.{}:8080", n / 250, n % 250 + 1),
    )
}

fn ttl(seconds: i64) -> RegistrationConfig {
    RegistrationConfig {
        ttl: seconds,
        ..Default::default()
    }
}

fn fast_probe() -> DiscoveryConfig {
    DiscoveryConfig {
        probe_interval: Duration::from_millis(300),
        ..Default::default()
    }
}

/// The instances the cluster holds for `service`, by ID, and the revision.
async fn listed(cluster: &TestCluster, service: &str) -> (BTreeMap<String, Instance>, i64) {
    let mut etcd = cluster.client(0).await;
    let prefix = format!("{PREFIX}/{service}/");
    let answer = etcd
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("range");
    let revision = answer.header().expect("header").revision();
    let instances = answer
        .kvs()
        .iter()
        .map(|kv| {
            let i = Instance::decode(PREFIX, kv.key(), kv.value()).expect("an instance");
            (i.id.clone(), i)
        })
        .collect();
    (instances, revision)
}

fn ids(view: &View) -> Vec<String> {
    view.instances.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_instances_register_and_are_discovered() {
    let cluster = TestCluster::start(3).await;
    let client = client(&cluster.endpoints());
    let discovery = Discovery::start(client.clone(), "api", DiscoveryConfig::default())
        .await
        .expect("discovery");
    assert!(discovery.view().instances.is_empty());

    let started = Instant::now();
    let mut registrations = Vec::new();
    let mut pending = tokio::task::JoinSet::new();
    for n in 0..1000 {
        let client = client.clone();
        pending
            .spawn(async move { Registration::start(client, instance("api", n), ttl(10)).await });
        if pending.len() >= 64 {
            registrations.push(
                pending
                    .join_next()
                    .await
                    .unwrap()
                    .unwrap()
                    .expect("registered"),
            );
        }
    }
    while let Some(done) = pending.join_next().await {
        registrations.push(done.unwrap().expect("registered"));
    }
    eprintln!("1000 registrations in {:?}", started.elapsed());

    let view = discovery
        .wait_for(WAIT, |v| v.instances.len() == 1000)
        .await
        .expect("discovery sees all 1000");
    assert_eq!(view.freshness, Freshness::Live);
    let (stored, revision) = listed(&cluster, "api").await;
    assert!(view.revision <= revision);
    assert_eq!(
        view.instances, stored,
        "the view is exactly what the cluster holds"
    );

    // Every one holds its own lease.
    let leases: std::collections::BTreeSet<i64> = registrations
        .iter()
        .map(|r| r.lease().expect("registered"))
        .collect();
    assert_eq!(leases.len(), 1000);

    // Deregistering half of them shows at once.
    for registration in registrations.drain(..500) {
        registration.deregister().await.expect("deregistered");
    }
    let view = discovery
        .wait_for(WAIT, |v| v.instances.len() == 500)
        .await
        .expect("discovery sees 500 left");
    let (stored, _) = listed(&cluster, "api").await;
    assert_eq!(view.instances, stored);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_registrant_vanishes_within_ttl_and_an_election_timeout() {
    let cluster = TestCluster::start(3).await;
    let endpoints = cluster.endpoints();
    let discovery = Discovery::start(client(&endpoints), "web", DiscoveryConfig::default())
        .await
        .expect("discovery");

    // The registrant runs on a runtime of its own, so it can be killed:
    // shutting that runtime down stops its tasks where they are, without
    // the revoke a drop would send, and closes its connections.
    const TTL: i64 = 2;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let registrant_endpoints = endpoints.clone();
    let registration = runtime
        .spawn(async move {
            Registration::start(client(&registrant_endpoints), instance("web", 1), ttl(TTL)).await
        })
        .await
        .expect("join")
        .expect("registered");
    discovery
        .wait_for(WAIT, |v| v.instances.len() == 1)
        .await
        .expect("seen");

    let killed = Instant::now();
    runtime.shutdown_background();
    std::mem::forget(registration);
    let view = discovery
        .wait_for(WAIT, |v| v.instances.is_empty())
        .await
        .expect("the instance vanishes");
    let took = killed.elapsed();
    // The lease has at most TTL left when the registrant dies; the lessor
    // looks for expired leases every quarter election timeout (75 ms here)
    // and the revoke commits in a round trip: gone within TTL + the
    // election timeout (300 ms).
    let bound = Duration::from_secs(TTL as u64) + Duration::from_millis(300);
    assert!(took <= bound, "gone after {took:?}, bound {bound:?}");
    assert!(
        took >= Duration::from_secs(1),
        "gone after only {took:?}: not by expiry"
    );
    eprintln!("a killed registrant vanished after {took:?} (TTL {TTL} s)");
    assert_eq!(view.freshness, Freshness::Live);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_registered_again_and_health_updates_show() {
    let cluster = TestCluster::start(3).await;
    let client = client(&cluster.endpoints());
    let discovery = Discovery::start(client.clone(), "db", DiscoveryConfig::default())
        .await
        .expect("discovery");
    let registration = Registration::start(client.clone(), instance("db", 1), ttl(3))
        .await
        .expect("registered");
    let first = registration.lease().expect("a lease");

    // Someone revokes the lease: the key vanishes, then comes back under a
    // new lease without the registrant doing anything.
    let mut states = registration.subscribe();
    let mut etcd = cluster.client(1).await;
    etcd.lease_revoke(first).await.expect("revoke");
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if let RegistrationState::Registered { lease, .. } = *states.borrow_and_update()
                && lease != first
            {
                return lease;
            }
            states.changed().await.expect("task alive");
        }
    })
    .await
    .expect("registered again");
    assert_ne!(back, first);
    let view = discovery
        .wait_for(WAIT, |v| v.instances.len() == 1)
        .await
        .expect("back in the view");
    assert_eq!(view.instances["db-1"].health, Health::Passing);

    // Health updates keep the lease.
    registration
        .set_health(Health::Warning)
        .await
        .expect("warning");
    let view = discovery
        .wait_for(WAIT, |v| {
            v.instances
                .get("db-1")
                .is_some_and(|i| i.health == Health::Warning)
        })
        .await
        .expect("warning seen");
    // Warning only: still served, as nothing is passing.
    assert_eq!(view.healthy().len(), 1);
    registration
        .set_health(Health::Critical)
        .await
        .expect("critical");
    let view = discovery
        .wait_for(WAIT, |v| {
            v.instances
                .get("db-1")
                .is_some_and(|i| i.health == Health::Critical)
        })
        .await
        .expect("critical seen");
    assert!(
        view.healthy().is_empty(),
        "critical instances get no traffic"
    );
    assert_eq!(registration.lease(), Some(back));

    // Dropping the handle deregisters.
    drop(registration);
    discovery
        .wait_for(WAIT, |v| v.instances.is_empty())
        .await
        .expect("gone on drop");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_serves_the_last_known_good_list_through_a_partition_and_catches_up() {
    let cluster = TestCluster::start(3).await;
    let writer = client(&cluster.endpoints());
    let proxy = Proxy::start(&cluster.endpoint(1)).await;
    let discovery = Discovery::start(client(&[proxy.endpoint()]), "api", fast_probe())
        .await
        .expect("discovery");
    let mut registrations = BTreeMap::new();
    for n in 0..5 {
        let r = Registration::start(writer.clone(), instance("api", n), ttl(30))
            .await
            .expect("registered");
        registrations.insert(n, r);
    }
    discovery
        .wait_for(WAIT, |v| v.instances.len() == 5)
        .await
        .expect("five seen");

    // Every view the client serves, in order.
    let discovery = std::sync::Arc::new(discovery);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![discovery.view()]));
    let recording = {
        let (seen, discovery) = (seen.clone(), discovery.clone());
        let mut updates = discovery.updates();
        tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                seen.lock().unwrap().push(discovery.view());
            }
        })
    };

    proxy.cut();
    let stale = discovery
        .wait_for(WAIT, |v| matches!(v.freshness, Freshness::Stale { .. }))
        .await
        .expect("the partition is noticed");
    assert_eq!(stale.instances.len(), 5, "the last known good list is kept");

    // Changes the client cannot see yet.
    registrations
        .remove(&0)
        .unwrap()
        .deregister()
        .await
        .expect("deregister");
    registrations
        .remove(&1)
        .unwrap()
        .deregister()
        .await
        .expect("deregister");
    for n in 5..8 {
        let r = Registration::start(writer.clone(), instance("api", n), ttl(30))
            .await
            .expect("registered");
        registrations.insert(n, r);
    }
    registrations[&2]
        .set_health(Health::Critical)
        .await
        .expect("critical");
    // Still serving the old list.
    let during = discovery.view();
    assert_eq!(ids(&during), ["api-0", "api-1", "api-2", "api-3", "api-4"]);
    assert!(matches!(during.freshness, Freshness::Stale { .. }));
    assert_eq!(discovery.healthy().len(), 5);

    proxy.heal();
    let (stored, revision) = listed(&cluster, "api").await;
    let view = discovery
        .wait_for(WAIT, |v| {
            v.freshness == Freshness::Live && v.revision >= revision
        })
        .await
        .expect("live again");
    assert_eq!(view.instances, stored, "caught up exactly");
    assert_eq!(view.instances["api-2"].health, Health::Critical);

    // The revisions served only ever grow; the partition's changes arrived
    // through the resumed watch (no new list: the view never went back to
    // fewer changes than it had).
    recording.abort();
    let mut seen = seen.lock().unwrap().clone();
    seen.push(discovery.view());
    for pair in seen.windows(2) {
        assert!(
            pair[0].revision <= pair[1].revision,
            "revisions never go back"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_resume_point_lists_again() {
    let cluster = TestCluster::start(3).await;
    let writer = client(&cluster.endpoints());
    let proxy = Proxy::start(&cluster.endpoint(2)).await;
    let discovery = Discovery::start(client(&[proxy.endpoint()]), "api", fast_probe())
        .await
        .expect("discovery");
    let a = Registration::start(writer.clone(), instance("api", 1), ttl(30))
        .await
        .expect("registered");
    discovery
        .wait_for(WAIT, |v| v.instances.len() == 1)
        .await
        .expect("seen");
    proxy.cut();
    discovery
        .wait_for(WAIT, |v| matches!(v.freshness, Freshness::Stale { .. }))
        .await
        .expect("stale");
    a.deregister().await.expect("deregistered");
    let _b = Registration::start(writer.clone(), instance("api", 2), ttl(30))
        .await
        .expect("registered");
    let mut etcd = cluster.client(0).await;
    let revision = etcd
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    etcd.compact(revision, None).await.expect("compact");
    proxy.heal();
    let (stored, revision) = listed(&cluster, "api").await;
    let view = discovery
        .wait_for(WAIT, |v| {
            v.freshness == Freshness::Live && v.revision >= revision
        })
        .await
        .expect("listed again");
    assert_eq!(view.instances, stored);
    assert_eq!(ids(&view), ["api-2"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarting_client_starts_warm_from_its_cache_file() {
    let cluster = TestCluster::start(1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("api.json");
    let config = DiscoveryConfig {
        cache_file: Some(cache.clone()),
        start_timeout: Duration::from_millis(500),
        ..fast_probe()
    };
    let writer = client(&cluster.endpoints());
    let _r = Registration::start(writer.clone(), instance("api", 7), ttl(30))
        .await
        .expect("registered");
    let discovery = Discovery::start(writer.clone(), "api", config.clone())
        .await
        .expect("discovery");
    assert_eq!(ids(&discovery.view()), ["api-7"]);
    drop(discovery);
    // The file is written at the latest when the discovery stops.
    let deadline = Instant::now() + WAIT;
    while !cache.exists() {
        assert!(Instant::now() < deadline, "no cache file");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The cluster unreachable: the cache serves, marked stale.
    let unreachable = client(&["http://127.0.0.1:9".to_string()]);
    let warm = Discovery::start(unreachable.clone(), "api", config.clone())
        .await
        .expect("starts from the cache");
    let view = warm.view();
    assert_eq!(ids(&view), ["api-7"]);
    assert!(matches!(view.freshness, Freshness::Stale { .. }));
    assert_eq!(view.instances["api-7"].addr, "10.0.0.8:8080");

    // Without a cache file, an unreachable cluster is an error.
    let cold = Discovery::start(
        unreachable,
        "api",
        DiscoveryConfig {
            cache_file: Some(dir.path().join("other.json")),
            ..config
        },
    )
    .await;
    assert!(cold.is_err());
    cluster.shutdown().await;
}

#[tokio::test]
async fn invalid_instances_are_refused_before_anything_is_written() {
    let cluster = TestCluster::start(1).await;
    let writer = client(&cluster.endpoints());
    let bad = Instance::new("API", "1", "10.0.0.1:80");
    let e = Registration::start(writer.clone(), bad, ttl(10))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("service \"API\""), "{e}");
    let e = Registration::start(
        writer.clone(),
        Instance::new("api", "1", "nowhere"),
        ttl(10),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("addr"), "{e}");
    let e = Registration::start(writer.clone(), instance("api", 1), ttl(0))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("ttl"), "{e}");
    let (stored, _) = listed(&cluster, "api").await;
    assert!(stored.is_empty());
    cluster.shutdown().await;
}
