//! The etcd v3 client API of in-process muster clusters, driven through the
//! `etcd-client` crate: every RPC, on 1- and 3-member clusters, through
//! leaders and followers.

use muster_tests::{CLUSTER_ID, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_through_a_follower_of_three() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut client = cluster.client(follower).await;
    let put = client.put("svc/a", "1", None).await.expect("put");
    let header = put.header().expect("header");
    assert_eq!(header.cluster_id(), CLUSTER_ID);
    assert_eq!(header.member_id(), cluster.member_id(follower));
    assert_eq!(header.revision(), 2);
    let get = client.get("svc/a", None).await.expect("get");
    assert_eq!(get.kvs()[0].value(), b"1");
    cluster.shutdown().await;
}
