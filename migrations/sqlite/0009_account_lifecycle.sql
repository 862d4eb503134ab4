-- Account lifecycle and password reset (issue 37, docs/identity.md).
--
-- users.password_changed_at: when the password was last set (ms), what
-- password_max_age_days measures. Every write of password_hash sets it to
-- the write's updated_at (store/sqlite.rs update_user); an account is
-- created with it at created_at. Existing accounts are backfilled with
-- updated_at: the password was set then or earlier, so no account is
-- taken for older than it is.
--
-- password_reset_tokens: one row per reset link issued (admin-initiated or
-- self-service). Only the SHA-256 (hex) of the token is kept, never the
-- token. A row is spent once: used (the password was set with it) or
-- replaced (a newer token of the same user was issued). Rows expired for
-- more than a day are dropped when a new token is issued.

ALTER TABLE users ADD COLUMN password_changed_at BIGINT NOT NULL DEFAULT 0;
UPDATE users SET password_changed_at = MAX(created_at, updated_at);

CREATE TABLE password_reset_tokens (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL CHECK (kind IN ('admin', 'self')),
    -- the administrator who asked for it (kind 'admin')
    requested_by TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    spent_at     BIGINT,
    spent_reason TEXT CHECK (spent_reason IN ('used', 'replaced')),
    CHECK ((spent_at IS NULL) = (spent_reason IS NULL))
);

CREATE INDEX password_reset_tokens_user_idx ON password_reset_tokens (user_id, created_at);
CREATE INDEX password_reset_tokens_expiry_idx ON password_reset_tokens (expires_at);
