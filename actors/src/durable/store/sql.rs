//! What the two SQL backends share: the mapping of sqlx errors to
//! [`StoreError`], integer conversions, and the decoding of rows into models.
//!
//! Both schemas use the same table and column names, so one decoder per model
//! serves both; [`SqlRow`] hides the one difference in representation (UUIDs
//! are `uuid` in PostgreSQL and hyphenated TEXT in SQLite).

use courier_protocol::frames::MessageKind;
use courier_protocol::{ChannelId, FileId, MessageId, SessionId, ShareId, UserId};
use sqlx::postgres::{PgDatabaseError, PgRow};
use sqlx::sqlite::{SqliteError, SqliteRow};
use sqlx::Row;
use uuid::fmt::Hyphenated;
use uuid::Uuid;

use super::{
    AuditRecord, Channel, ChannelKind, ChannelRole, Checkpoint, ClientMsgRef, Flag, Member,
    MessageRow, Role, Session, SessionKind, Setting, StoreError, StoredMessage, User, WriteOp,
};

/// A stretch of a write batch: consecutive message inserts (one multi-row
/// statement) or other ops (applied one by one).
pub(super) enum Run<'a> {
    Inserts(Vec<&'a StoredMessage>),
    Others(&'a [WriteOp]),
}

/// Cuts `ops` into [`Run`]s, in order, so each outcome lands at its op's
/// index.
pub(super) fn runs(ops: &[WriteOp]) -> impl Iterator<Item = Run<'_>> {
    ops.chunk_by(|a, b| a.is_insert() && b.is_insert())
        .map(|run| {
            if run[0].is_insert() {
                Run::Inserts(
                    run.iter()
                        .filter_map(|op| match op {
                            WriteOp::InsertMessage(m) => Some(m),
                            _ => None,
                        })
                        .collect(),
                )
            } else {
                Run::Others(run)
            }
        })
}

impl From<sqlx::Error> for StoreError {
    /// The one mapping of driver errors. Database-specific codes are sorted by
    /// each backend's `classify`; messages never carry row contents.
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::RowNotFound => StoreError::NotFound,
            E::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                    super::postgres::classify(pg)
                } else if let Some(lite) = db.try_downcast_ref::<SqliteError>() {
                    super::sqlite::classify(lite)
                } else {
                    StoreError::Database(db.message().to_owned())
                }
            }
            E::PoolTimedOut => {
                super::pool::count_acquire_timeout();
                StoreError::Unavailable("timed out waiting for a database connection".into())
            }
            E::PoolClosed => StoreError::Unavailable("connection pool closed".into()),
            E::Io(e) => StoreError::Unavailable(format!("i/o error: {e}")),
            E::Tls(e) => StoreError::Unavailable(format!("tls error: {e}")),
            E::Protocol(m) => StoreError::Unavailable(format!("protocol error: {m}")),
            E::WorkerCrashed => StoreError::Unavailable("database worker crashed".into()),
            E::ColumnDecode { index, source } => {
                StoreError::Corrupt(format!("column {index}: {source}"))
            }
            E::Decode(source) => StoreError::Corrupt(source.to_string()),
            E::ColumnNotFound(column) => StoreError::Corrupt(format!("no column {column}")),
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(e) => e.into(),
            other => StoreError::Database(format!("migration failed: {other}")),
        }
    }
}

/// A `u64` stored as BIGINT; values past `i64::MAX` are refused.
pub(super) fn to_db(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Database(format!("{what} out of range")))
}

/// A `u64` query bound (`seq > after`) as BIGINT; saturates, which keeps the
/// comparison's meaning.
pub(super) fn bound(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The `LIKE` pattern matching `search` as a lowercase substring (`\` escapes).
pub(super) fn contains_pattern(search: &str) -> String {
    let mut pattern = String::with_capacity(search.len() + 2);
    pattern.push('%');
    for c in search.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Typed access to the columns of a row of either backend.
pub(super) trait SqlRow {
    fn uuid(&self, col: &str) -> Result<Uuid, StoreError>;
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;

    /// A non-negative BIGINT (a seq or a count).
    fn uint(&self, col: &str) -> Result<u64, StoreError> {
        u64::try_from(self.int(col)?).map_err(|_| StoreError::Corrupt(format!("{col} is negative")))
    }

    fn u32(&self, col: &str) -> Result<u32, StoreError> {
        u32::try_from(self.int(col)?)
            .map_err(|_| StoreError::Corrupt(format!("{col} out of range")))
    }
}

macro_rules! impl_sql_row {
    ($row:ty, $uuid:ty) => {
        impl SqlRow for $row {
            fn uuid(&self, col: &str) -> Result<Uuid, StoreError> {
                Ok(self.try_get::<$uuid, _>(col)?.into())
            }
            fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError> {
                Ok(self.try_get::<Option<$uuid>, _>(col)?.map(Into::into))
            }
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn text(&self, col: &str) -> Result<String, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
                Ok(self.try_get(col)?)
            }
            fn flag(&self, col: &str) -> Result<bool, StoreError> {
                Ok(self.try_get(col)?)
            }
        }
    };
}

impl_sql_row!(PgRow, Uuid);
impl_sql_row!(SqliteRow, Hyphenated);

// ---- decoders: one per model, by column name --------------------------------

pub(super) fn user(r: &impl SqlRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId(r.uuid("id")?),
        username: r.text("username")?,
        email: r.opt_text("email")?,
        password_hash: r.text("password_hash")?,
        role: Role::parse(&r.text("role")?)
            .ok_or_else(|| StoreError::Corrupt("users.role: unknown role".into()))?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        failed_logins: r.u32("failed_logins")?,
        locked_until: r.opt_int("locked_until")?,
        disabled_at: r.opt_int("disabled_at")?,
        must_change_password: r.flag("must_change_password")?,
        last_login_at: r.opt_int("last_login_at")?,
        password_changed_at: r.int("password_changed_at")?,
    })
}

pub(super) fn session(r: &impl SqlRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: SessionId(r.uuid("id")?),
        user_id: UserId(r.uuid("user_id")?),
        token_hash: r.text("token_hash")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        ip: r.opt_text("ip")?,
        user_agent: r.opt_text("user_agent")?,
        valid: r.flag("valid")?,
        kind: SessionKind::parse(&r.text("kind")?)
            .ok_or_else(|| StoreError::Corrupt("sessions.kind: unknown kind".into()))?,
        last_seen_at: r.opt_int("last_seen_at")?,
    })
}

pub(super) fn channel(r: &impl SqlRow) -> Result<Channel, StoreError> {
    Ok(Channel {
        id: ChannelId(r.uuid("id")?),
        name: r.text("name")?,
        description: r.opt_text("description")?,
        kind: ChannelKind::parse(&r.text("kind")?)
            .ok_or_else(|| StoreError::Corrupt("channels.kind: unknown kind".into()))?,
        created_by: UserId(r.uuid("created_by")?),
        created_at: r.int("created_at")?,
        direct_key: r.opt_text("direct_key")?,
        archived_at: r.opt_int("archived_at")?,
        patient_ref: r.opt_bytes("patient_ref")?,
        patient_tag: r.opt_text("patient_tag")?,
    })
}

pub(super) fn member(r: &impl SqlRow) -> Result<Member, StoreError> {
    Ok(Member {
        channel_id: ChannelId(r.uuid("channel_id")?),
        user_id: UserId(r.uuid("user_id")?),
        role: ChannelRole::parse(&r.text("role")?)
            .ok_or_else(|| StoreError::Corrupt("channel_members.role: unknown role".into()))?,
        joined_at: r.int("joined_at")?,
        last_read_seq: r.uint("last_read_seq")?,
        last_delivered_seq: r.uint("last_delivered_seq")?,
    })
}

pub(super) fn message(r: &impl SqlRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        id: MessageId(r.uuid("id")?),
        channel_id: ChannelId(r.uuid("channel_id")?),
        seq: r.uint("seq")?,
        sender_id: UserId(r.uuid("sender_id")?),
        client_msg_id: r.opt_text("client_msg_id")?,
        ciphertext: r.bytes("ciphertext")?,
        nonce: r.bytes("nonce")?,
        key_version: r.u32("key_version")?,
        contains_phi: r.flag("contains_phi")?,
        reply_to: r.opt_uuid("reply_to")?.map(MessageId),
        created_at: r.int("created_at")?,
        edited_at: r.opt_int("edited_at")?,
        expires_at: r.opt_int("expires_at")?,
        deleted_at: r.opt_int("deleted_at")?,
        kind: r
            .text("kind")?
            .parse()
            .map_err(|()| StoreError::Corrupt("messages.kind: unknown kind".into()))?,
        attachments: Vec::new(),
        patient_ref: r.opt_bytes("patient_ref")?,
        patient_tag: r.opt_text("patient_tag")?,
        search: Default::default(),
    })
}

/// A message with a `sender_username` column; a sender whose account was
/// deleted reads as the empty username.
pub(super) fn message_row(r: &impl SqlRow) -> Result<MessageRow, StoreError> {
    Ok(MessageRow {
        message: message(r)?,
        sender_username: r.opt_text("sender_username")?.unwrap_or_default(),
        flag: match r.opt_int("flagged_at")? {
            Some(at) => Some(Flag {
                at,
                by: UserId(r.opt_uuid("flagged_by")?.unwrap_or_default()),
                reason: r.opt_text("flag_reason")?.unwrap_or_default(),
            }),
            None => None,
        },
        attachments: Vec::new(),
        mentions: Vec::new(),
    })
}

pub(super) fn setting(r: &impl SqlRow) -> Result<Setting, StoreError> {
    Ok(Setting {
        key: r.text("key")?,
        value: r.text("value")?,
        updated_at: r.int("updated_at")?,
        updated_by: r.opt_uuid("updated_by")?.map(UserId),
    })
}

pub(super) fn client_ref(r: &impl SqlRow) -> Result<ClientMsgRef, StoreError> {
    Ok(ClientMsgRef {
        sender_id: UserId(r.uuid("sender_id")?),
        client_msg_id: r.text("client_msg_id")?,
        message_id: MessageId(r.uuid("id")?),
        seq: r.uint("seq")?,
        created_at: r.int("created_at")?,
    })
}

pub(super) fn audit(r: &impl SqlRow) -> Result<AuditRecord, StoreError> {
    let details = serde_json::from_str(&r.text("details")?)
        .map_err(|_| StoreError::Corrupt("audit_logs.details is not JSON".into()))?;
    Ok(AuditRecord {
        seq: r.uint("seq")?,
        timestamp: r.int("timestamp")?,
        actor_id: r.opt_uuid("actor_id")?.map(UserId),
        ip: r.opt_text("ip")?,
        user_agent: r.opt_text("user_agent")?,
        action: r.text("action")?,
        details,
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
    })
}

pub(super) fn checkpoint(r: &impl SqlRow) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        seq: r.uint("seq")?,
        head_hash: r.text("head_hash")?,
        time: r.int("time")?,
        key_id: r.text("key_id")?,
        signature: r.text("signature")?,
    })
}

// ---- joined reads: one round trip where two would do --------------------------

/// A row's columns under a prefix: the second table of a join, whose
/// columns are aliased `<prefix><name>` so they do not clash with the
/// first's (`id`, `created_at`, ...).
struct Prefixed<'r, R>(&'r R, &'static str);

impl<R: SqlRow> Prefixed<'_, R> {
    fn col(&self, col: &str) -> String {
        format!("{}{col}", self.1)
    }
}

impl<R: SqlRow> SqlRow for Prefixed<'_, R> {
    fn uuid(&self, col: &str) -> Result<Uuid, StoreError> {
        self.0.uuid(&self.col(col))
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError> {
        self.0.opt_uuid(&self.col(col))
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.0.int(&self.col(col))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.0.opt_int(&self.col(col))
    }
    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.0.text(&self.col(col))
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.0.opt_text(&self.col(col))
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        self.0.bytes(&self.col(col))
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.opt_bytes(&self.col(col))
    }
    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        self.0.flag(&self.col(col))
    }
}

/// A session with its user (`$1`: the session id); decoded by
/// [`session_user`]. A session's user always exists (sessions go with
/// their user), so the inner join drops nothing but a missing session.
pub(super) const SESSION_USER: &str = "SELECT s.*,
        u.id AS u_id, u.username AS u_username, u.email AS u_email,
        u.password_hash AS u_password_hash, u.role AS u_role,
        u.created_at AS u_created_at, u.updated_at AS u_updated_at,
        u.failed_logins AS u_failed_logins, u.locked_until AS u_locked_until,
        u.disabled_at AS u_disabled_at, u.must_change_password AS u_must_change_password,
        u.last_login_at AS u_last_login_at, u.password_changed_at AS u_password_changed_at
     FROM sessions s JOIN users u ON u.id = s.user_id
     WHERE s.id = $1";

pub(super) fn session_user(r: &impl SqlRow) -> Result<(Session, User), StoreError> {
    Ok((session(r)?, user(&Prefixed(r, "u_"))?))
}

/// A channel with one user's membership of it, if any (`$1`: the channel
/// id, `$2`: the user id); decoded by [`channel_member`].
pub(super) const CHANNEL_MEMBER: &str = "SELECT c.*,
        m.channel_id AS m_channel_id, m.user_id AS m_user_id, m.role AS m_role,
        m.joined_at AS m_joined_at, m.last_read_seq AS m_last_read_seq,
        m.last_delivered_seq AS m_last_delivered_seq
     FROM channels c
     LEFT JOIN channel_members m ON m.channel_id = c.id AND m.user_id = $2
     WHERE c.id = $1";

pub(super) fn channel_member(r: &impl SqlRow) -> Result<(Channel, Option<Member>), StoreError> {
    let member = Prefixed(r, "m_");
    let member = match member.opt_uuid("channel_id")? {
        Some(_) => Some(self::member(&member)?),
        None => None,
    };
    Ok((channel(r)?, member))
}

/// Decodes every row with `decode`.
pub(super) fn all<R, T>(
    rows: &[R],
    decode: impl Fn(&R) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    rows.iter().map(decode).collect()
}

/// The `seq` and `hash` of the audit chain's last entry, read inside an
/// append's transaction before [`check_audit_continuity`].
pub(super) const AUDIT_CHAIN_HEAD: &str =
    "SELECT seq, hash FROM audit_logs ORDER BY seq DESC LIMIT 1";

/// The `(seq, hash)` of an [`AUDIT_CHAIN_HEAD`] row; `None` for an empty chain.
pub(super) fn chain_head<R: SqlRow>(row: Option<&R>) -> Result<Option<(u64, String)>, StoreError> {
    row.map(|r| Ok((r.uint("seq")?, r.text("hash")?)))
        .transpose()
}

/// Checks that `entries` continue the chain whose head is `head` (`seq`,
/// `hash`): consecutive seqs, each `prev_hash` naming the entry before.
pub(super) fn check_audit_continuity(
    head: Option<(u64, String)>,
    entries: &[AuditRecord],
) -> Result<(), StoreError> {
    let mut prev = head;
    for entry in entries {
        if let Some((seq, hash)) = &prev {
            if entry.seq != seq + 1 || entry.prev_hash != *hash {
                return Err(StoreError::Conflict(format!(
                    "audit entry {} does not continue the chain at {seq}",
                    entry.seq
                )));
            }
        }
        prev = Some((entry.seq, entry.hash.clone()));
    }
    Ok(())
}

/// Reaction counts from `(reaction, count)` rows.
pub(super) fn reaction_counts<R: SqlRow>(
    rows: &[R],
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    rows.iter()
        .map(|r| Ok((r.text("reaction")?, r.uint("n")?)))
        .collect()
}

/// The `details` column: the JSON text of an audit entry's details.
pub(super) fn details_json(details: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(details)
        .map_err(|_| StoreError::Database("audit details do not serialize".into()))
}

/// The row that takes the seq of a message whose client id was a duplicate:
/// deleted at once, no ciphertext (so it uses no key), no client id.
pub(super) fn tombstone(duplicate: &StoredMessage) -> StoredMessage {
    StoredMessage {
        id: duplicate.id,
        channel_id: duplicate.channel_id,
        seq: duplicate.seq,
        sender_id: duplicate.sender_id,
        client_msg_id: None,
        ciphertext: Vec::new(),
        nonce: Vec::new(),
        key_version: 0,
        contains_phi: false,
        reply_to: None,
        created_at: duplicate.created_at,
        edited_at: None,
        expires_at: None,
        deleted_at: Some(duplicate.created_at),
        kind: MessageKind::Text,
        attachments: Vec::new(),
        patient_ref: None,
        patient_tag: None,
        search: Default::default(),
    }
}

/// A `messages_before` page from up to `limit + 1` rows, newest first: the
/// newest `limit` in ascending order, and whether there was one more.
pub(super) fn page_before<R: SqlRow>(
    rows: &[R],
    limit: u32,
) -> Result<(Vec<MessageRow>, bool), StoreError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > limit;
    let mut page = rows
        .iter()
        .take(limit)
        .map(message_row)
        .collect::<Result<Vec<_>, _>>()?;
    page.reverse();
    Ok((page, has_more))
}

/// `Ok` when a statement touched a row, `NotFound` otherwise.
pub(super) fn found(rows_affected: u64) -> Result<(), StoreError> {
    match rows_affected {
        0 => Err(StoreError::NotFound),
        _ => Ok(()),
    }
}

/// The outcome of a batch op that updates or deletes rows.
pub(super) fn done_or_not_found(rows_affected: u64) -> super::WriteOutcome {
    match rows_affected {
        0 => super::WriteOutcome::NotFound,
        _ => super::WriteOutcome::Done,
    }
}

// ---- the file vault -------------------------------------------------------------

pub(super) fn file_record(r: &impl SqlRow) -> Result<super::FileRecord, StoreError> {
    use super::{FileRecord, FileState, WrappedKey};
    Ok(FileRecord {
        id: FileId(r.uuid("id")?),
        owner_id: UserId(r.uuid("owner_id")?),
        channel_id: r.opt_uuid("channel_id")?.map(ChannelId),
        name_ciphertext: r.bytes("name_ciphertext")?,
        name_nonce: r.bytes("name_nonce")?,
        mime: r.text("mime")?,
        size: r.uint("size")?,
        object_key: r.text("object_key")?,
        chunk_len: r.u32("chunk_len")?,
        key: WrappedKey {
            ciphertext: r.bytes("wrapped_key")?,
            nonce: r.bytes("key_nonce")?,
            key_version: r.u32("key_version")?,
        },
        state: FileState::parse(&r.text("state")?)
            .ok_or_else(|| StoreError::Corrupt("files.state: unknown state".into()))?,
        created_at: r.int("created_at")?,
        attached_at: r.opt_int("attached_at")?,
        deleted_at: r.opt_int("deleted_at")?,
    })
}

/// A `file_shares` row whose columns are prefixed `s_` (joined with `files`).
pub(super) fn file_share(r: &impl SqlRow) -> Result<super::FileShare, StoreError> {
    use super::{FileShare, Grantee, ShareRights};
    let grantee = match (r.opt_uuid("user_id")?, r.opt_uuid("channel_id")?) {
        (Some(user), None) => Grantee::User(UserId(user)),
        (None, Some(channel)) => Grantee::Channel(ChannelId(channel)),
        _ => return Err(StoreError::Corrupt("file_shares: not one grantee".into())),
    };
    Ok(FileShare {
        id: ShareId(r.uuid("id")?),
        file_id: FileId(r.uuid("file_id")?),
        grantee,
        rights: ShareRights::parse(&r.text("rights")?)
            .ok_or_else(|| StoreError::Corrupt("file_shares.rights: unknown".into()))?,
        granted_by: UserId(r.uuid("granted_by")?),
        created_at: r.int("created_at")?,
        revoked_at: r.opt_int("revoked_at")?,
        revoked_by: r.opt_uuid("revoked_by")?.map(UserId),
    })
}

/// Columns of a share prefixed `s_`, for joins with `files`.
pub(super) fn prefixed_share(r: &impl SqlRow) -> Result<super::FileShare, StoreError> {
    file_share(&Prefixed(r, "s_"))
}

/// Column list of `file_shares` aliased `s_<name>`.
pub(super) const SHARE_COLUMNS_PREFIXED: &str = "s.id AS s_id, s.file_id AS s_file_id, \
    s.user_id AS s_user_id, s.channel_id AS s_channel_id, s.rights AS s_rights, \
    s.granted_by AS s_granted_by, s.created_at AS s_created_at, \
    s.revoked_at AS s_revoked_at, s.revoked_by AS s_revoked_by";

/// Puts each file row (with a `message_id` column) under its message, in
/// `position` order (the query's).
pub(super) fn attach_rows(
    messages: &mut [MessageRow],
    rows: &[impl SqlRow],
) -> Result<(), StoreError> {
    for row in rows {
        let message = MessageId(row.uuid("message_id")?);
        let file = file_record(row)?;
        if let Some(m) = messages.iter_mut().find(|m| m.message.id == message) {
            m.attachments.push(file);
        }
    }
    Ok(())
}
