-- A check's record no longer has a foreign key to its verification. The key's trigger ran a
-- query of its own for every record inserted (5% of PostgreSQL's CPU in an amm check run),
-- and guarded nothing the check function does not: it inserts a record only while it holds its
-- verification's row lock, so the verification cannot be deleted under it, and retention
-- skips locked rows. Retention and account deletion now delete a verification's records in
-- the statement that deletes it, as the cascade did. Nodes of the previous release, during a
-- rolling upgrade, still delete verifications alone; the records they leave are read by nobody
-- (a verification's id is never made again) and count only towards the per-address limit of
-- wrong codes, whose window is far shorter than any retention period.
ALTER TABLE checks DROP CONSTRAINT checks_verification_id_fkey;
