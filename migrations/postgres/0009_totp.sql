-- TOTP second factor (issue 37, docs/identity.md "Second factor (TOTP)").
--
-- totp_secrets: one row per account that began or finished enrolment. The
-- RFC 6238 secret is sealed with the keyring (AES-256-GCM under a key
-- derived from the master key of `key_version` for this user; the
-- associated data binds the user and the version), never stored in clear.
-- `confirmed_at` NULL: enrolment pending (the secret was shown, no code
-- confirmed it yet), and the account has no second factor. `last_step`: the
-- highest RFC 6238 time step a code was accepted for; a code of that step or
-- an earlier one is a replay and refused.
--
-- totp_recovery_codes: the ten one-time recovery codes of a confirmed
-- enrolment, as SHA-256 of the user id and the normalized code; `used_at`
-- set once one is spent. A new confirmation replaces them.

CREATE TABLE totp_secrets (
    user_id           UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_ciphertext BYTEA NOT NULL,
    secret_nonce      BYTEA NOT NULL,
    key_version       BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    confirmed_at      BIGINT,
    last_step         BIGINT
);

CREATE INDEX totp_secrets_key_version_idx ON totp_secrets (key_version);

CREATE TABLE totp_recovery_codes (
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, code_hash)
);
