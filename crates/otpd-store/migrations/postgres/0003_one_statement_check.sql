-- A code's digest may be bound to a Pinpoint key instead of the verification id (see
-- DigestSubject in otpd-core): a Pinpoint verify knows the key before it finds the row, so the
-- submitted code's digest is computed first and the whole check runs as one statement.
--
-- A key-bound digest has a column of its own and leaves code_digest NULL. A node of the previous
-- release, still running during a rolling upgrade, compares code_digest as bound to the id: on a
-- NULL its check fails with an error (the SDK retries, the next node answers) instead of calling
-- a right code wrong and using up an attempt. Its sends keep writing id-bound digests, which
-- this release still checks.
ALTER TABLE verifications ALTER COLUMN code_digest DROP NOT NULL;
ALTER TABLE verifications ADD COLUMN key_bound_digest bytea;
-- NOT VALID: every row from before has a code_digest and no key_bound_digest, and the check
-- need not read the whole table under the migration's lock to find that out.
ALTER TABLE verifications ADD CONSTRAINT verifications_one_digest
    CHECK ((code_digest IS NULL) <> (key_bound_digest IS NULL)) NOT VALID;

-- The send of 0001 with one more argument, p_code_bound_to ('id' or 'key'): what p_code_digest
-- is bound to.
CREATE FUNCTION otpd_create_verification(
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
    v_now     bigint := COALESCE(p_now, otpd_now_ms());
    v_recent  integer;
    v_credits bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_account_id || '/' || p_destination, 0));
    SELECT count(*) INTO v_recent FROM verifications
     WHERE account_id = p_account_id AND destination = p_destination
       AND created_at > v_now - p_window_ms;
    IF v_recent >= p_max_sends THEN
        RETURN 'too_many_sends';
    END IF;
    -- No row lock for accounts without a credit limit: their sends never queue on each other.
    SELECT credits INTO v_credits FROM accounts WHERE id = p_account_id;
    IF NOT FOUND THEN
        RETURN 'unknown_account';
    END IF;
    IF v_credits IS NOT NULL THEN
        -- The condition is evaluated again on the locked row, so parallel debits never overdraw.
        UPDATE accounts SET credits = credits - p_charge
         WHERE id = p_account_id AND credits >= p_charge;
        IF NOT FOUND THEN
            RETURN 'no_credit';
        END IF;
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

-- The send of the previous release, kept for its nodes until they stop: its digests are bound
-- to the id.
CREATE OR REPLACE FUNCTION otpd_create_verification(
    p_now bigint, p_window_ms bigint, p_max_sends integer, p_charge integer, p_id text,
    p_account_id text, p_dialect text, p_app text, p_reference text, p_destination text,
    p_sender text, p_code_digest bytea, p_ttl_ms bigint, p_max_attempts integer,
    p_sandbox boolean, p_sandbox_code text, p_parts integer, p_message_id text,
    p_sealed_text bytea, p_encoding text, p_message_parts integer, p_entity_id text,
    p_template_id text, p_claim_ms bigint
) RETURNS text LANGUAGE sql AS $$
    SELECT otpd_create_verification(p_now, p_window_ms, p_max_sends, p_charge, p_id,
        p_account_id, p_dialect, p_app, p_reference, p_destination, p_sender, p_code_digest,
        'id', p_ttl_ms, p_max_attempts, p_sandbox, p_sandbox_code, p_parts, p_message_id,
        p_sealed_text, p_encoding, p_message_parts, p_entity_id, p_template_id, p_claim_ms)
$$;

-- Whether two digests are equal, in a time that does not depend on where they differ (bytea's
-- `=` stops at the first differing byte): XOR the two and count the bits that are set.
CREATE FUNCTION otpd_digests_equal(p_left bytea, p_right bytea) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(p_left) <> length(p_right) THEN false
                ELSE bit_count(('x' || encode(p_left, 'hex'))::varbit
                               # ('x' || encode(p_right, 'hex'))::varbit) = 0 END
$$;

-- A check, in one statement (one round trip, its own transaction). The caller passes the
-- submitted code's digest bound to what it finds the verification by: its id (p_id), or the key
-- of a live Pinpoint code (p_id NULL). Decided here, in order:
--   * the per-address limit, under a lock on the account and address, so parallel checks from
--     any node count each other's wrong codes;
--   * the row lock, on which parallel checks of one code queue;
--   * the state machine: the same as CheckState::check in otpd-core, which the store's
--     conformance tests hold this to, state by state;
--   * the new state and the history record (when p_record_code is not NULL).
-- When the code has to be compared and the row's digest is bound to something else (a code sent
-- before this migration, or a key-bound code found by id), it writes nothing and answers
-- 'rebind' with what the caller needs to compute the digest the row has; the caller then checks
-- again by id.
CREATE FUNCTION otpd_check(
    p_now             bigint,
    p_account_id      text,
    p_id              text,
    p_dialect         text,
    p_app             text,
    p_reference       text,
    p_destination     text,
    p_bound_to        text,
    p_digest          bytea,
    p_record_code     text,
    p_client_ip       text,
    p_ip_window_ms    bigint,
    p_ip_max_failures integer
) RETURNS TABLE (outcome text, message_id text, verification_id text, bound_to text,
                 dialect text, app text, reference text, destination text)
LANGUAGE plpgsql AS $$
DECLARE
    v_now           bigint := COALESCE(p_now, otpd_now_ms());
    v_failures      bigint := 0;
    v_row           record;
    v_stored        bytea;
    v_status        text;
    v_attempts      integer;
    v_outcome       text;
BEGIN
    IF p_ip_window_ms IS NOT NULL AND p_client_ip IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_account_id || '/ip/' || p_client_ip, 0));
        -- A statement of its own after the lock, so it sees every failure committed before.
        SELECT count(*) INTO v_failures FROM checks c
         WHERE c.account_id = p_account_id AND c.client_ip = p_client_ip
           AND c.at > v_now - p_ip_window_ms AND c.outcome IN ('mismatch', 'mismatch_exhausted');
    END IF;
    IF p_id IS NULL THEN
        SELECT v.id, v.status, v.expires_at, v.attempts_used, v.max_attempts, v.code_digest,
               v.key_bound_digest, v.message_id, v.dialect, v.app, v.reference, v.destination
          INTO v_row FROM verifications v
         WHERE v.account_id = p_account_id AND v.dialect = p_dialect AND v.app = p_app
           AND v.reference = p_reference AND v.destination = p_destination
           AND v.status = 'pending'
           FOR UPDATE;
    ELSE
        SELECT v.id, v.status, v.expires_at, v.attempts_used, v.max_attempts, v.code_digest,
               v.key_bound_digest, v.message_id, v.dialect, v.app, v.reference, v.destination
          INTO v_row FROM verifications v
         WHERE v.id = p_id AND v.account_id = p_account_id
           FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, NULL::text, NULL::text, NULL::text, NULL::text,
            NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    IF v_failures >= p_ip_max_failures THEN
        RETURN QUERY SELECT 'rate_limited'::text, v_row.message_id, v_row.id, NULL::text,
            NULL::text, NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;

    v_status := v_row.status;
    v_attempts := v_row.attempts_used;
    IF v_status = 'pending' AND v_now >= v_row.expires_at THEN
        v_status := 'expired';
    END IF;
    IF v_status = 'verified' THEN
        v_outcome := 'already_verified';
    ELSIF v_status = 'cancelled' THEN
        v_outcome := 'cancelled';
    ELSIF v_status = 'failed' THEN
        v_outcome := 'attempts_exhausted';
    ELSIF v_status = 'expired' THEN
        v_outcome := 'expired';
    ELSIF v_status <> 'pending' THEN
        RAISE EXCEPTION 'verification % has an unknown status %', v_row.id, v_status;
    ELSIF v_attempts >= v_row.max_attempts THEN
        v_outcome := 'attempts_exhausted';
        v_status := 'failed';
    ELSE
        v_stored := CASE p_bound_to WHEN 'id' THEN v_row.code_digest
                                    WHEN 'key' THEN v_row.key_bound_digest END;
        IF v_stored IS NULL THEN
            RETURN QUERY SELECT 'rebind'::text, v_row.message_id, v_row.id,
                CASE WHEN v_row.key_bound_digest IS NULL THEN 'id' ELSE 'key' END,
                v_row.dialect, v_row.app, v_row.reference, v_row.destination;
            RETURN;
        END IF;
        -- The attempt is used whatever the comparison finds.
        v_attempts := v_attempts + 1;
        IF otpd_digests_equal(v_stored, p_digest) THEN
            v_outcome := 'verified';
            v_status := 'verified';
        ELSIF v_attempts >= v_row.max_attempts THEN
            v_outcome := 'mismatch_exhausted';
            v_status := 'failed';
        ELSE
            v_outcome := 'mismatch';
        END IF;
    END IF;

    IF v_status <> v_row.status OR v_attempts <> v_row.attempts_used THEN
        UPDATE verifications SET status = v_status, attempts_used = v_attempts
         WHERE id = v_row.id;
    END IF;
    IF p_record_code IS NOT NULL THEN
        INSERT INTO checks (verification_id, account_id, at, submitted_code, outcome, client_ip)
        VALUES (v_row.id, p_account_id, v_now, p_record_code, v_outcome, p_client_ip);
    END IF;
    RETURN QUERY SELECT v_outcome, v_row.message_id, v_row.id, NULL::text, NULL::text,
        NULL::text, NULL::text, NULL::text;
END
$$;
