//! The `Lease` service of in-process clusters through `etcd-client`:
//! grant, revoke, keep-alive (also through a follower and across a leader
//! failover), time-to-live with keys, the lease list, and expiry after the
//! holder stops. Every wait is bounded by [`WAIT`]; expiry is awaited as a
//! watch event, never slept for.

use etcd_client::{Client, EventType, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use muster_server::lease::LeaseConfig;
use muster_tests::{TestCluster, Timings, WAIT};

async fn keep_alive_once(client: &mut Client, id: i64) -> i64 {
    let (mut keeper, mut stream) = client.lease_keep_alive(id).await.expect("keep-alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let response = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a keep-alive response in time")
        .expect("keep-alive stream healthy")
        .expect("a response");
    assert_eq!(response.id(), id);
    response.ttl()
}

async fn time_to_live(client: &mut Client, id: i64) -> (i64, i64, Vec<Vec<u8>>) {
    let response = client
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    (
        response.ttl(),
        response.granted_ttl(),
        response.keys().to_vec(),
    )
}

/// Grants a lease of `ttl` seconds through `client`, puts `key` with it and
/// opens a watch on `key` through `watcher` (created response consumed).
async fn leased_key_watched(
    client: &mut Client,
    watcher: &mut Client,
    key: &str,
    ttl: i64,
) -> (i64, etcd_client::WatchStream) {
    let lease = client.lease_grant(ttl, None).await.expect("grant");
    let put = client
        .put(key, "up", Some(PutOptions::new().with_lease(lease.id())))
        .await
        .expect("put");
    // From the revision after the put: a follower's watch may start
    // before it has applied the put.
    let after = put.header().expect("header").revision() + 1;
    let mut stream = watcher
        .watch(key, Some(WatchOptions::new().with_start_revision(after)))
        .await
        .expect("watch");
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("created in time")
        .expect("created");
    (lease.id(), stream)
}

/// Waits (bounded) for the delete of the watched key.
async fn await_delete(stream: &mut etcd_client::WatchStream) {
    let deleted = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the lease expires in time")
        .expect("watch healthy")
        .expect("an event");
    assert_eq!(deleted.events()[0].event_type(), EventType::Delete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_attach_list_time_to_live_and_revoke() {
    let cluster = TestCluster::start_with(
        1,
        Timings {
            heartbeat_ms: 100,
            election_timeout_ms: 1000,
        },
    )
    .await;
    let mut client = cluster.client(0).await;

    // Below the minimum TTL (ceil(1.5 × 1 s) = 2 s) is raised to it.
    let short = client.lease_grant(1, None).await.expect("grant");
    assert_eq!(short.ttl(), 2);
    let lease = client.lease_grant(60, None).await.expect("grant");
    assert_eq!(lease.ttl(), 60);
    let id = lease.id();
    assert!(id != 0 && id != short.id());

    client
        .put("svc/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with lease");
    let (ttl, granted, keys) = time_to_live(&mut client, id).await;
    assert_eq!(granted, 60);
    assert!((58..=60).contains(&ttl), "remaining {ttl}");
    assert_eq!(keys, vec![b"svc/a".to_vec()]);
    assert_eq!(keep_alive_once(&mut client, id).await, 60);

    let mut listed: Vec<i64> = client
        .leases()
        .await
        .expect("leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    listed.sort_unstable();
    let mut expected = vec![id, short.id()];
    expected.sort_unstable();
    assert_eq!(listed, expected);

    client.lease_revoke(id).await.expect("revoke");
    assert!(
        client
            .get("svc/a", None)
            .await
            .expect("get")
            .kvs()
            .is_empty()
    );
    assert_eq!(time_to_live(&mut client, id).await.0, -1, "gone");
    // etcd answers TTL 0 for an unknown lease; etcd-client turns that into
    // an error.
    let unknown = client
        .lease_keep_alive(id)
        .await
        .expect_err("unknown lease");
    assert!(unknown.to_string().contains("lease not found"), "{unknown}");
    let again = client.lease_revoke(id).await.expect_err("revoked twice");
    assert!(
        again.to_string().contains("requested lease not found"),
        "{again}"
    );
    let too_long = client
        .lease_grant(9_000_000_001, None)
        .await
        .expect_err("TTL too large");
    assert!(too_long.to_string().contains("too large"), "{too_long}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_after_its_holder_stops_and_its_keys_vanish() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut holder = cluster.client(follower).await;
    let mut watcher = cluster.client(cluster.wait_leader().await).await;
    let (id, mut stream) = leased_key_watched(&mut holder, &mut watcher, "svc/x", 1).await;
    // Kept alive through a follower, then abandoned.
    assert_eq!(keep_alive_once(&mut holder, id).await, 1);
    drop(holder);
    await_delete(&mut stream).await;
    assert_eq!(time_to_live(&mut watcher, id).await.0, -1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_through_a_follower_hold_a_lease_across_a_leader_failover() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let mut holder = cluster.client(follower).await;
    let lease = holder.lease_grant(2, None).await.expect("grant");
    let id = lease.id();
    holder
        .put("svc/held", "up", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put");
    let (mut keeper, mut responses) = holder.lease_keep_alive(id).await.expect("keep-alive");

    // Keep alive every half second for ~6 s, stopping the leader half-way.
    for round in 0..12 {
        if round == 4 {
            cluster.stop(leader).await;
        }
        keeper.keep_alive().await.expect("send");
        let response = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("a keep-alive answer in time")
            .expect("stream healthy")
            .expect("a response");
        assert_eq!(response.ttl(), 2, "round {round}: the lease is alive");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let (ttl, granted, keys) = time_to_live(&mut holder, id).await;
    assert_eq!(granted, 2);
    assert!(ttl > 0, "alive after the failover: {ttl}");
    assert_eq!(keys, vec![b"svc/held".to_vec()]);
    cluster.shutdown().await;
}

/// A leader cut off from the others still believes it leads for a while;
/// it must not renew leases then (the others elect a leader that lets them
/// expire), so a keep-alive sent to it fails and the client moves on. The
/// fault suite found this: the old leader answered TTL 5 while the new one
/// expired the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_renews_no_lease() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let mut old = cluster.client(leader).await;
    let id = old.lease_grant(60, None).await.expect("grant").id();
    assert_eq!(
        keep_alive_once(&mut old, id).await,
        60,
        "renewed while it leads"
    );

    cluster.isolate(leader);
    // etcd-client sends one keep-alive and waits for its answer when it
    // opens the stream: the refusal may end either step.
    let renewal = async {
        let (mut keeper, mut responses) = old.lease_keep_alive(id).await?;
        keeper.keep_alive().await?;
        responses.message().await
    };
    let answer = tokio::time::timeout(WAIT, renewal)
        .await
        .expect("an answer (an error) in time");
    assert!(
        answer.is_err(),
        "the isolated old leader renewed the lease: {answer:?}"
    );

    // The others elect a leader, which renews it. Until they have, a
    // keep-alive through them fails (it is forwarded to the old leader),
    // and the client tries again, as a client moving between members does.
    let other = (0..cluster.size())
        .find(|&i| i != leader)
        .expect("a follower");
    let mut through_other = cluster.client(other).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let renewal = async {
            let (mut keeper, mut responses) = through_other.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            responses.message().await
        };
        if let Ok(Ok(Some(response))) = tokio::time::timeout(WAIT, renewal).await {
            assert_eq!(response.ttl(), 60);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal through the other members within {WAIT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cluster.heal(leader);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lease_still_expires_after_a_leader_failover() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let survivor = cluster.follower().await;
    let mut client = cluster.client(survivor).await;
    let mut watcher = cluster.client(survivor).await;
    let (_, mut stream) = leased_key_watched(&mut client, &mut watcher, "svc/gone", 1).await;
    cluster.stop(leader).await;
    // The new leader restarts the lease from its TTL plus an election
    // timeout, and then revokes it: nobody keeps it alive.
    await_delete(&mut stream).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_carry_the_remaining_ttl_to_a_new_leader() {
    let mut cluster = TestCluster::start_configured(3, Timings::FAST, |api| {
        api.with_lease_config(LeaseConfig {
            checkpoint_interval: std::time::Duration::from_millis(300),
            ..LeaseConfig::for_election_timeout(std::time::Duration::from_millis(300))
        })
    })
    .await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let mut client = cluster.client(follower).await;
    let id = client.lease_grant(30, None).await.expect("grant").id();

    // A checkpoint (remaining < 30 s) reaches the follower's replica.
    let node = cluster.node(follower);
    let deadline = std::time::Instant::now() + WAIT;
    let checkpointed = loop {
        let remaining = node
            .state_machine()
            .store()
            .lease(id)
            .map_or(0, |lease| lease.remaining_ttl);
        if remaining > 0 {
            break remaining;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint replicated"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(checkpointed < 30, "{checkpointed}");

    cluster.stop(leader).await;
    let (ttl, granted, _) = time_to_live(&mut client, id).await;
    assert_eq!(granted, 30);
    // Restarted from the checkpoint (plus one 0.3 s election timeout), not
    // from the full TTL.
    assert!(
        ttl <= checkpointed + 1,
        "remaining {ttl} after checkpoint {checkpointed}"
    );
    cluster.shutdown().await;
}
