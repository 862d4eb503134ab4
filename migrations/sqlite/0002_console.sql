-- The admin console (docs/admin.md) and moderation: account lifecycle,
-- console sessions, archived channels, flagged messages, runtime settings.

-- ---- accounts ---------------------------------------------------------------

-- `locked_until` (0001) is the admin's lock: i64::MAX until unlocked.
ALTER TABLE users ADD COLUMN disabled_at BIGINT;
-- a temporary password set by an admin: it must be changed before anything
ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_login_at BIGINT;

-- 'api' sessions are refresh-token families; 'console' sessions are the
-- admin console's cookie sessions (their `token_hash` is the cookie
-- secret's), never rotated as refresh tokens.
ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'api'
    CHECK (kind IN ('api', 'console'));
ALTER TABLE sessions ADD COLUMN last_seen_at BIGINT;

-- ---- channels and messages --------------------------------------------------

-- an archived channel takes no new messages; its history stays
ALTER TABLE channels ADD COLUMN archived_at BIGINT;

-- a moderator's flag: when, by whom (a user id, no foreign key: the flag
-- outlives the account) and why
ALTER TABLE messages ADD COLUMN flagged_at BIGINT;
ALTER TABLE messages ADD COLUMN flagged_by TEXT;
ALTER TABLE messages ADD COLUMN flag_reason TEXT;

-- the moderation queue: flagged and not deleted, newest flag first
CREATE INDEX messages_flagged_idx ON messages (flagged_at DESC)
    WHERE flagged_at IS NOT NULL AND deleted_at IS NULL;

-- ---- runtime settings -------------------------------------------------------

-- settings an admin changes while the server runs (rate limits), applied
-- over the configuration at start
CREATE TABLE settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT
);

-- ---- permissions -------------------------------------------------------------

INSERT INTO permissions (name, description) VALUES
    ('settings.manage', 'Read the effective configuration and change runtime settings');
INSERT INTO role_permissions (role, permission) VALUES
    ('super_admin', 'settings.manage'),
    ('admin', 'settings.manage'),
    -- moderators see the console's moderation and audit sections
    ('moderator', 'audit.read');
