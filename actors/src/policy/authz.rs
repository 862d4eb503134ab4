//! Authorization: every REST and WebSocket action is decided here, and only
//! here. Handlers describe what is asked ([`Action`]) and ask [`decide`];
//! they carry no `if`s of their own.
//!
//! Global roles map to named permissions (table `role_permissions`, loaded
//! into [`RolePermissions`] at start); channel roles (`owner`, `moderator`,
//! `member`) come from `channel_members`. A private or direct channel is
//! invisible to non-members through every path; admins with
//! `channels.manage` may manage any channel but do not read private
//! conversations through that permission.
//!
//! An archived channel is read-only: posts, edits and reactions are
//! refused there (after the rule that hides it, so a non-member of a
//! private channel learns nothing); reading, receipts, deletes and flags go
//! on. Flags are seen (and set) by those who moderate the channel: its
//! owners and moderators, and `messages.moderate` outside direct channels,
//! in channels the caller can read.

use std::collections::{HashMap, HashSet};

use courier_protocol::UserId;

use crate::durable::store::{Channel, ChannelKind, ChannelRole, Member, Role, StoreError};

/// Named permissions of global roles.
pub mod perm {
    pub const USERS_MANAGE: &str = "users.manage";
    pub const USERS_READ: &str = "users.read";
    pub const CHANNELS_MANAGE: &str = "channels.manage";
    pub const CHANNELS_CREATE_PUBLIC: &str = "channels.create_public";
    pub const CHANNELS_CREATE_PRIVATE: &str = "channels.create_private";
    pub const MESSAGES_MODERATE: &str = "messages.moderate";
    pub const AUDIT_READ: &str = "audit.read";
    pub const PATIENTS_DISCLOSURES: &str = "patients.disclosures";
    pub const PATIENTS_READ: &str = "patients.read";
    pub const KEYS_MANAGE: &str = "keys.manage";
    pub const SESSIONS_MANAGE: &str = "sessions.manage";
    pub const SETTINGS_MANAGE: &str = "settings.manage";
    pub const HOLDS_MANAGE: &str = "holds.manage";
    pub const ANNOUNCEMENTS_CREATE: &str = "announcements.create";
}

/// The permissions of every role, as stored.
#[derive(Clone, Debug, Default)]
pub struct RolePermissions(HashMap<Role, HashSet<String>>);

impl RolePermissions {
    /// Loads every role's permissions from the store.
    pub async fn load(store: &dyn crate::durable::store::Store) -> Result<Self, StoreError> {
        let mut map = HashMap::new();
        for role in Role::ALL {
            map.insert(
                role,
                store.role_permissions(role).await?.into_iter().collect(),
            );
        }
        Ok(Self(map))
    }

    /// Whether `role` has `permission`.
    pub fn has(&self, role: Role, permission: &str) -> bool {
        self.0.get(&role).is_some_and(|p| p.contains(permission))
    }

    /// The permission names of a role, sorted.
    pub fn of(&self, role: Role) -> Vec<String> {
        let mut v: Vec<String> = self
            .0
            .get(&role)
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Who is asking.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    pub user_id: UserId,
    pub role: Role,
    pub permissions: &'a RolePermissions,
}

impl Principal<'_> {
    fn can(&self, permission: &str) -> bool {
        self.permissions.has(self.role, permission)
    }
}

/// What is asked. Channel actions carry the caller's membership, if any.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// See a channel (its metadata), join it, read its history, react,
    /// send receipts and typing.
    ReadChannel {
        channel: &'a Channel,
        member: Option<&'a Member>,
    },
    /// Post a message (refused in an archived channel).
    Post {
        channel: &'a Channel,
        member: Option<&'a Member>,
    },
    /// Edit a message written by `author`: only its sender may, and not
    /// in an archived channel.
    EditMessage {
        channel: &'a Channel,
        member: Option<&'a Member>,
        author: UserId,
    },
    /// Delete a message written by `author`.
    ModifyMessage {
        channel: &'a Channel,
        member: Option<&'a Member>,
        author: UserId,
    },
    /// Add or remove a reaction: members, outside archived channels.
    React {
        channel: &'a Channel,
        member: Option<&'a Member>,
    },
    /// Flag or unflag a message of this channel.
    FlagMessage {
        channel: &'a Channel,
        member: Option<&'a Member>,
    },
    /// See messages' flags in this channel (their `flagged` fields and the
    /// `message_flagged` pushes).
    SeeFlags {
        channel: &'a Channel,
        member: Option<&'a Member>,
    },
    /// Read the queue of flagged messages (each entry still needs
    /// [`Action::SeeFlags`] on its channel).
    ReadFlagQueue,
    /// List every channel, private and direct ones included (names and
    /// metadata, not messages).
    ListAllChannels,
    /// Rename, archive or delete a channel; add, remove or re-role members.
    ManageChannel {
        channel: &'a Channel,
        member: Option<&'a Member>,
    },
    /// Create a channel of this kind.
    CreateChannel { kind: ChannelKind },
    /// List or read user accounts.
    ReadUsers,
    /// Read one user account.
    ReadUser { target: UserId },
    /// Create, change or delete users; change roles.
    ManageUsers,
    /// Grant this global role to someone.
    GrantRole { role: Role },
    /// Act on one user account, `target`, whose role is `role`: change or
    /// delete it (`UserAct::Manage`), or list or end its sessions
    /// (`UserAct::Sessions`). Nobody acts on a user of a higher role than
    /// their own (see [`outranks`]).
    ActOnUser {
        target: UserId,
        role: Role,
        act: UserAct,
    },
    /// Read or verify the audit log.
    ReadAudit,
    /// Read the accounting of disclosures of a patient.
    ReadDisclosures,
    /// List a patient's channels and messages (`/api/patients/{ref}/...`).
    ReadPatient,
    /// Rotate or retire master keys.
    ManageKeys,
    /// See the server's live figures (the admin console's overview).
    ReadServerStatus,
    /// Read the effective configuration and change runtime settings
    /// (rate limits).
    ManageSettings,
    /// Place, list and release legal holds.
    ManageHolds,
    /// Post an announcement to everyone or to roles.
    Announce,
    /// Sign in to the admin console: only those who may see one of its
    /// sections (users, moderation or audit).
    UseConsole,
}

/// What [`Action::ActOnUser`] does to the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserAct {
    /// Change (email, role, password) or delete it: needs `users.manage`.
    Manage,
    /// List its sessions (with their addresses) or end them: one's own, or
    /// with `sessions.manage`.
    Sessions,
}

/// Whether `role` stands above `other` (`Role::ALL` is most powerful first).
pub fn outranks(role: Role, other: Role) -> bool {
    let rank = |r: Role| Role::ALL.iter().position(|x| *x == r).unwrap_or(usize::MAX);
    rank(role) < rank(other)
}

/// A refusal, with a reason a user may read (no internal detail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub &'static str);

/// The refusal of anything new in an archived channel.
const ARCHIVED: Denied = Denied("this channel is archived");

/// Refuses writes into an archived channel once `decided` allowed them.
fn writable(channel: &Channel, decided: Result<(), Denied>) -> Result<(), Denied> {
    match decided {
        Ok(()) if channel.archived_at.is_some() => Err(ARCHIVED),
        other => other,
    }
}

/// Whether `who` moderates `channel`: one of its owners or moderators, or
/// `messages.moderate` outside direct channels, when they can read it.
fn moderates(who: Principal<'_>, channel: &Channel, member: Option<&Member>) -> bool {
    let visible = decide(who, Action::ReadChannel { channel, member }).is_ok();
    let channel_mod = member.is_some_and(|m| m.role != ChannelRole::Member);
    let global_mod = who.can(perm::MESSAGES_MODERATE) && channel.kind != ChannelKind::Direct;
    visible && (channel_mod || global_mod)
}

/// Decides one action.
pub fn decide(who: Principal<'_>, action: Action<'_>) -> Result<(), Denied> {
    use Action::*;
    let allow = |ok: bool, why: &'static str| if ok { Ok(()) } else { Err(Denied(why)) };
    match action {
        ReadChannel { channel, member } => allow(
            channel.kind == ChannelKind::Public
                || channel.kind == ChannelKind::Broadcast
                || member.is_some(),
            "not a member of this channel",
        ),
        Post { channel, member } => writable(
            channel,
            match (channel.kind, member) {
                (ChannelKind::Public, _) => Ok(()),
                (ChannelKind::Broadcast, Some(m)) if m.role != ChannelRole::Member => Ok(()),
                (ChannelKind::Broadcast, _) => Err(Denied("only owners and moderators post here")),
                (_, Some(_)) => Ok(()),
                (_, None) => Err(Denied("not a member of this channel")),
            },
        ),
        EditMessage {
            channel,
            member,
            author,
        } => writable(
            channel,
            allow(
                decide(who, ReadChannel { channel, member }).is_ok() && author == who.user_id,
                "only the sender may edit this message",
            ),
        ),
        React { channel, member } => writable(
            channel,
            decide(who, ReadChannel { channel, member })
                .and_then(|()| allow(member.is_some(), "not a member of this channel")),
        ),
        FlagMessage { channel, member } => allow(
            moderates(who, channel, member),
            "only a channel moderator or an admin may flag messages here",
        ),
        SeeFlags { channel, member } => allow(
            moderates(who, channel, member),
            "only a channel moderator or an admin may see flags here",
        ),
        ReadFlagQueue => allow(
            who.can(perm::MESSAGES_MODERATE),
            "not allowed to read the moderation queue",
        ),
        ListAllChannels => allow(
            who.can(perm::CHANNELS_MANAGE),
            "not allowed to list every channel",
        ),
        ModifyMessage {
            channel,
            member,
            author,
        } => {
            let visible = decide(who, ReadChannel { channel, member }).is_ok();
            let channel_mod = member.is_some_and(|m| m.role != ChannelRole::Member);
            let global_mod =
                who.can(perm::MESSAGES_MODERATE) && channel.kind != ChannelKind::Direct;
            allow(
                visible && (author == who.user_id || channel_mod || global_mod),
                "only the author, a channel moderator or an admin may change this message",
            )
        }
        ManageChannel { channel, member } => allow(
            member.is_some_and(|m| m.role == ChannelRole::Owner)
                || (who.can(perm::CHANNELS_MANAGE) && channel.kind != ChannelKind::Direct),
            "only the channel owner or an admin may manage this channel",
        ),
        CreateChannel { kind } => allow(
            match kind {
                ChannelKind::Public | ChannelKind::Broadcast => {
                    who.can(perm::CHANNELS_CREATE_PUBLIC)
                }
                ChannelKind::Private => who.can(perm::CHANNELS_CREATE_PRIVATE),
                ChannelKind::Direct => false, // only through open_direct
            },
            "not allowed to create this kind of channel",
        ),
        ReadUsers => allow(
            who.can(perm::USERS_READ) || who.can(perm::USERS_MANAGE),
            "not allowed to list users",
        ),
        ReadUser { target } => allow(
            target == who.user_id || who.can(perm::USERS_READ) || who.can(perm::USERS_MANAGE),
            "not allowed to read this user",
        ),
        ManageUsers => allow(who.can(perm::USERS_MANAGE), "not allowed to manage users"),
        GrantRole { role } => allow(
            who.can(perm::USERS_MANAGE)
                && (role != Role::SuperAdmin || who.role == Role::SuperAdmin),
            "not allowed to grant this role",
        ),
        ActOnUser { target, role, act } => {
            let own = target == who.user_id;
            if !own && outranks(role, who.role) {
                return Err(Denied("not allowed to act on a user of a higher role"));
            }
            match act {
                UserAct::Manage => {
                    allow(who.can(perm::USERS_MANAGE), "not allowed to manage users")
                }
                UserAct::Sessions => allow(
                    own || who.can(perm::SESSIONS_MANAGE),
                    "not allowed to manage these sessions",
                ),
            }
        }
        ReadAudit => allow(
            who.can(perm::AUDIT_READ),
            "not allowed to read the audit log",
        ),
        ReadDisclosures => allow(
            who.can(perm::PATIENTS_DISCLOSURES),
            "not allowed to read a patient's disclosures",
        ),
        ReadPatient => allow(
            who.can(perm::PATIENTS_READ),
            "not allowed to read a patient's channels and messages",
        ),
        ManageKeys => allow(who.can(perm::KEYS_MANAGE), "not allowed to manage keys"),
        ReadServerStatus => allow(
            who.can(perm::USERS_MANAGE),
            "not allowed to see the server's status",
        ),
        ManageSettings => allow(
            who.can(perm::SETTINGS_MANAGE),
            "not allowed to manage settings",
        ),
        ManageHolds => allow(
            who.can(perm::HOLDS_MANAGE),
            "not allowed to manage legal holds",
        ),
        Announce => allow(
            who.can(perm::ANNOUNCEMENTS_CREATE),
            "not allowed to post announcements",
        ),
        UseConsole => allow(
            who.can(perm::USERS_MANAGE)
                || who.can(perm::MESSAGES_MODERATE)
                || who.can(perm::AUDIT_READ),
            "the admin console is for administrators and moderators",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_protocol::ChannelId;

    fn perms() -> RolePermissions {
        let mut map = HashMap::new();
        map.insert(
            Role::Admin,
            [
                perm::CHANNELS_MANAGE,
                perm::MESSAGES_MODERATE,
                perm::AUDIT_READ,
            ]
            .map(String::from)
            .into(),
        );
        map.insert(
            Role::User,
            [perm::CHANNELS_CREATE_PRIVATE].map(String::from).into(),
        );
        RolePermissions(map)
    }

    fn channel(kind: ChannelKind) -> Channel {
        Channel {
            id: ChannelId::new(),
            name: "c".into(),
            description: None,
            kind,
            created_by: UserId::new(),
            created_at: 0,
            direct_key: None,
            archived_at: None,
            patient_ref: None,
            patient_tag: None,
        }
    }

    fn member(c: &Channel, user: UserId, role: ChannelRole) -> Member {
        Member {
            channel_id: c.id,
            user_id: user,
            role,
            joined_at: 0,
            last_read_seq: 0,
            last_delivered_seq: 0,
        }
    }

    #[test]
    fn private_channels_are_closed_to_non_members_even_admins() {
        let p = perms();
        let admin = Principal {
            user_id: UserId::new(),
            role: Role::Admin,
            permissions: &p,
        };
        for kind in [ChannelKind::Private, ChannelKind::Direct] {
            let c = channel(kind);
            assert!(decide(
                admin,
                Action::ReadChannel {
                    channel: &c,
                    member: None
                }
            )
            .is_err());
            assert!(decide(
                admin,
                Action::Post {
                    channel: &c,
                    member: None
                }
            )
            .is_err());
        }
    }

    #[test]
    fn broadcast_posting_needs_a_channel_role() {
        let p = perms();
        let user = Principal {
            user_id: UserId::new(),
            role: Role::User,
            permissions: &p,
        };
        let c = channel(ChannelKind::Broadcast);
        let plain = member(&c, user.user_id, ChannelRole::Member);
        let moderator = member(&c, user.user_id, ChannelRole::Moderator);
        assert!(decide(
            user,
            Action::ReadChannel {
                channel: &c,
                member: None
            }
        )
        .is_ok());
        assert!(decide(
            user,
            Action::Post {
                channel: &c,
                member: Some(&plain)
            }
        )
        .is_err());
        assert!(decide(
            user,
            Action::Post {
                channel: &c,
                member: Some(&moderator)
            }
        )
        .is_ok());
    }

    #[test]
    fn only_the_sender_edits() {
        let p = perms();
        let author = UserId::new();
        let c = channel(ChannelKind::Private);
        let admin = Principal {
            user_id: UserId::new(),
            role: Role::SuperAdmin,
            permissions: &p,
        };
        let owner = member(&c, admin.user_id, ChannelRole::Owner);
        let edit = |member| Action::EditMessage {
            channel: &c,
            member: Some(member),
            author,
        };
        assert!(decide(admin, edit(&owner)).is_err());
        let me = Principal {
            user_id: author,
            role: Role::User,
            permissions: &p,
        };
        let mine = member(&c, author, ChannelRole::Member);
        assert!(decide(me, edit(&mine)).is_ok());
        let left = Action::EditMessage {
            channel: &c,
            member: None,
            author,
        };
        assert!(decide(me, left).is_err());
    }

    #[test]
    fn only_author_moderator_or_admin_modify() {
        let p = perms();
        let author = UserId::new();
        let c = channel(ChannelKind::Private);
        let other = Principal {
            user_id: UserId::new(),
            role: Role::User,
            permissions: &p,
        };
        let other_member = member(&c, other.user_id, ChannelRole::Member);
        let action = Action::ModifyMessage {
            channel: &c,
            member: Some(&other_member),
            author,
        };
        assert!(decide(other, action).is_err());
        let me = Principal {
            user_id: author,
            role: Role::User,
            permissions: &p,
        };
        let my_member = member(&c, author, ChannelRole::Member);
        assert!(decide(
            me,
            Action::ModifyMessage {
                channel: &c,
                member: Some(&my_member),
                author
            }
        )
        .is_ok());
        let chan_mod = member(&c, other.user_id, ChannelRole::Moderator);
        assert!(decide(
            other,
            Action::ModifyMessage {
                channel: &c,
                member: Some(&chan_mod),
                author
            }
        )
        .is_ok());
        let admin = Principal {
            user_id: UserId::new(),
            role: Role::Admin,
            permissions: &p,
        };
        let admin_member = member(&c, admin.user_id, ChannelRole::Member);
        assert!(decide(
            admin,
            Action::ModifyMessage {
                channel: &c,
                member: Some(&admin_member),
                author
            }
        )
        .is_ok());
    }

    #[test]
    fn an_archived_channel_is_read_only() {
        let p = perms();
        let user = Principal {
            user_id: UserId::new(),
            role: Role::User,
            permissions: &p,
        };
        let mut c = channel(ChannelKind::Public);
        c.archived_at = Some(1);
        let mine = member(&c, user.user_id, ChannelRole::Owner);
        let m = Some(&mine);
        let post = Action::Post {
            channel: &c,
            member: m,
        };
        assert_eq!(decide(user, post), Err(Denied("this channel is archived")));
        let edit = Action::EditMessage {
            channel: &c,
            member: m,
            author: user.user_id,
        };
        assert_eq!(decide(user, edit), Err(Denied("this channel is archived")));
        let react = Action::React {
            channel: &c,
            member: m,
        };
        assert_eq!(decide(user, react), Err(Denied("this channel is archived")));
        for ok in [
            Action::ReadChannel {
                channel: &c,
                member: m,
            },
            Action::ModifyMessage {
                channel: &c,
                member: m,
                author: user.user_id,
            },
            Action::FlagMessage {
                channel: &c,
                member: m,
            },
        ] {
            assert!(decide(user, ok).is_ok(), "{ok:?}");
        }
        // A private archived channel still hides itself from non-members.
        let mut private = channel(ChannelKind::Private);
        private.archived_at = Some(1);
        let post = Action::Post {
            channel: &private,
            member: None,
        };
        assert_eq!(
            decide(user, post),
            Err(Denied("not a member of this channel"))
        );
    }

    #[test]
    fn flags_are_for_those_who_moderate_the_channel() {
        let p = perms();
        let user = Principal {
            user_id: UserId::new(),
            role: Role::User,
            permissions: &p,
        };
        let admin = Principal {
            user_id: UserId::new(),
            role: Role::Admin,
            permissions: &p,
        };
        let public = channel(ChannelKind::Public);
        let plain = member(&public, user.user_id, ChannelRole::Member);
        let chan_mod = member(&public, user.user_id, ChannelRole::Moderator);
        let see = |c, m| Action::SeeFlags {
            channel: c,
            member: m,
        };
        assert!(decide(user, see(&public, Some(&plain))).is_err());
        assert!(decide(user, see(&public, Some(&chan_mod))).is_ok());
        assert!(decide(admin, see(&public, None)).is_ok());
        // Not in a private channel the admin is not a member of, nor in a
        // direct channel even as a member.
        let private = channel(ChannelKind::Private);
        assert!(decide(admin, see(&private, None)).is_err());
        let direct = channel(ChannelKind::Direct);
        let admin_in = member(&direct, admin.user_id, ChannelRole::Member);
        assert!(decide(admin, see(&direct, Some(&admin_in))).is_err());
        assert!(decide(admin, Action::ReadFlagQueue).is_ok());
        assert!(decide(user, Action::ReadFlagQueue).is_err());
        assert!(decide(admin, Action::ListAllChannels).is_ok());
        assert!(decide(user, Action::ListAllChannels).is_err());
    }

    #[test]
    fn nobody_acts_on_a_user_of_a_higher_role() {
        let mut map = HashMap::new();
        map.insert(
            Role::Admin,
            [perm::USERS_MANAGE, perm::SESSIONS_MANAGE]
                .map(String::from)
                .into(),
        );
        let p = RolePermissions(map);
        let admin = Principal {
            user_id: UserId::new(),
            role: Role::Admin,
            permissions: &p,
        };
        for act in [UserAct::Manage, UserAct::Sessions] {
            let on = |role| Action::ActOnUser {
                target: UserId::new(),
                role,
                act,
            };
            assert!(decide(admin, on(Role::SuperAdmin)).is_err(), "{act:?}");
            assert!(decide(admin, on(Role::Admin)).is_ok(), "{act:?}");
            assert!(decide(admin, on(Role::User)).is_ok(), "{act:?}");
        }
        let user = Principal {
            user_id: UserId::new(),
            role: Role::User,
            permissions: &p,
        };
        let own_sessions = Action::ActOnUser {
            target: user.user_id,
            role: Role::User,
            act: UserAct::Sessions,
        };
        assert!(decide(user, own_sessions).is_ok());
        assert!(outranks(Role::SuperAdmin, Role::Admin));
        assert!(!outranks(Role::Admin, Role::Admin));
    }
}
