//! Elections: when a follower campaigns, driven by muster instead of
//! openraft's own timer.
//!
//! openraft 0.9 draws one random election timeout per process and adds the
//! leader lease to it, so a follower campaigns `t + r` after the last
//! heartbeat with the same `r` in every round; two members whose draws are
//! close keep splitting the vote, and each retry costs another `t + r`. This
//! module replaces that timer (openraft's `enable_elect` is off) with one
//! that behaves like etcd's:
//!
//! ```text
//!   heartbeat / granted vote ──touch──▶ ElectionClock
//!   Campaigner: quiet for a fresh draw from [t, 1.5 t) ──▶ trigger().elect()
//!               still no leader after a fresh [t/4, t/2) ──▶ campaign again
//! ```
//!
//! Invariants:
//!
//! - The first campaign after hearing from a leader comes no earlier than
//!   `t` after the last message from it. openraft's voters refuse votes
//!   while their leader lease (`election_timeout_max` = `t`) runs, so an
//!   earlier campaign could only fail and raise the term.
//! - Every round draws a new timeout, so a split vote is not repeated by
//!   construction; retries are shorter than the first round because a voter
//!   whose leader is gone has no lease left to wait out.
//! - A leader, a learner, a member that is not in the membership and a
//!   leader handing over (until it has stopped) never campaign; a leader keeps its clock fresh so that when it is deposed it
//!   waits a full round before campaigning.
//! - A single voter campaigns at once (that is how it becomes leader again
//!   after a restart).
//! - The campaigner stops when the node shuts down or openraft stops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::types::{NodeId, Raft};

/// When this member last heard from a leader (an append-entries or snapshot
/// it accepted) or granted a vote: the start of its election timeout.
///
/// It also remembers since when this member has been leader, as the
/// campaigner saw it (no earlier than it really became leader).
#[derive(Clone, Debug)]
pub(crate) struct ElectionClock {
    inner: Arc<Mutex<Times>>,
}

#[derive(Debug)]
struct Times {
    last: Instant,
    leading_since: Option<Instant>,
    /// Set while this member hands leadership over: it must not campaign.
    standing_down: bool,
}

impl ElectionClock {
    /// A clock that starts now.
    pub(crate) fn new() -> Self {
        ElectionClock {
            inner: Arc::new(Mutex::new(Times {
                last: Instant::now(),
                leading_since: None,
                standing_down: false,
            })),
        }
    }

    /// Restarts the election timeout.
    pub(crate) fn touch(&self) {
        self.lock().last = Instant::now();
    }

    /// When the election timeout last restarted.
    pub(crate) fn last(&self) -> Instant {
        self.lock().last
    }

    /// Since when this member has led, if it leads; never earlier than the
    /// moment it became leader.
    pub(crate) fn leading_since(&self) -> Option<Instant> {
        self.lock().leading_since
    }

    /// Stops (or, with `false`, resumes) this member's campaigning, for a
    /// leader handing over.
    pub(crate) fn stand_down(&self, standing_down: bool) {
        self.lock().standing_down = standing_down;
    }

    fn is_standing_down(&self) -> bool {
        self.lock().standing_down
    }

    fn set_leading(&self, leading: bool) {
        let mut times = self.lock();
        match (leading, times.leading_since) {
            (true, None) => times.leading_since = Some(Instant::now()),
            (false, Some(_)) => times.leading_since = None,
            _ => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Times> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A small deterministic-per-seed generator for election jitter (splitmix64).
struct Jitter(u64);

impl Jitter {
    fn new(id: NodeId) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(nanos ^ id.rotate_left(32))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration drawn uniformly from `[low, high)`.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_micros().max(1) as u64;
        low + Duration::from_micros(self.next() % span)
    }
}

/// What the campaigner decides on waking.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The leader: restart the clock.
    Lead,
    /// Not a member that campaigns (learner, outside the membership):
    /// restart the clock.
    Stand,
    /// A voter that has not heard from a leader: campaign.
    Campaign,
}

fn step(raft: &Raft, id: NodeId) -> Option<Step> {
    let metrics = raft.metrics().borrow().clone();
    metrics.running_state.as_ref().ok()?;
    let is_voter = metrics
        .membership_config
        .membership()
        .voter_ids()
        .any(|voter| voter == id);
    if metrics.state == ServerState::Leader {
        Some(Step::Lead)
    } else if !is_voter {
        Some(Step::Stand)
    } else {
        Some(Step::Campaign)
    }
}

fn is_single_voter(raft: &Raft, id: NodeId) -> bool {
    let metrics = raft.metrics().borrow().clone();
    let mut voters = metrics.membership_config.membership().voter_ids();
    voters.next() == Some(id) && voters.next().is_none()
}

/// Starts the campaigner for member `id` with election timeout `t`; it runs
/// until `stop` changes or openraft stops.
pub(crate) fn spawn_campaigner(
    raft: Raft,
    id: NodeId,
    clock: ElectionClock,
    t: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut jitter = Jitter::new(id);
        let first_round = |jitter: &mut Jitter| jitter.between(t, t + t / 2);
        let retry = |jitter: &mut Jitter| jitter.between(t / 4, t / 2);
        let mut timeout = first_round(&mut jitter);
        // A leader wakes this often to keep its clock fresh.
        let leader_poll = (t / 4).max(Duration::from_millis(1));
        loop {
            let wake = if is_single_voter(&raft, id) {
                Instant::now() + retry(&mut jitter).min(Duration::from_millis(50))
            } else {
                (clock.last() + timeout).min(Instant::now() + leader_poll)
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => return,
            }
            let step = step(&raft, id);
            clock.set_leading(step == Some(Step::Lead));
            match step {
                None => return,
                Some(Step::Lead | Step::Stand) => {
                    clock.touch();
                    timeout = first_round(&mut jitter);
                }
                Some(Step::Campaign) if clock.is_standing_down() => clock.touch(),
                Some(Step::Campaign) => {
                    let single = is_single_voter(&raft, id);
                    if !single && clock.last() + timeout > Instant::now() {
                        continue; // heard from a leader meanwhile
                    }
                    if single && raft.metrics().borrow().state == ServerState::Candidate {
                        continue; // its own election is still running
                    }
                    tracing::debug!(id, ?timeout, "no leader heard from: campaigning");
                    if raft.trigger().elect().await.is_err() {
                        return;
                    }
                    clock.touch();
                    timeout = retry(&mut jitter);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_range_and_vary() {
        let mut jitter = Jitter::new(7);
        let low = Duration::from_millis(1000);
        let high = Duration::from_millis(1500);
        let draws: Vec<Duration> = (0..1000).map(|_| jitter.between(low, high)).collect();
        assert!(draws.iter().all(|d| *d >= low && *d < high));
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 900, "draws repeat: {}", distinct.len());
        assert!(draws.iter().any(|d| *d < Duration::from_millis(1100)));
        assert!(draws.iter().any(|d| *d >= Duration::from_millis(1400)));
    }
}
