-- Every send writes an entry into this index on a page of its own (destinations come in no
-- order). A Pinpoint send's entry held "pinpoint", the 32-character application id and the
-- ReferenceId as text, about 120 bytes in all; with the key's 8-byte digest in their place it
-- is about 70, so the index has fewer pages to split, cache and write to the log. (An amm
-- entry, whose app and reference are mostly empty, grows by 3 bytes.) A key's lookup still
-- seeks the key's own entries, newest first, and reads the row to confirm the key: two keys
-- with one digest would both be found there, and told apart by the row.
DROP INDEX verifications_by_destination;
CREATE INDEX verifications_by_destination
    ON verifications (account_id, destination, key_hash, created_at);
