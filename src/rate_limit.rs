//! Keyed request rate limits (governor), for the HTTP edge.
//!
//! A [`KeyedLimit`] allows `n` requests per window for each key, with a
//! burst of `n` (GCRA: a full bucket refills one request every
//! `window / n`). Its state lives inside the limiter object; whoever holds
//! the limiter (the REST router's middleware) owns it, so two servers in one
//! process never share counts. Refusals are counted in
//! `courier_rate_limited_total{limit}`.
//!
//! Keys of clients that went quiet are dropped now and then, so that a
//! stream of new keys (addresses) cannot grow the map without bound.
//!
//! An admin may change a limit at run time ([`KeyedLimit::set`]): the
//! limiter is replaced whole, so every key starts the new limit with a full
//! bucket.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use courier_actors::telemetry::names;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Forget idle keys after this many checks.
const RETAIN_EVERY: u64 = 4096;

/// `n` requests per window per key; `n = 0` switches the limit off.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    /// The metric label of refusals (`rest`, `auth`, ...).
    label: &'static str,
    window: Duration,
    /// `None` while the limit is off.
    limiter: ArcSwapOption<DefaultKeyedRateLimiter<K>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// `per_window` requests per `window` for each key, refusals counted
    /// under `label`.
    pub fn new(label: &'static str, per_window: u32, window: Duration) -> Self {
        Self {
            label,
            window,
            limiter: ArcSwapOption::new(limiter(per_window, window)),
            checks: AtomicU64::new(0),
        }
    }

    /// Replaces the limit with `per_window` requests per window (0: off).
    pub fn set(&self, per_window: u32) {
        self.limiter.store(limiter(per_window, self.window));
    }

    /// Counts one request of `key`; `Err` carries how long to wait before
    /// the next one is allowed.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let guard = self.limiter.load();
        let Some(limiter) = guard.as_deref() else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(key).map_err(|not_until| {
            metrics::counter!(names::RATE_LIMITED, "limit" => self.label).increment(1);
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }
}

/// A limiter of `per_window` requests per `window` with a burst of as many;
/// `None` for 0.
fn limiter<K: Hash + Eq + Clone>(
    per_window: u32,
    window: Duration,
) -> Option<Arc<DefaultKeyedRateLimiter<K>>> {
    NonZeroU32::new(per_window).map(|n| {
        let period = (window / n.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(n))
            .allow_burst(n);
        Arc::new(RateLimiter::keyed(quota))
    })
}

/// The key of a client address for per-IP limits: an IPv6 client is keyed
/// by its /64 (one subscriber usually holds a whole /64), anything else as
/// given.
pub fn ip_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map_or_else(|| ip.to_owned(), |v4| v4.to_string()),
        _ => ip.to_owned(),
    }
}

/// Whole seconds to put in `Retry-After` (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_refuses_with_a_wait() {
        let limit = KeyedLimit::new("test", 3, Duration::from_secs(900));
        for _ in 0..3 {
            assert!(limit.check(&"a").is_ok());
        }
        let wait = limit.check(&"a").expect_err("over the limit");
        assert!(
            wait > Duration::from_secs(200) && wait <= Duration::from_secs(300),
            "{wait:?}"
        );
        assert!(limit.check(&"b").is_ok(), "keys are independent");
    }

    #[test]
    fn a_new_limit_applies_at_once() {
        let limit = KeyedLimit::new("test", 100, Duration::from_secs(900));
        limit.set(2);
        assert!(limit.check(&"a").is_ok());
        assert!(limit.check(&"a").is_ok());
        assert!(limit.check(&"a").is_err(), "the new limit of 2 holds");
        limit.set(0);
        assert!(limit.check(&"a").is_ok(), "0 switches it off");
    }

    #[test]
    fn zero_switches_the_limit_off() {
        let limit = KeyedLimit::new("test", 0, Duration::from_secs(1));
        for _ in 0..1000 {
            assert!(limit.check(&1).is_ok());
        }
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        assert_eq!(
            ip_key("2001:db8:1:2:3:4:5:6"),
            ip_key("2001:db8:1:2:ffff::1")
        );
        assert_ne!(ip_key("2001:db8:1:2::1"), ip_key("2001:db8:1:3::1"));
        assert_eq!(ip_key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(ip_key("127.0.0.1"), "127.0.0.1");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(9)), 9);
        assert_eq!(retry_after_secs(Duration::from_millis(9001)), 10);
    }
}
