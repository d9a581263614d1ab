-- The same table and the same rule, written as comparisons: SQLite evaluates a CHECK
-- with IN (...) by building a temporary index for every inserted row, which cost
-- ~2 us of the ~3 us per posting. SQLite cannot alter a CHECK, so the table is
-- copied. Measured: docs/ledger.md, "Throughput".
CREATE TABLE postings_0002 (
    ms      INTEGER NOT NULL,            -- the event's id
    seq     INTEGER NOT NULL,
    n       INTEGER NOT NULL,            -- the posting's place in its event
    account TEXT NOT NULL,               -- user:<id> or system:<name>
    asset   TEXT NOT NULL CHECK (asset = 'coins' OR asset = 'diamonds' OR asset = 'cents'),
    amount  INTEGER NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (ms, seq, n),
    FOREIGN KEY (ms, seq) REFERENCES events (ms, seq)
) WITHOUT ROWID;
INSERT INTO postings_0002 SELECT ms, seq, n, account, asset, amount FROM postings;
DROP TABLE postings;
ALTER TABLE postings_0002 RENAME TO postings;
