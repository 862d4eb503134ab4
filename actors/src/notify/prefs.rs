//! A user's notification preferences and the one decision made with them:
//! whether an event reaches their devices now. Pure; stored as JSON by
//! [`NotifyStore`](crate::durable::store::NotifyStore), served by
//! `src/api/notifications.rs`.
//!
//! - `mention`, `directMessage`, `announcement`: which kinds notify (all on
//!   when a user has never saved preferences).
//! - `quietHours` `{startMinute, endMinute, utcOffsetMinutes}`: minutes of
//!   the user's day (0..1440, local time at the given UTC offset; start
//!   after end wraps past midnight, start equal to end is never quiet).
//!   While quiet, mentions and direct messages are not pushed; announcements
//!   still are (an admin's announcement is meant for everyone now).
//! - `mutedChannels`: nothing of these channels notifies (announcements
//!   belong to no channel).

use courier_protocol::ChannelId;
use serde::{Deserialize, Serialize};

/// What a notification is about (`data.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// The user's `@username` in a message of a channel they are a member of.
    Mention,
    /// A new message of a direct channel they are in, sent by the other party.
    DirectMessage,
    /// An admin's announcement for their role or everyone.
    Announcement,
}

impl NotificationKind {
    /// The wire name (`data.kind`, the metric's `kind` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mention => "mention",
            Self::DirectMessage => "direct_message",
            Self::Announcement => "announcement",
        }
    }

    /// The generic title a message notification carries (never its text).
    pub fn title(self) -> &'static str {
        match self {
            Self::Mention => "New mention",
            Self::DirectMessage => "New direct message",
            Self::Announcement => "Announcement",
        }
    }
}

/// Quiet hours, in minutes of the user's local day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuietHours {
    /// 0..1440.
    pub start_minute: u16,
    /// 0..1440.
    pub end_minute: u16,
    /// The user's offset from UTC, -840..=840 minutes.
    #[serde(default)]
    pub utc_offset_minutes: i16,
}

/// Why preferences cannot be saved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefsError {
    #[error("quiet hours' minutes must be 0 to 1439")]
    Minute,
    #[error("utcOffsetMinutes must be -840 to 840")]
    Offset,
    #[error("at most 1000 muted channels")]
    TooManyMuted,
}

impl QuietHours {
    /// Whether `now_ms` (ms since the epoch) falls inside.
    pub fn contains(&self, now_ms: i64) -> bool {
        let local = now_ms / 60_000 + i64::from(self.utc_offset_minutes);
        let minute = local.rem_euclid(1440) as u16;
        let (s, e) = (self.start_minute, self.end_minute);
        if s <= e {
            (s..e).contains(&minute)
        } else {
            minute >= s || minute < e
        }
    }
}

/// One user's preferences (`{mention, directMessage, announcement,
/// quietHours, mutedChannels}`; absent fields take the defaults).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotificationPrefs {
    #[serde(default = "on")]
    pub mention: bool,
    #[serde(default = "on")]
    pub direct_message: bool,
    #[serde(default = "on")]
    pub announcement: bool,
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub muted_channels: Vec<ChannelId>,
}

fn on() -> bool {
    true
}

impl Default for NotificationPrefs {
    fn default() -> Self {
        Self {
            mention: true,
            direct_message: true,
            announcement: true,
            quiet_hours: None,
            muted_channels: Vec::new(),
        }
    }
}

/// Why an event was not pushed to a user (the metric's `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suppressed {
    /// The user turned this kind off.
    Disabled,
    /// The channel is muted.
    Muted,
    /// Quiet hours.
    Quiet,
}

impl Suppressed {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Muted => "muted",
            Self::Quiet => "quiet_hours",
        }
    }
}

impl NotificationPrefs {
    /// Checks the ranges; muted channels are de-duplicated.
    pub fn validated(mut self) -> Result<Self, PrefsError> {
        if let Some(q) = &self.quiet_hours {
            if q.start_minute >= 1440 || q.end_minute >= 1440 {
                return Err(PrefsError::Minute);
            }
            if !(-840..=840).contains(&q.utc_offset_minutes) {
                return Err(PrefsError::Offset);
            }
        }
        if self.muted_channels.len() > 1000 {
            return Err(PrefsError::TooManyMuted);
        }
        self.muted_channels.sort_by_key(|c| c.0);
        self.muted_channels.dedup();
        Ok(self)
    }

    /// Whether an event of `kind` (of `channel`, if any) is pushed at `now_ms`.
    pub fn allows(
        &self,
        kind: NotificationKind,
        channel: Option<ChannelId>,
        now_ms: i64,
    ) -> Result<(), Suppressed> {
        let enabled = match kind {
            NotificationKind::Mention => self.mention,
            NotificationKind::DirectMessage => self.direct_message,
            NotificationKind::Announcement => self.announcement,
        };
        if !enabled {
            return Err(Suppressed::Disabled);
        }
        if channel.is_some_and(|c| self.muted_channels.contains(&c)) {
            return Err(Suppressed::Muted);
        }
        if kind != NotificationKind::Announcement
            && self.quiet_hours.is_some_and(|q| q.contains(now_ms))
        {
            return Err(Suppressed::Quiet);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn quiet_hours_wrap_past_midnight_at_the_offset() {
        let q = QuietHours {
            start_minute: 22 * 60,
            end_minute: 7 * 60,
            utc_offset_minutes: 60,
        };
        assert!(q.contains(21 * HOUR + 1)); // 22:00 local
        assert!(q.contains(3 * HOUR)); // 04:00 local
        assert!(!q.contains(6 * HOUR)); // 07:00 local
        assert!(!q.contains(12 * HOUR));
        let never = QuietHours {
            start_minute: 60,
            end_minute: 60,
            utc_offset_minutes: 0,
        };
        assert!(!never.contains(HOUR));
    }

    #[test]
    fn decides_kind_mute_and_quiet() {
        let c = ChannelId::new();
        let mut p = NotificationPrefs::default();
        assert_eq!(p.allows(NotificationKind::Mention, Some(c), 0), Ok(()));
        p.muted_channels.push(c);
        assert_eq!(
            p.allows(NotificationKind::Mention, Some(c), 0),
            Err(Suppressed::Muted)
        );
        p.muted_channels.clear();
        p.direct_message = false;
        assert_eq!(
            p.allows(NotificationKind::DirectMessage, Some(c), 0),
            Err(Suppressed::Disabled)
        );
        p.quiet_hours = Some(QuietHours {
            start_minute: 0,
            end_minute: 1439,
            utc_offset_minutes: 0,
        });
        assert_eq!(
            p.allows(NotificationKind::Mention, Some(c), 0),
            Err(Suppressed::Quiet)
        );
        assert_eq!(p.allows(NotificationKind::Announcement, None, 0), Ok(()));
    }

    #[test]
    fn validates_ranges() {
        let mut p = NotificationPrefs {
            quiet_hours: Some(QuietHours {
                start_minute: 1440,
                end_minute: 0,
                utc_offset_minutes: 0,
            }),
            ..NotificationPrefs::default()
        };
        assert_eq!(p.clone().validated(), Err(PrefsError::Minute));
        p.quiet_hours = Some(QuietHours {
            start_minute: 0,
            end_minute: 0,
            utc_offset_minutes: 900,
        });
        assert_eq!(p.validated(), Err(PrefsError::Offset));
        let json = serde_json::json!({"mention": false});
        let p: NotificationPrefs = serde_json::from_value(json).unwrap();
        assert!(!p.mention && p.direct_message && p.announcement);
    }
}
