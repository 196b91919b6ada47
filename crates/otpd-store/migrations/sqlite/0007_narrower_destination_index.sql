-- Every send writes an entry into this index on a page of its own (destinations come in no
-- order), and its entries held the key's dialect, app and reference as text: about 120 bytes
-- each. With the key's 8-byte digest in their place, an entry is about half that, so the index
-- has half the pages to split, cache and write to the log. A key's lookup still seeks the key's
-- own entries, newest first, and reads the row to confirm the key (two keys with one digest
-- would both be found there, and told apart by the row).
DROP INDEX verifications_by_destination;
CREATE INDEX verifications_by_destination
    ON verifications (account_id, destination, key_hash, created_at);
