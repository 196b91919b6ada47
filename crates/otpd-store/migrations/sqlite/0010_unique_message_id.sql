-- A message's id names one row, and the index that finds it now says so. On an index that is
-- not unique SQLite plans the delivery outcome's UPDATE (one per message sent) as a change of
-- possibly many rows, and so keeps a statement journal while it runs: a copy of every page it
-- is about to change, to undo half an UPDATE that fails. On a unique index the UPDATE changes
-- one row, keeps no journal and does not look on in the index for a second row: the writer ran
-- 3.5% fewer instructions a send (docs/benchmark-history.md, "The outcome's UPDATE as a one-row
-- change"). Ids begin with their creation time and end in 80 random bits: two messages share
-- one only if they were made in the same millisecond and drew the same 80 bits.
DROP INDEX verifications_by_message_id;
CREATE UNIQUE INDEX verifications_by_message_id ON verifications (message_id)
    WHERE message_id IS NOT NULL;
