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

use std::sync::Arc;

use muster_core::{Command, Response, validate};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::kv_server::Kv;
use muster_raft::RaftNode;
use tonic::{Request, Status};

use crate::status::{REQUEST_TOO_LARGE, convert_status, core_status, raft_status};

/// Limits checked at the edge.
#[derive(Clone, Copy, Debug)]
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
}

impl KvService {
    /// A service answering from `node`, a member of cluster `cluster_id`.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, limits: Limits) -> Self {
        KvService {
            node,
            cluster_id,
            limits,
        }
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
            self.node
                .read_barrier()
                .await
                .map_err(|e| raft_status(&e))?;
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
            self.node
                .read_barrier()
                .await
                .map_err(|e| raft_status(&e))?;
            self.node
                .state_machine()
                .store()
                .read_txn(&txn)
                .map_err(|e| core_status(&e))?
        } else {
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
