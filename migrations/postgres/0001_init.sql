-- Courier schema, PostgreSQL.
--
-- Conventions (shared with migrations/sqlite): ids are UUIDs, timestamps are
-- BIGINT milliseconds since the Unix epoch, per-channel `seq` is BIGINT from 1,
-- hashes are lowercase hex TEXT. Message bodies are stored only encrypted
-- (`ciphertext`, `nonce`, `key_version`); no column ever holds plaintext.

-- ---- roles and permissions --------------------------------------------------

CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

CREATE TABLE permissions (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL
);

CREATE TABLE role_permissions (
    role       TEXT NOT NULL REFERENCES roles (name) ON DELETE CASCADE,
    permission TEXT NOT NULL REFERENCES permissions (name) ON DELETE CASCADE,
    PRIMARY KEY (role, permission)
);

INSERT INTO roles (name, description) VALUES
    ('super_admin', 'Everything, including managing admins'),
    ('admin', 'Manages users and channels, reads the audit log'),
    ('moderator', 'Moderates messages'),
    ('user', 'A clinician, patient or service account');

INSERT INTO permissions (name, description) VALUES
    ('users.manage', 'Create, update and delete users'),
    ('users.read', 'List and read users'),
    ('channels.manage', 'Update and delete any channel and its members'),
    ('channels.create_public', 'Create public and broadcast channels'),
    ('channels.create_private', 'Create private channels'),
    ('messages.moderate', 'Delete other users'' messages'),
    ('audit.read', 'Read and verify the audit log'),
    ('keys.manage', 'Rotate encryption keys'),
    ('sessions.manage', 'List and revoke other users'' sessions');

INSERT INTO role_permissions (role, permission)
    SELECT 'super_admin', name FROM permissions;
INSERT INTO role_permissions (role, permission)
    SELECT 'admin', name FROM permissions WHERE name <> 'keys.manage';
INSERT INTO role_permissions (role, permission) VALUES
    ('moderator', 'users.read'),
    ('moderator', 'channels.create_public'),
    ('moderator', 'channels.create_private'),
    ('moderator', 'messages.moderate'),
    ('user', 'channels.create_private');

-- ---- users and sessions -----------------------------------------------------

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL,
    email         TEXT,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL REFERENCES roles (name),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    -- consecutive failed logins since the last success
    failed_logins BIGINT NOT NULL DEFAULT 0,
    -- logins are refused while this lies in the future
    locked_until  BIGINT
);

-- Usernames are unique regardless of case.
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

-- A session is one refresh-token family. `token_hash` is the SHA-256 (hex) of
-- its current refresh token; the token itself is never stored.
CREATE TABLE sessions (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ip         TEXT,
    user_agent TEXT,
    valid      BOOLEAN NOT NULL DEFAULT TRUE
);

CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- Refresh-token reuse detection: every hash a session carried before its
-- current one. Presenting one of these while the session is still valid
-- means the token was stolen or replayed, and revokes the session.
CREATE TABLE session_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    retired_at BIGINT NOT NULL
);

CREATE INDEX session_refresh_tokens_session_id_idx ON session_refresh_tokens (session_id);

-- ---- channels ---------------------------------------------------------------

CREATE TABLE channels (
    id               UUID PRIMARY KEY,
    name             TEXT NOT NULL,
    description      TEXT,
    kind             TEXT NOT NULL
                     CHECK (kind IN ('public', 'private', 'direct', 'broadcast')),
    -- no foreign key: the channel outlives its creator's account
    created_by       UUID NOT NULL,
    created_at       BIGINT NOT NULL,
    -- direct channels: the two user ids, sorted and joined by ':'
    direct_key       TEXT UNIQUE,
    -- the highest seq among messages physically purged from this channel, so
    -- that the channel's last seq never goes back after a purge
    purged_max_seq   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE channel_members (
    channel_id         UUID NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    user_id            UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role               TEXT NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    joined_at          BIGINT NOT NULL,
    last_read_seq      BIGINT NOT NULL DEFAULT 0,
    last_delivered_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (channel_id, user_id)
);

CREATE INDEX channel_members_user_id_idx ON channel_members (user_id);

-- ---- messages ---------------------------------------------------------------

CREATE TABLE messages (
    id            UUID PRIMARY KEY,
    channel_id    UUID NOT NULL REFERENCES channels (id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    -- no foreign key: messages stay when their sender's account is deleted
    sender_id     UUID NOT NULL,
    client_msg_id TEXT,
    -- AES-256-GCM output; empty for a tombstone (a duplicate's seq)
    ciphertext    BYTEA NOT NULL,
    nonce         BYTEA NOT NULL,
    key_version   BIGINT NOT NULL,
    contains_phi  BOOLEAN NOT NULL DEFAULT FALSE,
    reply_to      UUID,
    created_at    BIGINT NOT NULL,
    edited_at     BIGINT,
    expires_at    BIGINT,
    deleted_at    BIGINT,
    CONSTRAINT messages_channel_seq_key UNIQUE (channel_id, seq),
    CONSTRAINT messages_client_msg_key UNIQUE (channel_id, sender_id, client_msg_id)
);

CREATE INDEX messages_expires_at_idx ON messages (expires_at)
    WHERE expires_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX messages_deleted_at_idx ON messages (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX messages_created_at_idx ON messages (created_at);
CREATE INDEX messages_key_version_idx ON messages (key_version);

CREATE TABLE message_reactions (
    message_id UUID NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reaction   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, reaction)
);

-- ---- audit ------------------------------------------------------------------

-- The tamper-evident audit chain: `hash` = SHA-256 over the entry and
-- `prev_hash`. `details` is JSON text, kept byte for byte as written (not
-- jsonb, which would reorder it). No foreign keys: entries outlive accounts.
CREATE TABLE audit_logs (
    seq        BIGINT PRIMARY KEY,
    timestamp  BIGINT NOT NULL,
    actor_id   UUID,
    ip         TEXT,
    user_agent TEXT,
    action     TEXT NOT NULL,
    details    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

CREATE INDEX audit_logs_actor_id_idx ON audit_logs (actor_id, seq);
CREATE INDEX audit_logs_action_idx ON audit_logs (action, seq);

-- Signed chain heads (Ed25519, hex).
CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    head_hash TEXT NOT NULL,
    time      BIGINT NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);
