-- A message's channel is checked once per channel per batch, not once per row.
--
-- The foreign key from messages to channels ran its check, a row lock on the
-- channel, for every inserted row: about 40 % of a batch insert's time
-- (benches/README.md, persist). The persistence path now takes the same lock
-- itself, once per channel per statement (`SELECT ... FOR KEY SHARE` in
-- `insert_rows`, actors/src/store/postgres.rs), and inserts only rows whose
-- channel it locked; a channel being deleted meanwhile waits for the batch,
-- or was gone before it and its rows are skipped (the caller answers
-- `not_found`). The cascade the foreign key gave is this trigger.

ALTER TABLE messages DROP CONSTRAINT messages_channel_id_fkey;

CREATE FUNCTION messages_delete_with_channel() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM messages WHERE channel_id = OLD.id;
    RETURN OLD;
END
$$;

CREATE TRIGGER channels_delete_messages
    AFTER DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION messages_delete_with_channel();
