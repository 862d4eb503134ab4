//! Settings an admin may change while the server runs: the rate limits.
//!
//! # What it owns
//! [`RateLimits`]: the REST limiters (per user, per address on
//! `/api/auth/*`, per address on registration) and the figures of all four
//! limits, the WebSocket send limit included (its limiter lives in
//! [`Realtime`], on the send path). One per server: two servers in one
//! process never share counts.
//!
//! # What it takes
//! The configured values at start ([`RateLimits::new`]), then the stored
//! overrides (table `settings`, keys `rate_limits.*`) applied over them by
//! [`RateLimits::load`], then an admin's changes ([`RateLimits::update`],
//! `PUT /api/settings/rate-limits`), which are stored first and applied
//! second: a change the store refuses is not applied, and a change applied
//! is kept across a restart.
//!
//! # What a failure does
//! A stored value that does not parse, or is out of range, is skipped with a
//! warning and the configured value stays. A limiter replaced at run time
//! starts with every key's bucket full.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use courier_actors::durable::store::{DynStore, Setting, StoreError};
use courier_actors::realtime::Realtime;
use courier_protocol::UserId;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::rate_limit::KeyedLimit;

/// The window of both REST rate limits.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The most any limit may be set to.
pub const MAX_LIMIT: u32 = 1_000_000;

/// The four limits, as the API shows and takes them. In a change, an absent
/// field stays as it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LimitFigures<T = u32> {
    /// WebSocket sends per user per minute (at least 1).
    pub send_per_minute: T,
    /// REST requests per user per 15 minutes (0: off).
    #[serde(rename = "restPer15Min")]
    pub rest_per_15min: T,
    /// `/api/auth/*` requests per address per 15 minutes (0: off).
    #[serde(rename = "authPer15Min")]
    pub auth_per_15min: T,
    /// Registrations per address per hour (0: off).
    pub register_per_hour: T,
}

/// A change: any subset of the limits.
pub type LimitChange = LimitFigures<Option<u32>>;

impl LimitFigures {
    /// The figures of the configuration.
    fn of(config: &Config) -> Self {
        Self {
            send_per_minute: config.send_per_minute,
            rest_per_15min: config.rest_per_15min,
            auth_per_15min: config.auth_per_15min,
            register_per_hour: config.register_per_hour,
        }
    }

    /// Each limit with its key in `settings` and its smallest value.
    fn fields(&self) -> [(&'static str, u32, u32); 4] {
        [
            ("rate_limits.send_per_minute", self.send_per_minute, 1),
            ("rate_limits.rest_per_15min", self.rest_per_15min, 0),
            ("rate_limits.auth_per_15min", self.auth_per_15min, 0),
            ("rate_limits.register_per_hour", self.register_per_hour, 0),
        ]
    }

    /// These figures with `key` set to `value`.
    fn with(mut self, key: &str, value: u32) -> Self {
        match key {
            "rate_limits.send_per_minute" => self.send_per_minute = value,
            "rate_limits.rest_per_15min" => self.rest_per_15min = value,
            "rate_limits.auth_per_15min" => self.auth_per_15min = value,
            "rate_limits.register_per_hour" => self.register_per_hour = value,
            _ => {}
        }
        self
    }
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value out of range; the field is the API's name.
    #[error("{field}: must be {min} to {MAX_LIMIT}")]
    OutOfRange { field: &'static str, min: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The live limits of one server (see the module doc).
pub struct RateLimits {
    /// `rest_per_15min`, per user, outside `/api/auth/*`.
    pub rest: KeyedLimit<UserId>,
    /// `auth_per_15min`, per client address, on `/api/auth/*` and the
    /// console's sign-in.
    pub auth: KeyedLimit<String>,
    /// `register_per_hour`, per client address, on `/api/auth/register`.
    pub register: KeyedLimit<String>,
    send_per_minute: AtomicU32,
    rest_per_15min: AtomicU32,
    auth_per_15min: AtomicU32,
    register_per_hour: AtomicU32,
}

impl RateLimits {
    /// The limits of the configuration.
    pub fn new(config: &Config) -> Self {
        let f = LimitFigures::of(config);
        Self {
            rest: KeyedLimit::new("rest", f.rest_per_15min, WINDOW),
            auth: KeyedLimit::new("auth", f.auth_per_15min, WINDOW),
            register: KeyedLimit::new("register", f.register_per_hour, Duration::from_secs(3600)),
            send_per_minute: AtomicU32::new(f.send_per_minute),
            rest_per_15min: AtomicU32::new(f.rest_per_15min),
            auth_per_15min: AtomicU32::new(f.auth_per_15min),
            register_per_hour: AtomicU32::new(f.register_per_hour),
        }
    }

    /// The limits in force.
    pub fn figures(&self) -> LimitFigures {
        LimitFigures {
            send_per_minute: self.send_per_minute.load(Ordering::Relaxed),
            rest_per_15min: self.rest_per_15min.load(Ordering::Relaxed),
            auth_per_15min: self.auth_per_15min.load(Ordering::Relaxed),
            register_per_hour: self.register_per_hour.load(Ordering::Relaxed),
        }
    }

    /// Applies the stored overrides over the configured values (at start).
    pub async fn load(&self, store: &DynStore, realtime: &Realtime) -> Result<(), StoreError> {
        let mut figures = self.figures();
        for setting in store.list_settings().await? {
            let Some((_, _, min)) = figures
                .fields()
                .into_iter()
                .find(|(key, _, _)| *key == setting.key)
            else {
                continue;
            };
            match setting.value.parse::<u32>() {
                Ok(value) if (min..=MAX_LIMIT).contains(&value) => {
                    figures = figures.with(&setting.key, value);
                }
                _ => tracing::warn!(
                    key = %setting.key,
                    "a stored setting is not a valid limit; the configured value stays"
                ),
            }
        }
        self.apply(figures, realtime);
        Ok(())
    }

    /// Checks `change`, stores what it changes (attributed to `by`), then
    /// applies it. Returns the limits before and after.
    pub async fn update(
        &self,
        change: LimitChange,
        by: UserId,
        store: &DynStore,
        realtime: &Realtime,
    ) -> Result<(LimitFigures, LimitFigures), SettingsError> {
        let before = self.figures();
        let asked = [
            (
                "sendPerMinute",
                "rate_limits.send_per_minute",
                change.send_per_minute,
                1,
            ),
            (
                "restPer15Min",
                "rate_limits.rest_per_15min",
                change.rest_per_15min,
                0,
            ),
            (
                "authPer15Min",
                "rate_limits.auth_per_15min",
                change.auth_per_15min,
                0,
            ),
            (
                "registerPerHour",
                "rate_limits.register_per_hour",
                change.register_per_hour,
                0,
            ),
        ];
        let mut after = before;
        for (field, key, value, min) in asked {
            let Some(value) = value else { continue };
            if !(min..=MAX_LIMIT).contains(&value) {
                return Err(SettingsError::OutOfRange { field, min });
            }
            after = after.with(key, value);
        }
        let now = courier_actors::now_ms();
        for ((key, value, _), (_, old, _)) in after.fields().into_iter().zip(before.fields()) {
            if value != old {
                store
                    .put_setting(Setting {
                        key: key.to_owned(),
                        value: value.to_string(),
                        updated_at: now,
                        updated_by: Some(by),
                    })
                    .await?;
            }
        }
        self.apply(after, realtime);
        Ok((before, after))
    }

    /// Puts `figures` in force, replacing only the limiters that change.
    fn apply(&self, figures: LimitFigures, realtime: &Realtime) {
        let swap = |slot: &AtomicU32, value: u32| slot.swap(value, Ordering::Relaxed) != value;
        if swap(&self.send_per_minute, figures.send_per_minute) {
            realtime.set_send_per_minute(figures.send_per_minute);
        }
        if swap(&self.rest_per_15min, figures.rest_per_15min) {
            self.rest.set(figures.rest_per_15min);
        }
        if swap(&self.auth_per_15min, figures.auth_per_15min) {
            self.auth.set(figures.auth_per_15min);
        }
        if swap(&self.register_per_hour, figures.register_per_hour) {
            self.register.set(figures.register_per_hour);
        }
    }
}
