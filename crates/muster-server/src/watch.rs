//! The etcd v3 `Watch` service: bidirectional streams, each multiplexing
//! many watchers over key ranges.
//!
//! ```text
//!   StateMachine ──broadcast (bounded, never blocks apply)──▶ one task per stream
//!                                                              │  synced watchers: events of each
//!   Store (O(1) clone) ──events(key, end, from, limit)──────▶  │  applied entry, filtered
//!                                                              │  unsynced watchers: catch-up
//!                                                              ▼  from history in batches
//!                                       bounded mpsc of WatchResponses ──▶ gRPC stream
//! ```
//!
//! Every watcher has a `next` revision: the first revision it has not yet
//! been sent. A watcher is *synced* when everything before `next` that it
//! must see has been sent and later revisions will come from the
//! broadcast; otherwise it is *unsynced* and catches up from the store's
//! history. Invariants:
//!
//! - `next` only grows, and an event is sent only if its revision is at
//!   least `next`: events arrive in revision order, never twice (ordered,
//!   unique). All events of one revision go out in one response, or in
//!   consecutive fragments when the watcher asked for `fragment` and the
//!   response is larger than the request limit (atomic).
//! - The broadcast receiver is subscribed before any watcher reads the
//!   store, so every entry applied after that read is either in the
//!   receiver or reported lost (`Lagged`), in which case every synced
//!   watcher falls back to catch-up from its `next` (reliable). A snapshot
//!   replacing the store (announced as an entry without events) does the
//!   same.
//! - A watcher whose `next` is behind the compaction point is cancelled
//!   with `compact_revision` set to the first revision still in history.
//! - The stream task is the only writer of its responses and the response
//!   channel is bounded: a slow client stalls its own task (whose receiver
//!   then lags and catches up later), never the apply loop or other
//!   streams.
//! - A created response precedes every other response of its watcher; a
//!   cancelled watcher gets nothing after its cancel response.
//! - A stream opened with the `hasleader` metadata is refused, or ended,
//!   with etcd's "no leader" when this member has no leader (for three
//!   election timeouts, once open).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use muster_core::{Event, EventKind, KeyRange, Store};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::watch_server::Watch;
use muster_proto::mvccpb;
use muster_raft::{AppliedEvents, RaftNode};
use prost::Message;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics;
use crate::status::NO_LEADER;

/// etcd's reason for a watch on an empty range.
pub const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
/// etcd's reason for a client-chosen watch ID already in use.
pub const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// The watch ID etcd uses in responses that belong to no watcher (progress
/// responses to a progress request, failed creates).
const NO_WATCH_ID: i64 = -1;

/// Tunables of the watch service.
#[derive(Clone, Copy, Debug)]
pub struct WatchConfig {
    /// How often a watcher that asked for `progress_notify` and received
    /// nothing meanwhile is sent an empty progress response (etcd: 10 min).
    pub progress_interval: Duration,
    /// The member's election timeout: a `hasleader` stream ends after three
    /// of them without a leader.
    pub election_timeout: Duration,
    /// Responses queued per stream before its task waits for the client.
    pub stream_buffer: usize,
    /// Most events per catch-up response (whole revisions are never split
    /// across responses, so one may hold more).
    pub catch_up_batch: usize,
    /// Responses larger than this are split into fragments for watchers that
    /// asked for `fragment` (etcd: `--max-request-bytes`).
    pub max_response_bytes: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            progress_interval: Duration::from_secs(600),
            election_timeout: Duration::from_millis(1000),
            stream_buffer: 128,
            catch_up_batch: 1000,
            max_response_bytes: 3 * 512 * 1024,
        }
    }
}

/// The `Watch` service of one member.
#[derive(Clone, Debug)]
pub struct WatchService {
    node: Arc<RaftNode>,
    cluster_id: u64,
    config: WatchConfig,
    /// Becomes `true` when the client API stops: every stream ends.
    stopping: watch::Receiver<bool>,
}

impl WatchService {
    /// A watch service over `node`'s applied store, for cluster `cluster_id`.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64, config: WatchConfig) -> Self {
        WatchService {
            node,
            cluster_id,
            config,
            stopping: watch::channel(false).1,
        }
    }

    /// The same service, ending every stream once `stopping` becomes true.
    pub fn stopping_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> pb::watch_server::WatchServer<Self> {
        pb::watch_server::WatchServer::new(self)
    }
}

/// Whether the request carries etcd's "require leader" metadata.
fn requires_leader<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get("hasleader")
        .is_some_and(|value| value.as_bytes() == b"true")
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = requires_leader(&request);
        if require_leader && self.node.raft().metrics().borrow().current_leader.is_none() {
            return Err(Status::unavailable(NO_LEADER));
        }
        // Subscribe before any watcher reads the store (see the invariants).
        let events = self.node.state_machine().subscribe();
        let (responses, receiver) = mpsc::channel(self.config.stream_buffer.max(1));
        let stream = WatchStream {
            node: Arc::clone(&self.node),
            cluster_id: self.cluster_id,
            config: self.config,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_requested: false,
            responses,
        };
        tokio::spawn(stream.run(
            request.into_inner(),
            events,
            require_leader,
            self.stopping.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One watcher of a stream.
#[derive(Debug)]
struct Watcher {
    key: Bytes,
    range_end: Bytes,
    /// The first revision not yet sent.
    next: i64,
    synced: bool,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether anything was sent since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    /// The events of `events` this watcher is to see, as sent on the wire.
    fn select<'e>(&self, events: impl IntoIterator<Item = &'e Event>) -> Vec<mvccpb::Event> {
        let range = KeyRange::new(&self.key, &self.range_end);
        events
            .into_iter()
            .filter(|event| range.contains(&event.kv.key))
            .filter(|event| match event.kind {
                EventKind::Put => !self.no_put,
                EventKind::Delete => !self.no_delete,
            })
            .map(|event| {
                let mut event = event.clone();
                if !self.prev_kv {
                    event.prev_kv = None;
                }
                event.into()
            })
            .collect()
    }
}

/// The stream ended: the client went away or the member stops.
struct Closed;

/// The task serving one watch stream.
struct WatchStream {
    node: Arc<RaftNode>,
    cluster_id: u64,
    config: WatchConfig,
    watchers: BTreeMap<i64, Watcher>,
    /// The next server-chosen watch ID to try.
    next_id: i64,
    /// A progress request arrived while some watcher was unsynced.
    progress_requested: bool,
    responses: mpsc::Sender<Result<pb::WatchResponse, Status>>,
}

/// Counts an open watch stream in [`metrics::WATCH_STREAMS`] while it lives.
struct OpenStream;

impl OpenStream {
    fn count() -> Self {
        metrics::WATCH_STREAMS.inc();
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        metrics::WATCH_STREAMS.dec();
    }
}

/// This stream's share of [`metrics::WATCHERS`], withdrawn when it ends.
#[derive(Default)]
struct WatcherGauge {
    reported: i64,
}

impl WatcherGauge {
    fn set(&mut self, watchers: usize) {
        let now = i64::try_from(watchers).unwrap_or(i64::MAX);
        metrics::WATCHERS.add(now - self.reported);
        self.reported = now;
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::WATCHERS.sub(self.reported);
    }
}

impl WatchStream {
    async fn run(
        mut self,
        mut requests: Streaming<pb::WatchRequest>,
        mut events: broadcast::Receiver<Arc<AppliedEvents>>,
        require_leader: bool,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut progress = tokio::time::interval_at(
            Instant::now() + self.config.progress_interval,
            self.config.progress_interval.max(Duration::from_millis(1)),
        );
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let leader_check_every = self.config.election_timeout.max(Duration::from_millis(1));
        let mut leader_check = tokio::time::interval(leader_check_every);
        leader_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut leaderless_since: Option<Instant> = None;
        let _stream = OpenStream::count();
        let mut watchers = WatcherGauge::default();
        loop {
            watchers.set(self.watchers.len());
            if *stopping.borrow_and_update() || self.catch_up().await.is_err() {
                return;
            }
            let step = tokio::select! {
                _ = stopping.changed() => Err(Closed),
                request = requests.message() => match request {
                    Ok(Some(request)) => self.handle(request).await,
                    // The client closed its side, or the connection broke.
                    Ok(None) | Err(_) => Err(Closed),
                },
                applied = events.recv() => match applied {
                    Ok(applied) => self.deliver(&applied).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        metrics::SLOW_WATCHERS.inc_by(self.watchers.len() as u64);
                        self.unsync_all();
                        Ok(())
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(Closed),
                },
                _ = progress.tick() => self.notify_progress().await,
                _ = leader_check.tick(), if require_leader => {
                    let has_leader = self.node.raft().metrics().borrow().current_leader.is_some();
                    match (has_leader, leaderless_since) {
                        (true, _) => {
                            leaderless_since = None;
                            Ok(())
                        }
                        (false, None) => {
                            leaderless_since = Some(Instant::now());
                            Ok(())
                        }
                        (false, Some(since)) if since.elapsed() >= 3 * leader_check_every => {
                            let _ = self.responses.send(Err(Status::unavailable(NO_LEADER))).await;
                            Err(Closed)
                        }
                        (false, Some(_)) => Ok(()),
                    }
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// A header with this member's identity, the current term and `revision`.
    fn header(&self, revision: i64) -> pb::ResponseHeader {
        crate::server::response_header(&self.node, self.cluster_id, revision)
    }

    fn store(&self) -> Store {
        self.node.state_machine().store()
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Closed> {
        self.responses.send(Ok(response)).await.map_err(|_| Closed)
    }

    /// Sends `events` of revision `revision` to watcher `id`, in fragments
    /// when it asked for them and the response is too large (etcd's
    /// `sendFragments`).
    async fn send_events(
        &mut self,
        id: i64,
        revision: i64,
        events: Vec<mvccpb::Event>,
    ) -> Result<(), Closed> {
        let Some(watcher) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        watcher.sent_since_tick = true;
        let fragment = watcher.fragment;
        let response = pb::WatchResponse {
            header: Some(self.header(revision)),
            watch_id: id,
            events,
            ..Default::default()
        };
        let limit = self.config.max_response_bytes;
        if !fragment || response.encoded_len() < limit || response.events.len() < 2 {
            return self.send(response).await;
        }
        let mut rest = response.events.into_iter().peekable();
        while rest.peek().is_some() {
            let mut part = pb::WatchResponse {
                header: response.header,
                watch_id: id,
                fragment: true,
                ..Default::default()
            };
            while let Some(event) = rest.peek() {
                part.events.push(event.clone());
                if part.events.len() > 1 && part.encoded_len() >= limit {
                    part.events.pop();
                    break;
                }
                rest.next();
            }
            part.fragment = rest.peek().is_some();
            self.send(part).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), Closed> {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let revision = self.store().revision();
                    self.send(pb::WatchResponse {
                        header: Some(self.header(revision)),
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..Default::default()
                    })
                    .await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_requested = true;
                self.answer_progress_request().await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        let store = self.store();
        let current = store.revision();
        let refuse = |reason: &str| pb::WatchResponse {
            header: Some(self.header(current)),
            watch_id: NO_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if KeyRange::new(&create.key, &create.range_end).is_empty() {
            return self.send(refuse(EMPTY_RANGE)).await;
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                return self.send(refuse(DUPLICATE_ID)).await;
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let next = if create.start_revision > 0 {
            create.start_revision
        } else {
            current + 1
        };
        let filters: Vec<_> = create.filters.clone();
        let has = |filter: pb::watch_create_request::FilterType| filters.contains(&(filter as i32));
        let watcher = Watcher {
            key: create.key,
            range_end: create.range_end,
            next,
            synced: next > current,
            prev_kv: create.prev_kv,
            no_put: has(pb::watch_create_request::FilterType::Noput),
            no_delete: has(pb::watch_create_request::FilterType::Nodelete),
            progress_notify: create.progress_notify,
            fragment: create.fragment,
            sent_since_tick: false,
        };
        self.watchers.insert(id, watcher);
        self.send(pb::WatchResponse {
            header: Some(self.header(current)),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await
    }

    /// Brings every unsynced watcher up to the store's current revision,
    /// from history, in batches; cancels those behind the compaction point.
    async fn catch_up(&mut self) -> Result<(), Closed> {
        let unsynced: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| !w.synced)
            .map(|(id, _)| *id)
            .collect();
        for id in unsynced {
            loop {
                let store = self.store();
                let current = store.revision();
                let Some(watcher) = self.watchers.get_mut(&id) else {
                    break;
                };
                if watcher.next > current {
                    watcher.synced = true;
                    break;
                }
                let batch = store.events(
                    &watcher.key,
                    &watcher.range_end,
                    watcher.next,
                    current,
                    self.config.catch_up_batch,
                );
                match batch {
                    Ok(batch) => {
                        let events = watcher.select(&batch.events);
                        watcher.next = batch.next_revision.max(watcher.next + 1);
                        if !events.is_empty() {
                            self.send_events(id, current, events).await?;
                        }
                    }
                    Err(_) => {
                        // Behind the compaction point: etcd cancels the
                        // watcher, naming the first revision still kept.
                        self.watchers.remove(&id);
                        self.send(pb::WatchResponse {
                            header: Some(self.header(current)),
                            watch_id: id,
                            canceled: true,
                            compact_revision: store.compact_revision(),
                            ..Default::default()
                        })
                        .await?;
                        break;
                    }
                }
            }
        }
        if self.progress_requested {
            self.answer_progress_request().await?;
        }
        Ok(())
    }

    /// Sends the events of one applied entry to every synced watcher that
    /// has not seen its revision.
    async fn deliver(&mut self, applied: &AppliedEvents) -> Result<(), Closed> {
        if applied.events.is_empty() {
            // A snapshot replaced the store: catch up from its history.
            self.unsync_all();
            return Ok(());
        }
        let mut outgoing = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if !watcher.synced || applied.revision < watcher.next {
                continue;
            }
            watcher.next = applied.revision + 1;
            let events = watcher.select(&applied.events);
            if !events.is_empty() {
                outgoing.push((*id, events));
            }
        }
        for (id, events) in outgoing {
            self.send_events(id, applied.revision, events).await?;
        }
        Ok(())
    }

    fn unsync_all(&mut self) {
        for watcher in self.watchers.values_mut() {
            watcher.synced = false;
        }
    }

    /// Answers a pending progress request once every watcher is synced
    /// (etcd's `RequestProgressAll`): the current revision, watch ID -1.
    async fn answer_progress_request(&mut self) -> Result<(), Closed> {
        if self.watchers.values().any(|w| !w.synced) {
            return Ok(());
        }
        self.progress_requested = false;
        let revision = self.store().revision();
        self.send(pb::WatchResponse {
            header: Some(self.header(revision)),
            watch_id: NO_WATCH_ID,
            ..Default::default()
        })
        .await
    }

    /// Sends an empty response to every synced `progress_notify` watcher
    /// that was sent nothing since the last tick.
    async fn notify_progress(&mut self) -> Result<(), Closed> {
        let revision = self.store().revision();
        let mut due = Vec::new();
        for (id, watcher) in &mut self.watchers {
            if watcher.progress_notify && watcher.synced && !watcher.sent_since_tick {
                due.push(*id);
            }
            watcher.sent_since_tick = false;
        }
        for id in due {
            self.send(pb::WatchResponse {
                header: Some(self.header(revision)),
                watch_id: id,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }
}
