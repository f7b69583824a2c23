//! The etcd v3 `Maintenance` service of one member: Status, HashKV, Hash,
//! Snapshot, MoveLeader, Defragment and Alarm (Downgrade answers
//! unimplemented).
//!
//! Every RPC but MoveLeader and Alarm answers from *this* member, as etcd's
//! do: its Raft metrics, its applied store, its data directory. None of
//! them goes through the log or takes a read barrier (a maintenance view of
//! one member is what a caller asks for, as with etcd).
//!
//! Alarms are cluster state, replicated like keys
//! ([`muster_core::Command::Alarm`]): `GET` reads them after a read
//! barrier (etcd sends it through Raft), `ACTIVATE` and `DEACTIVATE` are
//! proposed through the leader from any member. The answers are etcd 3.5's
//! applier's:
//!
//! ```text
//!   GET         alarm NONE: every raised alarm; else those of that type
//!               (the member ID is not a filter, as in etcd's alarm store)
//!   ACTIVATE    alarm NONE: nothing, no proposal; an unknown type is
//!               refused (etcd 3.5 panics); else the alarm, raised now or
//!               already
//!   DEACTIVATE  the alarm if it was raised, else nothing (NONE and
//!               unknown types were never raised: no proposal)
//! ```
//!
//! `Status.errors` lists every raised alarm as etcd prints an
//! `AlarmMember`: `"memberID:<decimal ID> alarm:NOSPACE "`, with the
//! trailing space of Go's compact protobuf text format. On the leader it
//! also lists self-preservation while it lasts
//! (`"muster: self-preservation: ..."`, see [`crate::preserve`]): that is
//! not an etcd alarm, because etcdctl's `endpoint health` reports every
//! endpoint unhealthy while any alarm is raised (an unknown type as
//! `UNKNOWN`), and a health probe restarting members would end the very
//! protection self-preservation gives.
//!
//! Invariants:
//!
//! - **Headers** carry the cluster ID, this member's ID, its Raft term and
//!   the revision of its applied store (etcd's `header.fill`).
//! - **One encoding, one digest.** `Hash`, `Status.db_size_in_use` and the
//!   `Snapshot` stream all come from the snapshot encoding of one O(1)
//!   clone of the applied store ([`muster_core::Store::write_snapshot`]):
//!   its length and its trailing crc32c. The digest is computed on a
//!   blocking thread and cached per applied log id, so repeated calls on an
//!   idle member cost nothing and two members that applied the same log
//!   report the same `Hash`.
//! - **Snapshot streams are bounded in memory.** The encoding is written
//!   straight into chunks of at most [`SNAPSHOT_CHUNK`] bytes sent through
//!   a small channel; a client that stops reading stalls the encoder, one
//!   that goes away ends it.
//! - **Snapshot streams follow etcd's layout**, so `etcdctl snapshot save`
//!   accepts them (it requires `size % 512 == 32`):
//!
//!   ```text
//!   | muster snapshot encoding (ends in its crc32c) | zeros to a multiple of 512 | sha256 of both |
//!   '---------- content chunks: remaining_bytes counts down to 0 --------------' '-- last msg --'
//!   ```
//!
//!   [`muster_core::Store::restore`] reads the encoding and ignores what
//!   follows it, so a saved file restores as it is. The format is muster's
//!   own: etcd's `snapshot restore` cannot read it.
//! - **Leadership moves only from the leader, to a voter**
//!   ([`RaftNode::move_leader`]), with etcd's errors: a follower answers
//!   "etcdserver: not leader", a learner or unknown target
//!   "etcdserver: bad leader transferee", a transfer that does not finish
//!   in time "etcdserver: request timed out, leader transfer took too
//!   long".
//! - **Every wait is bounded**, by the client's `grpc-timeout` (a little
//!   less, so the answer arrives first) and never more than a fixed cap.
//! - **Bad input never panics:** unknown enum values and out-of-range
//!   revisions get a clear error.

use std::io::{self, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use muster_core::{AlarmMember, AlarmType, Command, Store};
use muster_proto::etcdserverpb as pb;
use muster_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use muster_raft::{CommandResult, LogId, MoveLeaderError, REQUEST_TIMEOUT, RaftNode};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::lease::Lessor;
use crate::status::{NO_LEADER, TIMEOUT, core_status, raft_status};

/// The etcd API version muster implements, reported by `Status`.
pub const VERSION: &str = "3.5.0";

/// Largest blob of one `SnapshotResponse` (etcd's 32 KiB).
pub const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// A snapshot stream's content is padded with zeros to a multiple of this
/// many bytes before its sha256: `etcdctl snapshot save` finds the digest
/// by `size % 512 == 32` (etcd's databases are whole 512-byte pages).
pub const SNAPSHOT_ALIGN: u64 = 512;

/// Longest a `Defragment` waits for its snapshot to be written.
pub const DEFRAGMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// etcd's "not leader" (`ErrGRPCNotLeader`).
pub const NOT_LEADER: &str = "etcdserver: not leader";
/// etcd's "bad leader transferee" (`ErrGRPCBadLeaderTransferee`).
pub const BAD_LEADER_TRANSFEREE: &str = "etcdserver: bad leader transferee";
/// etcd's "leader transfer took too long" (`ErrGRPCTimeoutLeaderTransfer`).
pub const LEADER_TRANSFER_TIMEOUT: &str =
    "etcdserver: request timed out, leader transfer took too long";
/// etcd's "server stopped" (`ErrGRPCStopped`).
pub const STOPPED: &str = "etcdserver: server stopped";

/// Snapshot chunks buffered between the encoder and the client.
const SNAPSHOT_QUEUE: usize = 4;

/// The snapshot encoding of one applied state: its length and the crc32c
/// it ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StateDigest {
    len: u64,
    crc: u32,
}

/// The digest last computed, with the applied log id it is for.
type DigestCache = Arc<Mutex<Option<(Option<LogId>, StateDigest)>>>;

/// The `Maintenance` service of one member.
#[derive(Clone, Debug)]
pub struct MaintenanceService {
    node: Arc<RaftNode>,
    cluster_id: u64,
    digest: DigestCache,
    /// This member's lessor, whose self-preservation `Status` reports.
    lessor: Option<Arc<Lessor>>,
}

impl MaintenanceService {
    /// A service answering from `node`, a member of cluster `cluster_id`.
    pub fn new(node: Arc<RaftNode>, cluster_id: u64) -> Self {
        MaintenanceService {
            node,
            cluster_id,
            digest: Arc::default(),
            lessor: None,
        }
    }

    /// The same service, listing in `Status.errors` the self-preservation
    /// of `lessor` while it holds expired leases (on the leader).
    pub fn with_lessor(mut self, lessor: Arc<Lessor>) -> Self {
        self.lessor = Some(lessor);
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> MaintenanceServer<Self> {
        MaintenanceServer::new(self)
    }

    /// A header with this member's identity, the current term and `revision`.
    fn header(&self, revision: i64) -> pb::ResponseHeader {
        pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.node.id(),
            revision,
            raft_term: self.node.raft().metrics().borrow().current_term,
        }
    }

    /// The digest of `store`, applied up to `applied`, from the cache when
    /// nothing was applied since it was computed.
    async fn digest(&self, store: &Store, applied: Option<LogId>) -> Result<StateDigest, Status> {
        let cached = *self.digest.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, digest)) = cached
            && at == applied
        {
            return Ok(digest);
        }
        let store = store.clone();
        let digest = tokio::task::spawn_blocking(move || digest_of(&store))
            .await
            .map_err(|e| Status::internal(format!("encoding the state: {e}")))?
            .map_err(|e| Status::internal(format!("encoding the state: {e}")))?;
        *self.digest.lock().unwrap_or_else(PoisonError::into_inner) = Some((applied, digest));
        Ok(digest)
    }

    /// Bytes this member's data directory holds: the sled log plus the
    /// snapshot files.
    async fn disk_usage(&self) -> Result<u64, Status> {
        let log_store = self.node.log_store().clone();
        let snapshots = self.node.state_machine().snapshot_dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let log = log_store
                .size_on_disk()
                .map_err(|e| Status::internal(format!("measuring the log store: {e}")))?;
            let snapshots = dir_size(&snapshots)
                .map_err(|e| Status::internal(format!("measuring {}: {e}", snapshots.display())))?;
            Ok(log + snapshots)
        })
        .await
        .map_err(|e| Status::internal(format!("measuring the data dir: {e}")))?
    }

    /// Proposes raising (`activate`) or clearing `member_id`'s `alarm`
    /// through the leader, waiting at most `within`; the alarms that
    /// changed.
    async fn propose_alarm(
        &self,
        activate: bool,
        member_id: u64,
        alarm: AlarmType,
        within: Duration,
    ) -> Result<Vec<AlarmMember>, Status> {
        let command = Command::Alarm {
            activate,
            member_id,
            alarm,
        };
        let applied = self
            .node
            .submit_within(command, within)
            .await
            .map_err(|e| raft_status(&e))?;
        let response = match applied {
            CommandResult::Applied(response) => response,
            CommandResult::Failed(error) => return Err(core_status(&error)),
            CommandResult::Noop => {
                return Err(Status::internal("an alarm was applied as a no-op"));
            }
        };
        match response {
            muster_core::Response::Alarm { changed, .. } => {
                tracing::info!(
                    member = format_args!("{member_id:016x}"),
                    alarm = alarm_name(alarm),
                    activate,
                    changed = !changed.is_empty(),
                    "alarm proposed"
                );
                Ok(changed)
            }
            _ => Err(Status::internal(
                "an alarm was answered with another response",
            )),
        }
    }
}

/// Encodes `store` into nothing, keeping its length and checksum.
fn digest_of(store: &Store) -> io::Result<StateDigest> {
    let mut counter = Counter(0);
    let crc = store.write_snapshot(&mut counter)?;
    Ok(StateDigest {
        len: counter.0,
        crc,
    })
}

/// A writer that only counts.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Total size of the regular files directly in `dir`; 0 when it does not
/// exist (no snapshot yet).
fn dir_size(dir: &Path) -> io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        match entry.metadata() {
            Ok(metadata) if metadata.is_file() => total += metadata.len(),
            Ok(_) => {}
            // A temporary file removed between listing and stat.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// How long a request may wait: the client's `grpc-timeout` less a tenth
/// (so the answer beats the client's own deadline), at most `cap`.
fn budget(metadata: &MetadataMap, cap: Duration) -> Duration {
    client_timeout(metadata).map_or(cap, |timeout| (timeout - timeout / 10).min(cap))
}

/// The client's deadline from the `grpc-timeout` header, if it sent a
/// well-formed one: at most 8 digits and a unit (`H M S m u n`).
fn client_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// etcd's name of an alarm type (its `AlarmType` enum's).
fn alarm_name(alarm: AlarmType) -> &'static str {
    match alarm {
        AlarmType::NoSpace => "NOSPACE",
        AlarmType::Corrupt => "CORRUPT",
    }
}

/// A raised alarm on the wire.
fn alarm_member(alarm: AlarmMember) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: alarm.member_id,
        alarm: alarm.alarm.number(),
    }
}

/// A raised alarm as etcd lists it in `StatusResponse.errors`: Go's
/// compact protobuf text of the `AlarmMember`, trailing space included.
fn alarm_error(alarm: AlarmMember) -> String {
    format!(
        "memberID:{} alarm:{} ",
        alarm.member_id,
        alarm_name(alarm.alarm)
    )
}

/// The status etcd answers when a leader transfer fails.
fn move_leader_status(error: &MoveLeaderError) -> Status {
    match error {
        MoveLeaderError::NotLeader { .. } => Status::failed_precondition(NOT_LEADER),
        MoveLeaderError::NotVoter { .. } => Status::failed_precondition(BAD_LEADER_TRANSFEREE),
        MoveLeaderError::Timeout { .. } => Status::unavailable(LEADER_TRANSFER_TIMEOUT),
    }
}

/// The length of a snapshot stream's content for an encoding of `len`
/// bytes: padded with zeros to whole [`SNAPSHOT_ALIGN`] pages.
fn padded_len(len: u64) -> u64 {
    len.div_ceil(SNAPSHOT_ALIGN) * SNAPSHOT_ALIGN
}

/// A writer that cuts a snapshot encoding into `SnapshotResponse`s of at
/// most [`SNAPSHOT_CHUNK`] bytes and sends them to the client, blocking
/// while the channel is full; [`ChunkSender::finish`] pads the content and
/// sends its sha256 last. Used from a blocking thread only.
struct ChunkSender {
    chunks: mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
    /// The header, sent with the first chunk.
    header: Option<pb::ResponseHeader>,
    buffer: BytesMut,
    /// The length of the content: the encoding and its padding.
    total: u64,
    /// Content bytes sent so far.
    sent: u64,
    /// sha256 of the content sent so far.
    sha: Sha256,
}

impl ChunkSender {
    /// A sender of content `total` bytes long (see [`padded_len`]).
    fn new(
        chunks: mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
        header: pb::ResponseHeader,
        total: u64,
    ) -> Self {
        ChunkSender {
            chunks,
            header: Some(header),
            buffer: BytesMut::with_capacity(SNAPSHOT_CHUNK),
            total,
            sent: 0,
            sha: Sha256::new(),
        }
    }

    /// Sends `blob` as one message with `remaining_bytes` set.
    fn send(&mut self, blob: Bytes, remaining_bytes: u64) -> io::Result<()> {
        let chunk = pb::SnapshotResponse {
            header: self.header.take(),
            remaining_bytes,
            blob,
        };
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Sends what is buffered as one content chunk.
    fn send_chunk(&mut self) -> io::Result<()> {
        let blob: Bytes = self.buffer.split().freeze();
        self.buffer.reserve(SNAPSHOT_CHUNK);
        self.sent += blob.len() as u64;
        if self.sent > self.total {
            return Err(io::Error::other(
                "the encoding is longer than measured before",
            ));
        }
        self.sha.update(&blob);
        self.send(blob, self.total - self.sent)
    }

    /// Pads the content to its length, sends the last content chunk, then
    /// the content's sha256 as a message of its own (`remaining_bytes` 0),
    /// as etcd does.
    fn finish(mut self) -> io::Result<()> {
        let written = self.sent + self.buffer.len() as u64;
        let padding = self
            .total
            .checked_sub(written)
            .filter(|padding| *padding < SNAPSHOT_ALIGN)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "the encoding is {written} bytes, which does not pad to {}",
                    self.total
                ))
            })?;
        self.write_all(&[0; SNAPSHOT_ALIGN as usize][..padding as usize])?;
        if !self.buffer.is_empty() {
            self.send_chunk()?;
        }
        let sha = std::mem::take(&mut self.sha).finalize();
        self.send(Bytes::copy_from_slice(&sha), 0)
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(SNAPSHOT_CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&bytes[..n]);
        if self.buffer.len() == SNAPSHOT_CHUNK {
            self.send_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The stream of a `Snapshot` call.
pub type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Lists, raises or clears alarms as etcd 3.5 does (see the module
    /// documentation); raising NOSPACE refuses writes that add data on
    /// every member until it is cleared.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let within = budget(request.metadata(), REQUEST_TIMEOUT);
        let request = request.into_inner();
        let action = AlarmAction::try_from(request.action).map_err(|_| {
            Status::invalid_argument(format!("muster: unknown alarm action {}", request.action))
        })?;
        let alarms = match action {
            AlarmAction::Get => {
                self.node
                    .read_barrier_within(within)
                    .await
                    .map_err(|e| raft_status(&e))?;
                let store = self.node.state_machine().store();
                let alarms = store
                    .alarms()
                    .filter(|a| {
                        request.alarm == pb::AlarmType::None as i32
                            || a.alarm.number() == request.alarm
                    })
                    .map(alarm_member)
                    .collect();
                return Ok(Response::new(pb::AlarmResponse {
                    header: Some(self.header(store.revision())),
                    alarms,
                }));
            }
            AlarmAction::Activate if request.alarm == pb::AlarmType::None as i32 => Vec::new(),
            AlarmAction::Activate => {
                let alarm = AlarmType::from_number(request.alarm).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "muster: unknown alarm type {}",
                        request.alarm
                    ))
                })?;
                self.propose_alarm(true, request.member_id, alarm, within)
                    .await?;
                // etcd answers the alarm whether it was raised now or before.
                vec![alarm_member(AlarmMember {
                    member_id: request.member_id,
                    alarm,
                })]
            }
            AlarmAction::Deactivate => match AlarmType::from_number(request.alarm) {
                None => Vec::new(),
                Some(alarm) => self
                    .propose_alarm(false, request.member_id, alarm, within)
                    .await?
                    .into_iter()
                    .map(alarm_member)
                    .collect(),
            },
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.header(self.node.state_machine().store().revision())),
            alarms,
        }))
    }

    /// This member's view: etcd's fields, with `raft_index` the last log
    /// index this member holds (openraft does not publish the commit index;
    /// it is at least the applied index), `db_size` the bytes of the sled
    /// log and snapshot files, and `db_size_in_use` the length of a
    /// snapshot of the current state (at most `db_size`). As in etcd,
    /// `errors` holds "etcdserver: no leader" while no leader is known,
    /// then every alarm this member's store shows raised, then, on a
    /// leader holding expired leases, its self-preservation report.
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let (store, applied) = self.node.state_machine().store_at();
        let db_size = self.disk_usage().await?;
        let digest = self.digest(&store, applied).await?;
        let metrics = self.node.raft().metrics().borrow().clone();
        let leader = metrics.current_leader.unwrap_or(0);
        let is_learner = metrics
            .membership_config
            .membership()
            .learner_ids()
            .any(|id| id == self.node.id());
        let raft_applied_index = metrics.last_applied.map_or(0, |log_id| log_id.index);
        let mut errors = if leader == 0 {
            vec![NO_LEADER.to_owned()]
        } else {
            Vec::new()
        };
        errors.extend(store.alarms().map(alarm_error));
        errors.extend(
            self.lessor
                .as_ref()
                .and_then(|lessor| lessor.self_preservation())
                .map(|report| report.to_string()),
        );
        let db_size = i64::try_from(db_size).unwrap_or(i64::MAX);
        Ok(Response::new(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: self.cluster_id,
                member_id: self.node.id(),
                revision: store.revision(),
                raft_term: metrics.current_term,
            }),
            version: VERSION.to_owned(),
            db_size,
            leader,
            raft_index: metrics.last_log_index.unwrap_or(0).max(raft_applied_index),
            raft_term: metrics.current_term,
            raft_applied_index,
            errors,
            db_size_in_use: i64::try_from(digest.len).unwrap_or(i64::MAX).min(db_size),
            is_learner,
        }))
    }

    /// Takes a snapshot now (openraft builds it from a store clone while
    /// apply goes on) and returns once it is on disk; openraft then purges
    /// the log behind it, keeping the configured tail for followers. That
    /// is what fits muster's storage: the state is in memory, the log in
    /// sled, and sled reuses the freed space itself.
    async fn defragment(
        &self,
        request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        let deadline = Instant::now() + budget(request.metadata(), DEFRAGMENT_TIMEOUT);
        let Some(target) = self.node.state_machine().last_applied() else {
            // Nothing applied: nothing to compact.
            return Ok(Response::new(pb::DefragmentResponse {
                header: Some(self.header(self.node.state_machine().store().revision())),
            }));
        };
        let raft = self.node.raft();
        let covered =
            |m: &openraft::RaftMetrics<_, _>| m.snapshot.is_some_and(|s| s.index >= target.index);
        while !covered(&raft.metrics().borrow()) {
            let now = Instant::now();
            if now >= deadline {
                return Err(Status::unavailable(TIMEOUT));
            }
            raft.trigger()
                .snapshot()
                .await
                .map_err(|_| Status::unavailable(STOPPED))?;
            // A build already under way ignores the trigger and may end
            // short of `target`; then trigger again.
            let wait = deadline
                .saturating_duration_since(now)
                .min(Duration::from_secs(1));
            let _ = raft
                .wait(Some(wait))
                .metrics(|m| covered(m), "defragment snapshot")
                .await;
        }
        tracing::info!(
            id = self.node.id(),
            index = target.index,
            "defragmented: snapshot taken"
        );
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.header(self.node.state_machine().store().revision())),
        }))
    }

    /// muster's whole-state hash: the crc32c that ends the snapshot
    /// encoding of this member's applied state (every key version, the
    /// compaction point and the leases). Members that applied the same log
    /// agree on it; it is not comparable with etcd's.
    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let (store, applied) = self.node.state_machine().store_at();
        let digest = self.digest(&store, applied).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(self.header(store.revision())),
            hash: digest.crc,
        }))
    }

    /// The hash of the key space's history up to `revision` (0 or less:
    /// the current one), with etcd's errors: a revision at or below the
    /// compaction point is compacted (etcd's `HashByRev` refuses the
    /// compaction revision itself too), one past the current revision is a
    /// future revision. As in etcd 3.5 the header's revision is the current
    /// one (3.5 has no `hash_revision` field).
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let store = self.node.state_machine().store();
        if revision > 0 && revision <= store.compact_revision() {
            return Err(core_status(&muster_core::Error::Compacted));
        }
        let hash = store.hash_kv(revision).map_err(|e| core_status(&e))?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.header(store.revision())),
            hash: hash.hash,
            compact_revision: hash.compact_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    /// Streams this member's applied state as one muster snapshot; see the
    /// module documentation for the chunks.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let (store, applied) = self.node.state_machine().store_at();
        let digest = self.digest(&store, applied).await?;
        let header = self.header(store.revision());
        let (chunks, stream) = mpsc::channel(SNAPSHOT_QUEUE);
        let id = self.node.id();
        tokio::task::spawn_blocking(move || {
            let mut out = ChunkSender::new(chunks.clone(), header, padded_len(digest.len));
            let written = store.write_snapshot(&mut out).and_then(|_| out.finish());
            match written {
                Ok(()) => tracing::info!(id, bytes = digest.len, "snapshot sent"),
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    tracing::info!(id, "snapshot stream abandoned by the client");
                }
                Err(e) => {
                    tracing::warn!(id, error = %e, "snapshot stream failed");
                    let _ = chunks.blocking_send(Err(Status::internal(format!(
                        "streaming the snapshot: {e}"
                    ))));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    /// Only the leader accepts, and only a voter may be the target; the
    /// transfer is [`RaftNode::move_leader`], bounded by the client's
    /// deadline and [`REQUEST_TIMEOUT`].
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let within = budget(request.metadata(), REQUEST_TIMEOUT);
        let target = request.into_inner().target_id;
        self.node.move_leader(target, within).await.map_err(|e| {
            tracing::info!(id = self.node.id(), target, error = %e, "move-leader refused");
            move_leader_status(&e)
        })?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(self.header(self.node.state_machine().store().revision())),
        }))
    }

    /// muster has one storage version: there is nothing to downgrade to.
    async fn downgrade(
        &self,
        _request: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "muster: cluster downgrade is not supported (muster has a single storage version)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(timeout: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", timeout.parse().expect("ascii"));
        metadata
    }

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        assert_eq!(
            client_timeout(&metadata("5S")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            client_timeout(&metadata("250m")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            client_timeout(&metadata("1H")),
            Some(Duration::from_secs(3600))
        );
        for bad in ["S", "5", "5x", "123456789S", "-5S", "5 S"] {
            assert_eq!(client_timeout(&metadata(bad)), None, "{bad}");
        }
        assert_eq!(client_timeout(&MetadataMap::new()), None);
        assert_eq!(
            budget(&metadata("10S"), REQUEST_TIMEOUT),
            Duration::from_secs(9)
        );
        assert_eq!(budget(&metadata("1H"), REQUEST_TIMEOUT), REQUEST_TIMEOUT);
        assert_eq!(
            budget(&MetadataMap::new(), REQUEST_TIMEOUT),
            REQUEST_TIMEOUT
        );
    }

    #[test]
    fn chunks_are_bounded_and_count_down_to_zero() {
        let mut store = Store::new();
        for i in 0..2_000 {
            store
                .apply(
                    i + 1,
                    muster_core::Command::Put(muster_core::PutRequest {
                        key: Bytes::from(format!("svc/{i:05}")),
                        value: Bytes::from(vec![b'x'; 64]),
                        ..Default::default()
                    }),
                )
                .expect("put");
        }
        let digest = digest_of(&store).expect("digest");
        let encoded = store.snapshot();
        assert_eq!(digest.len, encoded.len() as u64);
        assert!(digest.len > 3 * SNAPSHOT_CHUNK as u64);

        let total = padded_len(digest.len);
        assert_eq!(total % SNAPSHOT_ALIGN, 0);
        assert!(total >= digest.len && total - digest.len < SNAPSHOT_ALIGN);
        let (chunks, mut stream) = mpsc::channel(1024);
        let mut out = ChunkSender::new(chunks, pb::ResponseHeader::default(), total);
        store.write_snapshot(&mut out).expect("encode");
        out.finish().expect("finish");
        let mut messages = Vec::new();
        while let Ok(message) = stream.try_recv() {
            messages.push(message.expect("message"));
        }
        let sha = messages.pop().expect("the sha256 message");
        assert_eq!((sha.remaining_bytes, sha.blob.len()), (0, 32));
        let mut content = Vec::new();
        for (n, chunk) in messages.iter().enumerate() {
            assert_eq!(chunk.header.is_some(), n == 0);
            assert!(chunk.blob.len() <= SNAPSHOT_CHUNK);
            content.extend_from_slice(&chunk.blob);
            assert_eq!(chunk.remaining_bytes, total - content.len() as u64);
        }
        assert_eq!(content.len() as u64, total);
        assert_eq!(&content[..encoded.len()], &encoded[..]);
        assert!(content[encoded.len()..].iter().all(|b| *b == 0));
        assert_eq!(Sha256::digest(&content).as_slice(), &sha.blob[..]);
        // What etcdctl checks, on the whole saved file.
        assert_eq!((content.len() + 32) % 512, 32);
        let restored = Store::restore(&content[..]).expect("restore");
        assert_eq!(restored.revision(), store.revision());
    }

    #[test]
    fn an_encoding_of_whole_pages_gets_no_padding() {
        assert_eq!(padded_len(512), 512);
        assert_eq!(padded_len(513), 1024);
        assert_eq!(padded_len(1), 512);
    }

    #[test]
    fn a_vanished_client_stops_the_encoder() {
        let store = Store::new();
        let (chunks, stream) = mpsc::channel(1);
        drop(stream);
        let total = padded_len(digest_of(&store).expect("digest").len);
        let mut out = ChunkSender::new(chunks, pb::ResponseHeader::default(), total);
        store.write_snapshot(&mut out).expect("fits in one chunk");
        let error = out.finish().expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn alarms_print_as_etcds_status_errors() {
        // As etcd 3.4.23 prints it in `etcdctl endpoint status`.
        let alarm = AlarmMember {
            member_id: 3_319_814_642_761_637_952,
            alarm: AlarmType::NoSpace,
        };
        assert_eq!(
            alarm_error(alarm),
            "memberID:3319814642761637952 alarm:NOSPACE "
        );
        let corrupt = AlarmMember {
            member_id: 7,
            alarm: AlarmType::Corrupt,
        };
        assert_eq!(alarm_error(corrupt), "memberID:7 alarm:CORRUPT ");
        assert_eq!(
            alarm_member(corrupt),
            pb::AlarmMember {
                member_id: 7,
                alarm: pb::AlarmType::Corrupt as i32,
            }
        );
    }

    #[test]
    fn transfer_errors_are_etcds() {
        let cases = [
            (
                MoveLeaderError::NotLeader { leader: Some(2) },
                tonic::Code::FailedPrecondition,
                "etcdserver: not leader",
            ),
            (
                MoveLeaderError::NotVoter { target: 9 },
                tonic::Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                MoveLeaderError::Timeout {
                    target: 2,
                    after: Duration::from_secs(1),
                    reason: String::new(),
                },
                tonic::Code::Unavailable,
                "etcdserver: request timed out, leader transfer took too long",
            ),
        ];
        for (error, code, message) in cases {
            let status = move_leader_status(&error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
