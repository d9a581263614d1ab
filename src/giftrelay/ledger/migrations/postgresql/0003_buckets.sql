-- Redis Cluster: the ledger comes from 64 bucket streams (money/keys.py), whose entry ids
-- may be equal, so an event is keyed by its stream entry id *and* its bucket. Events of
-- the one `ledger` stream of a single Redis, all of them before this migration, are
-- bucket -1 and keep their ids. Business keys stay unique across every bucket.
-- Adding a column with a constant default rewrites nothing; the keys are rebuilt (the
-- first start takes as long as indexing `events` and `postings` once).
ALTER TABLE events ADD COLUMN bucket SMALLINT NOT NULL DEFAULT -1;
ALTER TABLE postings ADD COLUMN bucket SMALLINT NOT NULL DEFAULT -1;
ALTER TABLE conflicts ADD COLUMN bucket SMALLINT NOT NULL DEFAULT -1;
ALTER TABLE conflicts ADD COLUMN stored_bucket SMALLINT NOT NULL DEFAULT -1;

ALTER TABLE postings DROP CONSTRAINT postings_ms_seq_fkey;
ALTER TABLE postings DROP CONSTRAINT postings_pkey;
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE conflicts DROP CONSTRAINT conflicts_pkey;

ALTER TABLE events ADD PRIMARY KEY (ms, seq, bucket);
ALTER TABLE postings ADD PRIMARY KEY (ms, seq, bucket, n);
ALTER TABLE postings ADD FOREIGN KEY (ms, seq, bucket) REFERENCES events (ms, seq, bucket);
ALTER TABLE conflicts ADD PRIMARY KEY (ms, seq, bucket);
