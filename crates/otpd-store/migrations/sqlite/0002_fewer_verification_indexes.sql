-- A send wrote five index entries for its verification; now three (the primary key, this index,
-- nothing else), and a verify that settles a code writes none. Each index entry is a page that
-- the commit writes to the log, and the log's pages are most of a send's commit.
--
-- Retention finds old verifications through the primary key: ids begin with their creation time
-- in milliseconds, so the id order is the age order and `verifications_by_age` repeated it.
DROP INDEX verifications_by_age;
-- One index by destination serves both the anti-spam window (how many sends to this destination
-- recently: answered from the index alone) and the lookup of the live code for a key (the few
-- verifications of that key, then their status). The one-live-code rule was also enforced by a
-- unique partial index; the single writer enforces it already (it cancels the live code and
-- inserts the new one in one job), and the partial index cost a page on every send and on every
-- verify that settled a code (a row leaving it).
DROP INDEX verifications_one_live_per_key;
DROP INDEX verifications_by_destination;
CREATE INDEX verifications_by_destination
    ON verifications (account_id, destination, dialect, app, reference, created_at);
