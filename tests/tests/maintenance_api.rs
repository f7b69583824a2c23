//! The etcd v3 `Maintenance` and `Auth` services and the gRPC health
//! service of in-process muster clusters, through `etcd-client`,
//! tonic-health's client, muster-proto's generated `Auth` client and
//! Debian's `etcdctl` 3.4.
//!
//! Every wait is bounded by [`WAIT`]; waits for events use openraft's
//! metrics or streams, never sleeps.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use etcd_client::{Client, Error as ClientError};
use muster_core::{RangeRequest, Store};
use muster_proto::etcdserverpb as pb;
use muster_tests::{CLUSTER_ID, TestCluster, Timings, WAIT};
use openraft::ServerState;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ETCDCTL: &str = "/usr/bin/etcdctl";

/// The gRPC status inside a client error.
fn status_of(error: ClientError) -> (Code, String) {
    match error {
        ClientError::GRpcStatus(status) => (status.code(), status.message().to_owned()),
        other => panic!("expected a gRPC status, got {other}"),
    }
}

/// Waits until member `i` has applied everything the leader has applied.
async fn wait_applied_everywhere(cluster: &TestCluster) {
    let leader = cluster.wait_leader().await;
    let applied = cluster
        .node(leader)
        .raft()
        .metrics()
        .borrow()
        .last_applied
        .map(|log_id| log_id.index);
    for i in 0..cluster.size() {
        cluster
            .node(i)
            .raft()
            .wait(Some(WAIT))
            .applied_index_at_least(applied, "caught up with the leader")
            .await
            .expect("member applied in time");
    }
}

/// Puts `count` keys `svc/NNNN` with `value_len`-byte values through `client`.
async fn put_keys(client: &mut Client, count: usize, value_len: usize) -> i64 {
    let mut revision = 0;
    for n in 0..count {
        let value = vec![b'a' + (n % 26) as u8; value_len];
        revision = client
            .put(format!("svc/{n:04}"), value, None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision();
    }
    revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_leader_and_follower_of_three() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    put_keys(&mut cluster.client(leader).await, 5, 16).await;
    for i in [leader, follower] {
        let status = cluster.client(i).await.status().await.expect("status");
        let header = status.header().expect("header");
        assert_eq!(header.cluster_id(), CLUSTER_ID);
        assert_eq!(header.member_id(), cluster.member_id(i));
        assert!(header.raft_term() >= 1);
        assert_eq!(status.version(), "3.5.0");
        assert_eq!(status.leader(), cluster.member_id(leader), "member {i}");
        assert!(status.raft_index() >= status.raft_applied_index());
        assert!(status.raft_applied_index() >= 1);
        assert_eq!(status.raft_term(), header.raft_term());
        assert!(status.db_size() > 0);
        assert!(status.raft_used_db_size() > 0);
        assert!(status.raft_used_db_size() <= status.db_size());
        assert!(status.errors().is_empty(), "{:?}", status.errors());
        assert!(!status.is_learner());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_agrees_across_members_and_refuses_bad_revisions() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let mut client = cluster.client(leader).await;
    let last = put_keys(&mut client, 10, 32).await;
    client.delete("svc/0003", None).await.expect("delete");
    wait_applied_everywhere(&cluster).await;

    let mut hashes = Vec::new();
    let mut whole = Vec::new();
    for i in 0..cluster.size() {
        let mut client = cluster.client(i).await;
        let current = client.hash_kv(0).await.expect("hash_kv");
        let at_last = client.hash_kv(last).await.expect("hash_kv at a revision");
        assert_eq!(current.compact_version(), -1);
        assert_ne!(current.hash(), at_last.hash(), "the delete is hashed");
        hashes.push((current.hash(), at_last.hash()));
        whole.push(client.hash().await.expect("hash").hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    assert!(whole.windows(2).all(|w| w[0] == w[1]), "{whole:?}");

    client.compact(5, None).await.expect("compact");
    wait_applied_everywhere(&cluster).await;
    let mut follower = cluster.client(cluster.follower().await).await;
    for revision in [2, 5] {
        let (code, message) = status_of(follower.hash_kv(revision).await.expect_err("compacted"));
        assert_eq!(
            (code, message.as_str()),
            (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            ),
            "revision {revision}"
        );
    }
    let after = follower.hash_kv(6).await.expect("above the compaction");
    assert_eq!(after.compact_version(), 5);
    let (code, message) = status_of(follower.hash_kv(last + 100).await.expect_err("future"));
    assert_eq!(
        (code, message.as_str()),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_restores_to_the_written_keys() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let mut client = cluster.client(leader).await;
    // ~200 KiB of values: several 32 KiB chunks.
    let last = put_keys(&mut client, 100, 2048).await;

    let mut stream = client.snapshot().await.expect("snapshot");
    let mut messages = Vec::new();
    while let Some(message) = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("chunk in time")
        .expect("chunk")
    {
        messages.push(message);
    }
    // etcd's layout: content chunks counting down to 0, then the sha256 of
    // the content (padded to whole 512-byte pages) as the last message.
    let sha = messages.pop().expect("the sha256 message");
    assert_eq!((sha.remaining_bytes(), sha.blob().len()), (0, 32));
    assert!(messages.len() > 4, "{} chunks", messages.len());
    let header = messages[0].header().expect("header on the first chunk");
    assert_eq!(header.member_id(), cluster.member_id(leader));
    assert_eq!(header.revision(), last);
    let mut content = Vec::new();
    let mut remaining = u64::MAX;
    for chunk in &messages {
        assert!(chunk.blob().len() <= 32 * 1024);
        assert!(chunk.remaining_bytes() < remaining);
        remaining = chunk.remaining_bytes();
        content.extend_from_slice(chunk.blob());
    }
    assert_eq!(remaining, 0);
    assert_eq!(content.len() % 512, 0);
    assert_eq!(Sha256::digest(&content).as_slice(), sha.blob());

    // muster's own format; the padding after it is ignored.
    let store = Store::restore(&content[..]).expect("a muster snapshot");
    assert_eq!(store.revision(), last);
    let range = store
        .range(&RangeRequest {
            key: "svc/".into(),
            range_end: "svc0".into(),
            ..RangeRequest::default()
        })
        .expect("range");
    assert_eq!(range.count, 100);
    assert_eq!(range.kvs[42].key.as_ref(), b"svc/0042");
    assert_eq!(range.kvs[42].value.len(), 2048);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_to_a_follower_makes_it_leader() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let mut client = cluster.client(leader).await;
    put_keys(&mut client, 3, 8).await;

    // Moving to the leader itself is a no-op, as in etcd.
    client
        .move_leader(cluster.member_id(leader))
        .await
        .expect("move to self");
    let moved = client
        .move_leader(cluster.member_id(follower))
        .await
        .expect("move-leader");
    assert_eq!(
        moved.header().expect("header").member_id(),
        cluster.member_id(leader)
    );
    cluster
        .node(follower)
        .raft()
        .wait(Some(WAIT))
        .state(ServerState::Leader, "the target leads")
        .await
        .expect("target leads");
    assert_eq!(cluster.wait_leader().await, follower);

    // The old leader keeps serving, as a follower.
    let put = client.put("svc/after", "1", None).await.expect("put");
    assert_eq!(
        put.header().expect("header").member_id(),
        cluster.member_id(leader)
    );
    // And it can take leadership back.
    cluster
        .client(follower)
        .await
        .move_leader(cluster.member_id(leader))
        .await
        .expect("move back");
    assert_eq!(cluster.wait_leader().await, leader);
    cluster.shutdown().await;
}

/// With five voters the old leader's vote is not a quorum: the others
/// vote once their lease ran out, and one of them may win the election
/// instead (openraft 0.9 has no lease-bypassing transfer vote; see
/// `RaftNode::move_leader`). A miss is etcd's transfer timeout, leadership
/// has left the old leader, and asking the new leader again gets there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_in_a_cluster_of_five() {
    const ATTEMPTS: usize = 8;
    let cluster = TestCluster::start(5).await;
    let first = cluster.wait_leader().await;
    let target = (0..cluster.size())
        .rev()
        .find(|&i| i != first)
        .expect("a follower");
    put_keys(&mut cluster.client(first).await, 3, 8).await;
    let mut moved = false;
    for attempt in 1..=ATTEMPTS {
        let leader = cluster.wait_leader().await;
        if leader == target {
            moved = true;
            break;
        }
        match cluster
            .client(leader)
            .await
            .move_leader(cluster.member_id(target))
            .await
        {
            Ok(_) => {
                assert_eq!(cluster.wait_leader().await, target);
                moved = true;
                break;
            }
            Err(error) => {
                let (code, message) = status_of(error);
                assert_eq!(
                    (code, message.as_str()),
                    (
                        Code::Unavailable,
                        "etcdserver: request timed out, leader transfer took too long"
                    )
                );
                eprintln!("attempt {attempt}: another member was elected");
            }
        }
    }
    assert!(moved, "no move in {ATTEMPTS} attempts");
    let put = cluster
        .client(target)
        .await
        .put("svc/after", "1", None)
        .await
        .expect("the new leader writes");
    assert!(put.header().expect("header").revision() > 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_errors_like_etcd() {
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;

    let (code, message) = status_of(
        cluster
            .client(follower)
            .await
            .move_leader(cluster.member_id(leader))
            .await
            .expect_err("a follower refuses"),
    );
    assert_eq!(
        (code, message.as_str()),
        (Code::FailedPrecondition, "etcdserver: not leader")
    );

    let mut client = cluster.client(leader).await;
    for target in [0, 0xdead_beef, u64::MAX] {
        let (code, message) = status_of(
            client
                .move_leader(target)
                .await
                .expect_err("unknown target"),
        );
        assert_eq!(
            (code, message.as_str()),
            (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee"
            ),
            "target {target:x}"
        );
    }
    assert_eq!(cluster.wait_leader().await, leader, "nothing moved");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_takes_a_snapshot() {
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut client = cluster.client(follower).await;
    put_keys(&mut client, 20, 64).await;
    wait_applied_everywhere(&cluster).await;
    let applied = cluster
        .node(follower)
        .state_machine()
        .last_applied()
        .expect("applied")
        .index;
    let response = client.defragment().await.expect("defragment");
    assert_eq!(
        response.header().expect("header").member_id(),
        cluster.member_id(follower)
    );
    let snapshot = cluster.node(follower).raft().metrics().borrow().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index >= applied),
        "snapshot {snapshot:?}, applied {applied}"
    );
    let status = client.status().await.expect("status");
    assert!(status.raft_used_db_size() <= status.db_size());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_is_unimplemented() {
    let cluster = TestCluster::start(1).await;
    let client = cluster.client(0).await;
    let (code, message) = status_of(
        client
            .maintenance_client()
            .downgrade(etcd_client::DowngradeOptions::Validate("3.4.0".into()))
            .await
            .expect_err("unsupported"),
    );
    assert_eq!(code, Code::Unimplemented);
    assert!(message.contains("downgrade"), "{message}");
    cluster.shutdown().await;
}

/// etcd's answer to a write that would outgrow the quota or is made while
/// NOSPACE is raised.
const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";

/// The space quota of the NOSPACE tests: eight 8 KiB values do not fit.
const SMALL_QUOTA: u64 = 64 * 1024;

/// Asserts that `result` is etcd's NOSPACE refusal.
fn assert_no_space<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) {
    let (code, message) = status_of(result.expect_err(what));
    assert_eq!(
        (code, message.as_str()),
        (Code::ResourceExhausted, NO_SPACE),
        "{what}"
    );
}

/// The alarms member `i` lists, as (member ID, alarm type) pairs.
async fn alarms_on(cluster: &TestCluster, i: usize) -> Vec<(u64, etcd_client::AlarmType)> {
    cluster
        .client(i)
        .await
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .expect("alarm list")
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_refuses_writes_until_compaction_and_disarm() {
    let cluster =
        TestCluster::start_configured(3, Timings::FAST, |api| api.with_quota(Some(SMALL_QUOTA)))
            .await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    let leader_id = cluster.member_id(leader);
    let mut client = cluster.client(leader).await;
    for i in 0..cluster.size() {
        assert!(alarms_on(&cluster, i).await.is_empty(), "member {i}");
    }

    // ~8 KiB per put: the quota is reached within a bounded number of puts.
    let value = vec![b'v'; 8 * 1024];
    let mut written = 0;
    let refused = loop {
        assert!(written < 16, "64 KiB took more than 16 puts of 8 KiB");
        match client
            .put(format!("big/{written:02}"), value.clone(), None)
            .await
        {
            Ok(_) => written += 1,
            Err(error) => break error,
        }
    };
    assert!(written >= 6, "refused after {written} puts");
    let (code, message) = status_of(refused);
    assert_eq!(
        (code, message.as_str()),
        (Code::ResourceExhausted, NO_SPACE)
    );

    // The member that refused raised NOSPACE through Raft: every member
    // lists it (after its read barrier) and reports it in Status.
    let nospace = (leader_id, etcd_client::AlarmType::Nospace);
    let status_error = format!("memberID:{leader_id} alarm:NOSPACE ");
    for i in 0..cluster.size() {
        assert_eq!(alarms_on(&cluster, i).await, vec![nospace], "member {i}");
        let status = cluster.client(i).await.status().await.expect("status");
        assert_eq!(
            status.errors(),
            std::slice::from_ref(&status_error),
            "member {i}"
        );
    }

    // Everything that adds data is refused, on a follower too, however
    // small; reads, deletes and compactions go through.
    let mut on_follower = cluster.client(follower).await;
    assert_no_space(
        on_follower.put("small", "x", None).await,
        "put via follower",
    );
    assert_no_space(client.put("small", "x", None).await, "put via leader");
    let txn_put = etcd_client::Txn::new().and_then([etcd_client::TxnOp::put("small", "x", None)]);
    assert_no_space(on_follower.txn(txn_put).await, "txn with a put");
    assert_no_space(on_follower.lease_grant(60, None).await, "lease grant");
    let listed = on_follower
        .get(
            "big/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_keys_only(),
            ),
        )
        .await
        .expect("reads are served");
    assert_eq!(listed.count(), written);
    let txn_delete = etcd_client::Txn::new().and_then([etcd_client::TxnOp::delete("big/00", None)]);
    on_follower
        .txn(txn_delete)
        .await
        .expect("a txn that only deletes");
    let deleted = on_follower
        .delete(
            "big/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("delete while alarmed");
    assert_eq!(deleted.deleted(), written - 1);
    let revision = deleted.header().expect("header").revision();
    on_follower
        .compact(revision, None)
        .await
        .expect("compaction while alarmed");
    // Space is free now, but the alarm still stands until it is cleared.
    assert_no_space(client.put("small", "x", None).await, "put before disarm");

    let mut disarm = etcd_client::AlarmOptions::new();
    disarm.with_member(leader_id);
    let disarmed = on_follower
        .alarm(
            etcd_client::AlarmAction::Deactivate,
            etcd_client::AlarmType::Nospace,
            Some(disarm),
        )
        .await
        .expect("disarm");
    let disarmed: Vec<_> = disarmed
        .alarms()
        .iter()
        .map(|a| (a.member_id(), a.alarm()))
        .collect();
    assert_eq!(disarmed, vec![nospace]);
    for i in 0..cluster.size() {
        assert!(alarms_on(&cluster, i).await.is_empty(), "member {i}");
        let status = cluster.client(i).await.status().await.expect("status");
        assert!(
            status.errors().is_empty(),
            "member {i}: {:?}",
            status.errors()
        );
    }
    on_follower
        .put("small", "x", None)
        .await
        .expect("put after compaction and disarm");
    client
        .lease_grant(60, None)
        .await
        .expect("grant after disarm");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_rpc_activates_and_deactivates_like_etcd() {
    use etcd_client::{AlarmAction, AlarmOptions, AlarmType};
    let cluster = TestCluster::start(3).await;
    let follower = cluster.follower().await;
    let mut client = cluster.client(follower).await;
    let target = cluster.member_id(follower);
    let for_target = || {
        let mut options = AlarmOptions::new();
        options.with_member(target);
        Some(options)
    };
    let pairs = |response: etcd_client::AlarmResponse| -> Vec<(u64, AlarmType)> {
        response
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect()
    };
    let nospace = (target, AlarmType::Nospace);

    // Raising answers the alarm, also when it is raised already (etcd's
    // alarm store hands back the existing one).
    for attempt in 0..2 {
        let raised = client
            .alarm(AlarmAction::Activate, AlarmType::Nospace, for_target())
            .await
            .expect("activate");
        assert_eq!(
            raised.header().expect("header").member_id(),
            cluster.member_id(follower)
        );
        assert_eq!(pairs(raised), vec![nospace], "attempt {attempt}");
    }
    // Activating NONE does nothing, as etcd 3.5.
    let none = client
        .alarm(AlarmAction::Activate, AlarmType::None, for_target())
        .await
        .expect("activate NONE");
    assert!(none.alarms().is_empty());

    // GET filters by type, never by member.
    let all = client
        .alarm(AlarmAction::Get, AlarmType::None, for_target())
        .await
        .expect("get");
    assert_eq!(pairs(all), vec![nospace]);
    let of_type = client
        .alarm(AlarmAction::Get, AlarmType::Nospace, None)
        .await
        .expect("get NOSPACE of any member");
    assert_eq!(pairs(of_type), vec![nospace]);
    let other_type = client
        .alarm(AlarmAction::Get, AlarmType::Corrupt, for_target())
        .await
        .expect("get CORRUPT");
    assert!(other_type.alarms().is_empty());

    // A raised NOSPACE refuses writes that add data, whatever the quota.
    assert_no_space(client.put("k", "v", None).await, "put while raised");
    let leader = cluster.wait_leader().await;
    let status = cluster.client(leader).await.status().await.expect("status");
    assert_eq!(
        status.errors(),
        [format!("memberID:{target} alarm:NOSPACE ")]
    );

    // Clearing answers what was cleared: nothing for an alarm not raised.
    let corrupt = client
        .alarm(AlarmAction::Deactivate, AlarmType::Corrupt, for_target())
        .await
        .expect("deactivate CORRUPT");
    assert!(corrupt.alarms().is_empty());
    let cleared = client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, for_target())
        .await
        .expect("deactivate");
    assert_eq!(pairs(cleared), vec![nospace]);
    let again = client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, for_target())
        .await
        .expect("deactivate again");
    assert!(again.alarms().is_empty());
    client
        .put("k", "v", None)
        .await
        .expect("put after clearing");

    // Values etcd's enums do not have are refused, not guessed at.
    let channel = tonic::transport::Channel::from_shared(cluster.endpoint(follower))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut maintenance = pb::maintenance_client::MaintenanceClient::new(channel);
    for (action, alarm) in [(1, 9), (7, 1)] {
        let status = maintenance
            .alarm(pb::AlarmRequest {
                action,
                member_id: target,
                alarm,
            })
            .await
            .expect_err("unknown enum value");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    for i in 0..cluster.size() {
        assert!(alarms_on(&cluster, i).await.is_empty(), "member {i}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_rpc_is_unimplemented() {
    let cluster = TestCluster::start(1).await;
    let channel = tonic::transport::Channel::from_shared(cluster.endpoint(0))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut auth = pb::auth_client::AuthClient::new(channel);
    let results: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "AuthEnable",
            auth.auth_enable(pb::AuthEnableRequest::default())
                .await
                .map(drop),
        ),
        (
            "AuthDisable",
            auth.auth_disable(pb::AuthDisableRequest::default())
                .await
                .map(drop),
        ),
        (
            "AuthStatus",
            auth.auth_status(pb::AuthStatusRequest::default())
                .await
                .map(drop),
        ),
        (
            "Authenticate",
            auth.authenticate(pb::AuthenticateRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserAdd",
            auth.user_add(pb::AuthUserAddRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserGet",
            auth.user_get(pb::AuthUserGetRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserList",
            auth.user_list(pb::AuthUserListRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserDelete",
            auth.user_delete(pb::AuthUserDeleteRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserChangePassword",
            auth.user_change_password(pb::AuthUserChangePasswordRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserGrantRole",
            auth.user_grant_role(pb::AuthUserGrantRoleRequest::default())
                .await
                .map(drop),
        ),
        (
            "UserRevokeRole",
            auth.user_revoke_role(pb::AuthUserRevokeRoleRequest::default())
                .await
                .map(drop),
        ),
        (
            "RoleAdd",
            auth.role_add(pb::AuthRoleAddRequest::default())
                .await
                .map(drop),
        ),
        (
            "RoleGet",
            auth.role_get(pb::AuthRoleGetRequest::default())
                .await
                .map(drop),
        ),
        (
            "RoleList",
            auth.role_list(pb::AuthRoleListRequest::default())
                .await
                .map(drop),
        ),
        (
            "RoleDelete",
            auth.role_delete(pb::AuthRoleDeleteRequest::default())
                .await
                .map(drop),
        ),
        (
            "RoleGrantPermission",
            auth.role_grant_permission(pb::AuthRoleGrantPermissionRequest::default())
                .await
                .map(drop),
        ),
        (
            "RoleRevokePermission",
            auth.role_revoke_permission(pb::AuthRoleRevokePermissionRequest::default())
                .await
                .map(drop),
        ),
    ];
    assert_eq!(results.len(), 17);
    for (rpc, result) in results {
        let status = result.expect_err(rpc);
        assert_eq!(status.code(), Code::Unimplemented, "{rpc}");
        assert_eq!(
            status.message(),
            "muster: authentication is not supported yet",
            "{rpc}"
        );
    }
    // Through etcd-client too.
    let mut client = cluster.client(0).await;
    let (code, _) = status_of(client.auth_enable().await.expect_err("auth enable"));
    assert_eq!(code, Code::Unimplemented);
    let (code, _) = status_of(client.user_list().await.expect_err("user list"));
    assert_eq!(code, Code::Unimplemented);
    cluster.shutdown().await;
}

/// A tonic-health client on member `i`.
async fn health_client(cluster: &TestCluster, i: usize) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(cluster.endpoint(i))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

fn overall() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_while_a_leader_is_known() {
    let mut cluster = TestCluster::start(3).await;
    for i in 0..cluster.size() {
        let status = health_client(&cluster, i)
            .await
            .check(overall())
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "member {i}");
    }
    let status = health_client(&cluster, 0)
        .await
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(status.code(), Code::NotFound);

    // Stop the leader and one follower: the last member loses its leader.
    let leader = cluster.wait_leader().await;
    let survivor = (0..cluster.size())
        .find(|&i| i != leader)
        .expect("a follower");
    let mut watch = health_client(&cluster, survivor)
        .await
        .watch(overall())
        .await
        .expect("watch")
        .into_inner();
    let first = watch
        .message()
        .await
        .expect("status")
        .expect("first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    for i in 0..cluster.size() {
        if i != survivor {
            cluster.stop(i).await;
        }
    }
    let next = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("a change in time")
        .expect("status")
        .expect("stream open");
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    // Stopping the member ends the watch stream and does not hold up the
    // client API's drain.
    let started = Instant::now();
    cluster.stop(survivor).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("the stream ends in time");
    assert!(!matches!(end, Ok(Some(ref s)) if s.status == ServingStatus::Serving as i32));
    cluster.shutdown().await;
}

/// Runs `etcdctl` with `args` (API v3), bounded by [`WAIT`].
async fn etcdctl(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(ETCDCTL);
    command
        .env("ETCDCTL_API", "3")
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("etcdctl {args:?} did not finish in time"))
        .expect("run etcdctl")
}

/// `output`'s stdout and stderr, for assertions and failure messages.
fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_success(args: &[&str], output: &Output) -> String {
    let (stdout, stderr) = text(output);
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_maintenance_commands() {
    if !Path::new(ETCDCTL).exists() {
        eprintln!(
            "!!!!!!!! SKIPPED etcdctl_maintenance_commands: {ETCDCTL} is not installed \
             (Debian package etcd-client) !!!!!!!!"
        );
        return;
    }
    let cluster = TestCluster::start(3).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster.follower().await;
    put_keys(&mut cluster.client(leader).await, 10, 100).await;
    // Endpoints as host:port: etcdctl 3.4 dials each endpoint of a
    // per-member command (endpoint status, defrag, move-leader) with the
    // endpoint string as the HTTP/2 :authority, and hyper refuses
    // "http://host:port" there (README, Semantics).
    let host_port = |i: usize| cluster.endpoint(i).trim_start_matches("http://").to_owned();
    let all = format!(
        "--endpoints={}",
        (0..cluster.size())
            .map(host_port)
            .collect::<Vec<_>>()
            .join(",")
    );
    let one = format!("--endpoints={}", host_port(follower));

    let args = [all.as_str(), "endpoint", "status", "-w", "json"];
    let stdout = assert_success(&args, &etcdctl(&args).await);
    assert_eq!(
        stdout.matches("\"version\":\"3.5.0\"").count(),
        3,
        "{stdout}"
    );
    let leader_field = format!("\"leader\":{}", cluster.member_id(leader));
    assert_eq!(stdout.matches(&leader_field).count(), 3, "{stdout}");

    let args = [all.as_str(), "endpoint", "health"];
    let output = etcdctl(&args).await;
    assert_success(&args, &output);
    let (stdout, stderr) = text(&output);
    assert_eq!(
        format!("{stdout}{stderr}").matches("is healthy").count(),
        3,
        "{stdout}{stderr}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("muster.snap");
    let file_arg = file.to_str().expect("utf-8 path");
    let args = [one.as_str(), "snapshot", "save", file_arg];
    assert_success(&args, &etcdctl(&args).await);
    let saved = std::fs::read(&file).expect("snapshot file written");
    assert_eq!(saved.len() % 512, 32, "etcd's layout");
    let (content, sha) = saved.split_at(saved.len() - 32);
    assert_eq!(Sha256::digest(content).as_slice(), sha);
    let store = Store::restore(content).expect("etcdctl saved a muster snapshot");
    assert_eq!(store.key_count(), 10);

    let target = format!("{:x}", cluster.member_id(follower));
    let args = [all.as_str(), "move-leader", target.as_str()];
    let stdout = assert_success(&args, &etcdctl(&args).await);
    assert!(stdout.contains("Leadership transferred"), "{stdout}");
    assert_eq!(cluster.wait_leader().await, follower);

    let args = [all.as_str(), "defrag"];
    let stdout = assert_success(&args, &etcdctl(&args).await);
    assert_eq!(
        stdout.matches("Finished defragmenting").count(),
        3,
        "{stdout}"
    );

    let args = [one.as_str(), "auth", "enable"];
    let output = etcdctl(&args).await;
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "auth enable succeeded: {stdout}");
    assert!(
        stderr.contains("muster: authentication is not supported yet"),
        "{stderr}"
    );
    cluster.shutdown().await;
}
