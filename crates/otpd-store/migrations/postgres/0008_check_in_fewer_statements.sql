-- The check of 0003, with the same arguments, answers and decisions, in one statement fewer:
-- each statement a PL/pgSQL function runs is planned once but started, run and ended on every
-- call, and running them was most of PostgreSQL's CPU per check. The answer is now assigned to
-- the output columns and returned with RETURN NEXT instead of by a query.
CREATE OR REPLACE FUNCTION otpd_check(
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
BEGIN
    IF p_ip_window_ms IS NOT NULL AND p_client_ip IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(p_account_id || '/ip/' || p_client_ip, 0));
        -- A statement of its own after the lock, so it sees every failure committed before.
        SELECT count(*) INTO v_failures FROM checks c
         WHERE c.account_id = p_account_id AND c.client_ip = p_client_ip
           AND c.at > v_now - p_ip_window_ms AND c.outcome IN ('mismatch', 'mismatch_exhausted');
    END IF;
    IF p_id IS NULL THEN
        SELECT v.id, v.status, v.expires_at, v.attempts_used, v.max_attempts,
               v.code_digest, v.key_bound_digest, v.message_id, v.dialect, v.app, v.reference,
               v.destination
          INTO v_row FROM verifications v
         WHERE v.account_id = p_account_id AND v.dialect = p_dialect AND v.app = p_app
           AND v.reference = p_reference AND v.destination = p_destination
           AND v.status = 'pending'
           FOR UPDATE;
    ELSE
        SELECT v.id, v.status, v.expires_at, v.attempts_used, v.max_attempts,
               v.code_digest, v.key_bound_digest, v.message_id, v.dialect, v.app, v.reference,
               v.destination
          INTO v_row FROM verifications v
         WHERE v.id = p_id AND v.account_id = p_account_id
           FOR UPDATE;
    END IF;
    IF NOT FOUND THEN
        outcome := 'not_found';
        RETURN NEXT;
        RETURN;
    END IF;
    message_id := v_row.message_id;
    verification_id := v_row.id;
    IF v_failures >= p_ip_max_failures THEN
        outcome := 'rate_limited';
        RETURN NEXT;
        RETURN;
    END IF;

    v_status := v_row.status;
    v_attempts := v_row.attempts_used;
    IF v_status = 'pending' AND v_now >= v_row.expires_at THEN
        v_status := 'expired';
    END IF;
    IF v_status = 'verified' THEN
        outcome := 'already_verified';
    ELSIF v_status = 'cancelled' THEN
        outcome := 'cancelled';
    ELSIF v_status = 'failed' THEN
        outcome := 'attempts_exhausted';
    ELSIF v_status = 'expired' THEN
        outcome := 'expired';
    ELSIF v_status <> 'pending' THEN
        RAISE EXCEPTION 'verification % has an unknown status %', v_row.id, v_status;
    ELSIF v_attempts >= v_row.max_attempts THEN
        outcome := 'attempts_exhausted';
        v_status := 'failed';
    ELSE
        v_stored := CASE p_bound_to WHEN 'id' THEN v_row.code_digest
                                    WHEN 'key' THEN v_row.key_bound_digest END;
        IF v_stored IS NULL THEN
            outcome := 'rebind';
            bound_to := CASE WHEN v_row.key_bound_digest IS NULL THEN 'id' ELSE 'key' END;
            dialect := v_row.dialect;
            app := v_row.app;
            reference := v_row.reference;
            destination := v_row.destination;
            RETURN NEXT;
            RETURN;
        END IF;
        -- The attempt is used whatever the comparison finds.
        v_attempts := v_attempts + 1;
        IF otpd_digests_equal(v_stored, p_digest) THEN
            outcome := 'verified';
            v_status := 'verified';
        ELSIF v_attempts >= v_row.max_attempts THEN
            outcome := 'mismatch_exhausted';
            v_status := 'failed';
        ELSE
            outcome := 'mismatch';
        END IF;
    END IF;

    IF v_status <> v_row.status OR v_attempts <> v_row.attempts_used THEN
        UPDATE verifications SET status = v_status, attempts_used = v_attempts
         WHERE id = v_row.id;
    END IF;
    IF p_record_code IS NOT NULL THEN
        INSERT INTO checks (verification_id, account_id, at, submitted_code, outcome, client_ip)
        VALUES (v_row.id, p_account_id, v_now, p_record_code, outcome, p_client_ip);
    END IF;
    RETURN NEXT;
END
$$;
