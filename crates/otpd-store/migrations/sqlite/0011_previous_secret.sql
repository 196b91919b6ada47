-- A rotated secret may stay valid for a while beside the new one (`accounts rotate-secret
-- --keep-old-minutes`), so that clients can move to the new secret without an outage.
ALTER TABLE accounts ADD COLUMN previous_sealed_secret BLOB;
ALTER TABLE accounts ADD COLUMN previous_secret_until INTEGER;
