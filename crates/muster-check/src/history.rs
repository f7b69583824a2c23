//! The history format: what the fault workload records and the checkers read.
//!
//! A history is a file of JSON lines, one [`Record`] each, tagged by its
//! `"record"` field. The workload writes them in the order they happen on
//! its monotonic clock; `t` is nanoseconds since the workload started.
//!
//! Invariants the workload keeps and the checkers rely on:
//!
//! - Every operation is an `invoke` [`OpRecord`] followed later by exactly
//!   one completion with the same `id`: `ok` (it took effect, with its
//!   [`OpResult`]), `fail` (it certainly did not take effect: the request
//!   was refused before it could be proposed) or `info` (unknown: a timeout
//!   or a broken connection; it may have taken effect at any time after its
//!   invocation, even after the history ends). A history cut short may lack
//!   completions: a missing completion reads as `info`.
//! - A client (`process`) has at most one operation outstanding.
//! - Every written value is unique in the history (`"<process>-<n>"`), so a
//!   read or a watch event names the one write that produced it.
//! - `t` never decreases along the file for records of one process.
//!
//! An example line of each kind:
//!
//! ```text
//! {"record":"start","t":0,"wall_ns":1795530000000000000,"prefix":"/fault/","members":{"m1":"http://127.0.0.1:23791"},"election_timeout_ms":1000,"lease_ttl":5}
//! {"record":"op","t":1200,"process":3,"id":17,"type":"invoke","member":"m2","op":{"f":"put","key":"/fault/k3","value":"3-9","lease":null}}
//! {"record":"op","t":5400,"process":3,"id":17,"type":"ok","member":"m2","op":{"f":"put","key":"/fault/k3","value":"3-9","lease":null},"result":{"revision":41}}
//! {"record":"watch","t":5600,"watcher":0,"member":"m1","prefix":"/fault/","event":{"type":"events","header_revision":41,"events":[{"kind":"put","key":"/fault/k3","value":"3-9","mod_revision":41,"lease":null}]}}
//! {"record":"fault","wall_ns":1795530001000000000,"fault":"pause-leader","phase":"start","detail":"m2"}
//! {"record":"final","t":90000000000,"member":"m1","revision":812,"compact_revision":0,"hash":3585828920,"hash_revision":812,"kvs":[{"key":"/fault/k3","value":"3-9","mod_revision":41,"lease":null}],"error":null}
//! ```

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// The first line: what was run against what.
    Start(StartRecord),
    /// An operation's invocation or completion.
    Op(OpRecord),
    /// What one watcher saw.
    Watch(WatchRecord),
    /// A fault injected or healed (written by the fault script).
    Fault(FaultRecord),
    /// The state read from one member after the faults healed.
    Final(FinalRecord),
}

/// The first record of a history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartRecord {
    /// Always 0: the origin of `t`.
    pub t: u64,
    /// Wall-clock time at `t = 0`, nanoseconds since the Unix epoch: maps
    /// the fault script's wall-clock records onto `t`.
    pub wall_ns: u64,
    /// The key prefix every key of the workload lives under.
    pub prefix: String,
    /// Member name → client URL.
    pub members: std::collections::BTreeMap<String, String>,
    /// The cluster's election timeout, for the lease-expiry bound.
    pub election_timeout_ms: u64,
    /// The TTL, in seconds, of the leases the workload grants.
    pub lease_ttl: i64,
}

/// Whether a record invokes an operation or says how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// The request is about to be sent.
    Invoke,
    /// It took effect; the record carries the result.
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// Unknown whether it took effect (timeout, broken connection).
    Info,
}

/// An operation's invocation or completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Nanoseconds since the workload started.
    pub t: u64,
    /// The client that ran the operation.
    pub process: u32,
    /// Unique per operation; invocation and completion share it.
    pub id: u64,
    /// Invocation or kind of completion.
    #[serde(rename = "type")]
    pub kind: OpKind,
    /// The member the request was sent to.
    pub member: String,
    /// What was asked (repeated on the completion).
    pub op: Op,
    /// On `ok`: what came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<OpResult>,
    /// On `fail` and `info`: the error as the client saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An operation of the workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Range of one key: linearizable unless `serializable`.
    Get {
        /// The key.
        key: String,
        /// A serializable (local) read: exempt from linearizability.
        serializable: bool,
    },
    /// Put, optionally attached to a lease.
    Put {
        /// The key.
        key: String,
        /// The value, unique in the history.
        value: String,
        /// The lease the key is attached to.
        lease: Option<i64>,
    },
    /// Delete one key.
    Delete {
        /// The key.
        key: String,
    },
    /// Compare-and-swap as a txn: if the key's value is `expect` (absent
    /// when `None`: compare create_revision = 0), put `value`; otherwise
    /// read the key.
    Cas {
        /// The key.
        key: String,
        /// The value the key must hold, or `None` for absent.
        expect: Option<String>,
        /// The value written when the compare holds.
        value: String,
    },
    /// Grant a lease.
    LeaseGrant {
        /// Requested TTL in seconds.
        ttl: i64,
    },
    /// One keep-alive round trip on the client's keep-alive stream.
    LeaseKeepAlive {
        /// The lease.
        lease: i64,
    },
    /// Revoke a lease (its keys are deleted).
    LeaseRevoke {
        /// The lease.
        lease: i64,
    },
}

impl Op {
    /// The key the operation reads or writes, if it is a KV operation.
    pub fn key(&self) -> Option<&str> {
        match self {
            Op::Get { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. } => Some(key),
            Op::LeaseGrant { .. } | Op::LeaseKeepAlive { .. } | Op::LeaseRevoke { .. } => None,
        }
    }
}

/// What an `ok` operation returned. Fields not meaningful for the
/// operation are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// The response header's revision: for a write, the revision it
    /// created (for a delete of nothing or a failed cas: the store's
    /// revision when served); for a read, the revision it observed.
    pub revision: i64,
    /// Get, and cas whose compare failed: the value read (`None`: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Get, and cas whose compare failed: the value's mod_revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mod_revision: Option<i64>,
    /// Cas: whether the compare held (and the put was done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded: Option<bool>,
    /// Delete: how many keys were deleted (0 or 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<i64>,
    /// Lease grant: the lease's ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    /// Lease grant and keep-alive: the TTL answered (0 on a keep-alive:
    /// the lease no longer exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
}

/// What one watcher saw at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchRecord {
    /// Nanoseconds since the workload started, when it was received.
    pub t: u64,
    /// The watcher (one logical subscription, across reconnects).
    pub watcher: u32,
    /// The member its current stream is open on.
    pub member: String,
    /// The prefix it follows.
    pub prefix: String,
    /// What happened.
    pub event: WatchEvent,
}

/// What a watcher saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// A stream was created from `start_revision` (the first, or a resume
    /// after an error from the revision after the last event seen).
    Start {
        /// The revision asked for.
        start_revision: i64,
    },
    /// A response with events, in the order received.
    Events {
        /// The response header's revision.
        header_revision: i64,
        /// The events.
        events: Vec<KvEvent>,
    },
    /// A progress notification: no events, the header's revision.
    Progress {
        /// The response header's revision.
        header_revision: i64,
    },
    /// The watch was cancelled because `start_revision` was compacted.
    Compacted {
        /// The compaction revision the member reported.
        compact_revision: i64,
    },
    /// The stream broke; the watcher will resume.
    Error {
        /// The error as the client saw it.
        error: String,
    },
}

/// Whether a watch event is a put or a delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted (by a delete, a revoke or an expiry).
    Delete,
}

/// One watch event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key.
    pub key: String,
    /// The value written (`None` for a delete).
    pub value: Option<String>,
    /// The revision of the change.
    pub mod_revision: i64,
    /// The lease the written key is attached to, if any.
    pub lease: Option<i64>,
}

/// A fault, as the fault script records it (on the wall clock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRecord {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub wall_ns: u64,
    /// The fault's name, e.g. `isolate-leader`.
    pub fault: String,
    /// `start`, `heal`, `settled` (the cluster was healthy with one leader
    /// again after the heal), or `note`.
    pub phase: String,
    /// Which members, and anything else worth knowing.
    #[serde(default)]
    pub detail: Option<String>,
}

/// One key as read at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalKv {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: String,
    /// Its mod_revision.
    pub mod_revision: i64,
    /// Its lease, if any.
    pub lease: Option<i64>,
}

/// The state one member reported after the faults healed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalRecord {
    /// Nanoseconds since the workload started.
    pub t: u64,
    /// The member.
    pub member: String,
    /// The revision of the serializable read of every key under the prefix.
    pub revision: i64,
    /// The member's compaction revision, when known.
    pub compact_revision: i64,
    /// HashKV's hash, at `hash_revision`.
    pub hash: Option<u32>,
    /// The revision HashKV was taken at.
    pub hash_revision: Option<i64>,
    /// Every key under the prefix.
    pub kvs: Vec<FinalKv>,
    /// Why the member could not be read, if it could not.
    pub error: Option<String>,
}

/// Reads a history file; the error names the line that does not parse.
pub fn read(path: &Path) -> anyhow::Result<Vec<Record>> {
    use anyhow::Context as _;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    parse(std::io::BufReader::new(file)).with_context(|| format!("reading {}", path.display()))
}

/// Parses history lines (blank lines are skipped).
pub fn parse(reader: impl BufRead) -> anyhow::Result<Vec<Record>> {
    let mut records = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("line {}: {e}: {line}", n + 1))?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_lines_parse_and_round_trip() {
        let doc = include_str!("history.rs");
        let lines: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("//! {"))
            .collect();
        assert_eq!(lines.len(), 6);
        for line in lines {
            let line = format!("{{{line}");
            let record: Record = serde_json::from_str(&line).expect(&line);
            let again: Record =
                serde_json::from_str(&serde_json::to_string(&record).expect("encode"))
                    .expect("decode");
            assert_eq!(record, again);
        }
    }
}
