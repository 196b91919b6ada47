-- The per-address limit counts an address's wrong codes in the window, and the index it used
-- held every check from an address, right ones too: the count read each of them, on the single
-- writer. An address behind a carrier's or a company's NAT makes thousands of right checks an
-- hour (100,000 of them: 13 ms per count, every other write waiting). This index holds wrong
-- codes only, of which an address has at most its limit in any window.
DROP INDEX checks_by_client_ip;
CREATE INDEX checks_failed_by_client_ip ON checks (account_id, client_ip, at)
    WHERE client_ip IS NOT NULL AND outcome IN ('mismatch', 'mismatch_exhausted');
