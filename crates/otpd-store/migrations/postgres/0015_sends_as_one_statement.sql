-- The group of sends of 0005, with the same arguments and verdicts, in far fewer statements, as
-- 0014 did for checks. Until now every send of a group ran otpd_create_verification (0013) of
-- its own: the destination's lock again, the anti-spam count, the account's limits, the
-- retirement of the key's live code and two inserts, each statement started and ended per send.
--
-- Now, in a group of 8 or more (a smaller one runs as before: see the comment at the IF
-- below), the sends that no guard can refuse are stored together by one statement: the first send
-- of the group to its destination, under the destination's anti-spam limit, for an account
-- with neither a credit limit nor an hourly one (or free of charge). It retires their keys'
-- live codes, inserts their verifications and inserts their messages, for the whole group at
-- once. Every other send (to a destination the group already sent to, whose count now holds
-- that send too; for an account with limits, which are counted in its locked row; one that
-- may be refused) then runs otpd_create_verification, unchanged, in the group's order. The
-- group already holds every destination's lock, so no other node's send to those destinations
-- can come between the count and the insert.
CREATE OR REPLACE FUNCTION otpd_create_verifications(
    p_now               bigint[],
    p_window_ms         bigint[],
    p_max_sends         integer[],
    p_charge            integer[],
    p_id                text[],
    p_account_id        text[],
    p_dialect           text[],
    p_app               text[],
    p_reference         text[],
    p_destination       text[],
    p_sender            text[],
    p_code_digest       bytea[],
    p_code_bound_to     text[],
    p_ttl_ms            bigint[],
    p_max_attempts      integer[],
    p_sandbox           boolean[],
    p_sandbox_code      text[],
    p_parts             integer[],
    p_message_id        text[],
    p_sealed_text       bytea[],
    p_encoding          text[],
    p_message_parts     integer[],
    p_entity_id         text[],
    p_template_id       text[],
    p_claim_ms          bigint[]
) RETURNS TABLE (verdict text) LANGUAGE plpgsql AS $$
DECLARE
    -- Whether the statement stored each send, by its place in the group.
    v_stored            boolean[];
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key) FROM (
        SELECT DISTINCT hashtextextended(account_id || '/' || destination, 0) AS lock_key
          FROM unnest(p_account_id, p_destination) AS r(account_id, destination)
         ORDER BY 1) AS locks;

    -- A small group pays more for planning and starting this statement than it saves (at
    -- one request a group, twice the database's CPU of the one-by-one path), so it takes the
    -- one-by-one path whole.
    IF COALESCE(cardinality(p_id), 0) >= 8 THEN
        WITH sends AS (
            SELECT r.*, COALESCE(r.now_ms, otpd_now_ms()) AS at,
                   row_number() OVER (PARTITION BY r.account_id, r.destination
                                      ORDER BY r.ordinal) AS nth_to_its_destination
              FROM unnest(p_now, p_window_ms, p_max_sends, p_charge, p_id, p_account_id,
                          p_dialect, p_app, p_reference, p_destination, p_sender, p_code_digest,
                          p_code_bound_to, p_ttl_ms, p_max_attempts, p_sandbox, p_sandbox_code,
                          p_parts, p_message_id, p_sealed_text, p_encoding, p_message_parts,
                          p_entity_id, p_template_id, p_claim_ms)
                   WITH ORDINALITY AS r(now_ms, window_ms, max_sends, charge, id, account_id,
                        dialect, app, reference, destination, sender, code_digest, code_bound_to,
                        ttl_ms, max_attempts, sandbox, sandbox_code, parts, message_id,
                        sealed_text, encoding, message_parts, entity_id, template_id, claim_ms,
                        ordinal)
        ), unguarded AS (
            -- The conditions mirror otpd_create_verification's refusals, NULLs included.
            SELECT s.* FROM sends s
              JOIN accounts a ON a.id = s.account_id
             WHERE s.nth_to_its_destination = 1
               AND (s.charge > 0 AND (a.credits IS NOT NULL OR a.sms_per_hour IS NOT NULL))
                   IS NOT TRUE
               AND ((SELECT count(*) FROM verifications v
                      WHERE v.account_id = s.account_id AND v.destination = s.destination
                        AND v.created_at > s.at - s.window_ms) >= s.max_sends) IS NOT TRUE
        ), retired AS (
            UPDATE verifications v
               SET status = CASE WHEN v.expires_at <= s.at THEN 'expired' ELSE 'cancelled' END
              FROM unguarded s
             WHERE v.account_id = s.account_id AND v.destination = s.destination
               AND v.dialect = s.dialect AND v.app = s.app AND v.reference = s.reference
               AND v.status = 'pending'
        ), stored AS (
            INSERT INTO verifications (id, account_id, dialect, app, reference, destination,
                    sender, code_digest, key_bound_digest, status, created_at, expires_at,
                    attempts_used, max_attempts, sandbox, sandbox_code, parts, message_id)
            SELECT s.id, s.account_id, s.dialect, s.app, s.reference, s.destination, s.sender,
                   CASE WHEN s.code_bound_to = 'id' THEN s.code_digest END,
                   CASE WHEN s.code_bound_to = 'key' THEN s.code_digest END,
                   'pending', s.at, s.at + s.ttl_ms, 0, s.max_attempts, s.sandbox,
                   s.sandbox_code, s.parts, s.message_id
              FROM unguarded s
        ), queued AS (
            INSERT INTO outbox (id, verification_id, account_id, destination, sender, sealed_text,
                    encoding, parts, entity_id, template_id, state, next_attempt_at, created_at,
                    updated_at, lease_until, attempts)
            SELECT s.message_id, s.id, s.account_id, s.destination, s.sender, s.sealed_text,
                   s.encoding, s.message_parts, s.entity_id, s.template_id, 'pending', s.at, s.at,
                   s.at, CASE WHEN s.claim_ms IS NULL THEN 0 ELSE s.at + s.claim_ms END,
                   CASE WHEN s.claim_ms IS NULL THEN 0 ELSE 1 END
              FROM unguarded s
             WHERE s.message_id IS NOT NULL
        )
        SELECT array_agg(s.ordinal IS NOT NULL ORDER BY g.i) INTO v_stored
          FROM generate_subscripts(p_id, 1) AS g(i)
          LEFT JOIN unguarded s ON s.ordinal = g.i;
    END IF;

    FOR i IN 1 .. COALESCE(cardinality(p_id), 0) LOOP
        IF v_stored[i] THEN
            verdict := 'ok';
        ELSE
            verdict := otpd_create_verification(p_now[i], p_window_ms[i], p_max_sends[i],
                p_charge[i], p_id[i], p_account_id[i], p_dialect[i], p_app[i], p_reference[i],
                p_destination[i], p_sender[i], p_code_digest[i], p_code_bound_to[i],
                p_ttl_ms[i], p_max_attempts[i], p_sandbox[i], p_sandbox_code[i], p_parts[i],
                p_message_id[i], p_sealed_text[i], p_encoding[i], p_message_parts[i],
                p_entity_id[i], p_template_id[i], p_claim_ms[i]);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
