-- Attachments and the file vault (docs/files.md). The content of a file is
-- never in the database: it lives sealed (AES-256-GCM in chunks, a key per
-- file) in the object store, under object_key. A row holds the file key
-- wrapped under a master key version, the sanitized name sealed under the
-- file key, and what the upload found.

CREATE TABLE files (
    id              UUID PRIMARY KEY,
    -- no foreign keys: retention purges the objects of files whose owner
    -- or channel is gone before it removes their rows
    owner_id        UUID NOT NULL,
    -- the channel it was uploaded to; NULL for a vault file
    channel_id      UUID,
    name_ciphertext BYTEA NOT NULL,
    name_nonce      BYTEA NOT NULL,
    mime            TEXT NOT NULL,
    size            BIGINT NOT NULL,
    object_key      TEXT NOT NULL UNIQUE,
    chunk_len       BIGINT NOT NULL,
    wrapped_key     BYTEA NOT NULL,
    key_nonce       BYTEA NOT NULL,
    key_version     BIGINT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('ready', 'pending_scan')),
    created_at      BIGINT NOT NULL,
    -- when a message first carried it
    attached_at     BIGINT,
    deleted_at      BIGINT
);

CREATE INDEX files_owner_idx ON files (owner_id, created_at);
CREATE INDEX files_channel_idx ON files (channel_id);
CREATE INDEX files_key_version_idx ON files (key_version);
CREATE INDEX files_pending_idx ON files (created_at) WHERE state = 'pending_scan';

-- which message carries which file, in order
CREATE TABLE message_files (
    message_id UUID NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    file_id    UUID NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    position   INTEGER NOT NULL,
    PRIMARY KEY (message_id, file_id)
);

CREATE INDEX message_files_file_idx ON message_files (file_id);

-- grants of vault files: to one user or to a channel's members
CREATE TABLE file_shares (
    id         UUID PRIMARY KEY,
    file_id    UUID NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    user_id    UUID,
    channel_id UUID,
    rights     TEXT NOT NULL CHECK (rights IN ('view', 'download')),
    granted_by UUID NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_by UUID,
    CHECK ((user_id IS NULL) <> (channel_id IS NULL))
);

CREATE INDEX file_shares_file_idx ON file_shares (file_id);
CREATE INDEX file_shares_user_idx ON file_shares (user_id) WHERE revoked_at IS NULL;
CREATE INDEX file_shares_channel_idx ON file_shares (channel_id) WHERE revoked_at IS NULL;

-- text, image, file (with attachments) or system
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
