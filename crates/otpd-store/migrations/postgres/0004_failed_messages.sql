-- The operator's list of messages given up on, newest first (the web console). Failed messages
-- are few, so the index is small; other rows only have its condition checked.
CREATE INDEX outbox_failed ON outbox (updated_at) WHERE state = 'failed';
