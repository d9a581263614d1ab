-- One movement per business key (ledger/postings.py): a top-up's receipt, a gift's
-- sender and id, a payout's creator and id. A movement whose key is already stored
-- under another entry id is a replay (same fingerprint: not stored again) or a
-- conflict (another fingerprint: kept in `conflicts` for reconcile to report).
ALTER TABLE events ADD COLUMN business_key TEXT;
ALTER TABLE events ADD COLUMN fingerprint TEXT NOT NULL DEFAULT '';

CREATE TABLE conflicts (
    ms           BIGINT NOT NULL,        -- the conflicting entry's ledger stream id
    seq          BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    business_key TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    body         TEXT NOT NULL,          -- the entry as the money core wrote it (JSON)
    stored_ms    BIGINT NOT NULL,        -- the stored movement that holds the key
    stored_seq   BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    found_ms     BIGINT NOT NULL,        -- when the store found it
    PRIMARY KEY (ms, seq)
);

UPDATE events SET
    business_key = CASE kind
        WHEN 'gift' THEN 'gift:' || (body::jsonb ->> 'from') || ':' || (body::jsonb ->> 'id')
        WHEN 'topup' THEN 'topup:' || (body::jsonb ->> 'id')
        WHEN 'payout' THEN 'payout:' || (body::jsonb ->> 'user') || ':' || (body::jsonb ->> 'id')
    END,
    fingerprint = coalesce(CASE kind
        WHEN 'gift' THEN concat_ws('|', body::jsonb ->> 'stream', body::jsonb ->> 'to',
            body::jsonb ->> 'gift', body::jsonb ->> 'count', body::jsonb ->> 'coins',
            body::jsonb ->> 'diamonds')
        WHEN 'topup' THEN concat_ws('|', body::jsonb ->> 'user', body::jsonb ->> 'coins')
        WHEN 'payout' THEN concat_ws('|', body::jsonb ->> 'diamonds', body::jsonb ->> 'cash_cents',
            body::jsonb ->> 'fee_cents')
        ELSE body::jsonb ->> 'daily_coins'
    END, '');

-- A key stored more than once before this migration (the double counting it prevents
-- from now on): the first entry keeps the key, the others are listed as conflicts.
INSERT INTO conflicts
SELECT e.ms, e.seq, e.kind, e.business_key, e.fingerprint, e.body, f.ms, f.seq,
       'stored twice before migration 2', (extract(epoch FROM now()) * 1000)::bigint
FROM events e JOIN events f ON f.business_key = e.business_key AND (f.ms, f.seq) < (e.ms, e.seq)
WHERE NOT EXISTS (
    SELECT 1 FROM events g WHERE g.business_key = e.business_key AND (g.ms, g.seq) < (f.ms, f.seq)
);
UPDATE events SET business_key = NULL WHERE (ms, seq) IN (SELECT ms, seq FROM conflicts);
CREATE UNIQUE INDEX events_business_key ON events (business_key);
