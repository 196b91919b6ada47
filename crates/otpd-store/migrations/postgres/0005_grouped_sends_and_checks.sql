-- Sends and checks in groups (the store's group.rs): one statement, one transaction and one
-- commit for every request a node has waiting, instead of one each. Each function first takes
-- every advisory lock its group will need, in one order, and then runs the one-request
-- function of 0003 for each request in turn (those take the same locks again, which costs
-- nothing in the same transaction).
--
-- Why the locks first: a send to an account with a credit limit locks the account's row, and
-- a group holds every lock to its commit. Were a group to take the destination lock of its
-- second send after its first send locked the account row, and another node's group to hold
-- that destination lock while it waits for the account row, each would wait for the other.
-- Taken first and in order, the locks of two groups cannot form such a circle.

CREATE FUNCTION otpd_create_verifications(
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
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key) FROM (
        SELECT DISTINCT hashtextextended(account_id || '/' || destination, 0) AS lock_key
          FROM unnest(p_account_id, p_destination) AS r(account_id, destination)
         ORDER BY 1) AS locks;
    RETURN QUERY
    SELECT otpd_create_verification(r.now_ms, r.window_ms, r.max_sends, r.charge, r.id,
               r.account_id, r.dialect, r.app, r.reference, r.destination, r.sender,
               r.code_digest, r.code_bound_to, r.ttl_ms, r.max_attempts, r.sandbox,
               r.sandbox_code, r.parts, r.message_id, r.sealed_text, r.encoding,
               r.message_parts, r.entity_id, r.template_id, r.claim_ms)
      FROM unnest(p_now, p_window_ms, p_max_sends, p_charge, p_id, p_account_id, p_dialect,
                  p_app, p_reference, p_destination, p_sender, p_code_digest, p_code_bound_to,
                  p_ttl_ms, p_max_attempts, p_sandbox, p_sandbox_code, p_parts, p_message_id,
                  p_sealed_text, p_encoding, p_message_parts, p_entity_id, p_template_id,
                  p_claim_ms)
           WITH ORDINALITY AS r(now_ms, window_ms, max_sends, charge, id, account_id, dialect,
                app, reference, destination, sender, code_digest, code_bound_to, ttl_ms,
                max_attempts, sandbox, sandbox_code, parts, message_id, sealed_text, encoding,
                message_parts, entity_id, template_id, claim_ms, ordinal)
     ORDER BY r.ordinal;
END
$$;

-- The per-address locks of checks with an address limit (amm's ip_address) come first in the
-- same way; without them a check locks only its verification's row.
CREATE FUNCTION otpd_checks(
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
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key) FROM (
        SELECT DISTINCT hashtextextended(account_id || '/ip/' || client_ip, 0) AS lock_key
          FROM unnest(p_account_id, p_client_ip, p_ip_window_ms)
               AS r(account_id, client_ip, ip_window_ms)
         WHERE client_ip IS NOT NULL AND ip_window_ms IS NOT NULL
         ORDER BY 1) AS locks;
    RETURN QUERY
    SELECT c.* FROM unnest(p_now, p_account_id, p_id, p_dialect, p_app, p_reference,
                           p_destination, p_bound_to, p_digest, p_record_code, p_client_ip,
                           p_ip_window_ms, p_ip_max_failures)
           WITH ORDINALITY AS r(now_ms, account_id, id, dialect, app, reference, destination,
                bound_to, digest, record_code, client_ip, ip_window_ms, ip_max_failures,
                ordinal)
     CROSS JOIN LATERAL otpd_check(r.now_ms, r.account_id, r.id, r.dialect, r.app,
                r.reference, r.destination, r.bound_to, r.digest, r.record_code, r.client_ip,
                r.ip_window_ms, r.ip_max_failures) AS c
     ORDER BY r.ordinal;
END
$$;
