-- The group of checks of 0005, with the same arguments and answers, in far fewer statements.
-- Until now every check of a group ran otpd_check (0008) of its own: a SELECT ... FOR UPDATE,
-- an UPDATE and, for amm, an INSERT, each started and ended per check, and a row lock written
-- before each new row version. Starting those statements was most of PostgreSQL's CPU a check.
--
-- Now the common case of a group of 8 or more is one statement (a smaller group runs as
-- before: see the comment at the IF below): every check of a live code with
-- attempts left, whose digest is bound as the caller computed it, uses its attempt and settles
-- the status in one UPDATE joined to the group, and the checks that keep a history record
-- insert them in the same statement. Which checks may go there:
--   * only the first check of each code in the group: an UPDATE changes a row once, so a second
--     guess at the same code runs after it, one by one, and sees its outcome;
--   * of the checks from one end-user address (amm's ip_address), only the first in the group,
--     and only while the address is under its limit of wrong codes: the others count the
--     failures before them, this one's too, one by one after it.
-- Every check the UPDATE did not settle (no such code, settled, expired, out of attempts, a
-- digest to rebind, a second guess, an address's second check or one over its limit) then
-- runs otpd_check, unchanged, in the group's order. Parallel groups, from any nodes, still
-- queue on the rows: under READ COMMITTED an UPDATE that waited for another transaction's
-- change of a row tests its conditions again on the new version, so a code can never use more
-- attempts than it has.
-- A group answers in the order of its checks, as before; nodes of the previous release call
-- this function too.
CREATE OR REPLACE FUNCTION otpd_checks(
    p_now             bigint[],
    p_account_id      text[],
    p_id              text[],
    p_dialect         text[],
    p_app             text[],
    p_reference       text[],
    p_destination     text[],
    p_bound_to        text[],
    p_digest          bytea[],
    p_record_code     text[],
    p_client_ip       text[],
    p_ip_window_ms    bigint[],
    p_ip_max_failures integer[]
) RETURNS TABLE (outcome text, message_id text, verification_id text, bound_to text,
                 dialect text, app text, reference text, destination text)
LANGUAGE plpgsql AS $$
DECLARE
    -- What the UPDATE settled, by the check's place in the group (NULL: not settled).
    v_settled_outcome   text[];
    v_settled_message   text[];
    v_settled_id        text[];
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key) FROM (
        SELECT DISTINCT hashtextextended(account_id || '/ip/' || client_ip, 0) AS lock_key
          FROM unnest(p_account_id, p_client_ip, p_ip_window_ms)
               AS r(account_id, client_ip, ip_window_ms)
         WHERE client_ip IS NOT NULL AND ip_window_ms IS NOT NULL
         ORDER BY 1) AS locks;

    -- A small group pays more for planning and starting this statement than it saves (at
    -- one request a group, twice the database's CPU of the one-by-one path), so it takes the
    -- one-by-one path whole.
    IF COALESCE(cardinality(p_account_id), 0) >= 8 THEN
        WITH checks_in_order AS (
            SELECT r.*, arrival.at,
                   row_number() OVER (PARTITION BY r.account_id, r.id, r.dialect, r.app,
                                                   r.reference, r.destination
                                      ORDER BY r.ordinal) AS nth_of_its_code,
                   row_number() OVER (PARTITION BY r.account_id, r.client_ip
                                      ORDER BY r.ordinal) AS nth_from_its_address,
                   -- otpd_check's count, under the same lock (taken above).
                   CASE WHEN r.client_ip IS NOT NULL AND r.ip_window_ms IS NOT NULL THEN
                       (SELECT count(*) FROM checks k
                         WHERE k.account_id = r.account_id AND k.client_ip = r.client_ip
                           AND k.at > arrival.at - r.ip_window_ms
                           AND k.outcome IN ('mismatch', 'mismatch_exhausted'))
                   ELSE 0 END AS failures_from_its_address,
                   -- The row a check is for: by its id, or the key's live code, found through
                   -- the destination index here so that the UPDATE below joins on the primary
                   -- key alone (joined on the key's columns, the planner chose to read the whole
                   -- table).
                   COALESCE(r.id, (SELECT x.id FROM verifications x
                                    WHERE x.account_id = r.account_id
                                      AND x.destination = r.destination AND x.dialect = r.dialect
                                      AND x.app = r.app AND x.reference = r.reference
                                      AND x.status = 'pending'
                                    LIMIT 1)) AS target
              FROM unnest(p_now, p_account_id, p_id, p_dialect, p_app, p_reference,
                          p_destination, p_bound_to, p_digest, p_record_code, p_client_ip,
                          p_ip_window_ms, p_ip_max_failures)
                   WITH ORDINALITY AS r(now_ms, account_id, id, dialect, app, reference,
                        destination, bound_to, digest, record_code, client_ip, ip_window_ms,
                        ip_max_failures, ordinal)
             CROSS JOIN LATERAL (SELECT COALESCE(r.now_ms, otpd_now_ms()) AS at) AS arrival
        ), settled AS (
            UPDATE verifications v
               SET attempts_used = v.attempts_used + 1,
                   status = CASE
                       WHEN otpd_digests_equal(CASE c.bound_to WHEN 'id' THEN v.code_digest
                                                               WHEN 'key' THEN v.key_bound_digest
                                               END, c.digest) THEN 'verified'
                       WHEN v.attempts_used + 1 >= v.max_attempts THEN 'failed'
                       ELSE 'pending' END
              FROM checks_in_order c
             WHERE v.id = c.target AND v.account_id = c.account_id
               AND c.nth_of_its_code = 1
               AND (c.client_ip IS NULL OR c.nth_from_its_address = 1)
               AND (c.failures_from_its_address >= c.ip_max_failures) IS NOT TRUE
               AND v.status = 'pending' AND v.expires_at > c.at
               AND v.attempts_used < v.max_attempts
               AND CASE c.bound_to WHEN 'id' THEN v.code_digest
                                   WHEN 'key' THEN v.key_bound_digest END IS NOT NULL
            RETURNING c.ordinal, c.account_id, c.at, c.record_code, c.client_ip, v.id,
                      v.message_id,
                      CASE v.status WHEN 'verified' THEN 'verified'
                                    WHEN 'failed' THEN 'mismatch_exhausted'
                                    ELSE 'mismatch' END AS outcome
        ), recorded AS (
            INSERT INTO checks (verification_id, account_id, at, submitted_code, outcome,
                                client_ip)
            SELECT s.id, s.account_id, s.at, s.record_code, s.outcome, s.client_ip
              FROM settled s
             WHERE s.record_code IS NOT NULL
        )
        SELECT array_agg(s.outcome ORDER BY g.i), array_agg(s.message_id ORDER BY g.i),
               array_agg(s.id ORDER BY g.i)
          INTO v_settled_outcome, v_settled_message, v_settled_id
          FROM generate_subscripts(p_account_id, 1) AS g(i)
          LEFT JOIN settled s ON s.ordinal = g.i;
    END IF;

    FOR i IN 1 .. COALESCE(cardinality(p_account_id), 0) LOOP
        IF v_settled_outcome[i] IS NOT NULL THEN
            outcome := v_settled_outcome[i];
            message_id := v_settled_message[i];
            verification_id := v_settled_id[i];
            RETURN NEXT;
        ELSE
            RETURN QUERY
            SELECT * FROM otpd_check(p_now[i], p_account_id[i], p_id[i], p_dialect[i], p_app[i],
                p_reference[i], p_destination[i], p_bound_to[i], p_digest[i],
                p_record_code[i], p_client_ip[i], p_ip_window_ms[i], p_ip_max_failures[i]);
        END IF;
    END LOOP;
END
$$;
