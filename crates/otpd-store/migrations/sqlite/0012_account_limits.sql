-- An account's own limits (`accounts limit`): SMS parts a clock hour, and the countries its
-- codes may be texted to (a comma-separated list; NULL for any). The hour's count lives beside
-- the credit it is debited with: `sms_hour_start` is the hour it counts (milliseconds since the
-- epoch), and a send in a later hour starts the count again.
ALTER TABLE accounts ADD COLUMN sms_per_hour INTEGER;
ALTER TABLE accounts ADD COLUMN countries TEXT;
ALTER TABLE accounts ADD COLUMN sms_hour_start INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN sms_in_hour INTEGER NOT NULL DEFAULT 0;
