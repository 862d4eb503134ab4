-- Legal holds (issue 36, docs/retention.md). A hold keeps messages, and the
-- files they carry, past TTL expiry, retention and purge until it is
-- released; a channel with held messages cannot be deleted. A hold is on
--   channel  every message of the channel;
--   user     every message the user sent, in any channel;
--   patient  every message concerning the patient: its own patient_tag is
--            one of the patient's tags, or its own tag is NULL and its
--            channel's is (the one rule of migration 0004).
-- A patient hold's reference is sealed (RefOwner::Record(b'h', hold id));
-- legal_hold_tags holds its tags under every keyring version, recomputed
-- from the sealed reference by every retention run, so a rotation of the
-- master key does not loosen the hold. Rows are never deleted: a release
-- sets released_at, and the hold stays listed.

CREATE TABLE legal_holds (
    id             TEXT PRIMARY KEY,
    scope          TEXT NOT NULL CHECK (scope IN ('channel', 'user', 'patient')),
    -- no foreign keys: the hold is a record of its own, kept after a
    -- user's account is deleted (their messages stay, with their sender id)
    channel_id     TEXT,
    user_id        TEXT,
    patient_ref    BLOB,
    -- the tag under the key version active when placed: what the API and
    -- the audit show instead of the reference
    patient_tag    TEXT,
    reason         TEXT NOT NULL,
    placed_by      TEXT NOT NULL,
    placed_at      BIGINT NOT NULL,
    released_at    BIGINT,
    released_by    TEXT,
    release_reason TEXT,
    CHECK ((scope = 'channel') = (channel_id IS NOT NULL)),
    CHECK ((scope = 'user') = (user_id IS NOT NULL)),
    CHECK ((scope = 'patient') = (patient_ref IS NOT NULL))
);

CREATE INDEX legal_holds_active_idx ON legal_holds (scope) WHERE released_at IS NULL;
CREATE INDEX legal_holds_placed_idx ON legal_holds (placed_at DESC);

CREATE TABLE legal_hold_tags (
    hold_id TEXT NOT NULL REFERENCES legal_holds (id) ON DELETE CASCADE,
    tag     TEXT NOT NULL,
    PRIMARY KEY (hold_id, tag)
);

CREATE INDEX legal_hold_tags_tag_idx ON legal_hold_tags (tag);

-- ---- permissions -------------------------------------------------------------

INSERT INTO permissions (name, description) VALUES
    ('holds.manage', 'Place, list and release legal holds (/api/holds)');
INSERT INTO role_permissions (role, permission) VALUES
    ('super_admin', 'holds.manage'),
    ('admin', 'holds.manage');
