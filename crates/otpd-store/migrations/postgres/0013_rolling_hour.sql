-- The hourly limit counts any 60 minutes, not each clock hour (`SmsWindow` in otpd-core): a count
-- per clock hour let an account send its limit just before an hour ended and again just after.
-- `sms_window` holds the parts sent in each of the last 13 five-minute buckets, oldest first;
-- `sms_window_newest` is the newest bucket's start (milliseconds since the epoch). NULL: nothing
-- counted yet. `sms_hour_start` and `sms_in_hour` stay, unwritten, until no node of an earlier
-- release can still be running (SQLite, served by one process, drops them now).
ALTER TABLE accounts
    ADD COLUMN sms_window_newest bigint NOT NULL DEFAULT 0,
    ADD COLUMN sms_window integer[];

-- An hour's count that may hold sends of the last 60 minutes goes into the newest bucket it
-- could be in, so that none of it is forgotten early.
UPDATE accounts
   SET sms_window_newest = LEAST(otpd_now_ms(), sms_hour_start + 3599999)
                           - LEAST(otpd_now_ms(), sms_hour_start + 3599999) % 300000,
       sms_window = array_fill(0, ARRAY[12]) || sms_in_hour
 WHERE sms_in_hour > 0 AND sms_hour_start > otpd_now_ms() - 7200000;

-- The send of 0012, which now judges the hourly limit by the window. Nodes of the previous
-- release call it too, and get the window's verdicts.
CREATE OR REPLACE FUNCTION otpd_create_verification(
    p_now               bigint,
    p_window_ms         bigint,
    p_max_sends         integer,
    p_charge            integer,
    p_id                text,
    p_account_id        text,
    p_dialect           text,
    p_app               text,
    p_reference         text,
    p_destination       text,
    p_sender            text,
    p_code_digest       bytea,
    p_code_bound_to     text,
    p_ttl_ms            bigint,
    p_max_attempts      integer,
    p_sandbox           boolean,
    p_sandbox_code      text,
    p_parts             integer,
    p_message_id        text,
    p_sealed_text       bytea,
    p_encoding          text,
    p_message_parts     integer,
    p_entity_id         text,
    p_template_id       text,
    p_claim_ms          bigint
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_now      bigint := COALESCE(p_now, otpd_now_ms());
    v_bucket   bigint := v_now - v_now % 300000;
    v_recent   integer;
    v_credits  bigint;
    v_per_hour integer;
    v_newest   bigint;
    v_window   integer[];
    v_steps    integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_account_id || '/' || p_destination, 0));
    SELECT count(*) INTO v_recent FROM verifications
     WHERE account_id = p_account_id AND destination = p_destination
       AND created_at > v_now - p_window_ms;
    IF v_recent >= p_max_sends THEN
        RETURN 'too_many_sends';
    END IF;
    -- No row lock for accounts with neither a credit limit nor an hourly one: their sends
    -- never queue on each other.
    SELECT credits, sms_per_hour INTO v_credits, v_per_hour FROM accounts WHERE id = p_account_id;
    IF NOT FOUND THEN
        RETURN 'unknown_account';
    END IF;
    IF p_charge > 0 AND (v_credits IS NOT NULL OR v_per_hour IS NOT NULL) THEN
        -- Read again on the locked row, so parallel sends on any node never overdraw the credit
        -- nor pass the hour's limit.
        SELECT credits, sms_per_hour, sms_window_newest,
               COALESCE(sms_window, array_fill(0, ARRAY[13]))
          INTO v_credits, v_per_hour, v_newest, v_window
          FROM accounts WHERE id = p_account_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN 'unknown_account';
        END IF;
        IF v_credits < p_charge THEN
            RETURN 'no_credit';
        END IF;
        -- The window moved on to now's bucket, as `SmsWindow::at` moves it: the buckets more
        -- than an hour old drop off the front, empty ones join at the end. A clock behind the
        -- newest bucket moves nothing.
        v_steps := LEAST(13, GREATEST(0, (v_bucket - v_newest) / 300000));
        IF v_steps > 0 THEN
            v_window := v_window[v_steps + 1:13] || array_fill(0, ARRAY[v_steps]);
            v_newest := v_bucket;
        END IF;
        IF (SELECT sum(parts) FROM unnest(v_window) AS parts) + p_charge > v_per_hour THEN
            RETURN 'hourly_limit';
        END IF;
        v_window[13] := v_window[13] + p_charge;
        UPDATE accounts
           SET credits = credits - p_charge, sms_window_newest = v_newest, sms_window = v_window
         WHERE id = p_account_id;
    END IF;
    UPDATE verifications
       SET status = CASE WHEN expires_at <= v_now THEN 'expired' ELSE 'cancelled' END
     WHERE account_id = p_account_id AND dialect = p_dialect AND app = p_app
       AND reference = p_reference AND destination = p_destination AND status = 'pending';
    INSERT INTO verifications (id, account_id, dialect, app, reference, destination, sender,
            code_digest, key_bound_digest, status, created_at, expires_at, attempts_used,
            max_attempts, sandbox, sandbox_code, parts, message_id)
    VALUES (p_id, p_account_id, p_dialect, p_app, p_reference, p_destination, p_sender,
            CASE WHEN p_code_bound_to = 'id' THEN p_code_digest END,
            CASE WHEN p_code_bound_to = 'key' THEN p_code_digest END,
            'pending', v_now, v_now + p_ttl_ms, 0, p_max_attempts, p_sandbox, p_sandbox_code,
            p_parts, p_message_id);
    IF p_message_id IS NOT NULL THEN
        INSERT INTO outbox (id, verification_id, account_id, destination, sender, sealed_text,
                encoding, parts, entity_id, template_id, state, next_attempt_at, created_at,
                updated_at, lease_until, attempts)
        VALUES (p_message_id, p_id, p_account_id, p_destination, p_sender, p_sealed_text,
                p_encoding, p_message_parts, p_entity_id, p_template_id, 'pending', v_now, v_now,
                v_now, CASE WHEN p_claim_ms IS NULL THEN 0 ELSE v_now + p_claim_ms END,
                CASE WHEN p_claim_ms IS NULL THEN 0 ELSE 1 END);
    END IF;
    RETURN 'ok';
END
$$;
