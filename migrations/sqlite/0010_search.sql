-- Search over encrypted messages (issue 38, docs/search.md).
--
-- message_search_tokens: the blind index. One row per distinct normalized
-- word of a message: the first 16 bytes of HMAC-SHA256 under the channel's
-- search key of key_version (HKDF from the master keyring, its own purpose),
-- never the word. Tokens of two channels never compare. An edit replaces a
-- message's rows; a delete or TTL expiry removes them (unless the message
-- is under a legal hold); a purge cascades; `keys rotate` rewrites them
-- under the new version with the message's re-encryption.

CREATE TABLE message_search_tokens (
    message_id  TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    channel_id  TEXT NOT NULL,
    token       BLOB NOT NULL,
    key_version BIGINT NOT NULL,
    PRIMARY KEY (message_id, token)
);

CREATE INDEX message_search_tokens_lookup_idx ON message_search_tokens (channel_id, token);
CREATE INDEX message_search_tokens_key_version_idx ON message_search_tokens (key_version);
