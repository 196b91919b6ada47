-- The PostgreSQL schema: the same tables as SQLite's, shared by every otpd node. Times are
-- milliseconds since the Unix epoch; "now" is always the database's clock (otpd_now_ms), so
-- nodes with skewed clocks agree on expiry, leases and windows.

CREATE FUNCTION otpd_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint
$$;

-- Accounts: who may call otpd. `credits` NULL means no credit limit.
CREATE TABLE accounts (
    id              text PRIMARY KEY,
    name            text NOT NULL,
    access_key_id   text NOT NULL UNIQUE,
    sealed_secret   bytea NOT NULL,
    credits         bigint,
    default_sender  text,
    created_at      bigint NOT NULL
);

-- Pinpoint applications ("projects").
CREATE TABLE applications (
    id          text PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    tags        text NOT NULL DEFAULT '{}',
    created_at  bigint NOT NULL
);
CREATE INDEX applications_by_account ON applications (account_id);

-- One row per code sent. Only the code's HMAC is stored (sandbox sends also keep the code, which
-- reaches no phone). `account_id` has no foreign key on purpose: every insert would take a
-- KEY SHARE lock on the one account row, and concurrent sends of an account would share it
-- through multixacts, which cost PostgreSQL more than the send itself. The send function checks
-- the account; deleting an account deletes its verifications explicitly.
CREATE TABLE verifications (
    id                  text PRIMARY KEY,
    account_id          text NOT NULL,
    dialect             text NOT NULL,
    app                 text NOT NULL,
    reference           text NOT NULL,
    destination         text NOT NULL,
    sender              text NOT NULL,
    code_digest         bytea NOT NULL,
    status              text NOT NULL,
    created_at          bigint NOT NULL,
    expires_at          bigint NOT NULL,
    attempts_used       integer NOT NULL DEFAULT 0,
    max_attempts        integer NOT NULL,
    sandbox             boolean NOT NULL,
    sandbox_code        text,
    parts               integer NOT NULL,
    message_id          text
);
-- The one-live-code rule, and Pinpoint's lookup of the live code for a key.
CREATE UNIQUE INDEX verifications_one_live_per_key
    ON verifications (account_id, dialect, app, reference, destination) WHERE status = 'pending';
-- Retention: the oldest verifications first.
CREATE INDEX verifications_by_age ON verifications (created_at);
-- The anti-spam window: sends to one destination recently.
CREATE INDEX verifications_by_destination ON verifications (account_id, destination, created_at);

-- Every check, for the amm search history.
CREATE TABLE checks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    verification_id text NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    account_id      text NOT NULL,
    at              bigint NOT NULL,
    submitted_code  text,
    outcome         text NOT NULL,
    client_ip       text
);
CREATE INDEX checks_by_verification ON checks (verification_id, at);
-- The per-IP anti-spam filter: recent wrong checks from one end-user address.
CREATE INDEX checks_by_client_ip ON checks (account_id, client_ip, at) WHERE client_ip IS NOT NULL;

-- The outbox: each message is committed with its verification and delivered afterwards by
-- whichever node claims it first. The text holds the code, so it is sealed with the server key.
CREATE TABLE outbox (
    id                  text PRIMARY KEY,
    verification_id     text NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    account_id          text NOT NULL,
    destination         text NOT NULL,
    sender              text NOT NULL,
    sealed_text         bytea NOT NULL,
    encoding            text NOT NULL,
    parts               integer NOT NULL,
    entity_id           text,
    template_id         text,
    state               text NOT NULL,
    attempts            integer NOT NULL DEFAULT 0,
    next_attempt_at     bigint NOT NULL,
    lease_until         bigint NOT NULL DEFAULT 0,
    created_at          bigint NOT NULL,
    updated_at          bigint NOT NULL,
    sent_at             bigint,
    delivery_status     text,
    status_code         integer,
    status_message      text,
    carrier_message_id  text,
    receipt_state       text,
    receipt_at          bigint
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_by_carrier_id ON outbox (carrier_message_id) WHERE carrier_message_id IS NOT NULL;
CREATE INDEX outbox_by_verification ON outbox (verification_id);

-- A send, in one statement (one round trip, its own transaction): the anti-spam window and the
-- credit debit are decided here, under a lock on the account + destination pair so that
-- concurrent sends from any number of nodes count each other. Returns 'ok', 'too_many_sends',
-- 'no_credit' or 'unknown_account'; nothing is written unless it is 'ok'.
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
            code_digest, status, created_at, expires_at, attempts_used, max_attempts, sandbox,
            sandbox_code, parts, message_id)
    VALUES (p_id, p_account_id, p_dialect, p_app, p_reference, p_destination, p_sender,
            p_code_digest, 'pending', v_now, v_now + p_ttl_ms, 0, p_max_attempts, p_sandbox,
            p_sandbox_code, p_parts, p_message_id);
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
