-- A message's sealed text holds the code, encrypted with the server key. It is needed only while
-- the message waits for delivery, so it is now cleared once the message is final (sent, failed
-- or dropped), as the SQLite store does since its migration 0009; the messages already final
-- lose theirs here. A stolen copy of the database then holds no code of a delivered message,
-- even for whoever also has the server key.
ALTER TABLE outbox ALTER COLUMN sealed_text DROP NOT NULL;
UPDATE outbox SET sealed_text = NULL WHERE state <> 'pending';
