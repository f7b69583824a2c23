//! Load balancers: pick one instance among the healthy ones.
//!
//! - [`RoundRobin`]: each in turn (instances ordered by ID).
//! - [`WeightedRandom`]: at random, in proportion to `weight` (weight 0
//!   takes traffic only when every candidate has weight 0).
//! - [`LeastOutstanding`]: power of two choices: two at random, the one with
//!   fewer requests in flight ([`Pick`] counts a request until dropped).
//! - [`ZonePreferring`]: another balancer over the instances in the local
//!   zone, or over all of them when none of the local zone is healthy.
//!
//! Invariants: a balancer never picks from outside the candidates it is
//! given, returns `None` only for no candidates, and is safe to share
//! between threads. Randomness comes from a small per-balancer generator
//! seeded from the clock; it is for spreading load, not for security.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use muster_proto::registry::Instance;

/// Chooses an instance among candidates.
pub trait Balancer: Send + Sync {
    /// One of `candidates`, or `None` when there is none.
    fn pick(&self, candidates: &[Instance]) -> Option<Pick>;
}

/// A chosen instance. For [`LeastOutstanding`] it counts as a request in
/// flight to that instance until dropped.
#[derive(Debug)]
pub struct Pick {
    instance: Instance,
    outstanding: Option<Arc<AtomicUsize>>,
}

impl Pick {
    /// A pick that counts nothing.
    pub fn new(instance: Instance) -> Pick {
        Pick {
            instance,
            outstanding: None,
        }
    }

    /// The instance chosen.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The instance chosen, taken out (the request stops counting).
    pub fn into_instance(self) -> Instance {
        self.instance.clone()
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        if let Some(outstanding) = &self.outstanding {
            outstanding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A small xorshift generator shared by a balancer's callers.
#[derive(Debug)]
struct Random(AtomicU64);

impl Random {
    fn new() -> Random {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Random(AtomicU64::new(seed | 1))
    }

    #[cfg(test)]
    fn seeded(seed: u64) -> Random {
        Random(AtomicU64::new(seed | 1))
    }

    /// A number below `n` (which is above 0).
    fn below(&self, n: u64) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        loop {
            let mut next = x;
            next ^= next << 13;
            next ^= next >> 7;
            next ^= next << 17;
            match self
                .0
                .compare_exchange_weak(x, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next.wrapping_mul(0x2545_f491_4f6c_dd1d) % n,
                Err(seen) => x = seen,
            }
        }
    }
}

/// Each candidate in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Balancer for RoundRobin {
    fn pick(&self, candidates: &[Instance]) -> Option<Pick> {
        if candidates.is_empty() {
            return None;
        }
        let mut sorted: Vec<&Instance> = candidates.iter().collect();
        sorted.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(Pick::new(sorted[n % sorted.len()].clone()))
    }
}

/// At random, in proportion to weight.
#[derive(Debug)]
pub struct WeightedRandom {
    random: Random,
}

impl Default for WeightedRandom {
    fn default() -> Self {
        WeightedRandom {
            random: Random::new(),
        }
    }
}

impl Balancer for WeightedRandom {
    fn pick(&self, candidates: &[Instance]) -> Option<Pick> {
        if candidates.is_empty() {
            return None;
        }
        let total: u64 = candidates.iter().map(|i| u64::from(i.weight)).sum();
        if total == 0 {
            let i = self.random.below(candidates.len() as u64) as usize;
            return Some(Pick::new(candidates[i].clone()));
        }
        let mut point = self.random.below(total);
        for instance in candidates {
            let weight = u64::from(instance.weight);
            if point < weight {
                return Some(Pick::new(instance.clone()));
            }
            point -= weight;
        }
        unreachable!("the point is below the total weight")
    }
}

/// Power of two choices over requests in flight.
#[derive(Debug)]
pub struct LeastOutstanding {
    random: Random,
    /// Requests in flight by (service, id).
    outstanding: Mutex<HashMap<(String, String), Arc<AtomicUsize>>>,
}

impl Default for LeastOutstanding {
    fn default() -> Self {
        LeastOutstanding {
            random: Random::new(),
            outstanding: Mutex::new(HashMap::new()),
        }
    }
}

impl LeastOutstanding {
    /// Requests in flight to `instance` (picks not yet dropped).
    pub fn outstanding(&self, instance: &Instance) -> usize {
        self.outstanding
            .lock()
            .expect("outstanding lock")
            .get(&(instance.service.clone(), instance.id.clone()))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

impl Balancer for LeastOutstanding {
    fn pick(&self, candidates: &[Instance]) -> Option<Pick> {
        let n = candidates.len() as u64;
        if n == 0 {
            return None;
        }
        let a = self.random.below(n) as usize;
        let b = if n == 1 {
            a
        } else {
            // A second, different one.
            (a + 1 + self.random.below(n - 1) as usize) % n as usize
        };
        let mut outstanding = self.outstanding.lock().expect("outstanding lock");
        // Forget instances no longer offered and not in flight, so the map
        // does not grow with churn.
        if outstanding.len() > 2 * candidates.len() + 16 {
            outstanding.retain(|_, c| c.load(Ordering::Relaxed) > 0);
        }
        let mut counter = |i: &Instance| {
            Arc::clone(
                outstanding
                    .entry((i.service.clone(), i.id.clone()))
                    .or_default(),
            )
        };
        let (ca, cb) = (counter(&candidates[a]), counter(&candidates[b]));
        let (chosen, count) = if cb.load(Ordering::Relaxed) < ca.load(Ordering::Relaxed) {
            (b, cb)
        } else {
            (a, ca)
        };
        count.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            instance: candidates[chosen].clone(),
            outstanding: Some(count),
        })
    }
}

/// Prefers the local zone: `inner` over the candidates in `zone`, or over
/// all of them when none is in `zone`.
#[derive(Debug)]
pub struct ZonePreferring<B> {
    zone: String,
    inner: B,
}

impl<B: Balancer> ZonePreferring<B> {
    /// `inner`, preferring instances in `zone`.
    pub fn new(zone: impl Into<String>, inner: B) -> Self {
        ZonePreferring {
            zone: zone.into(),
            inner,
        }
    }
}

impl<B: Balancer> Balancer for ZonePreferring<B> {
    fn pick(&self, candidates: &[Instance]) -> Option<Pick> {
        let local: Vec<Instance> = candidates
            .iter()
            .filter(|i| i.zone == self.zone)
            .cloned()
            .collect();
        if local.is_empty() {
            self.inner.pick(candidates)
        } else {
            self.inner.pick(&local)
        }
    }
}

/// The balancers by name, for tools: `round-robin`, `weighted`,
/// `least-outstanding`; with `zone`, wrapped in [`ZonePreferring`].
pub fn by_name(name: &str, zone: Option<&str>) -> Option<Box<dyn Balancer>> {
    fn zoned<B: Balancer + 'static>(b: B, zone: Option<&str>) -> Box<dyn Balancer> {
        match zone {
            Some(zone) => Box::new(ZonePreferring::new(zone, b)),
            None => Box::new(b),
        }
    }
    Some(match name {
        "round-robin" => zoned(RoundRobin::default(), zone),
        "weighted" => zoned(WeightedRandom::default(), zone),
        "least-outstanding" => zoned(LeastOutstanding::default(), zone),
        _ => return None,
    })
}

/// The names [`by_name`] knows.
pub const NAMES: [&str; 3] = ["round-robin", "weighted", "least-outstanding"];

#[cfg(test)]
mod tests {
    use super::*;

    fn instances(weights: &[u16]) -> Vec<Instance> {
        weights
            .iter()
            .enumerate()
            .map(|(n, w)| {
                let mut i = Instance::new("api", format!("i{n}"), format!("10.0.0.{n}:80"));
                i.weight = *w;
                i
            })
            .collect()
    }

    #[test]
    fn nothing_to_pick_from_is_none() {
        for name in NAMES {
            assert!(by_name(name, Some("z")).unwrap().pick(&[]).is_none());
        }
        assert!(by_name("random", None).is_none());
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let all = instances(&[1, 1, 1]);
        let rr = RoundRobin::default();
        let ids: Vec<String> = (0..6)
            .map(|_| rr.pick(&all).unwrap().instance().id.clone())
            .collect();
        assert_eq!(ids, ["i0", "i1", "i2", "i0", "i1", "i2"]);
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        let all = instances(&[1, 3, 0]);
        let balancer = WeightedRandom {
            random: Random::seeded(7),
        };
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            let pick = balancer.pick(&all).unwrap();
            counts[pick.instance().id[1..].parse::<usize>().unwrap()] += 1;
        }
        assert_eq!(
            counts[2], 0,
            "weight 0 gets nothing while others have weight"
        );
        let share = f64::from(counts[1]) / 40_000.0;
        assert!((0.72..0.78).contains(&share), "{counts:?}");
        // All zero: uniform.
        let zeros = instances(&[0, 0]);
        assert!(balancer.pick(&zeros).is_some());
    }

    #[test]
    fn least_outstanding_avoids_the_busy_instance() {
        let all = instances(&[1, 1]);
        let balancer = LeastOutstanding {
            random: Random::seeded(3),
            outstanding: Mutex::new(HashMap::new()),
        };
        // Hold picks: with two instances both are compared every time, so
        // picks alternate to keep the counts level.
        let held: Vec<Pick> = (0..10).map(|_| balancer.pick(&all).unwrap()).collect();
        assert_eq!(balancer.outstanding(&all[0]), 5);
        assert_eq!(balancer.outstanding(&all[1]), 5);
        drop(held);
        assert_eq!(balancer.outstanding(&all[0]), 0);
        let busy: Vec<Pick> = (0..4).map(|_| balancer.pick(&all[..1]).unwrap()).collect();
        for _ in 0..10 {
            assert_eq!(balancer.pick(&all).unwrap().instance().id, "i1");
        }
        drop(busy);
    }

    #[test]
    fn zone_preference_falls_back_to_every_zone() {
        let mut all = instances(&[1, 1, 1]);
        all[1].zone = "b".into();
        let balancer = ZonePreferring::new("b", RoundRobin::default());
        for _ in 0..3 {
            assert_eq!(balancer.pick(&all).unwrap().instance().id, "i1");
        }
        let elsewhere = ZonePreferring::new("c", RoundRobin::default());
        let ids: std::collections::BTreeSet<String> = (0..3)
            .map(|_| elsewhere.pick(&all).unwrap().instance().id.clone())
            .collect();
        assert_eq!(ids.len(), 3);
    }
}
