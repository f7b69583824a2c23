//! The peer transport's error mapping, without a cluster: a peer nobody
//! listens on is `Unreachable`, a message the fault injector drops runs out
//! of time, and a live peer's own refusal comes back as a `RemoteError`.

use std::time::Duration;

use muster_raft::{FaultInjector, PeerNetworkFactory, RaftNode, RaftNodeConfig};
use openraft::error::RPCError;
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Vote};
use tokio::net::TcpListener;

const TTL: Duration = Duration::from_millis(500);

#[tokio::test]
async fn a_peer_nobody_listens_on_is_unreachable() {
    // Bind and release a port, so nothing listens on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut factory = PeerNetworkFactory::new(1, FaultInjector::new());
    let mut peer = factory
        .new_client(2, &BasicNode::new(addr.to_string()))
        .await;
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        peer.vote(VoteRequest::new(Vote::new(1, 1), None), RPCOption::new(TTL)),
    )
    .await
    .expect("bounded by the RPC's ttl");
    assert!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_dropped_message_times_out_and_a_live_peer_answers() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = RaftNode::start(RaftNodeConfig::new(2, dir.path()), listener)
        .await
        .unwrap();

    let faults = FaultInjector::new();
    let mut factory = PeerNetworkFactory::new(1, faults.clone());
    let mut peer = factory
        .new_client(2, &BasicNode::new(addr.to_string()))
        .await;

    faults.isolate(2);
    let started = std::time::Instant::now();
    let dropped = peer
        .vote(VoteRequest::new(Vote::new(1, 1), None), RPCOption::new(TTL))
        .await;
    assert!(matches!(dropped, Err(RPCError::Timeout(_))), "{dropped:?}");
    assert!(started.elapsed() >= TTL);

    // Healed, the pristine member answers the vote (granting or refusing
    // it is openraft's business; the answer arrived decoded).
    faults.heal(2);
    let answered = peer
        .vote(VoteRequest::new(Vote::new(1, 1), None), RPCOption::new(TTL))
        .await;
    assert!(answered.is_ok(), "{answered:?}");

    // Once the member's openraft has stopped (its peer server still
    // serving), the refusal comes back as a RemoteError.
    node.raft().shutdown().await.unwrap();
    let refused = peer
        .vote(VoteRequest::new(Vote::new(2, 1), None), RPCOption::new(TTL))
        .await;
    assert!(
        matches!(&refused, Err(RPCError::RemoteError(remote)) if remote.target == 2),
        "{refused:?}"
    );
    node.shutdown().await.unwrap();
}
