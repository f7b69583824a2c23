//! The history writer: one task owns the file; every other task sends it
//! records over an unbounded channel.
//!
//! Invariants:
//!
//! - Records are written in the order they were sent, one JSON object per
//!   line; `t` is read when a record is sent, under the same lock as the
//!   send, so `t` never decreases along the file.
//! - Sending never blocks on the disk, so no client or watcher waits on it.
//! - The buffer is flushed at least every 100 ms and when the last sender
//!   is dropped, so a killed workload leaves every record sent more than
//!   ~100 ms before. Each line enters the buffer in one piece and the
//!   buffer only ever holds whole lines, written in append mode, so the
//!   file never ends in (or contains) a partial record.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use muster_check::history::{Op, OpKind, Record, WatchEvent};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::summary::{OpCounts, WatchCounts};

/// How often the buffered history is flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The sending side: cheap to clone, never blocks (beyond a lock held
/// for the time of one clock read and one channel push).
#[derive(Clone, Debug)]
pub(crate) struct Recorder {
    tx: Arc<Mutex<mpsc::UnboundedSender<Record>>>,
    start: Instant,
}

impl Recorder {
    /// Nanoseconds since the workload started.
    pub(crate) fn t(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Queues the record `make` builds from the current `t`. The clock is
    /// read and the record queued under one lock, so `t` never decreases
    /// along the file, across all processes and watchers.
    pub(crate) fn record(&self, make: impl FnOnce(u64) -> Record) {
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The writer outlives every sender unless it failed; its error is
        // reported when it is joined.
        let _ = tx.send(make(self.t()));
    }
}

/// What the writer counted while writing.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) records: u64,
    pub(crate) ops: BTreeMap<String, OpCounts>,
    pub(crate) watch: WatchCounts,
    pub(crate) finals_read: usize,
    pub(crate) finals_failed: usize,
    hashes: Vec<(i64, u32)>,
}

impl Tally {
    fn count(&mut self, record: &Record) {
        self.records += 1;
        match record {
            Record::Op(op) => {
                let counts = self.ops.entry(op_name(&op.op).to_string()).or_default();
                match op.kind {
                    OpKind::Invoke => counts.invoked += 1,
                    OpKind::Ok => counts.ok += 1,
                    OpKind::Fail => counts.fail += 1,
                    OpKind::Info => counts.info += 1,
                }
            }
            Record::Watch(watch) => match &watch.event {
                WatchEvent::Start { .. } => self.watch.starts += 1,
                WatchEvent::Events { events, .. } => {
                    self.watch.responses += 1;
                    self.watch.events += events.len() as u64;
                }
                WatchEvent::Progress { .. } => self.watch.progress += 1,
                WatchEvent::Compacted { .. } => self.watch.compacted += 1,
                WatchEvent::Error { .. } => self.watch.errors += 1,
            },
            Record::Final(f) => {
                if f.error.is_some() {
                    self.finals_failed += 1;
                } else {
                    self.finals_read += 1;
                    if let (Some(hash), Some(revision)) = (f.hash, f.hash_revision) {
                        self.hashes.push((revision, hash));
                    }
                }
            }
            Record::Start(_) | Record::Fault(_) => {}
        }
    }

    /// Whether every member hashed at the same revision gave the same hash
    /// (`None` when fewer than two hashes were taken).
    pub(crate) fn hashes_agree(&self) -> Option<bool> {
        if self.hashes.len() < 2 {
            return None;
        }
        let mut by_revision: BTreeMap<i64, u32> = BTreeMap::new();
        for &(revision, hash) in &self.hashes {
            if *by_revision.entry(revision).or_insert(hash) != hash {
                return Some(false);
            }
        }
        Some(true)
    }
}

/// The name an operation is counted under.
fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Get {
            serializable: false,
            ..
        } => "get",
        Op::Get {
            serializable: true, ..
        } => "get (serializable)",
        Op::Put { lease: None, .. } => "put",
        Op::Put { lease: Some(_), .. } => "put (leased)",
        Op::Delete { .. } => "delete",
        Op::Cas { .. } => "cas",
        Op::LeaseGrant { .. } => "lease grant",
        Op::LeaseKeepAlive { .. } => "lease keep-alive",
        Op::LeaseRevoke { .. } => "lease revoke",
    }
}

/// Creates the history file and starts its writer. The writer ends when
/// every [`Recorder`] clone has been dropped, returning what it counted.
pub(crate) fn spawn(
    path: &Path,
    start: Instant,
) -> std::io::Result<(Recorder, JoinHandle<std::io::Result<Tally>>)> {
    // Truncate, then write in append mode: every flush of whole lines is
    // one append, so lines another writer (the fault script) appends to
    // the same file never interleave with ours mid-line.
    drop(File::create(path)?);
    let file = std::fs::OpenOptions::new().append(true).open(path)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write(BufWriter::with_capacity(1 << 20, file), rx));
    Ok((
        Recorder {
            tx: Arc::new(Mutex::new(tx)),
            start,
        },
        writer,
    ))
}

async fn write(
    mut out: BufWriter<File>,
    mut rx: mpsc::UnboundedReceiver<Record>,
) -> std::io::Result<Tally> {
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    loop {
        tokio::select! {
            record = rx.recv() => {
                let Some(record) = record else { break };
                // One write per whole line: a flush never splits a record,
                // so a killed workload leaves only complete lines.
                let mut line = serde_json::to_vec(&record)?;
                line.push(b'\n');
                out.write_all(&line)?;
                tally.count(&record);
                dirty = true;
            }
            _ = tick.tick() => {
                if dirty {
                    out.flush()?;
                    dirty = false;
                }
            }
        }
    }
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(tally)
}
