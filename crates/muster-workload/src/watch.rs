//! The watchers: each follows the prefix from one start revision to the
//! final revision, across reconnects.
//!
//! Invariants:
//!
//! - Watcher `j` starts on member `j % n` and, after any error, cancel or
//!   end of its stream, records `error` and resumes on the next member from
//!   the revision after the last event it saw (the original start revision
//!   if none), recording `start` with that revision. It waits 100 ms before
//!   reopening, doubled (up to 1 s) while streams break before answering. After a `compacted`
//!   cancel it resumes from the compaction revision.
//! - Every response is recorded: `events` (in the order received),
//!   `progress` (no events, neither created nor cancelled) or `compacted`;
//!   the creation acknowledgement is not recorded.
//! - The watcher "covers" revision `r` once it saw an event at `r` or later
//!   or a progress notification with header revision `r` or later: every
//!   event up to `r` has then been delivered to it.
//! - The stream is read by its own loop that only ever queues records (which
//!   never blocks) and `try_send`s progress requests, so the server is
//!   always drained.
//! - In the final phase ([`Phase::Cover`]) it asks for progress every
//!   500 ms, moves to another member when its coverage does not advance
//!   for 3 × `request_timeout`, and stops when it covers the final revision
//!   (returning `true`) or at the phase's deadline (returning `false`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_check::history::{EventKind, KvEvent, Record, WatchEvent, WatchRecord};
use muster_proto::etcdserverpb::{self as pb, watch_client::WatchClient, watch_request};
use muster_proto::mvccpb;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::Ctx;
use crate::net::{CallError, prefix_end};

/// How long a watcher waits before reopening a broken stream; doubled for
/// every stream in a row that broke before answering anything, up to
/// [`MAX_REOPEN_DELAY`].
const REOPEN_DELAY: Duration = Duration::from_millis(100);
/// The longest wait before reopening a stream.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(1);
/// How often a watcher asks for progress in the final phase.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the watchers should be doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Follow the prefix.
    Running,
    /// Keep following until `revision` is covered, at most until
    /// `deadline`.
    Cover { revision: i64, deadline: Instant },
    /// Stop now.
    Stop,
}

/// What a watcher has seen so far.
struct Seen {
    /// The revision the next stream starts from.
    resume: i64,
    /// Every event up to this revision has been seen.
    covered: i64,
    /// Responses received, on every stream.
    responses: u64,
}

/// How one stream ended.
enum Ended {
    /// The watcher is done; whether it covered the final revision.
    Done(bool),
    /// The stream broke (already recorded for a compaction).
    Broken(Option<String>),
}

/// One watcher of the prefix from `start_revision`; returns whether it
/// covered the final revision.
pub(crate) async fn watcher(
    ctx: Arc<Ctx>,
    watcher: u32,
    start_revision: i64,
    mut phase: watch::Receiver<Phase>,
) -> bool {
    let n = ctx.members.len();
    let mut member = watcher as usize % n;
    let mut seen = Seen {
        resume: start_revision,
        covered: start_revision - 1,
        responses: 0,
    };
    let mut delay = REOPEN_DELAY;
    loop {
        match *phase.borrow() {
            Phase::Running => {}
            Phase::Stop => return false,
            Phase::Cover { revision, deadline } => {
                if seen.covered >= revision {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
            }
        }
        record(
            &ctx,
            watcher,
            member,
            WatchEvent::Start {
                start_revision: seen.resume,
            },
        );
        let responses = seen.responses;
        match follow(&ctx, watcher, member, &mut seen, &mut phase).await {
            Ended::Done(covered) => return covered,
            Ended::Broken(error) => {
                if let Some(error) = error {
                    tracing::debug!(watcher, member = %ctx.members[member].name, "{error}");
                    record(&ctx, watcher, member, WatchEvent::Error { error });
                }
                member = (member + 1) % n;
                if seen.responses > responses {
                    delay = REOPEN_DELAY;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_REOPEN_DELAY);
            }
        }
    }
}

fn record(ctx: &Ctx, watcher: u32, member: usize, event: WatchEvent) {
    ctx.recorder.record(|t| {
        Record::Watch(WatchRecord {
            t,
            watcher,
            member: ctx.members[member].name.clone(),
            prefix: ctx.config.prefix.clone(),
            event,
        })
    });
}

/// Follows one stream on `member` from `seen.resume` until it breaks or
/// the watcher is done.
async fn follow(
    ctx: &Ctx,
    watcher: u32,
    member: usize,
    seen: &mut Seen,
    phase: &mut watch::Receiver<Phase>,
) -> Ended {
    let prefix = ctx.config.prefix.as_bytes();
    let bound = ctx.config.request_timeout;
    let (tx, rx) = mpsc::channel(16);
    let create = pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: prefix.to_vec().into(),
                range_end: prefix_end(prefix).into(),
                start_revision: seen.resume,
                progress_notify: true,
                prev_kv: false,
                ..Default::default()
            },
        )),
    };
    if tx.try_send(create).is_err() {
        return Ended::Broken(Some("watch request queue closed".into()));
    }
    let opened = tokio::time::timeout(
        bound,
        WatchClient::new(ctx.members[member].channel()).watch(ReceiverStream::new(rx)),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => return Ended::Broken(Some(CallError::Status(status).to_string())),
        Err(_) => return Ended::Broken(Some(CallError::Timeout(bound).to_string())),
    };
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // In the final phase: when coverage last advanced on this stream.
    let mut advanced: Option<(Instant, i64)> = None;
    loop {
        let current = *phase.borrow();
        let covering = match current {
            Phase::Stop => return Ended::Done(false),
            Phase::Running => false,
            Phase::Cover { revision, deadline } => {
                if seen.covered >= revision {
                    return Ended::Done(true);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ended::Done(false);
                }
                match advanced {
                    Some((_, covered)) if covered != seen.covered => {
                        advanced = Some((now, seen.covered));
                    }
                    Some((since, _)) if now.duration_since(since) >= bound * 3 => {
                        return Ended::Broken(Some(format!(
                            "no progress towards the final revision {revision} within {:?} \
                             (covered {})",
                            bound * 3,
                            seen.covered
                        )));
                    }
                    Some(_) => {}
                    None => advanced = Some((now, seen.covered)),
                }
                true
            }
        };
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(response)) => {
                    if let Some(ended) = handle(ctx, watcher, member, seen, response) {
                        return ended;
                    }
                }
                Ok(None) => return Ended::Broken(Some("watch stream ended".into())),
                Err(status) => return Ended::Broken(Some(CallError::Status(status).to_string())),
            },
            changed = phase.changed() => {
                if changed.is_err() {
                    return Ended::Done(false);
                }
            }
            _ = progress.tick(), if covering => {
                let request = pb::WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(
                        pb::WatchProgressRequest {},
                    )),
                };
                // Never wait on the request side: a full queue just skips
                // this request.
                let _ = tx.try_send(request);
            }
        }
    }
}

/// Records one response; `Some` when the stream is over.
fn handle(
    ctx: &Ctx,
    watcher: u32,
    member: usize,
    seen: &mut Seen,
    response: pb::WatchResponse,
) -> Option<Ended> {
    seen.responses += 1;
    let header_revision = response.header.as_ref().map_or(0, |h| h.revision);
    if response.canceled {
        if response.compact_revision > 0 {
            record(
                ctx,
                watcher,
                member,
                WatchEvent::Compacted {
                    compact_revision: response.compact_revision,
                },
            );
            seen.resume = response.compact_revision;
            return Some(Ended::Broken(None));
        }
        return Some(Ended::Broken(Some(format!(
            "watch cancelled: {}",
            response.cancel_reason
        ))));
    }
    if response.events.is_empty() {
        if !response.created {
            record(
                ctx,
                watcher,
                member,
                WatchEvent::Progress { header_revision },
            );
            seen.covered = seen.covered.max(header_revision);
        }
        return None;
    }
    let events: Vec<KvEvent> = response.events.iter().filter_map(convert).collect();
    if let Some(last) = events.iter().map(|e| e.mod_revision).max() {
        seen.covered = seen.covered.max(last);
        seen.resume = seen.resume.max(last + 1);
    }
    record(
        ctx,
        watcher,
        member,
        WatchEvent::Events {
            header_revision,
            events,
        },
    );
    None
}

/// A watch event as the history records it.
fn convert(event: &mvccpb::Event) -> Option<KvEvent> {
    let kv = event.kv.as_ref()?;
    let delete = event.r#type == mvccpb::event::EventType::Delete as i32;
    Some(KvEvent {
        kind: if delete {
            EventKind::Delete
        } else {
            EventKind::Put
        },
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: (!delete).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
        mod_revision: kv.mod_revision,
        lease: (kv.lease != 0).then_some(kv.lease),
    })
}
