-- The ledger: one row per event, keyed by its ledger stream entry id ('ms-seq',
-- stored as two integers so the key is the ledger's order), and its postings.
CREATE TABLE events (
    ms         INTEGER NOT NULL,         -- the ledger stream entry id, 'ms-seq'
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,            -- gift | topup | payout | cap
    request_id TEXT,                     -- the caller's idempotency id or receipt
    actor      TEXT NOT NULL,            -- the user who acted
    ts         INTEGER NOT NULL,         -- event time, ms since the epoch
    body       TEXT NOT NULL,            -- the entry as the money core wrote it (JSON)
    PRIMARY KEY (ms, seq)
) WITHOUT ROWID;
CREATE INDEX events_ts ON events (ts);

CREATE TABLE postings (
    ms      INTEGER NOT NULL,            -- the event's id
    seq     INTEGER NOT NULL,
    n       INTEGER NOT NULL,            -- the posting's place in its event
    account TEXT NOT NULL,               -- user:<id> or system:<name>
    asset   TEXT NOT NULL CHECK (asset IN ('coins', 'diamonds', 'cents')),
    amount  INTEGER NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (ms, seq, n),
    FOREIGN KEY (ms, seq) REFERENCES events (ms, seq)
) WITHOUT ROWID;
