//! The etcd v3 `KV` service: Range, Put, DeleteRange, Txn and Compact on
//! every member.
//!
//! Every request is validated here, at the edge, before anything is
//! proposed: sizes (`--max-request-bytes`), empty keys, put flags, sort
//! options, txn op counts (`--max-txn-ops`) and duplicate keys, each refused
//! with etcd's code and message. Writes go through the leader
//! ([`RaftNode::submit`]); reads are linearizable by default (a read
//! barrier, then the local state) and served locally when `serializable` is
//! set. A txn without writes is a read: it never enters the log.
//!
//! Every response header carries the cluster ID, this member's ID, the Raft
//! term and the revision the request saw.
//!
//! With the `fault-injection` feature (test builds only),
//! `KvService::with_stale_follower_reads` makes a follower skip the read
//! barrier and answer linearizable reads from its local state: a broken
//! guarantee the fault suite's checkers must catch. Without the feature
//! the switch does not exist and every linearizable read takes the barrier.
//!
//! # The space quota
//!
//! A valid request that adds data (a put, a txn with a top-level put, and
//! in the `Lease` service a grant) is then checked against the [`Quota`],
//! as etcd's `quotaKVServer` and `quotaLeaseServer` do: it may go ahead
//! only if `size + cost < quota`, where `size` is this member's
//! [`Store::bytes`] (the snapshot-encoded size of the retained key
//! history, which only compaction shrinks) and `cost` is etcd's estimate:
//!
//! ```text
//!   put        256 + key + value
//!   txn        max(sum over the success puts, sum over the failure puts)
//!   lease      64
//!   otherwise  0  (never refused here: deleting and compacting is how
//!                 space is freed)
//! ```
//!
//! A request over the quota is refused with etcd's ResourceExhausted
//! "etcdserver: mvcc: database space exceeded", after this member's
//! NOSPACE alarm has been proposed through the leader. From then on every
//! replica's store refuses whatever adds data until the alarm is cleared
//! (Maintenance `Alarm` DEACTIVATE, `etcdctl alarm disarm`), quota or not.
//!
//! Worked example, quota 64 KiB, 8 KiB values: the eighth put finds
//! `size` ≈ 56.4 KiB and `cost` ≈ 8.3 KiB, is refused and raises NOSPACE;
//! deleting the keys and compacting past the deletes brings `size` back
//! near 0, and after the disarm a put goes through again.

use std::sync::Arc;

use muster_core::{AlarmType, Command, Error as CoreError, RequestOp, Response, Store, validate};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_server::Kv;
use muster_raft::RaftNode;
use tonic::{Request, Status};

use crate::status::{REQUEST_TOO_LARGE, convert_status, core_status, raft_status};

/// etcd's default space quota (`DefaultQuotaBytes`): 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// etcd's estimate of what a key's metadata costs (`kvOverhead`).
pub const KV_OVERHEAD: u64 = 256;

/// etcd's estimate of what a lease costs (`leaseOverhead`).
pub const LEASE_OVERHEAD: u64 = 64;

/// The space quota checked at the edge before a write that adds data is
/// proposed (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// The bytes the retained key history may reach; `None`: no quota.
    pub max_bytes: Option<u64>,
}

impl Default for Quota {
    /// etcd's default: [`DEFAULT_QUOTA_BYTES`].
    fn default() -> Self {
        Quota {
            max_bytes: Some(DEFAULT_QUOTA_BYTES),
        }
    }
}

impl Quota {
    /// etcd's cost of a put: [`KV_OVERHEAD`] plus its key and value.
    pub fn put_cost(put: &muster_core::PutRequest) -> u64 {
        KV_OVERHEAD + put.key.len() as u64 + put.value.len() as u64
    }

    /// etcd's cost of a txn: the costlier branch's top-level puts (nested
    /// txns are not counted, as in etcd).
    pub fn txn_cost(txn: &muster_core::TxnRequest) -> u64 {
        let branch = |ops: &[RequestOp]| -> u64 {
            ops.iter()
                .map(|op| match op {
                    RequestOp::Put(put) => Quota::put_cost(put),
                    _ => 0,
                })
                .sum()
        };
        branch(&txn.success).max(branch(&txn.failure))
    }

    /// Whether a request costing `cost` fits beside `size` bytes: always
    /// when it costs nothing or there is no quota, else iff
    /// `size + cost < max_bytes` (etcd's `backendQuota.Available`).
    pub fn available(&self, size: u64, cost: u64) -> bool {
        cost == 0
            || self
                .max_bytes
                .is_none_or(|max| size.saturating_add(cost) < max)
    }

    /// Lets a request costing `cost` through, or raises this member's
    /// NOSPACE alarm through the leader (unless this member's store already
    /// shows it raised) and answers etcd's "database space exceeded".
    pub async fn check(&self, node: &RaftNode, cost: u64) -> Result<(), Status> {
        let store = node.state_machine().store();
        if self.available(store.bytes(), cost) {
            return Ok(());
        }
        let member_id = node.id();
        if !raised_by(&store, member_id) {
            tracing::warn!(
                member = format_args!("{member_id:016x}"),
                bytes = store.bytes(),
                cost,
                quota = ?self.max_bytes,
                "space quota exceeded: raising the NOSPACE alarm"
            );
            let alarm = Command::Alarm {
                activate: true,
                member_id,
                alarm: AlarmType::NoSpace,
            };
            // As etcd, the request is refused whether or not the alarm
            // could be raised.
            if let Err(status) = crate::server::propose(node, alarm).await {
                tracing::warn!(%status, "raising the NOSPACE alarm failed");
            }
        }
        Err(core_status(&CoreError::NoSpace))
    }
}

/// Whether `store` shows `member_id`'s NOSPACE alarm raised.
fn raised_by(store: &Store, member_id: u64) -> bool {
    store
        .alarms()
        .any(|a| a.member_id == member_id && a.alarm == AlarmType::NoSpace)
}

/// Limits checked at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request accepted, in bytes (etcd: 1.5 MiB).
    pub max_request_bytes: usize,
    /// Most ops in each part of a txn (etcd: 128).
    pub max_txn_ops: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 3 * 512 * 1024,
            max_txn_ops: 128,
        }
    }
}

/// The `KV` service of one member.
#[derive(Clone, Debug)]
pub struct KvService {
    node: Arc<RaftNode>,
    cluster_id: u64,
    limits: Limits,
    quota: Quota,
    #[cfg(feature = "fault-injection")]
    stale_follower_reads: bool,
}

impl KvService {
    /// A service answering from `node`, a member of cluster `cluster_id`,
    /// with etcd's default [`Quota`].
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, limits: Limits) -> Self {
        KvService {
            node,
            cluster_id,
            limits,
            quota: Quota::default(),
            #[cfg(feature = "fault-injection")]
            stale_follower_reads: false,
        }
    }

    /// Breaks linearizable reads on purpose: a follower answers them from
    /// its local state without the read barrier. Only for proving that the
    /// fault suite's checkers catch stale reads.
    #[cfg(feature = "fault-injection")]
    pub fn with_stale_follower_reads(mut self, stale: bool) -> Self {
        self.stale_follower_reads = stale;
        self
    }

    /// Waits until a linearizable read may be served from the local state.
    async fn read_barrier(&self) -> Result<(), Status> {
        #[cfg(feature = "fault-injection")]
        if self.stale_follower_reads {
            let leader = self.node.raft().metrics().borrow().current_leader;
            if leader != Some(self.node.id()) {
                return Ok(());
            }
        }
        self.node.read_barrier().await.map_err(|e| raft_status(&e))
    }

    /// The same service checking writes against `quota`.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// The tonic server for this service, accepting messages a little
    /// larger than the request limit so the limit is answered with etcd's
    /// error rather than a transport error.
    pub fn into_server(self) -> pb::kv_server::KvServer<Self> {
        let max = self.limits.max_request_bytes + 512 * 1024;
        pb::kv_server::KvServer::new(self).max_decoding_message_size(max)
    }

    /// A header with this member's identity, the current term and `revision`.
    fn header(&self, revision: i64) -> pb::ResponseHeader {
        crate::server::response_header(&self.node, self.cluster_id, revision)
    }

    fn check_size(&self, request: &impl prost::Message) -> Result<(), Status> {
        if request.encoded_len() > self.limits.max_request_bytes {
            return Err(Status::invalid_argument(REQUEST_TOO_LARGE));
        }
        Ok(())
    }

    async fn write(&self, command: Command) -> Result<Response, Status> {
        crate::server::propose(&self.node, command).await
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<tonic::Response<pb::RangeResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        let serializable = request.serializable;
        let range: muster_core::RangeRequest =
            request.try_into().map_err(|e| convert_status(&e))?;
        validate::check_range(&range).map_err(|e| core_status(&e))?;
        if !serializable {
            self.read_barrier().await?;
        }
        let response = self
            .node
            .state_machine()
            .store()
            .range(&range)
            .map_err(|e| core_status(&e))?;
        let mut response = pb::RangeResponse::from(response);
        response.header = Some(self.header(response.header.map_or(0, |h| h.revision)));
        Ok(tonic::Response::new(response))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<tonic::Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        let put: muster_core::PutRequest = request.into();
        validate::check_put(&put).map_err(|e| core_status(&e))?;
        self.quota.check(&self.node, Quota::put_cost(&put)).await?;
        let Response::Put(response) = self.write(Command::Put(put)).await? else {
            return Err(Status::internal("a put was answered with another response"));
        };
        let revision = response.revision;
        let mut response = pb::PutResponse::from(response);
        response.header = Some(self.header(revision));
        Ok(tonic::Response::new(response))
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<tonic::Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        let delete: muster_core::DeleteRangeRequest = request.into();
        validate::check_delete_range(&delete).map_err(|e| core_status(&e))?;
        let Response::DeleteRange(response) = self.write(Command::DeleteRange(delete)).await?
        else {
            return Err(Status::internal(
                "a delete was answered with another response",
            ));
        };
        let revision = response.revision;
        let mut response = pb::DeleteRangeResponse::from(response);
        response.header = Some(self.header(revision));
        Ok(tonic::Response::new(response))
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<tonic::Response<pb::TxnResponse>, Status> {
        let request = request.into_inner();
        self.check_size(&request)?;
        let txn: muster_core::TxnRequest = request.try_into().map_err(|e| convert_status(&e))?;
        validate::check_txn(&txn, self.limits.max_txn_ops).map_err(|e| core_status(&e))?;
        let response = if validate::is_read_only(&txn) {
            self.read_barrier().await?;
            self.node
                .state_machine()
                .store()
                .read_txn(&txn)
                .map_err(|e| core_status(&e))?
        } else {
            self.quota.check(&self.node, Quota::txn_cost(&txn)).await?;
            let Response::Txn(response) = self.write(Command::Txn(txn)).await? else {
                return Err(Status::internal("a txn was answered with another response"));
            };
            response
        };
        let revision = response.revision;
        let mut response = pb::TxnResponse::from(response);
        response.header = Some(self.header(revision));
        Ok(tonic::Response::new(response))
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<tonic::Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let Response::Compact { revision } = self.write(request.into()).await? else {
            return Err(Status::internal(
                "a compaction was answered with another response",
            ));
        };
        Ok(tonic::Response::new(pb::CompactionResponse {
            header: Some(self.header(revision)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use muster_core::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};

    use super::*;

    fn put(key: &str, value_len: usize) -> RequestOp {
        RequestOp::Put(PutRequest {
            key: Bytes::from(key.to_owned()),
            value: Bytes::from(vec![b'v'; value_len]),
            ..Default::default()
        })
    }

    #[test]
    fn costs_are_etcds() {
        let RequestOp::Put(one) = put("key", 100) else {
            unreachable!()
        };
        assert_eq!(Quota::put_cost(&one), 256 + 3 + 100);
        // The costlier branch counts, not both; reads and deletes cost
        // nothing, nor do puts inside a nested txn.
        let txn = TxnRequest {
            compare: Vec::new(),
            success: vec![put("a", 10), put("b", 10)],
            failure: vec![
                put("c", 1000),
                RequestOp::Range(RangeRequest::default()),
                RequestOp::DeleteRange(DeleteRangeRequest::default()),
                RequestOp::Txn(TxnRequest {
                    success: vec![put("d", 5000)],
                    ..Default::default()
                }),
            ],
        };
        assert_eq!(Quota::txn_cost(&txn), 256 + 1 + 1000);
        let success_costlier = TxnRequest {
            failure: vec![put("c", 10)],
            ..txn.clone()
        };
        assert_eq!(Quota::txn_cost(&success_costlier), 2 * (256 + 1 + 10));
        let deletes_only = TxnRequest {
            success: vec![RequestOp::DeleteRange(DeleteRangeRequest::default())],
            ..Default::default()
        };
        assert_eq!(Quota::txn_cost(&deletes_only), 0);
    }

    #[test]
    fn available_iff_size_plus_cost_is_below_the_quota() {
        let quota = Quota {
            max_bytes: Some(1000),
        };
        assert!(quota.available(600, 399));
        assert!(!quota.available(600, 400), "etcd: size + cost < quota");
        assert!(!quota.available(u64::MAX, 1), "no overflow");
        assert!(quota.available(5000, 0), "what adds nothing passes");
        let unlimited = Quota { max_bytes: None };
        assert!(unlimited.available(u64::MAX, u64::MAX));
        assert_eq!(Quota::default().max_bytes, Some(2 << 30));
    }
}
