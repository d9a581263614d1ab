-- One movement per business key (ledger/postings.py): a top-up's receipt, a gift's
-- sender and id, a payout's creator and id. A movement whose key is already stored
-- under another entry id is a replay (same fingerprint: not stored again) or a
-- conflict (another fingerprint: kept in `conflicts` for reconcile to report).
ALTER TABLE events ADD COLUMN business_key TEXT;
ALTER TABLE events ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';

CREATE TABLE conflicts (
    ms           INTEGER NOT NULL,       -- the conflicting entry's ledger stream id
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    business_key TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    body         TEXT NOT NULL,          -- the entry as the money core wrote it (JSON)
    stored_ms    INTEGER NOT NULL,       -- the stored movement that holds the key
    stored_seq   INTEGER NOT NULL,
    reason       TEXT NOT NULL,
    found_ms     INTEGER NOT NULL,       -- when the store found it
    PRIMARY KEY (ms, seq)
) WITHOUT ROWID;

UPDATE events SET
    business_key = CASE kind
        WHEN 'gift' THEN 'gift:' || json_extract(body, '$.from') || ':' || json_extract(body, '$.id')
        WHEN 'topup' THEN 'topup:' || json_extract(body, '$.id')
        WHEN 'payout' THEN 'payout:' || json_extract(body, '$.user') || ':' || json_extract(body, '$.id')
    END,
    fingerprint = coalesce(CASE kind
        WHEN 'gift' THEN json_extract(body, '$.stream') || '|' || json_extract(body, '$.to') || '|'
            || json_extract(body, '$.gift') || '|' || json_extract(body, '$.count') || '|'
            || json_extract(body, '$.coins') || '|' || json_extract(body, '$.diamonds')
        WHEN 'topup' THEN json_extract(body, '$.user') || '|' || json_extract(body, '$.coins')
        WHEN 'payout' THEN json_extract(body, '$.diamonds') || '|' || json_extract(body, '$.cash_cents')
            || '|' || json_extract(body, '$.fee_cents')
        ELSE json_extract(body, '$.daily_coins')
    END, '');

-- A key stored more than once before this migration (the double counting it prevents
-- from now on): the first entry keeps the key, the others are listed as conflicts.
INSERT INTO conflicts
SELECT e.ms, e.seq, e.kind, e.business_key, e.fingerprint, e.body, f.ms, f.seq,
       'stored twice before migration 3', CAST(strftime('%s', 'now') AS INTEGER) * 1000
FROM events e JOIN events f ON f.business_key = e.business_key
WHERE (f.ms < e.ms OR (f.ms = e.ms AND f.seq < e.seq))
  AND NOT EXISTS (
      SELECT 1 FROM events g
      WHERE g.business_key = e.business_key AND (g.ms < f.ms OR (g.ms = f.ms AND g.seq < f.seq))
  );
UPDATE events SET business_key = NULL WHERE (ms, seq) IN (SELECT ms, seq FROM conflicts);
CREATE UNIQUE INDEX events_business_key ON events (business_key);
