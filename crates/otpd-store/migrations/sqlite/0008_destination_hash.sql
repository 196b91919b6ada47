-- A 64-bit digest of each verification's account and destination, for the destination index to
-- hold in their place, as it holds the key's digest since 0007. An entry held the 32-character
-- account id and the phone number as text, about 70 bytes in all; with the digest it is about
-- 30, so the index has well under half the pages, and more of it stays in the writer's page
-- cache. The index grows by an entry on a page of its own with every send: with 450,000 to
-- 700,000 verifications stored, the writer read 1.6 pages a send back from the operating
-- system, and 0.6 with this index. The digest is computed in Rust
-- (`digests::destination_hash`); this migration's hook fills it in for the rows already here
-- (5.6 s for a million).
ALTER TABLE verifications ADD COLUMN destination_hash INTEGER NOT NULL DEFAULT 0;
DROP INDEX verifications_by_destination;
-- The window's count reads a destination's entries; a key's lookup seeks the key's own entries,
-- newest first, and confirms the key (account, destination, dialect, app, reference) on the
-- row.
CREATE INDEX verifications_by_destination
    ON verifications (destination_hash, key_hash, created_at);
