//! One recording client (a `process` of the history), and the KV clients'
//! loop.
//!
//! Invariants:
//!
//! - [`Client::perform`] records the invocation just before the request is
//!   sent and exactly one completion right after it returns, errs or times
//!   out (each request is bounded by `request_timeout`), so a process has
//!   at most one operation outstanding and its `t`s never decrease.
//! - After any error other than a server refusal, the client drops its
//!   channel to that member and moves to the next member for its next
//!   request.
//! - Values are `"<process>-<n>"` with `n` counting up per process: unique
//!   in the history.
//! - A KV client's choices come from its own seeded generator; a cas
//!   expects the value the client last read or wrote for the key (`None`
//!   when it knows of none).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_check::history::{Op, OpKind, OpRecord, OpResult, Record};
use muster_proto::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, request_op, response_op,
};
use tonic::transport::Channel;

use crate::Ctx;
use crate::net::{CallError, Channels, call, read_outcome, write_outcome};
use crate::rng::Rng;

/// How long a client waits after a request that could not connect, so that
/// a cluster that is entirely down is not spun against.
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// One process of the history: its member, its channels, its values.
pub(crate) struct Client {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) process: u32,
    /// The member the next request goes to.
    pub(crate) member: usize,
    pub(crate) channels: Channels,
    values: u64,
}

impl Client {
    /// Process `process`, starting on member `process % n`.
    pub(crate) fn new(ctx: Arc<Ctx>, process: u32) -> Self {
        let n = ctx.members.len();
        Client {
            member: process as usize % n,
            channels: Channels::new(n),
            ctx,
            process,
            values: 0,
        }
    }

    /// A value never written before.
    pub(crate) fn next_value(&mut self) -> String {
        let value = format!("{}-{}", self.process, self.values);
        self.values += 1;
        value
    }

    /// The channel to the current member.
    pub(crate) fn channel(&mut self) -> Channel {
        self.channels.get(&self.ctx.members, self.member)
    }

    /// Drops the channel to the current member and moves to the next one.
    pub(crate) fn move_on(&mut self) {
        self.channels.reset(self.member);
        self.member = (self.member + 1) % self.ctx.members.len();
    }

    /// Records one record of operation `id` on `member`.
    pub(crate) fn record(
        &self,
        id: u64,
        member: usize,
        kind: OpKind,
        op: &Op,
        result: Option<OpResult>,
        error: Option<String>,
    ) {
        self.ctx.recorder.record(|t| {
            Record::Op(OpRecord {
                t,
                process: self.process,
                id,
                kind,
                member: self.ctx.members[member].name.clone(),
                op: op.clone(),
                result,
                error,
            })
        });
    }

    /// Runs one unary operation on the current member, recording its
    /// invocation and completion; moves on to the next member after an
    /// error other than a refusal.
    pub(crate) async fn perform(&mut self, op: &Op) -> Result<OpResult, CallError> {
        let id = self.ctx.next_id();
        let member = self.member;
        let channel = self.channel();
        self.record(id, member, OpKind::Invoke, op, None, None);
        let outcome = execute(channel, op, self.ctx.config.request_timeout).await;
        match &outcome {
            Ok(result) => self.record(id, member, OpKind::Ok, op, Some(result.clone()), None),
            Err(error) => {
                let kind = match op {
                    Op::Get { .. } => read_outcome(error),
                    _ => write_outcome(error),
                };
                self.record(id, member, kind, op, None, Some(error.to_string()));
                if !error.is_refusal() {
                    tracing::debug!(
                        process = self.process,
                        member = %self.ctx.members[member].name,
                        "{error}; moving to the next member"
                    );
                    self.move_on();
                }
                if error.is_connect_error() {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
        outcome
    }
}

fn revision(header: Option<&pb::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends one unary operation, bounded by `bound`.
async fn execute(channel: Channel, op: &Op, bound: Duration) -> Result<OpResult, CallError> {
    match op {
        Op::Get { key, serializable } => {
            let request = pb::RangeRequest {
                key: key.clone().into_bytes().into(),
                serializable: *serializable,
                ..Default::default()
            };
            let response = call(bound, KvClient::new(channel).range(request)).await?;
            let kv = response.kvs.first();
            Ok(OpResult {
                revision: revision(response.header.as_ref()),
                value: kv.map(|kv| text(&kv.value)),
                mod_revision: kv.map(|kv| kv.mod_revision),
                ..Default::default()
            })
        }
        Op::Put { key, value, lease } => {
            let request = pb::PutRequest {
                key: key.clone().into_bytes().into(),
                value: value.clone().into_bytes().into(),
                lease: lease.unwrap_or(0),
                ..Default::default()
            };
            let response = call(bound, KvClient::new(channel).put(request)).await?;
            Ok(OpResult {
                revision: revision(response.header.as_ref()),
                ..Default::default()
            })
        }
        Op::Delete { key } => {
            let request = pb::DeleteRangeRequest {
                key: key.clone().into_bytes().into(),
                ..Default::default()
            };
            let response = call(bound, KvClient::new(channel).delete_range(request)).await?;
            Ok(OpResult {
                revision: revision(response.header.as_ref()),
                deleted: Some(response.deleted),
                ..Default::default()
            })
        }
        Op::Cas { key, expect, value } => {
            let key_bytes: tonic::codegen::Bytes = key.clone().into_bytes().into();
            let compare = match expect {
                Some(expect) => pb::Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: key_bytes.clone(),
                    target_union: Some(compare::TargetUnion::Value(
                        expect.clone().into_bytes().into(),
                    )),
                    ..Default::default()
                },
                None => pb::Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Create as i32,
                    key: key_bytes.clone(),
                    target_union: Some(compare::TargetUnion::CreateRevision(0)),
                    ..Default::default()
                },
            };
            let request = pb::TxnRequest {
                compare: vec![compare],
                success: vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestPut(pb::PutRequest {
                        key: key_bytes.clone(),
                        value: value.clone().into_bytes().into(),
                        ..Default::default()
                    })),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                        key: key_bytes,
                        ..Default::default()
                    })),
                }],
            };
            let response = call(bound, KvClient::new(channel).txn(request)).await?;
            let mut result = OpResult {
                revision: revision(response.header.as_ref()),
                succeeded: Some(response.succeeded),
                ..Default::default()
            };
            if !response.succeeded {
                let range = response
                    .responses
                    .into_iter()
                    .find_map(|r| match r.response {
                        Some(response_op::Response::ResponseRange(range)) => Some(range),
                        _ => None,
                    });
                let Some(range) = range else {
                    // Applied (it is a read) but unreadable: report as a
                    // broken answer; for a failed compare it had no effect.
                    return Err(CallError::Closed(
                        "txn failure branch without a range response".into(),
                    ));
                };
                let kv = range.kvs.first();
                result.value = kv.map(|kv| text(&kv.value));
                result.mod_revision = kv.map(|kv| kv.mod_revision);
            }
            Ok(result)
        }
        Op::LeaseGrant { ttl } => {
            let request = pb::LeaseGrantRequest { ttl: *ttl, id: 0 };
            let response = call(bound, LeaseClient::new(channel).lease_grant(request)).await?;
            if !response.error.is_empty() {
                return Err(CallError::Status(tonic::Status::unknown(response.error)));
            }
            Ok(OpResult {
                revision: revision(response.header.as_ref()),
                lease: Some(response.id),
                ttl: Some(response.ttl),
                ..Default::default()
            })
        }
        Op::LeaseRevoke { lease } => {
            let request = pb::LeaseRevokeRequest { id: *lease };
            let response = call(bound, LeaseClient::new(channel).lease_revoke(request)).await?;
            Ok(OpResult {
                revision: revision(response.header.as_ref()),
                ..Default::default()
            })
        }
        Op::LeaseKeepAlive { .. } => Err(CallError::Closed(
            "a keep-alive is not a unary request".into(),
        )),
    }
}

/// A KV client: random gets, puts, deletes and cas on the shared keys until
/// `deadline`; the last request may complete after it.
pub(crate) async fn kv_client(ctx: Arc<Ctx>, process: u32, deadline: Instant) {
    let mut rng = Rng::new(ctx.config.seed, u64::from(process));
    let keys = ctx.config.keys as u64;
    let prefix = ctx.config.prefix.clone();
    let mut client = Client::new(ctx, process);
    // What this client last read or wrote for each key (None: absent).
    let mut known: HashMap<String, Option<String>> = HashMap::new();
    while Instant::now() < deadline {
        let key = format!("{prefix}k{}", rng.below(keys));
        let op = match rng.below(100) {
            0..30 => Op::Get {
                key,
                serializable: false,
            },
            30..40 => Op::Get {
                key,
                serializable: true,
            },
            40..70 => Op::Put {
                key,
                value: client.next_value(),
                lease: None,
            },
            70..80 => Op::Delete { key },
            _ => Op::Cas {
                expect: known.get(&key).cloned().flatten(),
                value: client.next_value(),
                key,
            },
        };
        let Ok(result) = client.perform(&op).await else {
            continue;
        };
        match op {
            Op::Get { key, .. } => {
                known.insert(key, result.value);
            }
            Op::Put { key, value, .. } => {
                known.insert(key, Some(value));
            }
            Op::Delete { key } => {
                known.insert(key, None);
            }
            Op::Cas { key, value, .. } => {
                let now = if result.succeeded == Some(true) {
                    Some(value)
                } else {
                    result.value
                };
                known.insert(key, now);
            }
            Op::LeaseGrant { .. } | Op::LeaseKeepAlive { .. } | Op::LeaseRevoke { .. } => {}
        }
    }
}
