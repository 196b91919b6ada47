-- An account's own limits (`accounts limit`): SMS parts a clock hour, and the countries its
-- codes may be texted to (a comma-separated list; NULL for any). The hour's count lives beside
-- the credit it is debited with: `sms_hour_start` is the hour it counts (milliseconds since the
-- epoch), and a send in a later hour starts the count again. Columns with a constant default
-- are added without rewriting the table.
ALTER TABLE accounts
    ADD COLUMN sms_per_hour integer,
    ADD COLUMN countries text,
    ADD COLUMN sms_hour_start bigint NOT NULL DEFAULT 0,
    ADD COLUMN sms_in_hour integer NOT NULL DEFAULT 0;

-- The send of 0003, which debits credit and now counts the hour's SMS under the same row lock.
-- An account with neither limit is read as before, without a lock. A node of the previous
-- release, during a rolling upgrade, calls this function too: for an account given an hourly
-- limit it gets a verdict it does not know and answers that send with an internal error, so
-- set the first hourly limit once every node runs this release.
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
    v_hour     bigint := v_now - v_now % 3600000;
    v_recent   integer;
    v_credits  bigint;
    v_per_hour integer;
    v_in_hour  integer;
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
        SELECT credits, sms_per_hour,
               CASE WHEN sms_hour_start = v_hour THEN sms_in_hour ELSE 0 END
          INTO v_credits, v_per_hour, v_in_hour
          FROM accounts WHERE id = p_account_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN 'unknown_account';
        END IF;
        IF v_credits < p_charge THEN
            RETURN 'no_credit';
        END IF;
        IF v_in_hour + p_charge > v_per_hour THEN
            RETURN 'hourly_limit';
        END IF;
        UPDATE accounts
           SET credits = credits - p_charge, sms_hour_start = v_hour,
               sms_in_hour = v_in_hour + p_charge
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
