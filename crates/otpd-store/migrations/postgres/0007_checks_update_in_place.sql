-- A check changes a verification's status and attempts_used and nothing else. PostgreSQL can
-- then write the new row version beside the old one on the same page without a new entry in
-- any index (a "HOT" update), but only if no index holds or filters on a changed column and the
-- page has room. `verifications_one_live_per_key` filtered on status (`WHERE status =
-- 'pending'`), so every check that settled a code, and every send that cancelled one, wrote the
-- row to another page and a new entry into each index the new version belongs in (three of the
-- table's four; a wrong code's check, which keeps the code live, into all four).
--
-- The one-live-code rule that index enforced is kept by the send function: it takes the
-- account and destination's advisory lock before it cancels the live code and inserts the new
-- one, so two sends to one key, from any nodes, run one after the other. The lookup of a key's
-- live code, which the index served, now seeks the key's own entries in the destination index,
-- which gains the key's columns; the anti-spam window's count still seeks the account and
-- destination's entries there. Building the new index holds off writes to the table until it
-- is done, as every migration's index does: on a large table, migrate in a quiet hour.
DROP INDEX verifications_one_live_per_key;
DROP INDEX verifications_by_destination;
CREATE INDEX verifications_by_destination
    ON verifications (account_id, destination, dialect, app, reference, created_at);
-- Room on each page for the new versions of its rows: a row is about 250 bytes, so a fifth of
-- a page holds six or seven, and PostgreSQL prunes the dead ones when it next reads the page.
-- Pages written before this keep no room and fill as they did.
ALTER TABLE verifications SET (fillfactor = 80);
