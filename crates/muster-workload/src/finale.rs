//! The start-up wait and the final reads.
//!
//! Invariants:
//!
//! - [`initial_revision`] returns the header revision of a linearizable
//!   read showing the prefix empty (deleting what an earlier run left
//!   there, before anything is recorded), or fails after `final_timeout`.
//! - [`final_phase`] polls every member with a serializable read of the
//!   prefix until all of them answer in one round at the same header
//!   revision (and not before every abandoned lease should have expired),
//!   bounded by `final_timeout`; then writes one
//!   [`FinalRecord`] per member: the
//!   member's last successful read (keys, values, mod_revisions, leases),
//!   HashKV at that read's revision, and the compaction revision HashKV
//!   reports (0 when nothing was compacted). A member never read gets a record with `error` set.
//! - The revision it returns is the agreed one, or, without agreement, the
//!   highest revision any member was read at.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use muster_check::history::{FinalKv, FinalRecord, OpKind, Record};
use muster_proto::etcdserverpb::{
    self as pb, kv_client::KvClient, maintenance_client::MaintenanceClient,
};
use tokio::task::JoinSet;

use crate::Ctx;
use crate::net::{CallError, call, prefix_end, write_outcome};

/// How often the members are polled.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Slack added to the lease expiry bound before the final reads.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

/// What the final phase settled on.
pub(crate) struct Finals {
    /// The final revision, if any member could be read.
    pub(crate) revision: Option<i64>,
}

fn prefix_range(ctx: &Ctx, serializable: bool, count_only: bool) -> pb::RangeRequest {
    let prefix = ctx.config.prefix.as_bytes();
    pb::RangeRequest {
        key: prefix.to_vec().into(),
        range_end: prefix_end(prefix).into(),
        serializable,
        count_only,
        ..Default::default()
    }
}

/// Waits until some member answers a linearizable read of the prefix
/// showing it empty, and returns the revision it read at.
///
/// Keys left under the prefix (by an earlier run) are deleted first, with
/// one unrecorded delete-range: the history's model starts from an empty
/// prefix. A delete that could not connect is retried on the next member;
/// one of unknown outcome is an error (it could still apply during the
/// run), as is a prefix still not empty after `final_timeout`.
pub(crate) async fn initial_revision(ctx: &Ctx) -> anyhow::Result<i64> {
    let deadline = Instant::now() + ctx.config.final_timeout;
    let bound = ctx.config.request_timeout;
    let mut last_error = String::from("no member tried");
    loop {
        for member in &ctx.members {
            let request = prefix_range(ctx, false, true);
            let response = match call(bound, KvClient::new(member.channel()).range(request)).await {
                Ok(response) => response,
                Err(e) => {
                    last_error = format!("{}: {e}", member.name);
                    continue;
                }
            };
            if response.count == 0 {
                return Ok(response.header.map_or(0, |h| h.revision));
            }
            tracing::warn!(
                "{} keys are left under {:?}; deleting them before the run",
                response.count,
                ctx.config.prefix
            );
            let prefix = ctx.config.prefix.as_bytes();
            let request = pb::DeleteRangeRequest {
                key: prefix.to_vec().into(),
                range_end: prefix_end(prefix).into(),
                ..Default::default()
            };
            match call(bound, KvClient::new(member.channel()).delete_range(request)).await {
                Ok(_) => {}
                Err(e) if write_outcome(&e) == OpKind::Fail => {
                    last_error = format!("{}: {e}", member.name);
                }
                Err(e) => {
                    return Err(anyhow!(
                        "deleting the keys left under {:?} had an unknown outcome ({e}); \
                         run again or use a fresh --prefix",
                        ctx.config.prefix
                    ));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "no member answered with an empty prefix within {:?} (last error: {last_error})",
                ctx.config.final_timeout
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Reads every member's final state and records it; `abandoned` is when
/// the last lease was abandoned, if one was.
pub(crate) async fn final_phase(ctx: &Ctx, abandoned: Option<Instant>) -> Finals {
    let deadline = Instant::now() + ctx.config.final_timeout;
    let settle = abandoned.map(|at| {
        at + Duration::from_secs(u64::try_from(ctx.config.lease_ttl).unwrap_or(0))
            + Duration::from_millis(ctx.config.election_timeout_ms)
            + EXPIRY_SLACK
    });
    let n = ctx.members.len();
    let mut last: Vec<Option<pb::RangeResponse>> = vec![None; n];
    let mut errors: Vec<String> = vec!["never answered".to_string(); n];
    let agreed = loop {
        let mut reads = JoinSet::new();
        for (i, member) in ctx.members.iter().enumerate() {
            let request = prefix_range(ctx, true, false);
            let channel = member.channel();
            let bound = ctx.config.request_timeout;
            reads.spawn(
                async move { (i, call(bound, KvClient::new(channel).range(request)).await) },
            );
        }
        let mut revisions = Vec::with_capacity(n);
        while let Some(joined) = reads.join_next().await {
            let Ok((i, read)) = joined else { continue };
            match read {
                Ok(response) => {
                    revisions.push(response.header.as_ref().map_or(0, |h| h.revision));
                    last[i] = Some(response);
                }
                Err(e) => errors[i] = e.to_string(),
            }
        }
        let settled = settle.is_none_or(|at| Instant::now() >= at);
        if settled && revisions.len() == n && revisions.windows(2).all(|w| w[0] == w[1]) {
            break revisions.first().copied();
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "members did not agree on a revision within {:?}",
                ctx.config.final_timeout
            );
            break None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };

    let mut highest = None;
    for (i, member) in ctx.members.iter().enumerate() {
        let record = match last[i].take() {
            Some(response) => {
                let revision = response.header.as_ref().map_or(0, |h| h.revision);
                highest = highest.max(Some(revision));
                let hash = hash_kv(ctx, i, revision, deadline).await;
                if let Err(e) = &hash {
                    tracing::warn!(member = %member.name, "HashKV at {revision}: {e}");
                }
                let hash = hash.ok();
                FinalRecord {
                    t: 0,
                    member: member.name.clone(),
                    revision,
                    // etcd and muster answer -1 when nothing was compacted.
                    compact_revision: hash.as_ref().map_or(0, |h| h.compact_revision.max(0)),
                    hash: hash.as_ref().map(|h| h.hash),
                    hash_revision: hash.as_ref().map(|_| revision),
                    kvs: response
                        .kvs
                        .iter()
                        .map(|kv| FinalKv {
                            key: String::from_utf8_lossy(&kv.key).into_owned(),
                            value: String::from_utf8_lossy(&kv.value).into_owned(),
                            mod_revision: kv.mod_revision,
                            lease: (kv.lease != 0).then_some(kv.lease),
                        })
                        .collect(),
                    error: None,
                }
            }
            None => FinalRecord {
                t: 0,
                member: member.name.clone(),
                revision: 0,
                compact_revision: 0,
                hash: None,
                hash_revision: None,
                kvs: Vec::new(),
                error: Some(std::mem::take(&mut errors[i])),
            },
        };
        ctx.recorder
            .record(|t| Record::Final(FinalRecord { t, ..record }));
    }
    Finals {
        revision: agreed.or(highest),
    }
}

/// HashKV of member `i` at `revision`: up to three attempts, none started
/// after `deadline`.
async fn hash_kv(
    ctx: &Ctx,
    i: usize,
    revision: i64,
    deadline: Instant,
) -> Result<pb::HashKvResponse, CallError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let request = pb::HashKvRequest { revision };
        let channel = ctx.members[i].channel();
        match call(
            ctx.config.request_timeout,
            MaintenanceClient::new(channel).hash_kv(request),
        )
        .await
        {
            Ok(response) => return Ok(response),
            Err(e) if attempts >= 3 || Instant::now() >= deadline || e.is_refusal() => {
                return Err(e);
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}
