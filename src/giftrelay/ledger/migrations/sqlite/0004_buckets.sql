-- Redis Cluster: the ledger comes from 64 bucket streams (money/keys.py), whose entry ids
-- may be equal, so an event is keyed by its stream entry id *and* its bucket. Events of
-- the one `ledger` stream of a single Redis, all of them before this migration, are
-- bucket -1 and keep their ids. Business keys stay unique across every bucket.
-- SQLite cannot change a primary key, so the three tables are copied (the first start
-- takes as long as copying the ledger once, as 0002 did), with the same rules.
CREATE TABLE events_0004 (
    ms           INTEGER NOT NULL,       -- the ledger stream entry id, 'ms-seq'
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    request_id   TEXT,                   -- the caller's idempotency id or receipt
    actor        TEXT NOT NULL,          -- the user who acted
    ts           INTEGER NOT NULL,       -- event time, ms since the epoch
    body         TEXT NOT NULL,          -- the entry as the money core wrote it (JSON)
    business_key TEXT,
    fingerprint  TEXT NOT NULL DEFAULT '',
    bucket       INTEGER NOT NULL DEFAULT -1,  -- its bucket stream; -1: the one `ledger`
    PRIMARY KEY (ms, seq, bucket)
) WITHOUT ROWID;
INSERT INTO events_0004
SELECT ms, seq, kind, request_id, actor, ts, body, business_key, fingerprint, -1 FROM events;

CREATE TABLE postings_0004 (
    ms      INTEGER NOT NULL,            -- the event's id
    seq     INTEGER NOT NULL,
    n       INTEGER NOT NULL,            -- the posting's place in its event
    account TEXT NOT NULL,               -- user:<id> or system:<name>
    asset   TEXT NOT NULL CHECK (asset = 'coins' OR asset = 'diamonds' OR asset = 'cents'),
    amount  INTEGER NOT NULL CHECK (amount <> 0),
    bucket  INTEGER NOT NULL DEFAULT -1,
    PRIMARY KEY (ms, seq, bucket, n),
    FOREIGN KEY (ms, seq, bucket) REFERENCES events_0004 (ms, seq, bucket)
) WITHOUT ROWID;
INSERT INTO postings_0004 SELECT ms, seq, n, account, asset, amount, -1 FROM postings;

CREATE TABLE conflicts_0004 (
    ms            INTEGER NOT NULL,      -- the conflicting entry's ledger stream id
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    business_key  TEXT NOT NULL,
    fingerprint   TEXT NOT NULL,
    body          TEXT NOT NULL,         -- the entry as the money core wrote it (JSON)
    stored_ms     INTEGER NOT NULL,      -- the stored movement that holds the key
    stored_seq    INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    found_ms      INTEGER NOT NULL,      -- when the store found it
    bucket        INTEGER NOT NULL DEFAULT -1,
    stored_bucket INTEGER NOT NULL DEFAULT -1,
    PRIMARY KEY (ms, seq, bucket)
) WITHOUT ROWID;
INSERT INTO conflicts_0004
SELECT ms, seq, kind, business_key, fingerprint, body, stored_ms, stored_seq, reason, found_ms,
       -1, -1
FROM conflicts;

DROP TABLE postings;
DROP TABLE conflicts;
DROP TABLE events;
-- Renaming the parent rewrites the child's REFERENCES to the new name (SQLite >= 3.26).
ALTER TABLE events_0004 RENAME TO events;
ALTER TABLE postings_0004 RENAME TO postings;
ALTER TABLE conflicts_0004 RENAME TO conflicts;
CREATE INDEX events_ts ON events (ts);
CREATE UNIQUE INDEX events_business_key ON events (business_key);
