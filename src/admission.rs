//! Per-address caps on WebSocket connections.
//!
//! One client address may hold at most `max_unauthenticated_per_ip`
//! WebSockets that have not authenticated yet, and at most
//! `max_connections_per_ip` in all. [`Admission::admit`] is asked before
//! the upgrade (`/ws` answers 429 when it refuses); the [`Slot`] it hands
//! out travels with the connection actor, which tells it when the
//! connection authenticates (freeing its unauthenticated place), and gives
//! the connection's place back when the actor ends and drops it.
//!
//! The address is [`App::client_ip`](crate::http::App::client_ip)'s: the
//! socket's, or the first `X-Forwarded-For` hop behind a trusted proxy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use courier_actors::realtime::connection::AdmissionSlot;
use courier_actors::telemetry::names;

/// Which cap refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many unauthenticated connections from this address")]
    Unauthenticated,
    #[error("too many connections from this address")]
    Total,
}

impl Refused {
    /// The `limit` label of `courier_connections_refused_total`.
    fn label(self) -> &'static str {
        match self {
            Refused::Unauthenticated => "unauthenticated_per_ip",
            Refused::Total => "connections_per_ip",
        }
    }
}

/// The connections of one address.
#[derive(Default)]
struct Counts {
    unauthenticated: usize,
    total: usize,
}

/// The caps and the live counts of every address with a connection.
pub struct Admission {
    max_unauthenticated: usize,
    max_total: usize,
    /// A std mutex: held for a map update, never across an `.await`.
    counts: Mutex<HashMap<String, Counts>>,
}

impl Admission {
    /// Caps of `max_unauthenticated` and `max_total` connections per address.
    pub fn new(max_unauthenticated: usize, max_total: usize) -> Arc<Self> {
        Arc::new(Self {
            max_unauthenticated,
            max_total,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a new, unauthenticated connection from `ip`, or the cap
    /// it would break (counted in `courier_connections_refused_total`).
    pub fn admit(self: &Arc<Self>, ip: &str) -> Result<Slot, Refused> {
        let mut counts = self.lock();
        let entry = counts.entry(ip.to_owned()).or_default();
        let refused = if entry.unauthenticated >= self.max_unauthenticated {
            Some(Refused::Unauthenticated)
        } else if entry.total >= self.max_total {
            Some(Refused::Total)
        } else {
            None
        };
        if let Some(refused) = refused {
            if entry.total == 0 {
                counts.remove(ip);
            }
            metrics::counter!(names::CONNECTIONS_REFUSED, "limit" => refused.label()).increment(1);
            return Err(refused);
        }
        entry.unauthenticated += 1;
        entry.total += 1;
        Ok(Slot {
            admission: self.clone(),
            ip: ip.to_owned(),
            unauthenticated: AtomicBool::new(true),
        })
    }

    /// The connections of `ip` now: (unauthenticated, total).
    pub fn counts(&self, ip: &str) -> (usize, usize) {
        self.lock()
            .get(ip)
            .map_or((0, 0), |c| (c.unauthenticated, c.total))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Counts>> {
        // The map stays consistent even if a holder panicked: every update
        // is a single increment or decrement.
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, ip: &str, unauthenticated: bool, total: bool) {
        let mut counts = self.lock();
        let Some(entry) = counts.get_mut(ip) else {
            return;
        };
        if unauthenticated {
            entry.unauthenticated = entry.unauthenticated.saturating_sub(1);
        }
        if total {
            entry.total = entry.total.saturating_sub(1);
        }
        if entry.total == 0 {
            counts.remove(ip);
        }
    }
}

/// One connection's place among its address's; gives it back when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    ip: String,
    /// Still counted as unauthenticated.
    unauthenticated: AtomicBool,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("ip", &self.ip)
            .field("unauthenticated", &self.unauthenticated)
            .finish()
    }
}

impl AdmissionSlot for Slot {
    fn authenticated(&self) {
        if self.unauthenticated.swap(false, Ordering::SeqCst) {
            self.admission.release(&self.ip, true, false);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let unauthenticated = self.unauthenticated.swap(false, Ordering::SeqCst);
        self.admission.release(&self.ip, unauthenticated, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_and_releases() {
        let admission = Admission::new(2, 3);
        let a = admission.admit("10.0.0.1").expect("first");
        let b = admission.admit("10.0.0.1").expect("second");
        assert_eq!(
            admission.admit("10.0.0.1").err(),
            Some(Refused::Unauthenticated)
        );
        assert!(admission.admit("10.0.0.2").is_ok(), "another address");
        a.authenticated();
        a.authenticated();
        assert_eq!(admission.counts("10.0.0.1"), (1, 2));
        let c = admission.admit("10.0.0.1").expect("a freed place");
        b.authenticated();
        c.authenticated();
        assert_eq!(admission.admit("10.0.0.1").err(), Some(Refused::Total));
        drop(b);
        assert_eq!(admission.counts("10.0.0.1"), (0, 2));
        drop((a, c));
        assert_eq!(admission.counts("10.0.0.1"), (0, 0));
        assert!(admission.lock().is_empty(), "no entry is left behind");
    }
}
