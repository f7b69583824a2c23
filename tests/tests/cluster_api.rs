//! The `Cluster` service of in-process clusters through `etcd-client`:
//! the member list with published names and URLs, a learner added through
//! a follower, started, caught up and promoted, a member removed, a member
//! re-addressed and restarted at its new peer address, and etcd's errors
//! for every refused change. Every wait is bounded by [`WAIT`]; progress is
//! awaited by polling the cluster, never slept for.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, MemberAddOptions};
use muster_tests::{CLUSTER_ID, TestCluster, Timings, WAIT};
use tonic::Code;

/// (id, name, peer URLs, client URLs, learner) of every listed member.
type Listed = Vec<(u64, String, Vec<String>, Vec<String>, bool)>;

async fn listed(client: &mut Client) -> Listed {
    let response = client.member_list().await.expect("member list");
    response
        .members()
        .iter()
        .map(|m| {
            (
                m.id(),
                m.name().to_string(),
                m.peer_urls().to_vec(),
                m.client_urls().to_vec(),
                m.is_learner(),
            )
        })
        .collect()
}

/// What member `i` of `cluster` should look like in a list.
fn expected(
    cluster: &TestCluster,
    i: usize,
    learner: bool,
) -> (u64, String, Vec<String>, Vec<String>, bool) {
    (
        cluster.member_id(i),
        cluster.name(i).to_string(),
        vec![cluster.peer_url(i)],
        vec![cluster.endpoint(i)],
        learner,
    )
}

fn status_of(error: etcd_client::Error) -> (Code, String) {
    match error {
        etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Polls `done` on member `i`'s list until it holds, within [`WAIT`].
async fn wait_list(client: &mut Client, what: &str, done: impl Fn(&Listed) -> bool) -> Listed {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = listed(client).await;
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen within {WAIT:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_member_lists_every_member_with_its_attributes() {
    let cluster = TestCluster::start(3).await;
    let want: Listed = (0..3).map(|i| expected(&cluster, i, false)).collect();
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let response = client.member_list().await.expect("member list");
        let header = response.header().expect("header");
        assert_eq!(header.cluster_id(), CLUSTER_ID);
        assert_eq!(header.member_id(), cluster.member_id(i));
        assert!(header.raft_term() >= 1);
        assert_eq!(listed(&mut client).await, want, "member {i}'s view");
    }
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_learner_added_through_a_follower_catches_up_and_is_promoted() {
    let mut cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut client = cluster.client(follower).await;
    for i in 0..20 {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }

    let url = cluster.prepare_member().await;
    let added = client
        .member_add(
            [url.as_str()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add");
    let member = added.member().expect("the added member");
    let id = member.id();
    assert!(member.is_learner());
    assert_eq!(member.peer_urls(), std::slice::from_ref(&url));
    assert!(member.name().is_empty(), "not started yet");
    assert_eq!(added.member_list().len(), 4);

    // Unstarted: listed with its peer URL, no name, no client URLs.
    let list = listed(&mut client).await;
    assert!(list.contains(&(id, String::new(), vec![url.clone()], Vec::new(), true)));

    // A second learner is refused while the first one is there.
    let second = client
        .member_add(
            ["http://127.0.0.1:1"],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect_err("a second learner");
    assert_eq!(
        status_of(second),
        (
            Code::FailedPrecondition,
            "etcdserver: too many learner members in cluster".into()
        )
    );

    let new = cluster.start_prepared(id).await;
    wait_list(&mut client, "the learner's published name", |list| {
        list.contains(&expected(&cluster, new, true))
    })
    .await;
    // The learner has the data written before it joined.
    let mut direct = cluster.client(new).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let count = direct
            .get(
                "k",
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .expect("serializable get on the learner")
            .count();
        if count == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "learner has {count} of 20 keys");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let promoted = client.member_promote(id).await.expect("promote");
    assert!(
        promoted
            .members()
            .iter()
            .any(|m| m.id() == id && !m.is_learner())
    );
    let again = client
        .member_promote(id)
        .await
        .expect_err("promote a voter");
    assert_eq!(
        status_of(again),
        (
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member".into()
        )
    );
    // The new voter serves linearizable writes and reads.
    direct
        .put("from-new", "1", None)
        .await
        .expect("put via new voter");
    let got = direct.get("from-new", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    let want: Listed = (0..4).map(|i| expected(&cluster, i, false)).collect();
    let mut sorted = want.clone();
    sorted.sort();
    wait_list(&mut client, "four voters", |list| *list == sorted).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn refused_changes_get_etcds_errors_and_change_nothing() {
    let cluster = TestCluster::start(3).await;
    let mut client = cluster.client(cluster.follower().await).await;
    let before = listed(&mut client).await;

    let cases: Vec<(&str, etcd_client::Error, Code, &str)> = vec![
        (
            "remove unknown",
            client.member_remove(42).await.expect_err("unknown"),
            Code::NotFound,
            "etcdserver: member not found",
        ),
        (
            "promote unknown",
            client.member_promote(42).await.expect_err("unknown"),
            Code::NotFound,
            "etcdserver: member not found",
        ),
        (
            "update unknown",
            client
                .member_update(42, vec!["http://127.0.0.1:9".to_string()])
                .await
                .expect_err("unknown"),
            Code::NotFound,
            "etcdserver: member not found",
        ),
        (
            "promote a voter",
            client
                .member_promote(cluster.member_id(0))
                .await
                .expect_err("voter"),
            Code::FailedPrecondition,
            "etcdserver: can only promote a learner member",
        ),
        (
            "add a taken peer URL",
            client
                .member_add([cluster.peer_url(1)], None)
                .await
                .expect_err("taken"),
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        (
            "update to another member's URL",
            client
                .member_update(cluster.member_id(0), vec![cluster.peer_url(1)])
                .await
                .expect_err("taken"),
            Code::FailedPrecondition,
            "etcdserver: Peer URLs already exists",
        ),
        (
            "add without a port",
            client
                .member_add(["http://host"], None)
                .await
                .expect_err("bad"),
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
        (
            "add no URL",
            client
                .member_add(Vec::<String>::new(), None)
                .await
                .expect_err("bad"),
            Code::InvalidArgument,
            "etcdserver: given member URLs are invalid",
        ),
    ];
    for (what, error, code, message) in cases {
        assert_eq!(status_of(error), (code, message.to_string()), "{what}");
    }
    assert_eq!(listed(&mut client).await, before, "nothing changed");
    client.put("still", "serving", None).await.expect("put");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_removed_member_leaves_and_the_rest_keep_serving() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let other = (0..3)
        .find(|&i| i != leader && i != follower)
        .expect("third");
    let mut client = cluster.client(other).await;
    let removed = client
        .member_remove(cluster.member_id(follower))
        .await
        .expect("member remove");
    let ids: Vec<u64> = removed.members().iter().map(|m| m.id()).collect();
    assert!(!ids.contains(&cluster.member_id(follower)));
    assert_eq!(ids.len(), 2);
    // The table entry goes too, on every remaining member.
    for i in [leader, other] {
        let node = cluster.node(i);
        let deadline = Instant::now() + WAIT;
        while node
            .state_machine()
            .store()
            .member(cluster.member_id(follower))
            .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "member {i} still knows the removed member"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    client.put("after", "removal", None).await.expect("put");
    let got = cluster
        .client(leader)
        .await
        .get("after", None)
        .await
        .expect("get");
    assert_eq!(got.count(), 1);
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_member_restarted_at_its_updated_peer_url_rejoins() {
    let mut cluster = TestCluster::start_with(3, Timings::FAST).await;
    let moved = cluster.follower().await;
    cluster.stop(moved).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the new peer port");
    let new_url = format!("http://{}", listener.local_addr().expect("addr"));
    let leader = cluster.wait_leader().await;
    let mut client = cluster.client(leader).await;
    let updated = client
        .member_update(cluster.member_id(moved), vec![new_url.clone()])
        .await
        .expect("member update");
    assert!(
        updated
            .members()
            .iter()
            .any(|m| m.id() == cluster.member_id(moved) && m.peer_urls() == [new_url.clone()])
    );
    client.put("while-away", "1", None).await.expect("put");

    cluster.restart_with_peer(moved, listener).await;
    let mut direct = cluster.client(moved).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let got = direct
            .get("while-away", Some(GetOptions::new().with_serializable()))
            .await
            .expect("serializable get");
        if got.count() == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the moved member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.peer_url(moved), new_url);
    let want: Listed = (0..3).map(|i| expected(&cluster, i, false)).collect();
    wait_list(&mut client, "the updated list", |list| *list == want).await;
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_single_member_adds_a_voter_that_then_starts() {
    let mut cluster = TestCluster::start(1).await;
    let mut client = cluster.client(0).await;
    client.put("before", "1", None).await.expect("put");
    let url = cluster.prepare_member().await;
    let added = client
        .member_add([url.as_str()], None)
        .await
        .expect("member add");
    let id = added.member().expect("member").id();
    let new = cluster.start_prepared(id).await;
    let want: Listed = {
        let mut want = vec![expected(&cluster, 0, false), expected(&cluster, new, false)];
        want.sort();
        want
    };
    wait_list(&mut client, "two started voters", |list| *list == want).await;
    client
        .put("after", "2", None)
        .await
        .expect("put with two voters");
    let mut direct = cluster.client(new).await;
    let got = direct
        .get("before", None)
        .await
        .expect("get via the new voter");
    assert_eq!(got.count(), 1);
    cluster.shutdown().await;
}
