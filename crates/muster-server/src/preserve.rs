//! Self-preservation: the leader's lessor stops revoking expired leases
//! while too many expire at once.
//!
//! A CP registry has its own version of Eureka's failure mode: a partition
//! between many clients and the cluster stops their keep-alives, their
//! leases expire together although the services behind them are alive, and
//! the registry deletes them all. [`Preservation`] notices such a burst and
//! holds the expired leases instead of revoking them, for a bounded time.
//! It is a pure state machine driven by the lessor ([`crate::lease`]) with
//! explicit instants: no clock, no I/O.
//!
//! Definitions, with θ = [`PreservationConfig::threshold`] and
//! W = [`PreservationConfig::window`]; everything is evaluated at each
//! lessor tick ([`Preservation::observe`]):
//!
//! - An **expiry** is the lessor noticing that a lease it tracks is past
//!   its deadline. Each expiry is counted once, at the tick that notices
//!   it, whether the lease is then revoked or held. A held lease that is
//!   renewed withdraws its expiry: it did not die.
//! - **Unresolved expiries** E: the expiries noticed within the last W,
//!   together with every lease held now (noticed earlier, neither renewed
//!   nor revoked since).
//! - **Live leases** P: the leases the lessor tracks now (expired ones not
//!   yet revoked included), plus the leases whose expiry is in the window
//!   and that have been revoked since, so that revoking what expired does
//!   not by itself raise the fraction (P is the population the window's
//!   expiries came from).
//!
//! ```text
//!              P ≥ min_leases and E > θ·P
//!   normal ─────────────────────────────────▶ preserving
//!     ▲                                           │
//!     │  E ≤ θ·P (renewals brought the held       │
//!     │  leases back), or `max` since entering    │
//!     └───────────────────────────────────────────┘
//!        the held leases are released, the window emptied
//! ```
//!
//! Invariants:
//!
//! - While preserving, no expired lease is revoked unless an earlier
//!   episode released it: every lease that expires is held (and counted),
//!   and a held lease that is renewed comes back to life with its full TTL.
//!   Grants, keep-alives, checkpoints and revokes a client asks for work
//!   as usual: an explicit `LeaseRevoke` is always honoured.
//! - Preservation is bounded: it ends [`PreservationConfig::max`] after it
//!   began at the latest; new expiries do not extend it. Clients that come
//!   back by registering anew under a new lease (as etcd's Go client does
//!   once its own view of the TTL ran out) never renew the held lease, so
//!   their episode lasts until the bound: a key they wrote again under the
//!   new lease is no longer attached to the held one and survives its
//!   revocation.
//! - Leaving releases every lease still held: the lessor revokes them from
//!   then on at its usual rate limit, even if another episode begins. It
//!   also empties the window, so the expiries that caused one episode can
//!   never cause the next: only new expiries can, and a new episode holds
//!   only leases that expired after the last one ended.
//! - Expiries up to the threshold are ordinary churn and are revoked as
//!   they come: a burst is recognised at the expiry that takes E above
//!   θ·P, and only what expires from then on is held. A partition's leases
//!   expire over a few ticks (their last renewals were spread over the
//!   clients' keep-alive interval), so up to ⌊θ·P⌋ of them may be revoked
//!   before the rest are held. Catching those too would mean delaying
//!   every ordinary expiry.
//! - Fewer than [`PreservationConfig::min_leases`] live leases never
//!   trigger it (1 of 3 leases expiring is a service restarting, not a
//!   partition); with `enabled` false nothing is tracked and nothing held.
//! - The state is the leader's own, not replicated: a member that stops
//!   leading forgets it, and a new leader starts in the normal mode. Its
//!   grace period (every lease restarts at its checkpoint plus an election
//!   timeout) already protects a failover; if the leases still do not
//!   renew after it, the new leader notices the burst itself.
//!
//! Worked example, defaults (θ = 0.15, W = 60 s, min 10 leases, max 5 min),
//! 30 leases:
//!
//! ```text
//!   t=0     10 leases expire in one tick    E=10 > 4.5 of P=30: preserving,
//!                                           the 10 are held, not revoked
//!           (over several ticks instead: the first 4 are revoked, the
//!           fifth triggers it, the last 6 are held)
//!   t=20s   7 of them renew                 E=3 ≤ 4.5: normal again; the
//!                                           3 still expired are revoked
//!   --- or, if none renews ---
//!   t=300s  the bound                       normal; the 10 are revoked
//!   --- ordinary churn instead ---
//!   one lease expires every 15 s            E ≤ 4 ≤ 4.5 in any minute:
//!                                           each is revoked at once
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Default share of live leases whose expiry within the window triggers
/// self-preservation (`--self-preservation-threshold`).
pub const DEFAULT_THRESHOLD: f64 = 0.15;

/// Default window over which expiries are counted
/// (`--self-preservation-window`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Default longest self-preservation lasts (`--self-preservation-max`).
pub const DEFAULT_MAX: Duration = Duration::from_secs(300);

/// Default fewest live leases for self-preservation to trigger
/// (`--self-preservation-min-leases`).
pub const DEFAULT_MIN_LEASES: usize = 10;

/// Tunables of self-preservation.
#[derive(Clone, Copy, Debug)]
pub struct PreservationConfig {
    /// Whether the lessor may preserve at all (`--self-preservation`).
    pub enabled: bool,
    /// The share θ of live leases (above 0, at most 1) whose unresolved
    /// expiries trigger it.
    pub threshold: f64,
    /// How far back expiries count.
    pub window: Duration,
    /// The longest one episode lasts.
    pub max: Duration,
    /// The fewest live leases with which it can trigger.
    pub min_leases: usize,
}

impl Default for PreservationConfig {
    fn default() -> Self {
        PreservationConfig {
            enabled: true,
            threshold: DEFAULT_THRESHOLD,
            window: DEFAULT_WINDOW,
            max: DEFAULT_MAX,
            min_leases: DEFAULT_MIN_LEASES,
        }
    }
}

impl PartialEq for PreservationConfig {
    fn eq(&self, other: &Self) -> bool {
        self.enabled == other.enabled
            && self.threshold.to_bits() == other.threshold.to_bits()
            && self.window == other.window
            && self.max == other.max
            && self.min_leases == other.min_leases
    }
}

// The threshold is compared by its bits, which is reflexive.
impl Eq for PreservationConfig {}

/// Why an episode of self-preservation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveReason {
    /// Renewals brought the unresolved expiries back to the threshold.
    Recovered,
    /// [`PreservationConfig::max`] passed.
    Bound,
    /// This member stopped leading (or its lessor stopped).
    Deposed,
}

impl fmt::Display for LeaveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeaveReason::Recovered => "renewals recovered",
            LeaveReason::Bound => "the bound passed",
            LeaveReason::Deposed => "no longer leading",
        })
    }
}

/// A change of mode, for the lessor to log and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Self-preservation began.
    Entered {
        /// Unresolved expiries E.
        expiries: usize,
        /// Live leases P.
        live: usize,
        /// Expired leases held from now on.
        held: usize,
    },
    /// Self-preservation ended.
    Left {
        /// Why.
        reason: LeaveReason,
        /// Expired leases still held, released for revocation now.
        released: usize,
        /// Held leases that were renewed during the episode.
        renewed: usize,
        /// How long the episode lasted.
        lasted: Duration,
    },
}

/// What an episode looks like now, for `Status` and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// How long it has lasted.
    pub lasted: Duration,
    /// The longest it may last.
    pub max: Duration,
    /// Expired leases held now.
    pub held: usize,
    /// Held leases renewed so far.
    pub renewed: usize,
    /// Live leases at the last tick.
    pub live: usize,
}

/// The prefix of [`Report`]'s text, as `Status.errors` lists it.
pub const STATUS_PREFIX: &str = "muster: self-preservation";

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{STATUS_PREFIX}: expired leases are held, not revoked ({} held of {} live, \
             {} renewed; for {}s of at most {}s)",
            self.held,
            self.live,
            self.renewed,
            self.lasted.as_secs(),
            self.max.as_secs()
        )
    }
}

/// One episode of self-preservation.
#[derive(Clone, Copy, Debug)]
struct Episode {
    since: Instant,
    renewed: usize,
}

/// The self-preservation state of a leader's lessor.
#[derive(Debug)]
pub struct Preservation {
    config: PreservationConfig,
    /// Expiries noticed within the window, oldest first: (when, lease).
    window: VecDeque<(Instant, i64)>,
    /// Expired leases counted and neither renewed, revoked nor released
    /// since: lease → when its expiry was noticed.
    counted: HashMap<i64, Instant>,
    /// Expired leases a finished episode released: revoked whatever mode.
    released: HashSet<i64>,
    /// `Some` while preserving.
    episode: Option<Episode>,
    /// Live leases P at the last observation.
    live: usize,
}

impl Preservation {
    /// A lessor's state in the normal mode.
    pub fn new(config: PreservationConfig) -> Self {
        Preservation {
            config,
            window: VecDeque::new(),
            counted: HashMap::new(),
            released: HashSet::new(),
            episode: None,
            live: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> PreservationConfig {
        self.config
    }

    /// Whether expired leases are being held.
    pub fn preserving(&self) -> bool {
        self.episode.is_some()
    }

    /// Whether lease `id`, once expired, is held rather than revoked (and
    /// may still be renewed).
    pub fn holds(&self, id: i64) -> bool {
        self.episode.is_some() && !self.released.contains(&id)
    }

    /// Records that lease `id` was renewed: an expiry it had is withdrawn.
    pub fn renewed(&mut self, id: i64) {
        self.released.remove(&id);
        if let Some(noticed) = self.counted.remove(&id) {
            if let Some(i) = self
                .window
                .iter()
                .rposition(|&(at, lease)| lease == id && at == noticed)
            {
                self.window.remove(i);
            }
            if let Some(episode) = &mut self.episode {
                episode.renewed += 1;
            }
        }
    }

    /// Counts the expiries among `expiries` (every tracked lease → its
    /// deadline) noticed at `now` and moves between the modes; answers
    /// the change, if any.
    pub fn observe(&mut self, now: Instant, expiries: &HashMap<i64, Instant>) -> Option<Change> {
        if !self.config.enabled {
            return None;
        }
        self.counted.retain(|id, _| expiries.contains_key(id));
        self.released.retain(|id| expiries.contains_key(id));
        for (&id, &deadline) in expiries {
            if deadline <= now && !self.counted.contains_key(&id) && !self.released.contains(&id) {
                self.counted.insert(id, now);
                self.window.push_back((now, id));
            }
        }
        while self
            .window
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) >= self.config.window)
        {
            self.window.pop_front();
        }
        let older_held = self
            .counted
            .values()
            .filter(|&&at| now.saturating_duration_since(at) >= self.config.window)
            .count();
        let unresolved = self.window.len() + older_held;
        let revoked = self
            .window
            .iter()
            .filter(|(_, id)| !expiries.contains_key(id))
            .count();
        let live = expiries.len() + revoked;
        self.live = live;
        let over = unresolved as f64 > self.config.threshold * live as f64;
        match self.episode {
            None if over && live >= self.config.min_leases => {
                self.episode = Some(Episode {
                    since: now,
                    renewed: 0,
                });
                Some(Change::Entered {
                    expiries: unresolved,
                    live,
                    held: self.counted.len(),
                })
            }
            None => None,
            Some(episode) => {
                if now.saturating_duration_since(episode.since) >= self.config.max {
                    self.leave(now, LeaveReason::Bound)
                } else if !over {
                    self.leave(now, LeaveReason::Recovered)
                } else {
                    None
                }
            }
        }
    }

    /// Ends an episode, if one is under way: every lease held is
    /// released and the window emptied.
    pub fn leave(&mut self, now: Instant, reason: LeaveReason) -> Option<Change> {
        let episode = self.episode.take()?;
        let released = self.counted.len();
        self.released.extend(self.counted.drain().map(|(id, _)| id));
        self.window.clear();
        Some(Change::Left {
            reason,
            released,
            renewed: episode.renewed,
            lasted: now.saturating_duration_since(episode.since),
        })
    }

    /// The episode under way, if any.
    pub fn report(&self, now: Instant) -> Option<Report> {
        let episode = self.episode?;
        Some(Report {
            lasted: now.saturating_duration_since(episode.since),
            max: self.config.max,
            held: self.counted.len(),
            renewed: episode.renewed,
            live: self.live,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// `n` leases, IDs 1..=n, all due at `deadline`.
    fn leases(n: i64, deadline: Instant) -> HashMap<i64, Instant> {
        (1..=n).map(|id| (id, deadline)).collect()
    }

    #[test]
    fn a_third_of_thirty_leases_expiring_at_once_triggers_it() {
        let t0 = Instant::now();
        let mut preservation = Preservation::new(PreservationConfig::default());
        let mut tracked = leases(30, t0 + secs(100));
        assert_eq!(preservation.observe(t0, &tracked), None);
        for id in 1..=10 {
            tracked.insert(id, t0 + secs(5));
        }
        assert_eq!(preservation.observe(t0 + secs(4), &tracked), None);
        assert_eq!(
            preservation.observe(t0 + secs(5), &tracked),
            Some(Change::Entered {
                expiries: 10,
                live: 30,
                held: 10
            })
        );
        assert!(preservation.preserving());
        assert!((1..=30).all(|id| preservation.holds(id)));
        let report = preservation.report(t0 + secs(7)).expect("an episode");
        assert_eq!((report.held, report.live, report.renewed), (10, 30, 0));
        assert_eq!(report.lasted, secs(2));
        assert!(report.to_string().starts_with(STATUS_PREFIX), "{report}");
    }

    #[test]
    fn four_of_thirty_in_a_window_is_within_the_threshold_even_once_revoked() {
        let t0 = Instant::now();
        let mut preservation = Preservation::new(PreservationConfig::default());
        let mut tracked = leases(30, t0 + secs(100));
        for id in 1..=4 {
            tracked.insert(id, t0);
        }
        assert_eq!(preservation.observe(t0, &tracked), None);
        // Revoked: P still counts them, so 4 of 30 stays under 4.5.
        for id in 1..=4 {
            tracked.remove(&id);
        }
        assert_eq!(preservation.observe(t0 + secs(1), &tracked), None);
        // A fifth within the same minute is over.
        tracked.insert(5, t0 + secs(2));
        assert!(matches!(
            preservation.observe(t0 + secs(2), &tracked),
            Some(Change::Entered {
                expiries: 5,
                live: 30,
                held: 1
            })
        ));
    }

    #[test]
    fn one_lease_expiring_every_few_seconds_among_many_does_not_trigger_it() {
        // Services restarting one by one: every 5 s a lease expires, is
        // revoked, and its service registers again under a new lease;
        // 12 expiries a minute among 100 leases stays under 15.
        let t0 = Instant::now();
        churn(t0, 100, secs(5));
        // Among 30 leases, one every 15 s is 4 a minute: under 4.5.
        churn(t0, 30, secs(15));
    }

    /// `n` leases; every `every` the oldest expires, is revoked and is
    /// replaced by a new one, for ten minutes; never preserving.
    fn churn(t0: Instant, n: i64, every: Duration) {
        let mut preservation = Preservation::new(PreservationConfig::default());
        let far = t0 + secs(10_000);
        let mut tracked = leases(n, far);
        let mut order: VecDeque<i64> = (1..=n).collect();
        let mut next_id = n + 1;
        let mut now = t0;
        while now < t0 + secs(600) {
            now += every;
            let victim = order.pop_front().expect("a lease");
            tracked.insert(victim, now);
            assert_eq!(preservation.observe(now, &tracked), None, "at {now:?}");
            assert!(!preservation.holds(victim));
            tracked.remove(&victim);
            tracked.insert(next_id, far);
            order.push_back(next_id);
            next_id += 1;
        }
    }

    #[test]
    fn too_few_leases_never_trigger_it() {
        let t0 = Instant::now();
        let mut preservation = Preservation::new(PreservationConfig::default());
        let mut tracked = leases(3, t0 + secs(100));
        tracked.insert(1, t0);
        assert_eq!(preservation.observe(t0, &tracked), None);
        // Nine of nine at once: still under the minimum of 10.
        let mut tracked = leases(9, t0);
        assert_eq!(preservation.observe(t0, &tracked), None);
        assert!(!preservation.holds(1));
        // Disabled: 30 of 30 expire and nothing is held.
        let mut off = Preservation::new(PreservationConfig {
            enabled: false,
            ..PreservationConfig::default()
        });
        tracked = leases(30, t0);
        assert_eq!(off.observe(t0, &tracked), None);
        assert!(!off.preserving() && !off.holds(1));
    }

    /// An episode entered at `t0 + 5s` with leases 1..=10 of 30 held.
    fn preserving(t0: Instant) -> (Preservation, HashMap<i64, Instant>) {
        let mut preservation = Preservation::new(PreservationConfig::default());
        let mut tracked = leases(30, t0 + secs(1000));
        for id in 1..=10 {
            tracked.insert(id, t0 + secs(5));
        }
        assert!(matches!(
            preservation.observe(t0 + secs(5), &tracked),
            Some(Change::Entered { .. })
        ));
        (preservation, tracked)
    }

    #[test]
    fn renewals_of_held_leases_end_it() {
        let t0 = Instant::now();
        let (mut preservation, mut tracked) = preserving(t0);
        // New expiries while preserving are held too.
        tracked.insert(11, t0 + secs(8));
        assert_eq!(preservation.observe(t0 + secs(8), &tracked), None);
        assert!(preservation.holds(11));
        // Seven renew (the lessor restarts their timers): 4 remain, ≤ 4.5.
        for id in 1..=7 {
            preservation.renewed(id);
            tracked.insert(id, t0 + secs(1000));
        }
        assert_eq!(preservation.report(t0 + secs(9)).map(|r| r.held), Some(4));
        assert_eq!(
            preservation.observe(t0 + secs(10), &tracked),
            Some(Change::Left {
                reason: LeaveReason::Recovered,
                released: 4,
                renewed: 7,
                lasted: secs(5),
            })
        );
        // The four still expired are revoked now; the renewed ones live.
        assert!(!preservation.preserving());
        assert!((8..=11).all(|id| !preservation.holds(id)));
        // Their revocation does not trigger it again.
        for id in 8..=11 {
            tracked.remove(&id);
        }
        assert_eq!(preservation.observe(t0 + secs(11), &tracked), None);
        assert_eq!(preservation.observe(t0 + secs(30), &tracked), None);
    }

    #[test]
    fn the_bound_ends_it_and_releases_the_held_leases() {
        let t0 = Instant::now();
        let (mut preservation, mut tracked) = preserving(t0);
        // More expire later on: held, without extending the bound.
        for id in 11..=15 {
            tracked.insert(id, t0 + secs(200));
        }
        preservation.renewed(1);
        tracked.insert(1, t0 + secs(1000));
        assert_eq!(preservation.observe(t0 + secs(200), &tracked), None);
        assert_eq!(preservation.observe(t0 + secs(304), &tracked), None);
        assert_eq!(
            preservation.observe(t0 + secs(305), &tracked),
            Some(Change::Left {
                reason: LeaveReason::Bound,
                released: 14,
                renewed: 1,
                lasted: secs(300),
            })
        );
        assert!((2..=15).all(|id| !preservation.holds(id)));
        // Still expired and not revoked yet (rate limit): no new episode.
        assert_eq!(preservation.observe(t0 + secs(306), &tracked), None);
        // Another burst later starts a new episode that holds only the new
        // expiries: the released leases stay released.
        for id in 16..=25 {
            tracked.insert(id, t0 + secs(307));
        }
        assert!(matches!(
            preservation.observe(t0 + secs(307), &tracked),
            Some(Change::Entered { expiries: 10, .. })
        ));
        assert!(preservation.holds(16));
        assert!(!preservation.holds(2), "released by the first episode");
    }

    #[test]
    fn leaving_on_deposition_releases_everything() {
        let t0 = Instant::now();
        let (mut preservation, _) = preserving(t0);
        assert!(matches!(
            preservation.leave(t0 + secs(6), LeaveReason::Deposed),
            Some(Change::Left {
                reason: LeaveReason::Deposed,
                released: 10,
                ..
            })
        ));
        assert_eq!(preservation.leave(t0 + secs(7), LeaveReason::Deposed), None);
        assert_eq!(preservation.report(t0 + secs(7)), None);
    }
}
