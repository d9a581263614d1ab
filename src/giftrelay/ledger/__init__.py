"""The persistent ledger: the system of record for every coin and diamond.

``postings`` turns ledger entries into balanced double-entry postings (pure);
``store`` is the small interface the SQLite and PostgreSQL stores implement;
``consumer`` moves entries from the Redis ``ledger`` stream into a store exactly
once; ``reconcile`` proves the wallets in Redis and the store agree; ``export``
writes the ledger out for accounting.
"""
