//! Group commit on the leader: client writes that arrive while earlier ones
//! are in flight are proposed together, as one [`Command::Batch`] entry.
//!
//! openraft 0.9 appends every proposal as its own log write and waits for
//! its flush before it takes the next, so one entry per client write costs
//! one fsync per write on the leader and on every follower. The proposer
//! sits in front of `client_write`: a write waits for a free slot (at most
//! [`MAX_IN_FLIGHT`] entries proposed and not yet applied), and whatever
//! queued behind it meanwhile goes into the same entry, up to
//! [`MAX_BATCH_COMMANDS`] commands and about [`MAX_BATCH_BYTES`] bytes.
//! Under no load a write goes alone and waits for nothing.
//!
//! Invariants:
//!
//! - **A batch is the same as its commands in order.** The store applies
//!   each command of a batch as if it had an entry of its own (its own
//!   revision, its own refusal), so batching changes how many fsyncs a
//!   write costs, never what it does. Each caller gets its own command's
//!   result.
//! - **Only client writes are batched**: puts, deletes, txns, lease grants
//!   and revokes. Compactions, checkpoints, member and alarm commands go
//!   alone. Nothing orders concurrent writes but the log, as with one entry
//!   each. Lease grants that let the store choose the ID get distinct IDs
//!   in one entry too: the ID derived from the log index skips IDs in use.
//! - **A failed proposal fails every command in it** with openraft's error
//!   (not the leader: the caller retries elsewhere; otherwise the outcome
//!   is unknown to the caller, as for a single write).

use std::sync::Arc;

use muster_core::{Command, RequestOp};
use openraft::BasicNode;
use openraft::error::{ClientWriteError, Fatal, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::types::{CommandResult, NodeId, Raft};

/// The most entries the proposer keeps proposed and not yet applied.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// The most commands in one batch entry.
pub(crate) const MAX_BATCH_COMMANDS: usize = 512;

/// About the most bytes of keys and values in one batch entry: a batch
/// closes once it reaches this size.
pub(crate) const MAX_BATCH_BYTES: usize = 256 << 10;

/// What a write through the proposer returns: openraft's outcome.
pub(crate) type WriteResult =
    Result<CommandResult, RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<WriteResult>,
}

/// The group-commit front of one member's `client_write` (see the module
/// docs). Cloning shares it.
#[derive(Clone)]
pub(crate) struct Proposer {
    raft: Raft,
    queue: mpsc::UnboundedSender<Proposal>,
}

impl Proposer {
    /// A proposer for `raft`; its task runs until every clone is dropped.
    pub(crate) fn start(raft: Raft) -> Self {
        let (queue, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run(raft.clone(), incoming));
        Proposer { raft, queue }
    }

    /// Proposes `command` and returns its result once applied on this
    /// member, or openraft's refusal (this member does not lead, or it
    /// stopped).
    pub(crate) async fn write(&self, command: Command) -> WriteResult {
        if !batchable(&command) {
            return self.raft.client_write(command).await.map(|r| r.data);
        }
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Proposal { command, reply }).is_err() {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        answer
            .await
            .unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }

    /// Proposes each of `commands` as [`Proposer::write`] would, all at
    /// once (the batchable ones queue together, in order, and so share
    /// entries), and returns their results in order.
    pub(crate) async fn write_many(&self, commands: Vec<Command>) -> Vec<WriteResult> {
        let answers: Vec<oneshot::Receiver<WriteResult>> = commands
            .into_iter()
            .map(|command| {
                let (reply, answer) = oneshot::channel();
                if batchable(&command) {
                    // A closed queue drops `reply`: answered as stopped.
                    let _ = self.queue.send(Proposal { command, reply });
                } else {
                    let raft = self.raft.clone();
                    tokio::spawn(async move {
                        let _ = reply.send(raft.client_write(command).await.map(|r| r.data));
                    });
                }
                answer
            })
            .collect();
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(
                answer
                    .await
                    .unwrap_or(Err(RaftError::Fatal(Fatal::Stopped))),
            );
        }
        results
    }
}

/// Whether `command` may share an entry with others: the client writes.
fn batchable(command: &Command) -> bool {
    matches!(
        command,
        Command::Put(_)
            | Command::DeleteRange(_)
            | Command::Txn(_)
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
    )
}

/// About how many bytes `command` adds to an entry: its keys and values.
pub(crate) fn weight(command: &Command) -> usize {
    fn ops(list: &[RequestOp]) -> usize {
        list.iter()
            .map(|op| match op {
                RequestOp::Range(r) => r.key.len() + r.range_end.len(),
                RequestOp::Put(p) => p.key.len() + p.value.len(),
                RequestOp::DeleteRange(d) => d.key.len() + d.range_end.len(),
                RequestOp::Txn(t) => ops(&t.success) + ops(&t.failure),
            })
            .sum()
    }
    32 + match command {
        Command::Put(p) => p.key.len() + p.value.len(),
        Command::DeleteRange(d) => d.key.len() + d.range_end.len(),
        Command::Txn(t) => {
            t.compare.iter().map(|c| c.key.len()).sum::<usize>() + ops(&t.success) + ops(&t.failure)
        }
        _ => 0,
    }
}

async fn run(raft: Raft, mut incoming: mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = incoming.recv().await {
        // Wait for a slot first: what queues meanwhile joins this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut bytes = weight(&first.command);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            let Ok(next) = incoming.try_recv() else {
                break;
            };
            bytes += weight(&next.command);
            batch.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes `batch` as one entry and answers each caller.
async fn propose(raft: &Raft, mut batch: Vec<Proposal>) {
    crate::metrics::BATCH_COMMANDS.observe(batch.len() as f64);
    if batch.len() == 1 {
        let Proposal { command, reply } = batch.pop().expect("one proposal");
        let _ = reply.send(raft.client_write(command).await.map(|r| r.data));
        return;
    }
    let (commands, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|Proposal { command, reply }| (command, reply))
        .unzip();
    let count = commands.len();
    match raft.client_write(Command::Batch(commands)).await {
        Ok(response) => match response.data {
            CommandResult::Applied(muster_core::Response::Batch(results))
                if results.len() == count =>
            {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(match result {
                        Ok(response) => CommandResult::Applied(response),
                        Err(error) => CommandResult::Failed(error),
                    }));
                }
            }
            // Not produced today (the store checks each command of a batch
            // on its own); were the batch refused, so was each command.
            CommandResult::Failed(error) => {
                for reply in replies {
                    let _ = reply.send(Ok(CommandResult::Failed(error.clone())));
                }
            }
            other => {
                tracing::error!(?other, "a batch entry applied to an unexpected result");
                for reply in replies {
                    let _ = reply.send(Err(RaftError::Fatal(Fatal::Panicked)));
                }
            }
        },
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use muster_core::PutRequest;

    use super::*;

    #[test]
    fn only_client_kv_writes_are_batched() {
        let put = Command::Put(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"value"),
            ..Default::default()
        });
        assert!(batchable(&put));
        assert_eq!(weight(&put), 32 + 6);
        assert!(batchable(&Command::LeaseGrant { id: 0, ttl: 5 }));
        assert!(batchable(&Command::LeaseRevoke { id: 5 }));
        assert!(!batchable(&Command::Compact { revision: 3 }));
        assert!(!batchable(&Command::LeaseCheckpoint {
            checkpoints: Vec::new()
        }));
        assert!(!batchable(&Command::Batch(vec![put])));
    }
}
