-- The hourly limit counts any 60 minutes, not each clock hour (`SmsWindow` in otpd-core): a count
-- per clock hour let an account send its limit just before an hour ended and again just after.
-- `sms_window` holds the parts sent in each of the last 13 five-minute buckets, oldest first,
-- as 4-byte big-endian counts; `sms_window_newest` is the newest bucket's start (milliseconds
-- since the epoch). NULL: nothing counted yet.
ALTER TABLE accounts ADD COLUMN sms_window_newest INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN sms_window BLOB;

-- An hour's count that may hold sends of the last 60 minutes goes into the newest bucket it
-- could be in, so that none of it is forgotten early.
UPDATE accounts
   SET sms_window_newest = MIN(clock.now, sms_hour_start + 3599999)
                           - MIN(clock.now, sms_hour_start + 3599999) % 300000,
       sms_window = unhex(printf('%096d%08X', 0, sms_in_hour))
  FROM (SELECT unixepoch() * 1000 AS now) AS clock
 WHERE sms_in_hour > 0 AND sms_hour_start > clock.now - 7200000;

ALTER TABLE accounts DROP COLUMN sms_hour_start;
ALTER TABLE accounts DROP COLUMN sms_in_hour;
