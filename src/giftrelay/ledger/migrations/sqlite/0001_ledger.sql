-- The ledger: one row per event (keyed by its ledger stream entry id), and its postings.
CREATE TABLE events (
    event_id   TEXT PRIMARY KEY,         -- the ledger stream entry id, 'ms-seq'
    ms         INTEGER NOT NULL,         -- its two parts, for ordering and ranges
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,            -- gift | topup | payout | cap
    request_id TEXT,                     -- the caller's idempotency id or receipt
    actor      TEXT NOT NULL,            -- the user who acted
    ts         INTEGER NOT NULL,         -- event time, ms since the epoch
    body       TEXT NOT NULL             -- the entry as the money core wrote it (JSON)
);
CREATE INDEX events_ts ON events (ts);
CREATE INDEX events_position ON events (ms, seq);

CREATE TABLE postings (
    event_id TEXT NOT NULL REFERENCES events (event_id),
    n        INTEGER NOT NULL,           -- the posting's place in its event
    account  TEXT NOT NULL,              -- user:<id> or system:<name>
    asset    TEXT NOT NULL CHECK (asset IN ('coins', 'diamonds', 'cents')),
    amount   INTEGER NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (event_id, n)
);
