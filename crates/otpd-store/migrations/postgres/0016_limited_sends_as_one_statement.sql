-- The group of sends of 0015, whose one statement now stores the sends of accounts with a
-- credit limit or an hourly one too. Until now each of those sends ran
-- otpd_create_verification of its own, which locks the account's row, judges the send against
-- the credit and the last hour, and writes the row anew: a row version per send, on the one
-- row every send of the account waits for.
--
-- Now, in a group of 8 or more, the group first locks the rows of its limited accounts, in the
-- order of their ids, and reads off each whether it has room for every send of the group
-- charged to it: credit for all of their parts, and room in the last hour for all of them.
-- Then every one of those sends passes the account's limits whatever the order they run in,
-- so the sends of such an account that no other guard can refuse join the set statement, and
-- one UPDATE debits the parts the statement stored, once per account. The account's sends that
-- run one by one after it (a second send to a destination, one that may be refused) find the
-- row already debited and locked by this transaction. An account without room for the whole
-- group, whose limit some of these sends will meet, runs all of its sends one by one, as
-- before, so the refusals fall on the same sends as before.
--
-- A group judges its sends at one moment, taken once, so all of an account's sends are counted
-- in one five-minute bucket of the window. A send given its own `p_now` (the tests' clock) is
-- judged at that; an account whose sends fall in different buckets runs them one by one.
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
    -- Each send's moment: its own `p_now`, or the group's.
    v_at                bigint[];
    -- The limited accounts with room for every send of the group charged to them, locked.
    v_roomy             text[];
    -- Whether the statement stored each send, by its place in the group.
    v_stored            boolean[];
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key) FROM (
        SELECT DISTINCT hashtextextended(account_id || '/' || destination, 0) AS lock_key
          FROM unnest(p_account_id, p_destination) AS r(account_id, destination)
         ORDER BY 1) AS locks;

    -- A small group pays more for planning and starting these statements than it saves (at
    -- one request a group, twice the database's CPU of the one-by-one path), so it takes the
    -- one-by-one path whole.
    IF COALESCE(cardinality(p_id), 0) >= 8 THEN
        SELECT array_agg(COALESCE(n.now_ms, group_now.at) ORDER BY n.ordinal) INTO v_at
          FROM unnest(p_now) WITH ORDINALITY AS n(now_ms, ordinal),
               (SELECT otpd_now_ms() AS at) AS group_now;

        -- The conditions mirror otpd_create_verification's, with the charge of every send of
        -- the group to the account at once; the window moves to the sends' bucket as there.
        WITH charged AS (
            SELECT s.account_id, sum(s.charge) AS charge,
                   min(s.at - s.at % 300000) AS bucket, max(s.at - s.at % 300000) AS last_bucket
              FROM unnest(p_account_id, p_charge, v_at) AS s(account_id, charge, at)
             WHERE s.charge > 0
             GROUP BY s.account_id
        ), locked AS (
            SELECT a.id, a.credits, a.sms_per_hour, a.sms_window_newest,
                   COALESCE(a.sms_window, array_fill(0, ARRAY[13])) AS sms_window,
                   c.charge, c.bucket, c.last_bucket
              FROM accounts a
              JOIN charged c ON c.account_id = a.id
             WHERE a.credits IS NOT NULL OR a.sms_per_hour IS NOT NULL
             ORDER BY a.id
               FOR UPDATE OF a
        )
        SELECT array_agg(l.id) INTO v_roomy
          FROM locked l,
               LATERAL (SELECT LEAST(13, GREATEST(0, (l.bucket - l.sms_window_newest) / 300000))::integer
                               AS steps) AS moved
         WHERE l.bucket = l.last_bucket
           AND (l.credits IS NULL OR l.credits >= l.charge)
           AND (l.sms_per_hour IS NULL
                OR (SELECT COALESCE(sum(parts), 0)
                      FROM unnest(l.sms_window[moved.steps + 1:13]) AS parts) + l.charge
                   <= l.sms_per_hour);

        WITH sends AS (
            SELECT r.*,
                   row_number() OVER (PARTITION BY r.account_id, r.destination
                                      ORDER BY r.ordinal) AS nth_to_its_destination
              FROM unnest(v_at, p_window_ms, p_max_sends, p_charge, p_id, p_account_id,
                          p_dialect, p_app, p_reference, p_destination, p_sender, p_code_digest,
                          p_code_bound_to, p_ttl_ms, p_max_attempts, p_sandbox, p_sandbox_code,
                          p_parts, p_message_id, p_sealed_text, p_encoding, p_message_parts,
                          p_entity_id, p_template_id, p_claim_ms)
                   WITH ORDINALITY AS r(at, window_ms, max_sends, charge, id, account_id,
                        dialect, app, reference, destination, sender, code_digest, code_bound_to,
                        ttl_ms, max_attempts, sandbox, sandbox_code, parts, message_id,
                        sealed_text, encoding, message_parts, entity_id, template_id, claim_ms,
                        ordinal)
        ), unguarded AS (
            -- The conditions mirror otpd_create_verification's refusals, NULLs included.
            SELECT s.* FROM sends s
              JOIN accounts a ON a.id = s.account_id
             WHERE s.nth_to_its_destination = 1
               AND ((s.charge > 0 AND (a.credits IS NOT NULL OR a.sms_per_hour IS NOT NULL))
                        IS NOT TRUE
                    OR s.account_id = ANY (v_roomy))
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

        IF v_roomy IS NOT NULL THEN
            -- What the statement stored, debited from each limited account and counted in
            -- its window, as otpd_create_verification does send by send. The rows are this
            -- transaction's, locked above.
            UPDATE accounts a
               SET credits = a.credits - debit.charge,
                   sms_window_newest = debit.newest,
                   sms_window = debit.moved[1:12] || (debit.moved[13] + debit.charge)
              FROM (SELECT d.account_id, d.charge,
                           CASE WHEN w.steps > 0 THEN d.bucket ELSE w.newest END AS newest,
                           CASE WHEN w.steps > 0
                                THEN w.buckets[w.steps + 1:13] || array_fill(0, ARRAY[w.steps])
                                ELSE w.buckets END AS moved
                      FROM (SELECT s.account_id, sum(s.charge)::integer AS charge,
                                   min(s.at - s.at % 300000) AS bucket
                              FROM unnest(p_account_id, p_charge, v_at, v_stored)
                                   AS s(account_id, charge, at, stored)
                             WHERE s.stored AND s.charge > 0 AND s.account_id = ANY (v_roomy)
                             GROUP BY s.account_id) AS d
                      JOIN LATERAL (
                           SELECT acc.sms_window_newest AS newest,
                                  COALESCE(acc.sms_window, array_fill(0, ARRAY[13])) AS buckets,
                                  LEAST(13, GREATEST(0, (d.bucket - acc.sms_window_newest)
                                                        / 300000))::integer AS steps
                             FROM accounts acc WHERE acc.id = d.account_id) AS w ON true
                   ) AS debit
             WHERE a.id = debit.account_id;
        END IF;
    END IF;

    FOR i IN 1 .. COALESCE(cardinality(p_id), 0) LOOP
        IF v_stored[i] THEN
            verdict := 'ok';
        ELSE
            verdict := otpd_create_verification(COALESCE(v_at[i], p_now[i]), p_window_ms[i],
                p_max_sends[i], p_charge[i], p_id[i], p_account_id[i], p_dialect[i], p_app[i],
                p_reference[i], p_destination[i], p_sender[i], p_code_digest[i],
                p_code_bound_to[i], p_ttl_ms[i], p_max_attempts[i], p_sandbox[i],
                p_sandbox_code[i], p_parts[i], p_message_id[i], p_sealed_text[i], p_encoding[i],
                p_message_parts[i], p_entity_id[i], p_template_id[i], p_claim_ms[i]);
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;
