//! Reconnect delays: exponential backoff with full jitter, capped.
//!
//! Attempt `n` (1 for the first reconnect) waits a uniformly random delay in
//! `0 ..= min(cap, initial · 2^(n-1))`. The randomness spreads a crowd of
//! clients that lost the same server over the whole window, so a restarted
//! server is not hit by all of them at once; the cap bounds how long one
//! client waits once the server is back.

use std::time::Duration;

/// Exponential backoff with full jitter; see the [module](self) docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
}

impl Backoff {
    /// 250 ms for the first attempt, doubling, capped at 30 s.
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_millis(250),
        cap: Duration::from_secs(30),
    };

    /// A backoff starting at `initial` and capped at `cap` (raised to
    /// `initial` when smaller; `initial` is at least 1 ms).
    pub fn new(initial: Duration, cap: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            cap: cap.max(initial),
        }
    }

    /// The largest delay attempt `attempt` may wait:
    /// `min(cap, initial · 2^(attempt-1))` (attempt 0 counts as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// A random delay for attempt `attempt`, uniform in
    /// `0 ..= ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ceiling))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_from_the_initial_delay_up_to_the_cap() {
        let b = Backoff::DEFAULT;
        let ms = |n| b.ceiling(n).as_millis();
        assert_eq!(
            (1..=9).map(ms).collect::<Vec<_>>(),
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        assert_eq!(ms(0), 250, "attempt 0 is the first attempt");
        assert_eq!(ms(u32::MAX), 30_000, "no overflow however many attempts");
    }

    #[test]
    fn every_delay_lies_between_zero_and_its_ceiling() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(d <= b.ceiling(attempt), "attempt {attempt}: {d:?}");
                assert!(d <= Duration::from_secs(2), "over the cap: {d:?}");
            }
        }
    }

    #[test]
    fn delays_are_spread_over_the_whole_window() {
        // Full jitter: not clustered near the ceiling (equal jitter) nor
        // constant. 2,000 draws over 0..=30000 ms: each fifth of the window
        // gets some, and the mean is near the middle.
        let b = Backoff::DEFAULT;
        let draws: Vec<u64> = (0..2000).map(|_| b.delay(20).as_millis() as u64).collect();
        let mut fifths = [0u32; 5];
        for d in &draws {
            fifths[((*d * 5) / 30_001) as usize] += 1;
        }
        assert!(fifths.iter().all(|&n| n > 250), "uneven spread: {fifths:?}");
        let mean = draws.iter().sum::<u64>() / draws.len() as u64;
        assert!((12_000..18_000).contains(&mean), "mean {mean} ms");
    }

    #[test]
    fn a_cap_below_the_initial_delay_is_raised_to_it() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_millis(10));
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(10), Duration::from_secs(1));
        let zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.ceiling(5), Duration::from_millis(1));
    }
}
