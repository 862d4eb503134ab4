-- In-app notifications, mentions, preferences and announcements (issue 38,
-- docs/notifications.md).
--
-- message_mentions: the members a message's `@username`s named when it was
-- sent or last edited (user ids only, never text); an edit replaces them,
-- and they go with their message's row (a trigger, not a foreign key: they
-- are written in the same group commit just before the message's insert,
-- so that its ack means both are durable).
--
-- notification_prefs: one JSON document per user who saved preferences
-- (`{mention, directMessage, announcement, quietHours, mutedChannels}`).
--
-- announcements: an admin's announcement. Title and body are kept in
-- clear: an admin writes them for everyone (no PHI, see
-- docs/notifications.md). `roles` is a comma list, '' for everyone.
-- announcement_reads: when each user last received announcements on
-- connect; a connection gets the current ones created since.

CREATE TABLE message_mentions (
    message_id TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    position   BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id)
);

CREATE TRIGGER message_mentions_follow_messages AFTER DELETE ON messages
BEGIN
    DELETE FROM message_mentions WHERE message_id = OLD.id;
END;

CREATE TABLE notification_prefs (
    user_id    TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    prefs      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE announcements (
    id         TEXT PRIMARY KEY,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    roles      TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);

CREATE INDEX announcements_created_at_idx ON announcements (created_at);

CREATE TABLE announcement_reads (
    user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    seen_at BIGINT NOT NULL
);

INSERT INTO permissions (name, description) VALUES
    ('announcements.create', 'Post announcements to everyone or to roles (/api/announcements)');
INSERT INTO role_permissions (role, permission) VALUES
    ('super_admin', 'announcements.create'),
    ('admin', 'announcements.create');
