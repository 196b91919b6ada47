-- A 64-bit digest of each verification's dialect, app and reference (its key, less the account
-- and destination the index holds already), for the destination index to hold in their place:
-- see 0007. The digest is computed in Rust (`queries::key_hash`); this migration's hook fills
-- it in for the rows already here.
ALTER TABLE verifications ADD COLUMN key_hash INTEGER NOT NULL DEFAULT 0;
