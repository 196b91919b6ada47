-- The per-address limit counts an address's wrong codes in the window, and the index it used
-- held every check from an address, right ones too: the count read each of them, under the
-- address lock. This index holds wrong codes only, of which an address has at most its limit
-- in any window.
DROP INDEX checks_by_client_ip;
CREATE INDEX checks_failed_by_client_ip ON checks (account_id, client_ip, at)
    WHERE client_ip IS NOT NULL AND outcome IN ('mismatch', 'mismatch_exhausted');
