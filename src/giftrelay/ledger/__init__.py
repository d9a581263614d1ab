"""The persistent ledger: the system of record for every coin and diamond.

``postings`` turns ledger entries into balanced double-entry postings (pure);
``store`` is the small interface the SQLite and PostgreSQL stores implement;
``consumer`` moves entries from the Redis ``ledger`` stream into a store exactly
once; ``reconcile`` proves the wallets in Redis and the store agree; ``export``
writes the ledger out for accounting.
"""

from __future__ import annotations

from giftrelay.ledger.store import Store


def open_store(url: str) -> Store:
    """The store for ``url``: ``sqlite:///relative/path``, ``sqlite:////abs/path``
    or ``postgresql://user@host/db``."""
    if url.startswith("sqlite:///"):
        from giftrelay.ledger.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        from giftrelay.ledger.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        f"GIFTRELAY_LEDGER_URL: {url!r} is neither sqlite:///path nor postgresql://..."
    )
