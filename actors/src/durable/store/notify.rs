//! [`NotifyStore`]: what notifications keep (issue 38,
//! `docs/notifications.md`). Both backends implement it (`sqlite_notify.rs`,
//! `postgres_notify.rs`) over the tables of migrations `*_notifications.sql`:
//!
//! - `message_mentions`: the members a message mentions (user ids, never
//!   text), written by [`WriteOp::SetMentions`](super::WriteOp::SetMentions)
//!   in the message's own group commit and read back with every message
//!   read ([`MessageRow::mentions`](super::MessageRow::mentions)).
//! - `notification_prefs`: each user's [`NotificationPrefs`] as JSON.
//! - `announcements` and `announcement_reads` (see [`Announcement`]).

use async_trait::async_trait;
use courier_protocol::frames::Mention;
use courier_protocol::{ChannelId, UserId};
use uuid::Uuid;

use super::{Role, StoreError};
use crate::notify::prefs::NotificationPrefs;

/// An admin's announcement. Title and body are stored in clear: an admin
/// writes them for everyone, and they must not carry PHI (see
/// `docs/notifications.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub id: Uuid,
    pub title: String,
    pub body: String,
    /// Who it is for; empty: everyone.
    pub roles: Vec<Role>,
    pub created_by: UserId,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl Announcement {
    /// Whether a user of `role` is one it is for.
    pub fn is_for(&self, role: Role) -> bool {
        self.roles.is_empty() || self.roles.contains(&role)
    }

    /// `roles` as stored: a comma list, `''` for everyone.
    pub(super) fn roles_text(&self) -> String {
        self.roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Mentions, preferences and announcements.
#[async_trait]
pub trait NotifyStore: Send + Sync {
    /// The members of `channel` among `usernames`, with the username as
    /// stored, in the order of `usernames`.
    async fn members_named(
        &self,
        channel: ChannelId,
        usernames: &[String],
    ) -> Result<Vec<Mention>, StoreError>;
    /// The user's saved preferences (`None`: never saved, the defaults).
    async fn notification_prefs(
        &self,
        user: UserId,
    ) -> Result<Option<NotificationPrefs>, StoreError>;
    /// Saves the user's preferences whole.
    async fn put_notification_prefs(
        &self,
        user: UserId,
        prefs: &NotificationPrefs,
        at: i64,
    ) -> Result<(), StoreError>;
    /// Stores a new announcement.
    async fn insert_announcement(&self, a: &Announcement) -> Result<(), StoreError>;
    /// The announcements not expired at `now`, newest first.
    async fn current_announcements(&self, now: i64) -> Result<Vec<Announcement>, StoreError>;
    /// Records that the user received announcements at `at`; when they last
    /// did before (`None`: never).
    async fn mark_announcements_seen(
        &self,
        user: UserId,
        at: i64,
    ) -> Result<Option<i64>, StoreError>;
    /// The ids of the accounts of these roles (every account when empty).
    async fn users_of_roles(&self, roles: &[Role]) -> Result<Vec<UserId>, StoreError>;
}

/// Reads an announcement row (either backend).
pub(super) fn announcement(r: &impl super::sql::SqlRow) -> Result<Announcement, StoreError> {
    let roles = r.text("roles")?;
    Ok(Announcement {
        id: r.uuid("id")?,
        title: r.text("title")?,
        body: r.text("body")?,
        roles: roles.split(',').filter_map(Role::parse).collect(),
        created_by: UserId(r.uuid("created_by")?),
        created_at: r.int("created_at")?,
        expires_at: r.opt_int("expires_at")?,
    })
}

/// Decodes a stored preferences document.
pub(super) fn prefs(json: &str) -> Result<NotificationPrefs, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("notification_prefs: {e}")))
}

/// Puts each mention row (`message_id`, `user_id`, `username`, ordered by
/// `position`) under its message.
pub(super) fn attach_mentions(
    messages: &mut [super::MessageRow],
    rows: &[impl super::sql::SqlRow],
) -> Result<(), StoreError> {
    for row in rows {
        let message = row.uuid("message_id")?;
        let mention = Mention {
            user_id: UserId(row.uuid("user_id")?),
            username: row.text("username")?,
        };
        if let Some(m) = messages.iter_mut().find(|m| m.message.id.0 == message) {
            m.mentions.push(mention);
        }
    }
    Ok(())
}
