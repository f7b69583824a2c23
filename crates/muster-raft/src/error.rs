//! The one error type of muster-raft.
//!
//! Every variant names *where* the problem is: the store path, the sled tree
//! and key, or the snapshot file. A checksum or decoding failure is always an
//! error (never a record silently skipped): a replica that cannot trust its
//! disk must stop rather than serve or vote on state it does not have.
//!
//! Inside openraft's storage traits these become [`openraft::StorageError`]s
//! (which stop the Raft node) through [`Error::into_storage`].

use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::types::StorageError;

/// An error of the log store or the state machine's snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// sled failed (open, read, write or flush).
    #[error("log store {path}: sled: {source}")]
    Sled {
        /// The store's directory.
        path: PathBuf,
        /// sled's error.
        #[source]
        source: sled::Error,
    },
    /// A record in the log store failed its checksum or could not be
    /// decoded.
    #[error("log store {path}: corrupt record in tree `{tree}` at {key}: {reason}")]
    CorruptRecord {
        /// The store's directory.
        path: PathBuf,
        /// The sled tree (`log` or `meta`).
        tree: &'static str,
        /// The record's key, e.g. `index 42` or `key "vote"`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A snapshot file failed its checksum or could not be decoded.
    #[error("corrupt snapshot {file}: {reason}")]
    CorruptSnapshot {
        /// The file (or `<received>` for a snapshot received from the
        /// leader before it was written).
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A value could not be encoded (a bug rather than a disk problem).
    #[error("encoding {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// bincode's error.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// The Raft timing configuration is invalid.
    #[error("raft configuration: {0}")]
    Config(#[source] Box<openraft::ConfigError>),
    /// A background task (snapshot serialisation) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
    /// A write reached a member that is not the leader. `leader` and
    /// `leader_addr` (its peer address) name the leader when this member
    /// knows it; forward the write there.
    #[error("not the leader (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        /// The leader's ID, if known.
        leader: Option<u64>,
        /// The leader's peer address (`host:port`), if known.
        leader_addr: Option<String>,
    },
    /// A request that needs the leader ([`crate::RaftNode::submit`],
    /// [`crate::RaftNode::read_barrier`]) got no answer in time: the leader
    /// was unreachable or did not answer. For a write the outcome is
    /// unknown (it may still be applied).
    #[error("{operation}: no answer from the leader within {after:?}: {reason}")]
    Timeout {
        /// What timed out, e.g. `submit` or `read barrier`.
        operation: &'static str,
        /// How long it was given.
        after: std::time::Duration,
        /// The last failure seen, e.g. the leader being unreachable.
        reason: String,
    },
    /// openraft refused or failed a request: the Raft node has stopped
    /// (shut down or a storage failure), or a membership request was
    /// invalid.
    #[error("raft: {0}")]
    Raft(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// This error as openraft's storage error, about `subject`, raised
    /// while doing `verb`.
    pub fn into_storage(self, subject: ErrorSubject<u64>, verb: ErrorVerb) -> StorageError {
        StorageError::IO {
            source: StorageIOError::new(subject, verb, AnyError::new(&self)),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
