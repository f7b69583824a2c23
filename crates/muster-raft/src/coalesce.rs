//! Follower-side coalescing of requests to the leader: concurrent
//! forwarded writes, lease operations and read-index requests share peer
//! calls.
//!
//! Two thirds of a 3-member cluster's clients talk to followers, and each
//! of their writes, keep-alives and linearizable reads used to cost the
//! follower one peer RPC to the leader (a gRPC request and response, their
//! headers, two tasks and wake-ups on each side). A [`Coalescer`] keeps at
//! most [`MAX_IN_FLIGHT`] calls running; what queues meanwhile for the same
//! leader goes into the next call, up to a count and a weight (bytes) per
//! call. Under no load a request goes at once, alone.
//!
//! Invariants:
//!
//! - **A call starts after every request it carries arrived.** Requests
//!   are taken from the queue before the call is sent, so a read-index
//!   call confirms a leadership that held after each read it answers was
//!   invoked (the leader's own round starts after the call arrives).
//! - **One answer per request, in order.** The sender answers a batch
//!   with one result per request; a reply of another length fails every
//!   request of the batch as a network error (outcome unknown), never
//!   pairs answers with the wrong requests.
//! - **A failed call fails each request it carries with the same
//!   [`PeerCallError`]**, so the caller's retry policy is unchanged: an
//!   unreachable leader means nothing was served, a timeout means the
//!   outcome is unknown.
//! - **Requests go only where their caller sent them.** A batch holds
//!   requests for one member at one address; a request for another waits
//!   for the next batch.
//! - **Each caller keeps its own deadline**: it stops waiting at its own
//!   `ttl`; the call is bounded by the latest deadline among its requests.
//!   A request whose caller gave up before its batch was sent is dropped.

use std::sync::Arc;
use std::time::Duration;

use muster_core::Command;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::lease::{LeaseAnswer, LeaseOp};
use crate::network::{ForwardError, PeerCallError, PeerNetworkFactory};
use crate::types::{CommandResult, NodeId};

/// The most calls one coalescer keeps running at a time.
pub(crate) const MAX_IN_FLIGHT: usize = 2;

/// What a coalescer answers each request.
pub(crate) type Answer<T> = Result<T, PeerCallError>;

struct Queued<Req, Res> {
    target: NodeId,
    addr: String,
    request: Req,
    deadline: Instant,
    reply: oneshot::Sender<Answer<Res>>,
}

/// Coalesces requests of type `Req` to the leader into batch calls
/// answering `Res` each (see the module docs). Cloning shares it; its task
/// ends when every clone is dropped.
pub(crate) struct Coalescer<Req, Res> {
    queue: mpsc::UnboundedSender<Queued<Req, Res>>,
}

/// How many requests, and how much of them, one call may carry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits<Req> {
    /// The most requests in one call.
    pub(crate) count: usize,
    /// A call closes once the weights of its requests reach this.
    pub(crate) weight: usize,
    /// The weight of one request (about its size in bytes).
    pub(crate) weigh: fn(&Req) -> usize,
}

impl<Req, Res> Clone for Coalescer<Req, Res> {
    fn clone(&self) -> Self {
        Coalescer {
            queue: self.queue.clone(),
        }
    }
}

impl<Req: Send + 'static, Res: Send + 'static> Coalescer<Req, Res> {
    /// A coalescer whose batches stay within `limits` and are sent by
    /// `send(target, addr, requests, ttl)`, which answers one result per
    /// request, in order.
    pub(crate) fn start<F, Fut>(limits: Limits<Req>, send: F) -> Self
    where
        F: Fn(NodeId, String, Vec<Req>, Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer<Vec<Res>>> + Send + 'static,
    {
        let (queue, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run(incoming, limits, Arc::new(send)));
        Coalescer { queue }
    }

    /// Sends `request` to member `target` at peer address `addr` in the
    /// next batch for it, and waits at most `ttl` for its answer.
    pub(crate) async fn call(
        &self,
        target: NodeId,
        addr: &str,
        request: Req,
        ttl: Duration,
    ) -> Answer<Res> {
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            target,
            addr: addr.to_string(),
            request,
            deadline: Instant::now() + ttl,
            reply,
        };
        if self.queue.send(queued).is_err() {
            return Err(PeerCallError::Network("the member is stopping".into()));
        }
        match tokio::time::timeout(ttl, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(PeerCallError::Network("the member is stopping".into())),
            Err(_) => Err(PeerCallError::Timeout(ttl)),
        }
    }
}

/// The most commands in one forwarded call.
const MAX_FORWARD_COMMANDS: usize = 512;

/// About the most bytes of keys and values in one forwarded call.
const MAX_FORWARD_BYTES: usize = 1 << 20;

/// The most lease operations or read-index requests in one call.
const MAX_SMALL_REQUESTS: usize = 1024;

/// A follower's three coalescers: forwarded writes (`ForwardBatch`), lease
/// operations (`LeaseBatch`) and read-index requests (one `ReadIndex` call
/// answers every read it carries).
#[derive(Clone)]
pub(crate) struct Forwarding {
    /// Forwarded client writes.
    pub(crate) writes: Coalescer<Command, Result<CommandResult, ForwardError>>,
    /// Forwarded lease operations.
    pub(crate) leases: Coalescer<LeaseOp, Result<LeaseAnswer, ForwardError>>,
    /// Read-index requests of linearizable reads.
    pub(crate) reads: Coalescer<(), Result<u64, ForwardError>>,
}

impl Forwarding {
    /// The coalescers of a member whose peer calls go through `network`.
    pub(crate) fn start(network: &PeerNetworkFactory) -> Self {
        Forwarding {
            writes: over(
                network,
                Limits {
                    count: MAX_FORWARD_COMMANDS,
                    weight: MAX_FORWARD_BYTES,
                    weigh: crate::proposer::weight,
                },
                |network, target, addr, commands| async move {
                    network
                        .forward_batch(target, &addr, &commands.0, commands.1)
                        .await
                },
            ),
            leases: over(
                network,
                Limits {
                    count: MAX_SMALL_REQUESTS,
                    weight: usize::MAX,
                    weigh: one,
                },
                |network, target, addr, ops| async move {
                    network.lease_batch(target, &addr, &ops.0, ops.1).await
                },
            ),
            reads: over(
                network,
                Limits {
                    count: MAX_SMALL_REQUESTS,
                    weight: usize::MAX,
                    weigh: one,
                },
                |network, target, addr, reads| async move {
                    let index = network.read_index(target, &addr, reads.1).await?;
                    Ok(vec![index; reads.0.len()])
                },
            ),
        }
    }
}

/// The weight of a request whose size does not matter.
fn one<T>(_: &T) -> usize {
    1
}

/// A coalescer whose calls `send(network, target, addr, (requests, ttl))`
/// go through its own handle on `network`.
fn over<Req, Res, Fut>(
    network: &PeerNetworkFactory,
    limits: Limits<Req>,
    send: fn(PeerNetworkFactory, NodeId, String, (Vec<Req>, Duration)) -> Fut,
) -> Coalescer<Req, Res>
where
    Req: Send + 'static,
    Res: Send + 'static,
    Fut: Future<Output = Answer<Vec<Res>>> + Send + 'static,
{
    let network = network.clone();
    Coalescer::start(limits, move |target, addr, requests, ttl| {
        send(network.clone(), target, addr, (requests, ttl))
    })
}

async fn run<Req, Res, F, Fut>(
    mut incoming: mpsc::UnboundedReceiver<Queued<Req, Res>>,
    limits: Limits<Req>,
    send: Arc<F>,
) where
    Req: Send + 'static,
    Res: Send + 'static,
    F: Fn(NodeId, String, Vec<Req>, Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer<Vec<Res>>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A request for another member that closed the previous batch.
    let mut held: Option<Queued<Req, Res>> = None;
    loop {
        let first = match held.take() {
            Some(first) => first,
            None => match incoming.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Wait for a slot first: what queues meanwhile joins this batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (target, addr) = (first.target, first.addr.clone());
        let mut weight = (limits.weigh)(&first.request);
        let mut batch = vec![first];
        while batch.len() < limits.count && weight < limits.weight {
            match incoming.try_recv() {
                Ok(next) if next.target == target && next.addr == addr => {
                    weight += (limits.weigh)(&next.request);
                    batch.push(next);
                }
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        batch.retain(|queued| !queued.reply.is_closed());
        let Some(deadline) = batch.iter().map(|queued| queued.deadline).max() else {
            continue;
        };
        let ttl = deadline.saturating_duration_since(Instant::now());
        let (requests, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|queued| (queued.request, queued.reply))
            .unzip();
        let call = send(target, addr, requests, ttl);
        tokio::spawn(async move {
            crate::metrics::FORWARD_BATCH.observe(replies.len() as f64);
            let count = replies.len();
            match call.await {
                Ok(answers) if answers.len() == count => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let failure = PeerCallError::Network(format!(
                        "the leader answered {} of a batch of {count}",
                        answers.len()
                    ));
                    for reply in replies {
                        let _ = reply.send(Err(failure.clone()));
                    }
                }
                Err(failure) => {
                    for reply in replies {
                        let _ = reply.send(Err(failure.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn limits(count: usize) -> Limits<u32> {
        Limits {
            count,
            weight: usize::MAX,
            weigh: |_| 1,
        }
    }

    /// The batches a test sender saw, with the member each went to.
    type Seen = Arc<Mutex<Vec<(NodeId, Vec<u32>)>>>;

    /// A sender that records each batch and echoes its requests after
    /// `delay`.
    fn echo(delay: Duration, seen: Seen) -> Coalescer<u32, u32> {
        Coalescer::start(limits(4), move |target, _addr, requests: Vec<u32>, _ttl| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((target, requests.clone()));
                tokio::time::sleep(delay).await;
                Ok(requests)
            }
        })
    }

    #[tokio::test]
    async fn concurrent_requests_share_calls_and_get_their_own_answers() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let coalescer = echo(Duration::from_millis(20), seen.clone());
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..20u32 {
            let coalescer = coalescer.clone();
            calls.spawn(async move {
                (
                    i,
                    coalescer
                        .call(1, "a:1", i, Duration::from_secs(5))
                        .await
                        .unwrap(),
                )
            });
        }
        while let Some(joined) = calls.join_next().await {
            let (sent, answered) = joined.unwrap();
            assert_eq!(sent, answered);
        }
        let seen = seen.lock().unwrap();
        let mut all: Vec<u32> = seen.iter().flat_map(|(_, batch)| batch.clone()).collect();
        all.sort_unstable();
        assert_eq!(all, (0..20).collect::<Vec<_>>(), "each request sent once");
        assert!(seen.iter().all(|(_, batch)| batch.len() <= 4));
        assert!(seen.len() < 20, "some requests shared a call: {seen:?}");
    }

    #[tokio::test]
    async fn a_batch_closes_at_its_weight() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let limits = Limits {
            count: 100,
            weight: 10,
            weigh: |request: &u32| *request as usize,
        };
        let coalescer = Coalescer::start(limits, move |_, _, requests: Vec<u32>, _| {
            let seen = recorded.clone();
            async move {
                seen.lock().unwrap().push(requests.clone());
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(requests)
            }
        });
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..30 {
            let coalescer = coalescer.clone();
            calls.spawn(async move { coalescer.call(1, "a:1", 4, Duration::from_secs(5)).await });
        }
        while let Some(joined) = calls.join_next().await {
            assert_eq!(joined.unwrap().unwrap(), 4);
        }
        for batch in seen.lock().unwrap().iter() {
            assert!(batch.len() <= 3, "a batch past its weight: {batch:?}");
        }
    }

    #[tokio::test]
    async fn a_batch_goes_to_one_member_only() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let coalescer = echo(Duration::from_millis(10), seen.clone());
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..12u32 {
            let coalescer = coalescer.clone();
            let target = NodeId::from(i % 2);
            calls.spawn(async move {
                let answer = coalescer
                    .call(target, "a:1", i, Duration::from_secs(5))
                    .await
                    .unwrap();
                (target, i, answer)
            });
        }
        while let Some(joined) = calls.join_next().await {
            let (_, sent, answered) = joined.unwrap();
            assert_eq!(sent, answered);
        }
        for (target, batch) in seen.lock().unwrap().iter() {
            assert!(
                batch.iter().all(|i| NodeId::from(i % 2) == *target),
                "batch for {target} holds another member's request: {batch:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_short_reply_fails_the_whole_batch_and_a_slow_one_times_out() {
        let short: Coalescer<u32, u32> =
            Coalescer::start(limits(8), |_, _, _requests: Vec<u32>, _| async {
                Ok(Vec::new())
            });
        let answer = short.call(1, "a:1", 7, Duration::from_secs(5)).await;
        assert!(
            matches!(answer, Err(PeerCallError::Network(_))),
            "{answer:?}"
        );

        let slow: Coalescer<u32, u32> =
            Coalescer::start(limits(8), |_, _, requests: Vec<u32>, _| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(requests)
            });
        let answer = slow.call(1, "a:1", 7, Duration::from_millis(50)).await;
        assert!(
            matches!(answer, Err(PeerCallError::Timeout(_))),
            "{answer:?}"
        );

        let down: Coalescer<u32, u32> =
            Coalescer::start(limits(8), |_, _, _requests: Vec<u32>, _| async {
                Err(PeerCallError::Unreachable("refused".into()))
            });
        let answer = down.call(1, "a:1", 7, Duration::from_secs(5)).await;
        assert!(
            matches!(answer, Err(PeerCallError::Unreachable(_))),
            "{answer:?}"
        );
    }
}
