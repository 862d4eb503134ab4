//! Configuration, layered: built-in defaults < TOML file (`--config`, else
//! `config/default.toml` when present) < environment `COURIER_*` < flags.
//!
//! Keys are flat so that each maps to one environment variable: the key
//! `max_frame_bytes` is `COURIER_MAX_FRAME_BYTES`. `config/default.toml`
//! documents every key with its default.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use serde::{Deserialize, Deserializer, Serialize};

/// Development (generated secrets allowed) or production (secrets required).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Missing secrets are generated into the data directory.
    Development,
    /// Missing secrets stop the server at start.
    Production,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A secret string. Its `Debug` and its serialization never show the
/// value (a set secret serializes as `"[redacted]"`), so it cannot leak
/// through logs, error messages or the admin console's settings page by
/// accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a set secret serializes as.
pub const REDACTED: &str = "[redacted]";

/// How long production keeps clinical text unless `retention_text_days`
/// says otherwise: 7 years.
pub const PRODUCTION_TEXT_RETENTION_DAYS: u64 = 2557;

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The whole configuration. Field docs live in `config/default.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// The store's connections (docs/operations.md); `None`: the backend's
    /// default (16 on PostgreSQL, 5 on SQLite).
    pub db_max_connections: Option<u32>,
    pub db_min_connections: u32,
    /// `None`: the backend's default (3 s on PostgreSQL, 5 s on SQLite).
    pub db_acquire_timeout_secs: Option<u64>,
    /// 0: an idle connection is never closed.
    pub db_idle_timeout_secs: u64,
    pub env: Environment,
    pub log_format: LogFormat,
    /// The log filter (`info`, `debug`, `courier=debug,info`, ...) used when
    /// `RUST_LOG` is unset; see `telemetry::log_filter`.
    pub log_level: String,

    pub jwt_secret: Option<Secret>,
    /// `HS256` (with `jwt_secret`), `RS256` or `EdDSA` (with the key files).
    pub jwt_algorithm: String,
    pub jwt_private_key_file: Option<PathBuf>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    pub master_keys: Option<Secret>,
    pub keyring_file: Option<PathBuf>,
    pub initial_admin_username: Option<String>,
    pub initial_admin_password: Option<Secret>,
    /// `None`: on in development, off in production.
    pub allow_registration: Option<bool>,

    pub max_frame_bytes: usize,
    pub max_text_bytes: usize,
    pub send_per_minute: u32,
    pub auth_timeout_ms: u64,
    pub http_header_timeout_ms: u64,
    pub http_body_timeout_ms: u64,
    pub max_unauthenticated_per_ip: usize,
    pub max_connections_per_ip: usize,
    pub rest_per_15min: u32,
    pub auth_per_15min: u32,
    pub register_per_hour: u32,
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
    #[serde(deserialize_with = "string_or_list")]
    pub cors_origins: Vec<String>,

    pub outbound_queue_frames: usize,
    pub outbound_queue_bytes: usize,
    pub heartbeat_ms: u64,
    pub idle_timeout_ms: u64,
    pub recovery_limit: u32,
    pub recovery_max_replay: u64,
    /// The admin console: a session unused this long ends (minutes).
    pub admin_idle_minutes: u64,
    /// The admin console: a session ends this long after sign-in, used or
    /// not (hours).
    pub admin_session_hours: u64,
    pub typing_expiry_ms: u64,
    pub fanout_coalesce_us: u64,

    pub persist_batch_max: Option<usize>,
    pub persist_batch_delay_us: u64,
    pub persist_commits_in_flight: usize,
    pub persist_queue_capacity: usize,

    pub audit_checkpoint_every: u64,
    pub audit_checkpoint_interval_secs: u64,
    pub audit_batch_delay_us: u64,
    pub audit_append_timeout_ms: u64,
    /// How often a channel writes the pushes a long-lived connection was
    /// sent to the audit (`message.delivered`), besides on leave.
    pub audit_delivery_flush_secs: u64,
    pub audit_checkpoint_webhook: Option<String>,
    pub audit_checkpoint_webhook_secret: Option<Secret>,
    pub audit_checkpoint_webhook_queue: usize,

    pub retention_interval_secs: u64,
    pub deleted_retention_days: u64,
    /// `None` (the default): messages are kept until deleted or expired.
    pub message_retention_days: Option<u64>,
    /// The maximum age of `text` messages; `None`: 2557 days (7 years) in
    /// production, `message_retention_days` in development.
    pub retention_text_days: Option<u64>,
    /// The maximum age of `image`, `file` and `system` messages; `None`:
    /// `message_retention_days`.
    pub retention_image_days: Option<u64>,
    pub retention_file_days: Option<u64>,
    pub retention_system_days: Option<u64>,
    /// How long a break-glass grant lasts, in seconds.
    pub break_glass_ttl_secs: u64,
    /// How often grants past their expiry are ended, in milliseconds.
    pub break_glass_sweep_ms: u64,
    #[serde(deserialize_with = "string_or_list")]
    pub phi_detectors: Vec<String>,

    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub argon2_max_concurrent: usize,
    pub password_min_length: usize,
    /// The roles whose accounts must have a TOTP second factor: until they
    /// enrol, their sessions may only enrol (docs/identity.md). `None`:
    /// `super_admin` and `admin` in production, none in development.
    #[serde(deserialize_with = "opt_string_or_list")]
    pub totp_required_roles: Option<Vec<String>>,
    /// The issuer an authenticator app shows beside the account name.
    pub totp_issuer: String,
    pub lockout_threshold: u32,
    pub lockout_minutes: u64,
    pub lockout_account_threshold: u32,
    pub lockout_backoff_secs: u64,
    /// Days a password is good for; past them a login succeeds but the
    /// session may only change the password (docs/identity.md). 0: no limit.
    pub password_max_age_days: u64,
    /// Where reset links are POSTed (the deployment's mail or SMS
    /// gateway); empty: self-service reset is off and admins have the
    /// temporary password only.
    pub password_reset_webhook_url: String,
    /// How long a reset token is good for, in seconds.
    pub password_reset_token_ttl_secs: u64,
    /// Keys the HMAC-SHA256 signature of every reset webhook body; required
    /// with `password_reset_webhook_url`.
    pub password_reset_webhook_secret: Option<Secret>,

    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Who may use the REST/WebSocket surface: CIDR blocks or addresses,
    /// IPv4 and IPv6; empty: everyone (docs/network.md).
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_networks: Vec<String>,
    /// Who may also use the admin surface; empty: as `allowed_networks`.
    #[serde(deserialize_with = "string_or_list")]
    pub admin_allowed_networks: Vec<String>,
    /// The proxies whose `X-Forwarded-For` is believed; empty: none, the
    /// client address is the TCP peer's.
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,

    /// Where file content lives (docs/files.md): empty for
    /// `<data_dir>/files`, or `file://`, `s3://`, `gs://`, `az://` URLs.
    pub files_store: String,
    pub files_max_bytes: u64,
    /// MIME types uploads may have (sniffed from the content).
    #[serde(deserialize_with = "string_or_list")]
    pub files_allowed_types: Vec<String>,
    /// clamd (`tcp://host:port` or `unix:///path`); absent: uploads are not
    /// scanned (development) or refused (production).
    pub files_clamd_url: Option<String>,
    pub files_clamd_timeout_ms: u64,
    /// `refuse` (the default) or `queue`.
    pub files_when_scanner_down: String,
    pub files_upload_timeout_secs: u64,
    pub files_unsent_grace_secs: u64,
    pub files_link_ttl_secs: u64,
    pub files_sweep_interval_secs: u64,

    /// Cluster mode when set (`nats://...`); absent: a single node.
    pub cluster_nats_url: Option<String>,
    /// `None`: generated at start and logged.
    pub node_id: Option<String>,
    pub cluster_lease_ms: u64,
    pub cluster_forward_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            db_max_connections: None,
            db_min_connections: 0,
            db_acquire_timeout_secs: None,
            db_idle_timeout_secs: 600,
            env: Environment::Development,
            log_format: LogFormat::Pretty,
            log_level: "info".into(),
            jwt_secret: None,
            jwt_algorithm: "HS256".into(),
            jwt_private_key_file: None,
            jwt_public_key_file: None,
            jwt_issuer: "courier".into(),
            jwt_audience: "courier-clients".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            master_keys: None,
            keyring_file: None,
            initial_admin_username: None,
            initial_admin_password: None,
            allow_registration: None,
            max_frame_bytes: 65_536,
            max_text_bytes: 16_384,
            send_per_minute: 60,
            auth_timeout_ms: 10_000,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 10_000,
            max_unauthenticated_per_ip: 64,
            max_connections_per_ip: 1000,
            rest_per_15min: 100,
            auth_per_15min: 10,
            register_per_hour: 5,
            allowed_origins: Vec::new(),
            cors_origins: Vec::new(),
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            heartbeat_ms: 30_000,
            idle_timeout_ms: 60_000,
            recovery_limit: 1000,
            recovery_max_replay: 0,
            admin_idle_minutes: 15,
            admin_session_hours: 8,
            typing_expiry_ms: 6_000,
            fanout_coalesce_us: 2_000,
            files_store: String::new(),
            files_max_bytes: 50 * 1024 * 1024,
            files_allowed_types: courier_actors::files::sniff::AllowList::default()
                .mimes()
                .into_iter()
                .map(String::from)
                .collect(),
            files_clamd_url: None,
            files_clamd_timeout_ms: 30_000,
            files_when_scanner_down: "refuse".into(),
            files_upload_timeout_secs: 600,
            files_unsent_grace_secs: 24 * 3600,
            files_link_ttl_secs: 300,
            files_sweep_interval_secs: 60,
            cluster_nats_url: None,
            node_id: None,
            cluster_lease_ms: 3_000,
            cluster_forward_timeout_ms: 5_000,
            persist_batch_max: None,
            persist_batch_delay_us: 0,
            persist_commits_in_flight: 4,
            persist_queue_capacity: 65_536,
            audit_checkpoint_every: 1_000,
            audit_checkpoint_interval_secs: 60,
            audit_batch_delay_us: 5_000,
            audit_append_timeout_ms: 5_000,
            audit_delivery_flush_secs: 300,
            audit_checkpoint_webhook: None,
            audit_checkpoint_webhook_secret: None,
            audit_checkpoint_webhook_queue: 1_024,
            retention_interval_secs: 60,
            deleted_retention_days: 90,
            message_retention_days: None,
            retention_text_days: None,
            retention_image_days: None,
            retention_file_days: None,
            retention_system_days: None,
            break_glass_ttl_secs: 3_600,
            break_glass_sweep_ms: 1_000,
            phi_detectors: ["ssn", "mrn", "date_of_birth", "phone", "email"]
                .map(String::from)
                .to_vec(),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            argon2_max_concurrent: 2,
            password_min_length: 12,
            totp_required_roles: None,
            totp_issuer: "Courier".into(),
            lockout_threshold: 5,
            lockout_minutes: 15,
            lockout_account_threshold: 20,
            lockout_backoff_secs: 30,
            password_max_age_days: 0,
            password_reset_webhook_url: String::new(),
            password_reset_token_ttl_secs: 900,
            password_reset_webhook_secret: None,
            tls_cert: None,
            tls_key: None,
            allowed_networks: Vec::new(),
            admin_allowed_networks: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// Flags that override every other layer; `None` leaves the layer below.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
}

/// One thing wrong with the configuration. Values of secrets never appear
/// in these messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigProblem {
    /// The TOML file could not be read or parsed.
    #[error("{0}")]
    Unreadable(String),
    /// A variable or key that is no setting, e.g. "variable
    /// COURIER_DATABSE_URL", with the closest setting when one is close.
    #[error("unknown {name}{}", .suggestion.as_ref().map(|s| format!("; did you mean {s}?")).unwrap_or_default())]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    /// A value the setting does not take; `name` says where it was set
    /// (`COURIER_MAX_FRAME_BYTES`, `max_frame_bytes in c.toml`, ...).
    #[error("{name}: {reason}")]
    Invalid { name: String, reason: String },
    /// Settings that contradict each other.
    #[error("{0}")]
    Conflict(String),
    /// A production start without something production needs.
    #[error("production requires {0}")]
    Production(&'static str),
}

/// A configuration that cannot be used: every problem found, not only the
/// first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// In the order found: the file, unknown names, then the values.
    pub problems: Vec<ConfigProblem>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            all => {
                write!(f, "invalid configuration, {} problems:", all.len())?;
                for problem in all {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// Settings whose values must never be echoed, even in an error message.
const SECRET_KEYS: [&str; 3] = ["jwt_secret", "master_keys", "initial_admin_password"];

impl Config {
    /// Reads every layer and checks the result as a whole (see
    /// [`Config::check`]): unknown variables and keys, values of the wrong
    /// type and values out of range are all reported together. `file` is
    /// `--config`; without it `config/default.toml` is read when it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_checked(file, overrides, false)
    }

    /// [`Config::load`] for `courier serve`: production requirements
    /// (secrets, TLS) are reported with the other problems.
    pub fn load_to_serve(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        Self::load_checked(file, overrides, true)
    }

    fn load_checked(
        file: Option<&Path>,
        overrides: &Overrides,
        serve: bool,
    ) -> Result<Config, ConfigError> {
        let known = known_keys();
        let mut problems = Vec::new();
        let default_file = Path::new("config/default.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            let toml = Figment::from(Toml::file_exact(file));
            match toml.data() {
                Ok(data) => {
                    for key in data.values().flat_map(|dict| dict.keys()) {
                        if !known.contains(key) {
                            problems.push(unknown_key(
                                format!("key {key} in {}", file.display()),
                                key,
                                &known,
                                str::to_owned,
                            ));
                        }
                    }
                    figment = figment.merge(toml);
                }
                Err(e) => problems.push(ConfigProblem::Unreadable(format!(
                    "{}: {}",
                    file.display(),
                    e.kind
                ))),
            }
        }
        let env = Env::prefixed(ENV_PREFIX);
        for (key, _) in env.iter() {
            if !known.iter().any(|k| k == key.as_str()) {
                problems.push(unknown_key(
                    format!("variable {}", env_name(key.as_str())),
                    key.as_str(),
                    &known,
                    env_name,
                ));
            }
        }
        let figment = figment.merge(env).merge(Serialized::defaults(overrides));
        let name = |key: &str| source_name(&figment, key);

        let config = match figment.extract::<Config>() {
            Ok(config) => config,
            Err(_) => {
                // serde stops at the first bad field: try each set key on
                // its own over the defaults, keep the ones that read.
                let mut good = Figment::from(Serialized::defaults(Config::default()));
                for key in &known {
                    let Ok(value) = figment.find_value(key) else {
                        continue;
                    };
                    let alone = Figment::from(Serialized::defaults(Config::default()))
                        .merge((key.as_str(), &value));
                    match alone.extract::<Config>() {
                        Ok(_) => good = good.merge((key.as_str(), value)),
                        Err(e) => problems.push(ConfigProblem::Invalid {
                            name: name(key),
                            reason: if SECRET_KEYS.contains(&key.as_str()) {
                                "must be a string (the value is not shown)".into()
                            } else {
                                e.kind.to_string()
                            },
                        }),
                    }
                }
                good.extract::<Config>().map_err(|e| ConfigError {
                    problems: vec![ConfigProblem::Unreadable(e.to_string())],
                })?
            }
        };
        problems.extend(config.problems(serve, &name));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks the values as a whole: zero or absurd sizes, timeouts and
    /// limits, addresses that are none, settings that contradict each other,
    /// and with `serve` what a production start needs (every missing piece,
    /// not only the first).
    pub fn check(&self, serve: bool) -> Result<(), ConfigError> {
        let problems = self.problems(serve, &|key: &str| key.to_owned());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The problems of [`Config::check`]; `name` says where a key was set.
    fn problems(&self, serve: bool, name: &dyn Fn(&str) -> String) -> Vec<ConfigProblem> {
        let mut c = Checks {
            problems: Vec::new(),
            name,
        };
        const SECOND_MS: u64 = 1_000;
        const HOUR_MS: u64 = 3_600 * SECOND_MS;
        const DAY_SECS: u64 = 86_400;
        const MIB: u64 = 1024 * 1024;

        if self.data_dir.as_os_str().is_empty() {
            c.invalid("data_dir", "must not be empty".into());
        }
        if let Some(url) = &self.database_url {
            // The URL may hold a password: it is not echoed.
            if !["sqlite:", "postgres://", "postgresql://"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
            {
                c.invalid(
                    "database_url",
                    "must start with sqlite: or postgres:// (the value is not shown)".into(),
                );
            }
        }
        if let Some(url) = &self.cluster_nats_url {
            if !["nats://", "tls://"].iter().any(|s| url.starts_with(s)) {
                c.invalid(
                    "cluster_nats_url",
                    "must start with nats:// or tls:// (the value is not shown)".into(),
                );
            }
            if !self.database_url().starts_with("postgres") {
                c.invalid(
                    "cluster_nats_url",
                    "cluster mode needs PostgreSQL: every node shares one database, \
                     which the embedded SQLite file cannot be (set COURIER_DATABASE_URL=postgres://...)"
                        .into(),
                );
            }
        }
        if let Some(node) = &self.node_id {
            let valid = !node.is_empty()
                && node.len() <= 64
                && node
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
            if !valid {
                c.invalid(
                    "node_id",
                    "must be 1 to 64 letters, digits, '-' or '_'".into(),
                );
            }
        }
        c.within("cluster_lease_ms", self.cluster_lease_ms, 500, 60_000);
        c.within(
            "cluster_forward_timeout_ms",
            self.cluster_forward_timeout_ms,
            100,
            60_000,
        );
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 32)
        {
            c.invalid("jwt_secret", "must be at least 32 characters".into());
        }
        match self.jwt_algorithm.as_str() {
            "HS256" => {}
            "RS256" | "EdDSA" => {
                for (key, file) in [
                    ("jwt_private_key_file", &self.jwt_private_key_file),
                    ("jwt_public_key_file", &self.jwt_public_key_file),
                ] {
                    if file.is_none() {
                        c.conflict(format!(
                            "{} {} needs {}",
                            (c.name)("jwt_algorithm"),
                            self.jwt_algorithm,
                            (c.name)(key)
                        ));
                    }
                }
            }
            other => c.invalid(
                "jwt_algorithm",
                format!("must be HS256, RS256 or EdDSA, not {other:?}"),
            ),
        }
        for key in ["jwt_issuer", "jwt_audience"] {
            let value = if key == "jwt_issuer" {
                &self.jwt_issuer
            } else {
                &self.jwt_audience
            };
            if value.trim().is_empty() {
                c.invalid(key, "must not be empty".into());
            }
        }
        c.within(
            "access_token_ttl_secs",
            self.access_token_ttl_secs,
            1,
            365 * DAY_SECS,
        );
        c.within(
            "refresh_token_ttl_secs",
            self.refresh_token_ttl_secs,
            1,
            10 * 365 * DAY_SECS,
        );
        if let Some(spec) = &self.master_keys {
            // Keyring errors name the entry and the problem, never a key.
            if let Err(e) = courier_actors::crypto::Keyring::parse(spec.expose()) {
                c.invalid("master_keys", e.to_string());
            }
        }
        match (&self.initial_admin_username, &self.initial_admin_password) {
            (Some(_), None) | (None, Some(_)) => c.conflict(format!(
                "{} and {} must be set together",
                (c.name)("initial_admin_username"),
                (c.name)("initial_admin_password")
            )),
            // The account rules (length, not the username, ...) are checked
            // where the admin is made, with every other account's: see
            // `auth::policy`.
            _ => {}
        }

        c.within(
            "max_frame_bytes",
            self.max_frame_bytes as u64,
            1024,
            64 * MIB,
        );
        c.within("max_text_bytes", self.max_text_bytes as u64, 1, 64 * MIB);
        if self.max_text_bytes > self.max_frame_bytes {
            c.versus(
                ("max_text_bytes", self.max_text_bytes as u64),
                "must not exceed",
                ("max_frame_bytes", self.max_frame_bytes as u64),
                ": such a text could never arrive",
            );
        }
        c.within(
            "send_per_minute",
            self.send_per_minute.into(),
            1,
            u32::MAX.into(),
        );
        c.within("auth_timeout_ms", self.auth_timeout_ms, 1, HOUR_MS);
        c.within(
            "http_header_timeout_ms",
            self.http_header_timeout_ms,
            1,
            HOUR_MS,
        );
        c.within("admin_idle_minutes", self.admin_idle_minutes, 1, 24 * 60);
        c.within("admin_session_hours", self.admin_session_hours, 1, 24 * 7);
        for origin in &self.allowed_origins {
            if !is_origin(origin) {
                c.invalid(
                    "allowed_origins",
                    format!("{origin:?} is not an origin (scheme://host[:port], no path) or \"*\""),
                );
            }
        }
        for origin in &self.cors_origins {
            if origin == "*" || !is_origin(origin) {
                c.invalid(
                    "cors_origins",
                    format!("{origin:?} is not an origin (scheme://host[:port], no path); list each one, \"*\" is refused"),
                );
            }
        }

        c.within(
            "outbound_queue_frames",
            self.outbound_queue_frames as u64,
            1,
            10_000_000,
        );
        c.within(
            "outbound_queue_bytes",
            self.outbound_queue_bytes as u64,
            1,
            16 * 1024 * MIB,
        );
        if self.outbound_queue_bytes < self.max_frame_bytes {
            c.versus(
                ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
                "must be at least",
                ("max_frame_bytes", self.max_frame_bytes as u64),
                "",
            );
        }
        c.within("heartbeat_ms", self.heartbeat_ms, 1, HOUR_MS);
        c.within("idle_timeout_ms", self.idle_timeout_ms, 1, 24 * HOUR_MS);
        if self.heartbeat_ms >= self.idle_timeout_ms {
            c.versus(
                ("heartbeat_ms", self.heartbeat_ms),
                "must be less than",
                ("idle_timeout_ms", self.idle_timeout_ms),
                ": a quiet client would be closed before its first ping",
            );
        }
        c.within("typing_expiry_ms", self.typing_expiry_ms, 1, HOUR_MS);
        c.within("files_max_bytes", self.files_max_bytes, 1, 64 * 1024 * MIB);
        if let Err(e) = courier_actors::files::sniff::AllowList::parse(&self.files_allowed_types) {
            c.invalid("files_allowed_types", e);
        }
        if let Some(url) = &self.files_clamd_url {
            if let Err(e) =
                courier_actors::files::scan::Clamd::parse(url, std::time::Duration::from_secs(1))
            {
                c.invalid("files_clamd_url", e);
            }
        }
        c.within(
            "files_clamd_timeout_ms",
            self.files_clamd_timeout_ms,
            1,
            HOUR_MS,
        );
        if !matches!(self.files_when_scanner_down.as_str(), "refuse" | "queue") {
            c.invalid(
                "files_when_scanner_down",
                "must be \"refuse\" or \"queue\"".into(),
            );
        }
        c.within(
            "files_upload_timeout_secs",
            self.files_upload_timeout_secs,
            1,
            24 * 3600,
        );
        c.within(
            "files_unsent_grace_secs",
            self.files_unsent_grace_secs,
            1,
            365 * 24 * 3600,
        );
        c.within(
            "files_link_ttl_secs",
            self.files_link_ttl_secs,
            1,
            24 * 3600,
        );
        c.within(
            "files_sweep_interval_secs",
            self.files_sweep_interval_secs,
            1,
            24 * 3600,
        );
        c.within("fanout_coalesce_us", self.fanout_coalesce_us, 0, 100_000);

        if let Some(max) = self.persist_batch_max {
            c.within("persist_batch_max", max as u64, 1, 1_000_000);
        }
        let backend = if self.database_url().starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        if let Some(max) = self.db_max_connections {
            c.within("db_max_connections", max.into(), 1, 10_000);
        }
        let pool_max = self.pool().resolve(backend).max_connections;
        if self.db_min_connections > pool_max {
            c.versus(
                ("db_min_connections", self.db_min_connections.into()),
                "must not exceed",
                ("db_max_connections", pool_max.into()),
                "",
            );
        }
        if let Some(secs) = self.db_acquire_timeout_secs {
            c.within("db_acquire_timeout_secs", secs, 1, 3_600);
        }
        c.within(
            "db_idle_timeout_secs",
            self.db_idle_timeout_secs,
            0,
            7 * DAY_SECS,
        );
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            c.invalid(
                "log_level",
                format!(
                    "is no log filter (error, warn, info, debug, trace, or target=level,...): {e}"
                ),
            );
        }
        c.within(
            "persist_batch_delay_us",
            self.persist_batch_delay_us,
            0,
            60_000_000,
        );
        c.within(
            "persist_commits_in_flight",
            self.persist_commits_in_flight as u64,
            1,
            1024,
        );
        c.within(
            "persist_queue_capacity",
            self.persist_queue_capacity as u64,
            1,
            100_000_000,
        );

        c.within(
            "audit_checkpoint_every",
            self.audit_checkpoint_every,
            1,
            u64::MAX,
        );
        c.within(
            "audit_checkpoint_interval_secs",
            self.audit_checkpoint_interval_secs,
            1,
            DAY_SECS,
        );
        c.within(
            "audit_delivery_flush_secs",
            self.audit_delivery_flush_secs,
            1,
            DAY_SECS,
        );
        c.within(
            "audit_batch_delay_us",
            self.audit_batch_delay_us,
            0,
            60_000_000,
        );

        c.within(
            "break_glass_ttl_secs",
            self.break_glass_ttl_secs,
            1,
            DAY_SECS,
        );
        c.within(
            "break_glass_sweep_ms",
            self.break_glass_sweep_ms,
            10,
            HOUR_MS,
        );
        c.within(
            "retention_interval_secs",
            self.retention_interval_secs,
            1,
            DAY_SECS,
        );
        c.within(
            "deleted_retention_days",
            self.deleted_retention_days,
            0,
            36_500,
        );
        for (key, days) in [
            ("message_retention_days", self.message_retention_days),
            ("retention_text_days", self.retention_text_days),
            ("retention_image_days", self.retention_image_days),
            ("retention_file_days", self.retention_file_days),
            ("retention_system_days", self.retention_system_days),
        ] {
            if let Some(days) = days {
                c.within(key, days, 1, 36_500);
            }
        }
        for role in self.totp_required_roles.iter().flatten() {
            if courier_actors::durable::store::Role::parse(role).is_none() {
                c.invalid(
                    "totp_required_roles",
                    format!("{role:?} is not a role (super_admin, admin, moderator, user)"),
                );
            }
        }
        if self.totp_issuer.trim().is_empty()
            || self.totp_issuer.contains(':')
            || self.totp_issuer.chars().count() > 64
        {
            c.invalid(
                "totp_issuer",
                "must be 1 to 64 characters without ':'".into(),
            );
        }
        for name in &self.phi_detectors {
            if let Err(e) = name.parse::<courier_actors::policy::phi::PhiKind>() {
                c.invalid("phi_detectors", e.to_string());
            }
        }

        if let Err(e) = argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        ) {
            c.conflict(format!(
                "{}, {} and {}: {e}",
                (c.name)("argon2_memory_kib"),
                (c.name)("argon2_iterations"),
                (c.name)("argon2_parallelism")
            ));
        }
        c.within(
            "argon2_memory_kib",
            self.argon2_memory_kib.into(),
            8,
            4 * 1024 * 1024,
        );
        c.within(
            "argon2_max_concurrent",
            self.argon2_max_concurrent as u64,
            1,
            1024,
        );
        c.within(
            "password_min_length",
            self.password_min_length as u64,
            1,
            1024,
        );
        c.within("lockout_minutes", self.lockout_minutes, 1, 365 * 24 * 60);
        c.within(
            "password_max_age_days",
            self.password_max_age_days,
            0,
            10 * 365,
        );
        c.within(
            "password_reset_token_ttl_secs",
            self.password_reset_token_ttl_secs,
            1,
            DAY_SECS,
        );
        if !self.password_reset_webhook_url.is_empty() {
            if let Err(e) = crate::auth::reset::check_webhook_url(&self.password_reset_webhook_url)
            {
                c.invalid("password_reset_webhook_url", e);
            }
            if self.password_reset_webhook_secret.is_none() {
                c.conflict(format!(
                    "{} needs {} (the receiver checks the signature with it)",
                    (c.name)("password_reset_webhook_url"),
                    (c.name)("password_reset_webhook_secret")
                ));
            }
        }

        self.check_networks(&mut c);

        if self.tls_cert.is_some() != self.tls_key.is_some() {
            c.conflict(format!(
                "{} and {} must be set together",
                (c.name)("tls_cert"),
                (c.name)("tls_key")
            ));
        }
        if serve && self.env == Environment::Production {
            if self.jwt_algorithm == "HS256" && self.jwt_secret.is_none() {
                c.problems
                    .push(ConfigProblem::Production("COURIER_JWT_SECRET"));
            }
            if self.master_keys.is_none() && self.keyring_file.is_none() {
                c.problems.push(ConfigProblem::Production(
                    "COURIER_MASTER_KEYS or COURIER_KEYRING_FILE",
                ));
            }
            if self.tls_cert.is_none() && self.trusted_proxies.is_empty() {
                c.problems.push(ConfigProblem::Production(
                    "TLS (COURIER_TLS_CERT and COURIER_TLS_KEY) or COURIER_TRUSTED_PROXIES (the addresses of the TLS-terminating proxy)",
                ));
            }
        }
        c.problems
    }

    /// The network lists (docs/network.md): every entry an address or a CIDR
    /// block (a bad one named with its key), and no admin network outside
    /// every allowed one (both lists apply to the admin surface: it would
    /// admit nobody).
    fn check_networks(&self, c: &mut Checks<'_>) {
        let allowed = parsed_networks(c, "allowed_networks", &self.allowed_networks);
        let admin = parsed_networks(c, "admin_allowed_networks", &self.admin_allowed_networks);
        parsed_networks(c, "trusted_proxies", &self.trusted_proxies);
        if allowed.is_empty() {
            return;
        }
        for net in &admin {
            if !allowed.iter().any(|a| a.contains(net) || net.contains(a)) {
                let message = format!(
                    "{} lists {net}, which no entry of {} overlaps: both lists apply to the admin surface, so it would admit nobody",
                    (c.name)("admin_allowed_networks"),
                    (c.name)("allowed_networks"),
                );
                c.conflict(message);
            }
        }
    }

    /// The database URL: the configured one, else `courier.db` in the data
    /// directory (created on first start).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("courier.db").display()),
        }
    }

    /// The store's connection settings (`db_*`).
    pub fn pool(&self) -> courier_actors::durable::store::PoolSettings {
        courier_actors::durable::store::PoolSettings {
            max_connections: self.db_max_connections,
            min_connections: self.db_min_connections,
            acquire_timeout: self
                .db_acquire_timeout_secs
                .map(std::time::Duration::from_secs),
            idle_timeout: (self.db_idle_timeout_secs > 0)
                .then(|| std::time::Duration::from_secs(self.db_idle_timeout_secs)),
        }
    }

    /// How this node joins its cluster; `None` for a single node. A node
    /// without `node_id` gets a generated one.
    pub fn cluster(&self) -> Option<courier_actors::cluster::ClusterConfig> {
        let nats_url = self.cluster_nats_url.clone()?;
        let node_id = self.node_id.clone().unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
            tracing::info!(node_id = %id, "COURIER_NODE_ID not set; generated");
            id
        });
        Some(courier_actors::cluster::ClusterConfig {
            nats_url,
            node_id,
            lease_ttl: std::time::Duration::from_millis(self.cluster_lease_ms),
            forward_timeout: std::time::Duration::from_millis(self.cluster_forward_timeout_ms),
        })
    }

    /// How files are taken and kept.
    pub fn files(&self) -> courier_actors::files::FilesConfig {
        use courier_actors::files::{scan::Clamd, sniff::AllowList, FilesConfig, WhenScannerDown};
        use std::time::Duration;
        FilesConfig {
            max_bytes: self.files_max_bytes,
            // Checked whole by `problems`.
            allowed: AllowList::parse(&self.files_allowed_types).unwrap_or_default(),
            scanner: self.files_clamd_url.as_deref().and_then(|url| {
                Clamd::parse(url, Duration::from_millis(self.files_clamd_timeout_ms)).ok()
            }),
            require_scanner: self.env == Environment::Production,
            when_scanner_down: match self.files_when_scanner_down.as_str() {
                "queue" => WhenScannerDown::Queue,
                _ => WhenScannerDown::Refuse,
            },
            unsent_grace: Duration::from_secs(self.files_unsent_grace_secs),
            link_ttl: Duration::from_secs(self.files_link_ttl_secs),
            sweep_interval: Duration::from_secs(self.files_sweep_interval_secs),
        }
    }

    /// What retention keeps, kind by kind. Production keeps clinical text
    /// 7 years (2557 days) unless `retention_text_days` says otherwise;
    /// development keeps every kind for `message_retention_days` (unset:
    /// until deleted or expired) unless its own key says otherwise.
    pub fn retention(&self) -> courier_actors::durable::retention::RetentionConfig {
        use courier_actors::durable::retention::{ByKind, RetentionConfig};
        use std::time::Duration;
        const DAY_SECS: u64 = 86_400;
        let days = |d: Option<u64>| d.map(|d| Duration::from_secs(d.saturating_mul(DAY_SECS)));
        let fallback = self.message_retention_days;
        let text_default = match self.env {
            Environment::Production => Some(PRODUCTION_TEXT_RETENTION_DAYS),
            Environment::Development => fallback,
        };
        RetentionConfig {
            interval: Duration::from_secs(self.retention_interval_secs.max(1)),
            deleted_retention: Duration::from_secs(
                self.deleted_retention_days.saturating_mul(DAY_SECS),
            ),
            max_age: ByKind {
                text: days(self.retention_text_days.or(text_default)),
                image: days(self.retention_image_days.or(fallback)),
                file: days(self.retention_file_days.or(fallback)),
                system: days(self.retention_system_days.or(fallback)),
            },
        }
    }

    /// The roles whose accounts must have a second factor
    /// (`totp_required_roles`; unset: `super_admin` and `admin` in
    /// production, none in development). Names that are not roles are
    /// refused by [`Config::check`] and left out here.
    pub fn totp_required_roles(&self) -> Vec<courier_actors::durable::store::Role> {
        use courier_actors::durable::store::Role;
        match (&self.totp_required_roles, self.env) {
            (Some(names), _) => names.iter().filter_map(|n| Role::parse(n)).collect(),
            (None, Environment::Production) => vec![Role::SuperAdmin, Role::Admin],
            (None, Environment::Development) => Vec::new(),
        }
    }

    /// Whether `/api/auth/register` is open.
    pub fn registration_open(&self) -> bool {
        self.allow_registration
            .unwrap_or(self.env == Environment::Development)
    }

    /// Where signed audit checkpoints are appended, outside the database.
    pub fn checkpoint_file(&self) -> PathBuf {
        self.data_dir.join("audit-checkpoints.jsonl")
    }

    /// The effective configuration as the admin console shows it: every
    /// key, every secret `"[redacted]"` (see [`Secret`]), and the
    /// credentials and query of every URL (the database's, NATS's, the
    /// checkpoint webhook's) replaced by `[redacted]` too.
    pub fn effective(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        for key in [
            "database_url",
            "cluster_nats_url",
            "audit_checkpoint_webhook",
            "password_reset_webhook_url",
        ] {
            if let Some(slot) = value.get_mut(key) {
                if let Some(url) = slot.as_str() {
                    *slot = serde_json::Value::String(redact_url(url));
                }
            }
        }
        value["database_url"] = serde_json::Value::String(redact_url(&self.database_url()));
        value
    }

    /// A one-line summary for the `server_start` audit entry and the start
    /// log line: no secrets, no credentials in the database URL.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "bind": self.bind.to_string(),
            "env": self.env,
            "backend": if self.database_url().starts_with("postgres") { "postgres" } else { "sqlite" },
            "maxFrameBytes": self.max_frame_bytes,
            "maxTextBytes": self.max_text_bytes,
            "sendPerMinute": self.send_per_minute,
            "tls": self.tls_cert.is_some(),
            "registration": self.registration_open(),
        })
    }
}

/// `url` with its user, password and query replaced by `[redacted]`:
/// what may be shown of a URL that may carry credentials.
fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, format!("?{REDACTED}")),
        None => (url, String::new()),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{REDACTED}@{host}"),
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    format!("{base}{query}")
}

/// The prefix of the environment variables: key `foo` is `COURIER_FOO`.
const ENV_PREFIX: &str = "COURIER_";

/// The environment variable of a key.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// Every key there is: the fields of [`Config`].
fn known_keys() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => unreachable!("Config serializes to an object"),
    }
}

/// The known key closest to an unknown one, when it is close enough to be
/// a typo: a few edits, at most a third of the name.
fn closest<'a>(unknown: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(unknown, k), k.as_str()))
        .filter(|(distance, _)| *distance <= 3 && *distance * 3 <= unknown.len())
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// Where a key's value came from, as the user would write it:
/// `COURIER_MAX_FRAME_BYTES`, `max_frame_bytes in c.toml`, `--data-dir`, or
/// the bare key for a built-in default.
fn source_name(figment: &Figment, key: &str) -> String {
    let Some(metadata) = figment.find_metadata(key) else {
        return key.to_owned();
    };
    if let Some(figment::Source::File(path)) = &metadata.source {
        format!("{key} in {}", path.display())
    } else if metadata.name.contains("environment") {
        env_name(key)
    } else if metadata.name.contains("Overrides") {
        format!("--{}", key.replace('_', "-"))
    } else {
        key.to_owned()
    }
}

/// `scheme://host[:port]` without a path, as browsers send `Origin`.
fn is_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "+-.".contains(ch))
        && !host.is_empty()
        && !host.contains(['/', '?', '#', ' ', ','])
}

/// The networks of one list; each entry that is not one is a problem
/// naming `key`.
fn parsed_networks(c: &mut Checks<'_>, key: &str, entries: &[String]) -> Vec<ipnet::IpNet> {
    entries
        .iter()
        .filter_map(|entry| match crate::network::parse_network(entry) {
            Ok(net) => Some(net),
            Err(bad) => {
                c.invalid(key, bad.to_string());
                None
            }
        })
        .collect()
}

/// Keys that are gone, and what to set instead: reported as invalid (with
/// the way forward), not as unknown.
fn removed_key(key: &str) -> Option<&'static str> {
    match key {
        "behind_proxy" => Some(
            "removed: list the addresses of the proxies in front of Courier in trusted_proxies \
             (COURIER_TRUSTED_PROXIES=10.0.0.5,10.0.1.0/24); X-Forwarded-For is believed only from them, \
             and production without TLS needs them (docs/network.md)",
        ),
        _ => None,
    }
}

/// An unknown key, or a removed one with what replaces it.
fn unknown_key(
    name: String,
    key: &str,
    known: &[String],
    suggest: impl Fn(&str) -> String,
) -> ConfigProblem {
    match removed_key(key) {
        Some(instead) => ConfigProblem::Invalid {
            name,
            reason: instead.to_owned(),
        },
        None => ConfigProblem::Unknown {
            name,
            suggestion: closest(key, known).map(suggest),
        },
    }
}

/// Collects the problems of [`Config::check`].
struct Checks<'a> {
    problems: Vec<ConfigProblem>,
    /// Where a key was set (see [`source_name`]).
    name: &'a dyn Fn(&str) -> String,
}

impl Checks<'_> {
    fn invalid(&mut self, key: &str, reason: String) {
        self.problems.push(ConfigProblem::Invalid {
            name: (self.name)(key),
            reason,
        });
    }

    fn conflict(&mut self, message: String) {
        self.problems.push(ConfigProblem::Conflict(message));
    }

    /// Two settings that contradict each other: "a (1) must be less than
    /// b (0): why".
    fn versus(
        &mut self,
        (a, a_value): (&str, u64),
        relation: &str,
        (b, b_value): (&str, u64),
        why: &str,
    ) {
        let message = format!(
            "{} ({a_value}) {relation} {} ({b_value}){why}",
            (self.name)(a),
            (self.name)(b)
        );
        self.conflict(message);
    }

    /// `value` must lie in `min..=max`.
    fn within(&mut self, key: &str, value: u64, min: u64, max: u64) {
        if !(min..=max).contains(&value) {
            let range = match (min, max) {
                (0, max) => format!("at most {max}"),
                (min, u64::MAX) => format!("at least {min}"),
                (min, max) if max == u64::from(u32::MAX) => format!("at least {min}"),
                (min, max) => format!("between {min} and {max}"),
            };
            self.invalid(key, format!("must be {range}, not {value}"));
        }
    }
}

/// Accepts a TOML list or a comma-separated string (the form environment
/// variables take), so `COURIER_ALLOWED_ORIGINS=https://a,https://b` works.
/// [`string_or_list`] for a key that may be left unset.
/// As [`string_or_list`], or unset (the built-in default serializes `None`,
/// which a bare `string_or_list` refused at every start).
fn opt_string_or_list<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    struct List(#[serde(deserialize_with = "string_or_list")] Vec<String>);
    Ok(Option::<List>::deserialize(de)?.map(|l| l.0))
}

fn string_or_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(de)? {
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Either::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // figment's own test jail returns its (large) error type.
    #[allow(clippy::result_large_err)]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "bind = \"127.0.0.1:9000\"\nmax_text_bytes = 100\n",
            )?;
            jail.set_env("COURIER_MAX_TEXT_BYTES", "200");
            jail.set_env(
                "COURIER_ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            );
            let overrides = Overrides {
                data_dir: Some("/tmp/x".into()),
                ..Overrides::default()
            };
            let c = Config::load(Some(Path::new("c.toml")), &overrides).expect("config");
            assert_eq!(c.bind.port(), 9000, "file beats default");
            assert_eq!(c.max_text_bytes, 200, "env beats file");
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"), "flag beats all");
            assert_eq!(
                c.allowed_origins,
                ["https://a.example", "https://b.example"]
            );
            assert_eq!(c.max_frame_bytes, 65_536, "default kept");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_zero_heartbeat_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("COURIER_HEARTBEAT_MS", "0");
            let err = Config::load(None, &Overrides::default()).expect_err("0 ms refused");
            let err = err.to_string();
            assert!(
                err.contains("COURIER_HEARTBEAT_MS: must be between 1 and")
                    && err.contains("not 0"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn every_problem_is_reported_at_once() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "max_frame_byte = 100\nmax_text_bytes = 70000\nheartbeat_ms = \"soon\"\n",
            )?;
            jail.set_env("COURIER_DATABSE_URL", "postgres://x");
            jail.set_env("COURIER_BIND", "localhost");
            jail.set_env("COURIER_MAX_FRAME_BYTES", "0");
            jail.set_env("COURIER_JWT_SECRET", "short");
            let err = Config::load(Some(Path::new("c.toml")), &Overrides::default())
                .expect_err("refused");
            let text = err.to_string();
            for expected in [
                "unknown key max_frame_byte in c.toml; did you mean max_frame_bytes?",
                "unknown variable COURIER_DATABSE_URL; did you mean COURIER_DATABASE_URL?",
                "COURIER_BIND: invalid socket address syntax",
                "heartbeat_ms in c.toml: invalid type",
                "COURIER_MAX_FRAME_BYTES: must be between 1024 and 67108864, not 0",
                "max_text_bytes in c.toml (70000) must not exceed COURIER_MAX_FRAME_BYTES (0)",
                "COURIER_JWT_SECRET: must be at least 32 characters",
            ] {
                assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
            }
            assert!(!text.contains("short"), "a secret leaked: {text}");
            assert_eq!(err.problems.len(), 7, "{text}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_far_name_gets_no_suggestion() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("COURIER_SOMETHING_ELSE", "1");
            let err = Config::load(None, &Overrides::default()).expect_err("refused");
            assert_eq!(
                err.to_string(),
                "invalid configuration: unknown variable COURIER_SOMETHING_ELSE"
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_shipped_file_is_the_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
            let c = Config::load(Some(&file), &Overrides::default()).expect("loads cleanly");
            assert_eq!(
                serde_json::to_value(&c).expect("json"),
                serde_json::to_value(Config::default()).expect("json")
            );
            Ok(())
        });
    }

    #[test]
    fn retention_by_kind_defaults_by_environment() {
        let day = std::time::Duration::from_secs(86_400);
        let dev = Config::default().retention();
        assert_eq!(dev.max_age.text, None, "development keeps today's defaults");
        assert_eq!(dev.deleted_retention, day * 90);
        let prod = Config {
            env: Environment::Production,
            message_retention_days: Some(365),
            ..Config::default()
        }
        .retention();
        assert_eq!(prod.max_age.text, Some(day * 2557), "clinical text 7 years");
        assert_eq!(prod.max_age.image, Some(day * 365));
        assert_eq!(prod.deleted_retention, day * 90);
        let set = Config {
            env: Environment::Production,
            retention_text_days: Some(3650),
            retention_file_days: Some(30),
            ..Config::default()
        }
        .retention();
        assert_eq!(set.max_age.text, Some(day * 3650));
        assert_eq!(
            (set.max_age.file, set.max_age.system),
            (Some(day * 30), None)
        );
    }

    #[test]
    fn production_names_every_missing_piece() {
        let c = Config {
            env: Environment::Production,
            ..Config::default()
        };
        assert!(c.check(false).is_ok(), "only serving needs them");
        let err = c.check(true).expect_err("refused");
        let text = err.to_string();
        for piece in ["COURIER_JWT_SECRET", "COURIER_MASTER_KEYS", "TLS"] {
            assert!(text.contains(piece), "{text}");
        }
        assert_eq!(err.problems.len(), 3, "{text}");
    }

    #[test]
    fn the_effective_configuration_shows_no_secret() {
        let c = Config {
            jwt_secret: Some(Secret::new("hunter2-hunter2-hunter2-hunter2-x")),
            master_keys: Some(Secret::new("1:c2VjcmV0")),
            initial_admin_password: Some(Secret::new("pw-pw-pw-pw")),
            audit_checkpoint_webhook: Some(
                "https://u:w3bh00kt0k@hooks.example/x?key=q9q9q9".into(),
            ),
            audit_checkpoint_webhook_secret: Some(Secret::new("whsec")),
            database_url: Some("postgres://courier:dbpass@db/courier?sslpassword=x".into()),
            ..Config::default()
        };
        let shown = c.effective().to_string();
        for secret in [
            "hunter2",
            "c2VjcmV0",
            "pw-pw",
            "w3bh00kt0k",
            "q9q9q9",
            "whsec",
            "dbpass",
            "sslpassword",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert_eq!(c.effective()["jwt_secret"], REDACTED);
        assert_eq!(
            c.effective()["database_url"],
            "postgres://[redacted]@db/courier?[redacted]"
        );
        assert_eq!(c.effective()["max_text_bytes"], 16_384);
    }

    #[test]
    fn cors_origins_are_listed_one_by_one() {
        let c = Config {
            cors_origins: vec![
                "https://app.example".into(),
                "*".into(),
                "https://a/b".into(),
            ],
            ..Config::default()
        };
        let text = c.check(false).expect_err("refused").to_string();
        assert!(text.contains("\"*\" is not an origin"), "{text}");
        assert!(text.contains("\"https://a/b\" is not an origin"), "{text}");
        assert!(!text.contains("app.example"), "{text}");
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = Config {
            jwt_secret: Some(Secret::new("hunter2-hunter2")),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
