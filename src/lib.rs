//! # courier
//!
//! The Courier server: configuration, the HTTP and WebSocket edge, the REST
//! API, authentication, and the CLI's commands. The realtime engine (actors,
//! store, crypto) is the `courier-actors` crate; the wire types are
//! `courier-protocol`.
//!
//! # Layout
//! - [`config`]: layered configuration (defaults < TOML < `COURIER_*` < flags).
//! - [`secrets`]: the JWT secret and the master keyring (generated in development).
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`server`]: `run(listener, config, shutdown)`.
//! - [`accept`]: the accept loop (HTTP/1 with header and body deadlines).
//! - [`admission`]: per-address caps on WebSocket connections.
//! - [`http`]: the router, health, readiness, metrics.
//! - [`ws`]: the WebSocket upgrade.
//! - [`network`]: the network allow-lists, trusted proxies and the client address.
//! - [`api`]: REST handlers.
//! - [`audit_webhook`]: signed audit checkpoints POSTed off the machine.
//! - [`auth`]: passwords, tokens, session checks.
//! - [`rate_limit`]: keyed request rate limits of the HTTP edge.
//! - [`tls`]: native TLS (rustls) for `https://` and `wss://`.
//! - [`web`]: the chat page at `/` and `/chat`, its assets embedded.
//! - [`admin`]: the admin console at `/admin` and its cookie sessions.
//! - [`runtime_settings`]: the rate limits an admin changes at run time.
//! - [`export`]: `courier export` and `export verify`: the signed compliance export.
//! - [`backup`]: `courier backup` and `courier restore`: one archive of the
//!   database and the data directory.
//! - [`commands`]: `migrate`, `user create`, `audit verify`, `audit
//!   public-key`, `keys rotate`.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod accept;
pub mod admin;
pub mod admission;
pub mod api;
pub mod audit_webhook;
pub mod auth;
pub mod backup;
pub mod commands;
pub mod config;
pub mod disclosures_report;
pub mod export;
pub mod http;
pub mod network;
pub mod rate_limit;
pub mod retention_report;
pub mod runtime_settings;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod web;
pub mod ws;

pub use server::run;
