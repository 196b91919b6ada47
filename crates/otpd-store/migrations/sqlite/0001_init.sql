-- Accounts: who may call otpd. `credits` NULL means no credit limit.
CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    access_key_id   TEXT NOT NULL UNIQUE,
    sealed_secret   BLOB NOT NULL,
    credits         INTEGER,
    default_sender  TEXT,
    created_at      INTEGER NOT NULL
) STRICT;

-- Pinpoint applications ("projects").
CREATE TABLE applications (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    tags        TEXT NOT NULL DEFAULT '{}',
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX applications_by_account ON applications (account_id);

-- One row per code sent. Only the code's HMAC is stored (sandbox sends also keep the code, which
-- reaches no phone). Times are milliseconds since the Unix epoch.
CREATE TABLE verifications (
    id                  TEXT PRIMARY KEY,
    account_id          TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    dialect             TEXT NOT NULL,
    app                 TEXT NOT NULL,
    reference           TEXT NOT NULL,
    destination         TEXT NOT NULL,
    sender              TEXT NOT NULL,
    code_digest         BLOB NOT NULL,
    status              TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    attempts_used       INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    sandbox             INTEGER NOT NULL,
    sandbox_code        TEXT,
    parts               INTEGER NOT NULL,
    message_id          TEXT
) STRICT;
-- The one-live-code rule, and Pinpoint's lookup of the live code for a key.
CREATE UNIQUE INDEX verifications_one_live_per_key
    ON verifications (account_id, dialect, app, reference, destination) WHERE status = 'pending';
-- Retention: the oldest verifications first.
CREATE INDEX verifications_by_age ON verifications (created_at);
-- The anti-spam window: sends to one destination recently.
CREATE INDEX verifications_by_destination ON verifications (account_id, destination, created_at);

-- Every check, for the amm search history.
CREATE TABLE checks (
    verification_id TEXT NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    account_id      TEXT NOT NULL,
    at              INTEGER NOT NULL,
    submitted_code  TEXT,
    outcome         TEXT NOT NULL,
    client_ip       TEXT
) STRICT;
CREATE INDEX checks_by_verification ON checks (verification_id, at);
-- The per-IP anti-spam filter: recent wrong checks from one end-user address.
CREATE INDEX checks_by_client_ip ON checks (account_id, client_ip, at) WHERE client_ip IS NOT NULL;

-- The outbox: each message is committed with its verification and delivered afterwards. The
-- text holds the code, so it is sealed with the server key.
CREATE TABLE outbox (
    id                  TEXT PRIMARY KEY,
    verification_id     TEXT NOT NULL REFERENCES verifications (id) ON DELETE CASCADE,
    account_id          TEXT NOT NULL,
    destination         TEXT NOT NULL,
    sender              TEXT NOT NULL,
    sealed_text         BLOB NOT NULL,
    encoding            TEXT NOT NULL,
    parts               INTEGER NOT NULL,
    entity_id           TEXT,
    template_id         TEXT,
    state               TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    lease_until         INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    sent_at             INTEGER,
    delivery_status     TEXT,
    status_code         INTEGER,
    status_message      TEXT,
    carrier_message_id  TEXT,
    receipt_state       TEXT,
    receipt_at          INTEGER
) STRICT;
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX outbox_by_carrier_id ON outbox (carrier_message_id) WHERE carrier_message_id IS NOT NULL;
CREATE INDEX outbox_by_verification ON outbox (verification_id);
