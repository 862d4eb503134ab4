-- Break-glass emergency access (issue 36, docs/break-glass.md).
--
-- break_glass_users: the users an admin allowed to break the glass (the
-- clinicians; patients are plain `user`s without a row). Roles with the
-- permission `channels.break_glass` (super_admin, admin) may without a row.
--
-- break_glass_grants: one row per emergency access. While it is open
-- (ended_at NULL) the user is a plain `member` of the channel (the normal
-- memberships row); the grant says that membership is break-glass. The
-- reason is sealed with the message cipher under the channel's key (the
-- grant id in the place of a message id, seq 0), never stored in clear.
-- Rows are never deleted: an ended grant stays in the review queue until
-- reviewed, and listed after.

CREATE TABLE break_glass_users (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    granted_by TEXT NOT NULL,
    granted_at BIGINT NOT NULL
);

CREATE TABLE break_glass_grants (
    id                 TEXT PRIMARY KEY,
    -- no foreign keys: the record outlives the channel and the account
    channel_id         TEXT NOT NULL,
    user_id            TEXT NOT NULL,
    reason_ciphertext  BLOB NOT NULL,
    reason_nonce       BLOB NOT NULL,
    reason_key_version BIGINT NOT NULL,
    granted_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    ended_at           BIGINT,
    ended_by           TEXT,
    end_reason         TEXT CHECK (end_reason IN ('expired', 'ended_by_user', 'revoked')),
    reviewed_by        TEXT,
    reviewed_at        BIGINT,
    review_note        TEXT,
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);

CREATE INDEX break_glass_open_idx ON break_glass_grants (expires_at) WHERE ended_at IS NULL;
CREATE INDEX break_glass_unreviewed_idx ON break_glass_grants (granted_at) WHERE reviewed_at IS NULL;
CREATE INDEX break_glass_granted_idx ON break_glass_grants (granted_at DESC);

-- ---- permissions -------------------------------------------------------------

INSERT INTO permissions (name, description) VALUES
    ('channels.break_glass', 'Open break-glass emergency access to a channel without a per-user right'),
    ('break_glass.review', 'Read and review the break-glass queue, revoke grants, set the per-user right');
INSERT INTO role_permissions (role, permission) VALUES
    ('super_admin', 'channels.break_glass'),
    ('admin', 'channels.break_glass'),
    ('super_admin', 'break_glass.review'),
    ('admin', 'break_glass.review');
