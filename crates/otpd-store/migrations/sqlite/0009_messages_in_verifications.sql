-- Each verification's message moves from the outbox into the verification's own row. A send
-- wrote two rows, the verification and its message, and five trees for them; the message's row,
-- its primary key, its index by verification and the foreign key's check cost the writer about
-- a fifth of a send (docs/benchmark-history.md, "The message in its verification's row"). A
-- verification has at most one message (none for a sandbox send), so the message's columns
-- are NULL where there is none. The message keeps its own id (`message_id`, as before). Its
-- sealed text, which holds the code, is kept only while the message waits for delivery.
ALTER TABLE verifications ADD COLUMN sealed_text BLOB;
ALTER TABLE verifications ADD COLUMN encoding TEXT;
ALTER TABLE verifications ADD COLUMN entity_id TEXT;
ALTER TABLE verifications ADD COLUMN template_id TEXT;
-- 'pending', 'sent', 'failed' or 'dropped'; NULL when there is no message.
ALTER TABLE verifications ADD COLUMN message_state TEXT;
ALTER TABLE verifications ADD COLUMN delivery_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE verifications ADD COLUMN next_attempt_at INTEGER;
ALTER TABLE verifications ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE verifications ADD COLUMN message_updated_at INTEGER;
ALTER TABLE verifications ADD COLUMN sent_at INTEGER;
ALTER TABLE verifications ADD COLUMN delivery_status TEXT;
ALTER TABLE verifications ADD COLUMN status_code INTEGER;
ALTER TABLE verifications ADD COLUMN status_message TEXT;
ALTER TABLE verifications ADD COLUMN carrier_message_id TEXT;
ALTER TABLE verifications ADD COLUMN receipt_state TEXT;
ALTER TABLE verifications ADD COLUMN receipt_at INTEGER;

UPDATE verifications
SET (sealed_text, encoding, entity_id, template_id, message_state, delivery_attempts,
     next_attempt_at, lease_until, message_updated_at, sent_at, delivery_status, status_code,
     status_message, carrier_message_id, receipt_state, receipt_at) =
    (SELECT CASE WHEN o.state = 'pending' THEN o.sealed_text END, o.encoding, o.entity_id, o.template_id, o.state, o.attempts,
            o.next_attempt_at, o.lease_until, o.updated_at, o.sent_at, o.delivery_status,
            o.status_code, o.status_message, o.carrier_message_id, o.receipt_state, o.receipt_at
     FROM outbox o WHERE o.id = verifications.message_id)
WHERE message_id IS NOT NULL;

DROP TABLE outbox;

-- A message by its id (the dispatcher's outcomes, the console). Ids begin with their creation
-- time, so a send's entry joins the others at the index's end.
CREATE INDEX verifications_by_message_id ON verifications (message_id)
    WHERE message_id IS NOT NULL;
-- The messages waiting for an attempt, by when it is due. A message leaves it once it is final,
-- so it stays small.
CREATE INDEX verifications_due_messages ON verifications (next_attempt_at)
    WHERE message_state = 'pending';
-- Delivery receipts name the carrier's id.
CREATE INDEX verifications_by_carrier_id ON verifications (carrier_message_id)
    WHERE carrier_message_id IS NOT NULL;
-- The operator's list of messages given up on, newest first (the web console).
CREATE INDEX verifications_failed_messages ON verifications (message_updated_at)
    WHERE message_state = 'failed';
