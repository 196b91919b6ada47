-- A rotated secret may stay valid for a while beside the new one (`accounts rotate-secret
-- --keep-old-minutes`), so that clients can move to the new secret without an outage. Adding
-- nullable columns without a default rewrites nothing and holds the table's lock for a moment.
ALTER TABLE accounts
    ADD COLUMN previous_sealed_secret bytea,
    ADD COLUMN previous_secret_until bigint;
