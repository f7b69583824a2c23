//! Read-index batching on the leader: concurrent linearizable reads share
//! one leadership confirmation.
//!
//! openraft's `ensure_linearizable` sends a heartbeat to every voter and
//! waits for a quorum, once per call. The group runs at most one such round
//! at a time: a read that arrives while a round is running waits for the
//! next one, which starts when the running one ends and answers every read
//! that queued meanwhile.
//!
//! Invariants:
//!
//! - **A round starts after every read it answers arrived.** The reads a
//!   round answers are taken from the queue before it asks openraft, so the
//!   quorum confirms a leadership that held after each of them was invoked,
//!   and the index it names covers every write acknowledged before them:
//!   exactly what one `ensure_linearizable` per read would give.
//! - **Cancel-safe.** Rounds run on a task of their own; a reader that gives
//!   up (a timeout, a dropped request) only drops its answer.
//! - **Failures are shared.** A round that fails (this member does not
//!   lead, it stopped, no quorum answered within [`ROUND_TIMEOUT`]) fails
//!   every read it answers with the same error; the next round starts
//!   afresh.

use std::mem;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, Fatal, RaftError};
use tokio::sync::oneshot;

use crate::types::{NodeId, Raft};

/// How long one round may take before every read it answers fails with
/// [`ReadIndexError::NoQuorum`] (openraft answers within a heartbeat round
/// when peers answer or refuse; this bounds a round whose peers hang).
const ROUND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a round named no read index.
#[derive(Clone, Debug)]
pub(crate) enum ReadIndexError {
    /// This member does not lead; the leader it knows, if any.
    NotLeader(Option<NodeId>),
    /// No quorum confirmed the leadership (too few peers answered, or none
    /// within [`ROUND_TIMEOUT`]): another round may succeed.
    NoQuorum(String),
    /// openraft failed otherwise (it stopped, or a storage error).
    Failed(Box<RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>>),
}

impl From<RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>> for ReadIndexError {
    fn from(refused: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Self {
        match refused {
            RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)) => {
                ReadIndexError::NotLeader(forward.leader_id)
            }
            RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(short)) => {
                ReadIndexError::NoQuorum(short.to_string())
            }
            e => ReadIndexError::Failed(Box::new(e)),
        }
    }
}

/// What one read-index round answers.
pub(crate) type ReadIndexResult = Result<u64, ReadIndexError>;

/// The read-index rounds of one member (see the module docs). Cloning
/// shares them.
#[derive(Clone)]
pub(crate) struct ReadIndexGroup {
    raft: Raft,
    recovered_index: u64,
    state: Arc<Mutex<Queue>>,
}

#[derive(Default)]
struct Queue {
    running: bool,
    waiting: Vec<oneshot::Sender<ReadIndexResult>>,
}

impl ReadIndexGroup {
    /// The group of `raft`, whose read indexes are raised to
    /// `recovered_index` (see [`crate::network::leader_read_index`]).
    pub(crate) fn new(raft: Raft, recovered_index: u64) -> Self {
        ReadIndexGroup {
            raft,
            recovered_index,
            state: Arc::new(Mutex::new(Queue::default())),
        }
    }

    /// This member's read index as the leader, from a round that started
    /// after this call.
    pub(crate) async fn read_index(&self) -> ReadIndexResult {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            queue.waiting.push(answer);
            !mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(self.clone().rounds());
        }
        answered
            .await
            .unwrap_or(Err(ReadIndexError::Failed(Box::new(RaftError::Fatal(
                Fatal::Stopped,
            )))))
    }

    /// Runs rounds until no read waits.
    async fn rounds(self) {
        loop {
            let waiting = {
                let mut queue = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.waiting.is_empty() {
                    queue.running = false;
                    return;
                }
                mem::take(&mut queue.waiting)
            };
            crate::metrics::READ_INDEX_BATCH.observe(waiting.len() as f64);
            let round = crate::network::leader_read_index(&self.raft, self.recovered_index);
            let result = match tokio::time::timeout(ROUND_TIMEOUT, round).await {
                Ok(Ok(index)) => Ok(index),
                Ok(Err(refused)) => Err(refused.into()),
                Err(_) => Err(ReadIndexError::NoQuorum(format!(
                    "no quorum confirmed the leadership within {ROUND_TIMEOUT:?}"
                ))),
            };
            for answer in waiting {
                let _ = answer.send(result.clone());
            }
        }
    }
}
