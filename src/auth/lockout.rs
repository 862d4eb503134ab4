//! Login lockout that an attacker cannot turn against an account's owner.
//!
//! Failed logins (and wrong current passwords on a password change) are
//! counted twice by the [`LoginGuard`]:
//!
//! - **per account and client address** (IPv6 by /64, see
//!   [`ip_key`](crate::rate_limit::ip_key)): `lockout_threshold` failures,
//!   each within `lockout_minutes` of the one before, lock *that address*
//!   out of *that account* for `lockout_minutes`. Other addresses are not
//!   touched, so five wrong passwords from five addresses lock out those
//!   five addresses, never the owner elsewhere.
//! - **per account, across addresses**: `lockout_account_threshold`
//!   failures, each within `lockout_minutes` of the one before, put the
//!   account under *back-off* until `lockout_minutes` pass without a
//!   failure. Under back-off, an address the account has never logged in
//!   from (and that presents no live session of the account) gets one
//!   attempt per `lockout_backoff_secs` for the whole account; the others
//!   answer 429 with `Retry-After`. Addresses the account has logged in
//!   from before, and callers presenting a live session of it, are not
//!   slowed. Nothing ever locks every address.
//!
//! Unknown usernames are counted like accounts (by their lowercase name),
//! so neither the answers nor the back-off tell which accounts exist.
//!
//! The counts live in this process, owned by the guard the app holds: a
//! restart forgets them, and several brokers behind one balancer count
//! separately. Entries idle for `lockout_minutes` are dropped now and then,
//! so that a stream of new addresses or names cannot grow the maps without
//! bound. Every method takes `now` (ms since the epoch), so the rules are
//! tested without waiting.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::Config;

/// Drop idle entries after this many recorded failures.
const PRUNE_EVERY: u64 = 1024;

/// What a login attempt may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Open,
    /// This address is locked out of this account until then (ms).
    AddressLocked { until: i64 },
    /// The account is under back-off: go ahead from an address it knows,
    /// else only with [`LoginGuard::take_backoff_slot`].
    Backoff,
}

/// What a failure changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Failures from this address in a row (within the window).
    pub address_failures: u32,
    /// Set when this failure locked the address: until then (ms).
    pub locked_until: Option<i64>,
    /// Failures of the account from every address (within the window).
    pub account_failures: u32,
    /// Whether this failure put the account under back-off.
    pub backoff_began: bool,
}

/// The two failure counts and the back-off slots (see the module docs).
pub struct LoginGuard {
    threshold: u32,
    lock_ms: i64,
    account_threshold: u32,
    backoff_ms: i64,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    /// (account, address) → failures from that address.
    addresses: HashMap<(String, String), AddressCount>,
    /// account → failures from every address.
    accounts: HashMap<String, AccountCount>,
    recorded: u64,
}

#[derive(Clone, Copy, Default)]
struct AddressCount {
    failures: u32,
    last_failure: i64,
    locked_until: Option<i64>,
}

#[derive(Clone, Copy, Default)]
struct AccountCount {
    failures: u32,
    last_failure: i64,
    /// When the next back-off attempt from an unknown address may run (ms).
    next_slot: i64,
}

impl LoginGuard {
    /// The guard `lockout_*` asks for; a threshold of 0 switches its rule off.
    pub fn new(config: &Config) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            threshold: config.lockout_threshold,
            lock_ms: ms(Duration::from_secs(
                config.lockout_minutes.saturating_mul(60),
            )),
            account_threshold: config.lockout_account_threshold,
            backoff_ms: ms(Duration::from_secs(config.lockout_backoff_secs)),
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic elsewhere while holding the lock leaves plain counters
        // behind; they are still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an attempt on `account` from `address` may run now.
    pub fn admit(&self, account: &str, address: &str, now: i64) -> Admission {
        let counts = self.counts();
        let key = (account.to_owned(), address.to_owned());
        if let Some(until) = counts
            .addresses
            .get(&key)
            .and_then(|a| a.locked_until)
            .filter(|until| *until > now)
        {
            return Admission::AddressLocked { until };
        }
        match counts.accounts.get(account) {
            Some(a) if self.under_backoff(a, now) => Admission::Backoff,
            _ => Admission::Open,
        }
    }

    fn under_backoff(&self, a: &AccountCount, now: i64) -> bool {
        self.account_threshold > 0
            && a.failures >= self.account_threshold
            && now.saturating_sub(a.last_failure) < self.lock_ms
    }

    /// Claims the account's one back-off attempt of the current interval
    /// for an unknown address; `Err` says how long until the next one.
    pub fn take_backoff_slot(&self, account: &str, now: i64) -> Result<(), Duration> {
        let mut counts = self.counts();
        let Some(a) = counts.accounts.get_mut(account) else {
            return Ok(());
        };
        if now >= a.next_slot {
            a.next_slot = now.saturating_add(self.backoff_ms);
            Ok(())
        } else {
            let wait = u64::try_from(a.next_slot - now).unwrap_or(0);
            Err(Duration::from_millis(wait))
        }
    }

    /// Counts a failure of `account` from `address`.
    pub fn failed(&self, account: &str, address: &str, now: i64) -> Failure {
        let mut counts = self.counts();
        counts.recorded += 1;
        if counts.recorded % PRUNE_EVERY == 0 {
            self.prune(&mut counts, now);
        }
        let lock_ms = self.lock_ms;
        let fresh = |last: i64| now.saturating_sub(last) < lock_ms;

        let entry = counts
            .addresses
            .entry((account.to_owned(), address.to_owned()))
            .or_default();
        let lock_ran_out = entry.locked_until.is_some_and(|t| t <= now);
        if lock_ran_out || !fresh(entry.last_failure) {
            *entry = AddressCount::default();
        }
        entry.failures += 1;
        entry.last_failure = now;
        let mut locked_until = None;
        if self.threshold > 0 && entry.failures >= self.threshold && entry.locked_until.is_none() {
            let until = now.saturating_add(lock_ms);
            entry.locked_until = Some(until);
            locked_until = Some(until);
        }
        let address_failures = entry.failures;

        let account_entry = counts.accounts.entry(account.to_owned()).or_default();
        if !fresh(account_entry.last_failure) {
            *account_entry = AccountCount::default();
        }
        account_entry.failures += 1;
        account_entry.last_failure = now;
        let backoff_began =
            self.account_threshold > 0 && account_entry.failures == self.account_threshold;
        Failure {
            address_failures,
            locked_until,
            account_failures: account_entry.failures,
            backoff_began,
        }
    }

    /// A success of `account` from `address`: that address's count starts
    /// again. The account's count does not (an attack from elsewhere may
    /// still be under way).
    pub fn succeeded(&self, account: &str, address: &str) {
        self.counts()
            .addresses
            .remove(&(account.to_owned(), address.to_owned()));
    }

    /// An admin unlocked `account`: every count of it goes, the address
    /// lockouts and the back-off alike.
    pub fn forget_account(&self, account: &str) {
        let mut counts = self.counts();
        counts.addresses.retain(|(a, _), _| a != account);
        counts.accounts.remove(account);
    }

    fn prune(&self, counts: &mut Counts, now: i64) {
        let idle = |last: i64| now.saturating_sub(last) >= self.lock_ms;
        counts
            .addresses
            .retain(|_, a| !idle(a.last_failure) || a.locked_until.is_some_and(|t| t > now));
        counts
            .accounts
            .retain(|_, a| !idle(a.last_failure) || a.next_slot > now);
    }

    /// Entries held (addresses, accounts), for tests of the pruning.
    pub fn entries(&self) -> (usize, usize) {
        let counts = self.counts();
        (counts.addresses.len(), counts.accounts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn guard() -> LoginGuard {
        LoginGuard::new(&Config {
            lockout_threshold: 3,
            lockout_minutes: 15,
            lockout_account_threshold: 6,
            lockout_backoff_secs: 30,
            ..Config::default()
        })
    }

    #[test]
    fn an_address_locks_only_itself_and_its_lock_runs_out() {
        let g = guard();
        assert_eq!(g.failed("acct", "10.0.0.1", 0).locked_until, None);
        g.failed("acct", "10.0.0.1", 1);
        let third = g.failed("acct", "10.0.0.1", 2);
        assert_eq!(third.locked_until, Some(2 + 15 * MIN));
        assert_eq!(
            g.admit("acct", "10.0.0.1", 3),
            Admission::AddressLocked {
                until: 2 + 15 * MIN
            }
        );
        assert_eq!(g.admit("acct", "10.0.0.2", 3), Admission::Open);
        assert_eq!(g.admit("other", "10.0.0.1", 3), Admission::Open);
        // Once the lock runs out the count starts again: one failure does
        // not lock anew.
        let later = 2 + 15 * MIN;
        assert_eq!(g.admit("acct", "10.0.0.1", later), Admission::Open);
        let again = g.failed("acct", "10.0.0.1", later);
        assert_eq!((again.address_failures, again.locked_until), (1, None));
    }

    #[test]
    fn failures_far_apart_do_not_add_up_and_success_clears_the_address() {
        let g = guard();
        g.failed("acct", "a", 0);
        g.failed("acct", "a", 1);
        assert_eq!(g.failed("acct", "a", 16 * MIN).address_failures, 1);
        g.failed("acct", "a", 16 * MIN + 1);
        g.succeeded("acct", "a");
        assert_eq!(g.failed("acct", "a", 16 * MIN + 2).address_failures, 1);
    }

    #[test]
    fn many_addresses_bring_back_off_one_attempt_per_interval() {
        let g = guard();
        let mut began = 0;
        for i in 0..6 {
            if g.failed("acct", &format!("10.0.0.{i}"), i).backoff_began {
                began += 1;
            }
        }
        assert_eq!(began, 1, "back-off begins once");
        assert_eq!(g.admit("acct", "10.0.0.9", 10), Admission::Backoff);
        assert_eq!(g.take_backoff_slot("acct", 10), Ok(()));
        let wait = g
            .take_backoff_slot("acct", 11)
            .expect_err("one per interval");
        assert_eq!(wait, Duration::from_millis(29_999));
        assert_eq!(g.take_backoff_slot("acct", 10 + 30_000), Ok(()));
        // Other accounts are not slowed, and the back-off ends once the
        // failures stop for the window.
        assert_eq!(g.admit("other", "10.0.0.9", 10), Admission::Open);
        assert_eq!(g.admit("acct", "10.0.0.9", 5 + 15 * MIN), Admission::Open);
    }

    #[test]
    fn zero_thresholds_switch_the_rules_off() {
        let g = LoginGuard::new(&Config {
            lockout_threshold: 0,
            lockout_account_threshold: 0,
            ..Config::default()
        });
        for i in 0..100 {
            let f = g.failed("acct", "a", i);
            assert!(f.locked_until.is_none() && !f.backoff_began);
        }
        assert_eq!(g.admit("acct", "a", 100), Admission::Open);
    }

    #[test]
    fn idle_entries_are_dropped() {
        let g = guard();
        for i in 0..PRUNE_EVERY - 1 {
            g.failed(&format!("name{i}"), "a", 0);
        }
        assert_eq!(g.entries().0, (PRUNE_EVERY - 1) as usize);
        g.failed("late", "a", 20 * MIN);
        assert_eq!(g.entries(), (1, 1), "only the new entry is left");
    }
}
