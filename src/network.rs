//! Network allow-lists and the client address ([`docs/network.md`]).
//!
//! # What it owns
//! - The three lists of the configuration, parsed once at start:
//!   `allowed_networks` (who may use the REST/WebSocket surface at all),
//!   `admin_allowed_networks` (who may also use the admin surface) and
//!   `trusted_proxies` (whose `X-Forwarded-For` is believed).
//! - [`Network::client_addr`], the one algorithm that turns a TCP peer and
//!   its `X-Forwarded-For` into the client's address; `App::client_ip`
//!   calls it, and rate limits, login lockout, the per-address WebSocket
//!   caps and audit addresses all take that address.
//! - [`surface`], which sorts a request path into the exempt probes, the
//!   admin surface ([`ADMIN_PREFIXES`]), the WebSocket and the rest.
//! - [`guard`], the middleware on the whole router that refuses a client
//!   outside its list with 403 `forbidden` before any handler or WebSocket
//!   upgrade runs, counts the refusal in `courier_network_denied_total`
//!   and audits refusals of the admin surface (`access.network_denied`),
//!   at most [`AUDIT_PER_WINDOW`] entries and one per address per
//!   [`AUDIT_WINDOW`], so a flood of refused requests cannot flood the
//!   chain.
//!
//! # What it takes
//! The configuration's lists (checked by `courier config` / the start's
//! check with [`parse_network`], which names the key of a bad entry), and
//! per request the peer address (`ConnectInfo`) and the headers.
//!
//! # What a failure does
//! Nothing here can fail at run time: a malformed `X-Forwarded-For` hop
//! stops the walk at the last address believed (never an address the
//! client wrote), a header that is not text is ignored likewise, and a
//! refusal is an answer, not an error. The audit of a refusal is written
//! without waiting (`record`): a refused request never waits on the store.
//!
//! [`docs/network.md`]: ../../docs/network.md

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use courier_actors::telemetry::names;
use ipnet::{IpNet, Ipv4Net};
use serde_json::json;

use crate::api::error::ApiError;
use crate::api::extract::Client;
use crate::config::Config;
use crate::http::App;
use crate::rate_limit::ip_key;

/// The admin surface: these path prefixes (the prefix itself, or it
/// followed by `/`). The console and every REST resource whose routes need
/// an administrative permission (users, settings, the audit, legal holds,
/// break-glass review, patients, moderation).
pub const ADMIN_PREFIXES: [&str; 8] = [
    "/admin",
    "/api/users",
    "/api/settings",
    "/api/audit",
    "/api/holds",
    "/api/break-glass",
    "/api/patients",
    "/api/moderation",
];

/// Paths no list applies to: the probes of the orchestrator and the load
/// balancer (exact paths).
pub const EXEMPT_PATHS: [&str; 2] = ["/health", "/ready"];

/// The most `X-Forwarded-For` hops walked: past them the last trusted hop
/// is the client (a chain of more trusted proxies than this is not real).
const MAX_HOPS: usize = 32;

/// How long the audit of admin-surface refusals counts its entries.
pub const AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// The most `access.network_denied` entries written per [`AUDIT_WINDOW`]
/// (and one per address, by [`ip_key`], in it); the others are counted in
/// the next entry's `suppressed`.
pub const AUDIT_PER_WINDOW: usize = 20;

/// A list entry that is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry:?} is not a network: write an address (10.0.0.5, 2001:db8::5) or a CIDR block (10.0.0.0/8, 2001:db8::/32)")]
pub struct NotANetwork {
    /// The entry as written.
    pub entry: String,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Outside `allowed_networks`.
    #[error("this address may not use this server")]
    Outside,
    /// Outside `admin_allowed_networks`, on the admin surface.
    #[error("this address may not use the administration surface")]
    NotAdmin,
}

/// Which part of the server a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/health` and `/ready`: no list applies.
    Exempt,
    /// `GET /ws`: `allowed_networks`.
    Ws,
    /// The admin surface ([`ADMIN_PREFIXES`]): both lists.
    Admin,
    /// Everything else (REST, the chat page, `/metrics`): `allowed_networks`.
    Api,
}

impl Surface {
    /// The `surface` label of `courier_network_denied_total`.
    pub fn label(self) -> &'static str {
        match self {
            Surface::Exempt => "exempt",
            Surface::Ws => "ws",
            Surface::Admin => "admin",
            Surface::Api => "api",
        }
    }
}

/// One entry of a list: an address (a host network) or a CIDR block, IPv4
/// or IPv6. Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`), and an
/// IPv4-mapped IPv6 block is its IPv4 block (clients are compared in their
/// canonical form).
pub fn parse_network(entry: &str) -> Result<IpNet, NotANetwork> {
    let text = entry.trim();
    let refused = || NotANetwork {
        entry: entry.to_owned(),
    };
    let net = if text.contains('/') {
        text.parse::<IpNet>().map_err(|_| refused())?
    } else {
        IpNet::from(text.parse::<IpAddr>().map_err(|_| refused())?)
    };
    Ok(canonical_net(net.trunc()))
}

/// Every entry of a list, or the first that is not a network.
pub fn parse_list(entries: &[String]) -> Result<Vec<IpNet>, NotANetwork> {
    entries.iter().map(|e| parse_network(e)).collect()
}

/// `::ffff:a.b.c.d/n` (n >= 96) as `a.b.c.d/(n-96)`.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.addr().to_ipv4_mapped() {
                if let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(v4);
                }
            }
        }
    }
    net
}

/// The lists, parsed, and the audit's throttle.
pub struct Network {
    allowed: Vec<IpNet>,
    admin: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    /// A std mutex: held for a counter update, never across an `.await`.
    throttle: Mutex<Throttle>,
}

impl Network {
    /// The lists of `config` (already checked at start; a bad entry here is
    /// the same error the check reports).
    pub fn new(config: &Config) -> Result<Arc<Self>, NotANetwork> {
        let network = Self::from_lists(
            parse_list(&config.allowed_networks)?,
            parse_list(&config.admin_allowed_networks)?,
            parse_list(&config.trusted_proxies)?,
        );
        for surface in [Surface::Api, Surface::Admin, Surface::Ws] {
            metrics::counter!(names::NETWORK_DENIED, "surface" => surface.label()).increment(0);
        }
        Ok(Arc::new(network))
    }

    fn from_lists(allowed: Vec<IpNet>, admin: Vec<IpNet>, trusted_proxies: Vec<IpNet>) -> Self {
        Self {
            allowed,
            admin,
            trusted_proxies,
            throttle: Mutex::new(Throttle::new(Instant::now())),
        }
    }

    /// The client's address: the TCP peer's, or, when the peer is one of
    /// `trusted_proxies`, found by walking `X-Forwarded-For` from the right
    /// (the hop the nearest proxy appended) past every trusted proxy to the
    /// first hop that is not one. Several headers are one list, in order.
    /// A hop that is not an address (`unknown`, an empty entry, a header
    /// that is not text) ends the walk at the last address believed: what
    /// lies left of it may be the client's own writing. Addresses are
    /// canonical (`::ffff:10.0.0.1` is `10.0.0.1`).
    pub fn client_addr(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted_proxy(client) {
            return client;
        }
        let mut walked = 0;
        for value in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(value) = value.to_str() else {
                return client;
            };
            for hop in value.rsplit(',') {
                walked += 1;
                if walked > MAX_HOPS {
                    return client;
                }
                let Some(hop) = parse_hop(hop) else {
                    return client;
                };
                client = hop;
                if !self.is_trusted_proxy(hop) {
                    return client;
                }
            }
        }
        client
    }

    /// Whether `addr` is one of `trusted_proxies`.
    pub fn is_trusted_proxy(&self, addr: IpAddr) -> bool {
        contains(&self.trusted_proxies, addr)
    }

    /// Whether `client` may use `surface`: every surface but the exempt
    /// one needs `allowed_networks` (when set), and the admin surface also
    /// `admin_allowed_networks` (when set).
    pub fn admit(&self, client: IpAddr, surface: Surface) -> Result<(), Denied> {
        if surface == Surface::Exempt {
            return Ok(());
        }
        if !self.allowed.is_empty() && !contains(&self.allowed, client) {
            return Err(Denied::Outside);
        }
        if surface == Surface::Admin && !self.admin.is_empty() && !contains(&self.admin, client) {
            return Err(Denied::NotAdmin);
        }
        Ok(())
    }

    /// Whether a refusal of `client` is written to the audit now, and how
    /// many refusals were not written since the last one that was.
    fn audit_now(&self, client: &str, now: Instant) -> Option<u64> {
        self.throttle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(ip_key(client), now)
    }
}

/// Whether any of `nets` holds `addr`.
fn contains(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&addr))
}

/// One `X-Forwarded-For` hop: an address, with or without a port
/// (`10.0.0.1:5000`, `[2001:db8::1]:443`, `[2001:db8::1]`), in canonical form.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let addr = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
        })?;
    Some(addr.to_canonical())
}

/// The surface `path` belongs to. The admin prefixes are matched on the
/// path percent-decoded, lowercased and with repeated slashes collapsed, so
/// no spelling of an admin path slips past as a public one; the exempt
/// paths only as written.
pub fn surface(path: &str) -> Surface {
    if EXEMPT_PATHS.contains(&path) {
        return Surface::Exempt;
    }
    let normalized = normalize(path);
    if normalized == "/ws" {
        return Surface::Ws;
    }
    if admin_prefix(&normalized).is_some() {
        Surface::Admin
    } else {
        Surface::Api
    }
}

/// The admin prefix a normalized path falls under.
fn admin_prefix(normalized: &str) -> Option<&'static str> {
    ADMIN_PREFIXES.iter().copied().find(|prefix| {
        normalized
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// `path` percent-decoded (bytes that do not decode are kept), lowercased,
/// with runs of `/` made one.
fn normalize(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded).to_lowercase();
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if ch == '/' && out.ends_with('/') {
            continue;
        }
        out.push(ch);
    }
    out
}

/// The audit's budget for admin-surface refusals: a fixed window in which
/// at most [`AUDIT_PER_WINDOW`] entries are written, one per address.
struct Throttle {
    window_start: Instant,
    /// The addresses (by [`ip_key`]) written in this window; at most
    /// [`AUDIT_PER_WINDOW`] of them.
    written: HashSet<String>,
    /// Refusals not written since the last entry.
    suppressed: u64,
}

impl Throttle {
    fn new(now: Instant) -> Self {
        Self {
            window_start: now,
            written: HashSet::new(),
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` when this refusal is written (the count of the
    /// ones before it that were not), `None` when it is only counted.
    fn admit(&mut self, key: String, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) >= AUDIT_WINDOW {
            self.window_start = now;
            self.written.clear();
        }
        if self.written.len() >= AUDIT_PER_WINDOW || self.written.contains(&key) {
            self.suppressed += 1;
            return None;
        }
        self.written.insert(key);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The middleware on the whole router: finds the client's address once
/// (leaving the [`Client`] in the request for the handlers, rate limits and
/// audit), and refuses a client outside its surface's list with 403
/// `forbidden`. Refusals are counted per surface; refusals of the admin
/// surface are audited (`access.network_denied`, throttled). Public-surface
/// refusals are not audited: anyone on the internet can make them, and the
/// counter and a debug log say enough.
pub async fn guard(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let addr = app.client_addr(req.headers(), peer);
    let client = Client::at(addr, req.headers());
    let surface = surface(req.uri().path());
    if let Err(denied) = app.network.admit(addr, surface) {
        metrics::counter!(names::NETWORK_DENIED, "surface" => surface.label()).increment(1);
        tracing::debug!(client = %addr, surface = surface.label(), %denied, "network refused");
        if surface == Surface::Admin {
            if let Some(suppressed) = app.network.audit_now(&client.ip, Instant::now()) {
                let prefix = admin_prefix(&normalize(req.uri().path())).unwrap_or("/admin");
                app.realtime.audit.record(client.event(
                    None,
                    "access.network_denied",
                    json!({
                        "surface": surface.label(),
                        "method": req.method().as_str(),
                        "prefix": prefix,
                        "list": match denied {
                            Denied::Outside => "allowed_networks",
                            Denied::NotAdmin => "admin_allowed_networks",
                        },
                        "suppressed": suppressed,
                    }),
                ));
            }
        }
        return ApiError::from(denied).into_response();
    }
    req.extensions_mut().insert(client);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|e| parse_network(e).expect("network"))
            .collect()
    }

    fn network(allowed: &[&str], admin: &[&str], trusted: &[&str]) -> Network {
        Network::from_lists(nets(allowed), nets(admin), nets(trusted))
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn entries_parse_as_addresses_or_blocks() {
        assert_eq!(
            parse_network("10.0.0.5").unwrap().to_string(),
            "10.0.0.5/32"
        );
        assert_eq!(
            parse_network(" 10.1.2.3/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_network("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_network("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_network("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "example.com",
            "::1/129",
            "10.0.0.0/",
            "fe80::1%eth0",
        ] {
            assert_eq!(
                parse_network(bad),
                Err(NotANetwork {
                    entry: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let n = network(&[], &[], &["10.0.0.1"]);
        let headers = xff(&["198.51.100.7"]);
        assert_eq!(
            n.client_addr(ip("203.0.113.9"), &headers),
            ip("203.0.113.9")
        );
        let none = network(&[], &[], &[]);
        assert_eq!(none.client_addr(ip("127.0.0.1"), &headers), ip("127.0.0.1"));
    }

    #[test]
    fn the_walk_skips_trusted_proxies_from_the_right() {
        let n = network(&[], &[], &["10.0.0.0/8", "127.0.0.1"]);
        // The client wrote a hop of its own on the left: not believed.
        let headers = xff(&["1.2.3.4, 198.51.100.7, 10.0.0.2"]);
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("198.51.100.7"));
        // Several headers are one list, in order.
        let headers = xff(&["1.2.3.4", "198.51.100.7", "10.0.0.2"]);
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("198.51.100.7"));
        // Ports and brackets are accepted, and mapped addresses canonical.
        let headers = xff(&["[2001:db8::7]:443, 10.0.0.3:5000"]);
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("2001:db8::7"));
        let headers = xff(&["::ffff:198.51.100.8"]);
        assert_eq!(
            n.client_addr(ip("::ffff:127.0.0.1"), &headers),
            ip("198.51.100.8")
        );
        // No header: the proxy itself.
        assert_eq!(
            n.client_addr(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Every hop a trusted proxy: the leftmost.
        let headers = xff(&["10.0.0.9, 10.0.0.2"]);
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("10.0.0.9"));
    }

    #[test]
    fn a_malformed_hop_ends_the_walk_at_the_last_address_believed() {
        let n = network(&[], &[], &["10.0.0.0/8", "127.0.0.1"]);
        for chain in [
            "198.51.100.7, unknown, 10.0.0.2",
            "198.51.100.7,,10.0.0.2",
            "198.51.100.7, 10.0.0.2 10.0.0.3, 10.0.0.2",
            "198.51.100.7, _hidden, 10.0.0.2",
        ] {
            let headers = xff(&[chain]);
            assert_eq!(
                n.client_addr(ip("127.0.0.1"), &headers),
                ip("10.0.0.2"),
                "{chain}"
            );
        }
        // The nearest proxy's own hop is garbage: the proxy is the client.
        let headers = xff(&["198.51.100.7, garbage"]);
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("127.0.0.1"));
        // A header that is not text.
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"198.51.100.7\xff").expect("opaque"),
        );
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("127.0.0.1"));
        // A chain longer than any real one stops after MAX_HOPS trusted hops.
        let long = vec!["10.0.0.9"; MAX_HOPS + 5].join(",");
        let headers = xff(&[&format!("198.51.100.7,{long}")]);
        assert_eq!(n.client_addr(ip("127.0.0.1"), &headers), ip("10.0.0.9"));
    }

    #[test]
    fn surfaces_by_prefix() {
        for admin in [
            "/admin",
            "/admin/",
            "/admin/session",
            "/api/users",
            "/api/users/123/sessions",
            "/api/settings/rate-limits",
            "/api/audit/verify",
            "/api/holds",
            "/api/break-glass/1/review",
            "/api/patients/x/disclosures",
            "/api/moderation/flags",
            "/API/Users",
            "/api//users",
            "//admin",
            "/api/%75sers",
            "/api/%55SERS/1",
        ] {
            assert_eq!(surface(admin), Surface::Admin, "{admin}");
        }
        for api in [
            "/",
            "/chat",
            "/metrics",
            "/api/channels",
            "/api/channels/1/break-glass",
            "/api/auth/login",
            "/api/usersx",
            "/administrator",
            "/health/x",
            "/%",
            "/%4",
        ] {
            assert_eq!(surface(api), Surface::Api, "{api}");
        }
        assert_eq!(surface("/ws"), Surface::Ws);
        assert_eq!(surface("/health"), Surface::Exempt);
        assert_eq!(surface("/ready"), Surface::Exempt);
    }

    #[test]
    fn lists_admit_by_surface() {
        let n = network(&["127.0.0.0/8", "2001:db8::/32"], &["127.0.0.1"], &[]);
        assert_eq!(n.admit(ip("127.0.0.2"), Surface::Api), Ok(()));
        assert_eq!(n.admit(ip("2001:db8::9"), Surface::Ws), Ok(()));
        assert_eq!(
            n.admit(ip("127.0.0.2"), Surface::Admin),
            Err(Denied::NotAdmin)
        );
        assert_eq!(n.admit(ip("127.0.0.1"), Surface::Admin), Ok(()));
        assert_eq!(n.admit(ip("192.0.2.1"), Surface::Api), Err(Denied::Outside));
        assert_eq!(
            n.admit(ip("192.0.2.1"), Surface::Admin),
            Err(Denied::Outside)
        );
        assert_eq!(n.admit(ip("192.0.2.1"), Surface::Exempt), Ok(()));
        let open = network(&[], &[], &[]);
        assert_eq!(open.admit(ip("192.0.2.1"), Surface::Admin), Ok(()));
        // Only the admin list: the rest stays open.
        let admin_only = network(&[], &["10.0.0.0/8"], &[]);
        assert_eq!(admin_only.admit(ip("192.0.2.1"), Surface::Api), Ok(()));
        assert_eq!(
            admin_only.admit(ip("192.0.2.1"), Surface::Admin),
            Err(Denied::NotAdmin)
        );
    }

    #[test]
    fn the_audit_throttle_writes_one_per_address_and_a_budget_per_window() {
        let start = Instant::now();
        let mut t = Throttle::new(start);
        assert_eq!(t.admit("192.0.2.1".into(), start), Some(0));
        assert_eq!(t.admit("192.0.2.1".into(), start), None);
        assert_eq!(t.admit("192.0.2.1".into(), start), None);
        assert_eq!(t.admit("192.0.2.2".into(), start), Some(2));
        for i in 3..(AUDIT_PER_WINDOW as u32 + 1) {
            assert_eq!(t.admit(format!("192.0.2.{i}"), start), Some(0), "{i}");
        }
        // The budget is spent: a new address is counted only.
        assert_eq!(t.admit("198.51.100.1".into(), start), None);
        // The next window writes again, with what was left out.
        let later = start + AUDIT_WINDOW;
        assert_eq!(t.admit("192.0.2.1".into(), later), Some(1));
    }
}
