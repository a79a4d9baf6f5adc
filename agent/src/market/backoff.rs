//! When to reconnect: full-jitter exponential backoff (each wait uniform in [0, bound), the
//! bound doubling from the minimum to the maximum), started over only after a tunnel stayed up
//! a while, plus a spread after losing a healthy tunnel so that agents losing one market at the
//! same moment do not all come back in the same second.
//!
//! The spread stays: once a healthy tunnel was lost, every later wait's bound is at least the
//! spread. Otherwise the agents whose first (spread) attempt fell
//! inside the market's outage would retry with bounds of 1, 2, 4 s and come back together the
//! moment it returns, as would agents whose new tunnels are lost again before they are
//! healthy (a market restarting twice).

use std::time::Duration;

/// The shortest wait, so a failing endpoint is never retried in a hot loop.
const FLOOR: Duration = Duration::from_millis(50);

/// Reconnect delays of one endpoint.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    spread: Duration,
    attempt: u32,
    /// A healthy tunnel was lost: waits are spread from then on.
    spreading: bool,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Delays bounded by `min` doubling up to `max`; `spread` after a healthy tunnel.
    pub fn new(min: Duration, max: Duration, spread: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            spread,
            attempt: 0,
            spreading: false,
            rng: fastrand::Rng::new(),
        }
    }

    /// The same with a fixed seed (reproducible tests and simulations).
    pub fn with_seed(min: Duration, max: Duration, spread: Duration, seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            ..Self::new(min, max, spread)
        }
    }

    /// The bound of the next wait.
    fn bound(&self) -> Duration {
        let doubled = self
            .min
            .checked_mul(1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max);
        doubled.min(self.max)
    }

    fn uniform(&mut self, bound: Duration) -> Duration {
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.u64(0..nanos.max(1)))
    }

    /// The wait after a failed attempt (or a tunnel lost before it was healthy).
    pub fn after_failure(&mut self) -> Duration {
        let mut bound = self.bound();
        if self.spreading {
            bound = bound.max(self.spread);
        }
        self.attempt = self.attempt.saturating_add(1);
        self.uniform(bound).max(FLOOR)
    }

    /// The wait after losing a tunnel that stayed up long enough: the backoff starts over, and
    /// the first attempt comes at a random point of the spread.
    pub fn after_healthy(&mut self) -> Duration {
        self.attempt = 0;
        self.spreading = true;
        let spread = self.spread;
        self.uniform(spread).max(FLOOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_up_to_the_maximum_and_waits_stay_below_them() {
        let mut b = Backoff::with_seed(
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(30),
            7,
        );
        let bounds: Vec<u64> = (0..9)
            .map(|_| {
                let bound = b.bound();
                let wait = b.after_failure();
                assert!(wait < bound.max(FLOOR * 2), "{wait:?} >= {bound:?}");
                bound.as_secs()
            })
            .collect();
        assert_eq!(bounds, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        for _ in 0..100 {
            assert!(b.after_failure() <= Duration::from_secs(60));
        }
        let wait = b.after_healthy();
        assert!(wait < Duration::from_secs(30));
        assert_eq!(b.bound(), Duration::from_secs(1), "started over");
    }

    #[test]
    fn after_a_healthy_loss_failures_stay_spread() {
        let spread = Duration::from_secs(30);
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(60), spread, 3);
        // Before any healthy loss: the plain backoff, the first bound 1 s.
        assert!(b.after_failure() < Duration::from_secs(1));
        b.after_healthy();
        // The market is still down (or the new tunnel is lost again before it is healthy):
        // 1,000 such waits fill the spread instead of bunching below 1, 2, 4 s.
        let waits: Vec<Duration> = (0..1000)
            .map(|_| {
                let mut b = b.clone();
                b.rng = fastrand::Rng::with_seed(b.rng.u64(..));
                b.after_failure()
            })
            .collect();
        let below_4s = waits
            .iter()
            .filter(|w| **w < Duration::from_secs(4))
            .count();
        assert!(below_4s < 250, "{below_4s} of 1000 waits below 4 s");
        assert!(waits.iter().all(|w| *w < spread));
        // Bounds above the spread still grow to the maximum.
        for _ in 0..10 {
            b.after_failure();
        }
        assert_eq!(b.bound(), Duration::from_secs(60));
    }

    #[test]
    fn waits_are_spread_not_clustered() {
        // 1,000 agents losing a healthy tunnel at once: their first reconnects fill the spread.
        let spread = Duration::from_secs(30);
        let mut per_second = [0u32; 30];
        for seed in 0..1000 {
            let mut b = Backoff::with_seed(
                Duration::from_secs(1),
                Duration::from_secs(60),
                spread,
                seed,
            );
            per_second[b.after_healthy().as_secs() as usize] += 1;
        }
        let max = *per_second.iter().max().unwrap();
        let min = *per_second.iter().min().unwrap();
        assert!(
            max < 3 * 1000 / 30,
            "peak {max}/s against an average of 33/s"
        );
        assert!(min > 0, "an empty second: {per_second:?}");
    }
}
