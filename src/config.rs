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
use figment::Figment;
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

/// A secret string. Its `Debug` and `Display` never show the value, so it
/// cannot leak through logs or error messages by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

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
    pub env: Environment,
    pub log_format: LogFormat,

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
    pub rest_per_15min: u32,
    pub auth_per_15min: u32,
    pub register_per_hour: u32,
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,

    pub outbound_queue_frames: usize,
    pub outbound_queue_bytes: usize,
    #[serde(deserialize_with = "nonzero")]
    pub heartbeat_ms: u64,
    pub idle_timeout_ms: u64,
    pub recovery_limit: u32,
    pub typing_expiry_ms: u64,

    pub persist_batch_max: Option<usize>,
    pub persist_batch_delay_us: u64,
    pub persist_commits_in_flight: usize,
    pub persist_queue_capacity: usize,

    pub audit_checkpoint_every: u64,
    pub audit_checkpoint_interval_secs: u64,
    pub audit_batch_delay_us: u64,

    pub retention_interval_secs: u64,
    pub deleted_retention_days: u64,
    /// `None` (the default): messages are kept until deleted or expired.
    pub message_retention_days: Option<u64>,
    #[serde(deserialize_with = "string_or_list")]
    pub phi_detectors: Vec<String>,

    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_parallelism: u32,
    pub argon2_max_concurrent: usize,
    pub password_min_length: usize,
    pub lockout_threshold: u32,
    pub lockout_minutes: u64,
    pub lockout_account_threshold: u32,
    pub lockout_backoff_secs: u64,

    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub behind_proxy: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            env: Environment::Development,
            log_format: LogFormat::Pretty,
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
            rest_per_15min: 100,
            auth_per_15min: 10,
            register_per_hour: 5,
            allowed_origins: Vec::new(),
            outbound_queue_frames: 1024,
            outbound_queue_bytes: 4 * 1024 * 1024,
            heartbeat_ms: 30_000,
            idle_timeout_ms: 60_000,
            recovery_limit: 1000,
            typing_expiry_ms: 6_000,
            persist_batch_max: None,
            persist_batch_delay_us: 0,
            persist_commits_in_flight: 4,
            persist_queue_capacity: 65_536,
            audit_checkpoint_every: 1_000,
            audit_checkpoint_interval_secs: 60,
            audit_batch_delay_us: 5_000,
            retention_interval_secs: 60,
            deleted_retention_days: 90,
            message_retention_days: None,
            phi_detectors: ["ssn", "mrn", "date_of_birth", "phone", "email"]
                .map(String::from)
                .to_vec(),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            argon2_max_concurrent: 2,
            password_min_length: 12,
            lockout_threshold: 5,
            lockout_minutes: 15,
            lockout_account_threshold: 20,
            lockout_backoff_secs: 30,
            tls_cert: None,
            tls_key: None,
            behind_proxy: false,
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

/// A configuration that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

impl Config {
    /// Reads every layer. `file` is `--config`; without it
    /// `config/default.toml` is read when it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let default_file = Path::new("config/default.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("COURIER_"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError(Box::new(e)))
    }

    /// The database URL: the configured one, else `courier.db` in the data
    /// directory (created on first start).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("courier.db").display()),
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

/// A setting that must not be 0 (a heartbeat of 0 ms would tick without
/// pause on every connection).
fn nonzero<'de, D: Deserializer<'de>>(de: D) -> Result<u64, D::Error> {
    match u64::deserialize(de)? {
        0 => Err(serde::de::Error::custom("must be greater than 0")),
        value => Ok(value),
    }
}

/// Accepts a TOML list or a comma-separated string (the form environment
/// variables take), so `COURIER_ALLOWED_ORIGINS=https://a,https://b` works.
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
            jail.set_env("COURIER_HEARTBEAT_MS", "0");
            let err = Config::load(None, &Overrides::default()).expect_err("0 ms refused");
            let err = err.to_string();
            assert!(
                err.to_lowercase().contains("heartbeat_ms") && err.contains("greater than 0"),
                "{err}"
            );
            Ok(())
        });
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
