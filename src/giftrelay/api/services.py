"""What the API's handlers share: the money core, the ledger store, the settings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from giftrelay.config import Settings
from giftrelay.ledger import open_store
from giftrelay.ledger.store import Store, StoreUnavailable
from giftrelay.money.api import Money
from giftrelay.money.platform import Platform
from giftrelay.wire.errors import Unavailable

log = structlog.get_logger(__name__)


class LazyStore:
    """The ledger store, opened on first use and again after a failed open.

    The relay must not fail to start because the store is down (a relay with
    ``--no-ledger`` never needed it before the API): only the requests that read the
    store answer 503 ``unavailable`` until it is back.
    """

    def __init__(self, url: str, store: Store | None = None) -> None:
        self.url = url
        self._store = store
        self._lock = asyncio.Lock()

    async def get(self) -> Store:
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                store = open_store(self.url)
                try:
                    await store.open()
                except (StoreUnavailable, OSError) as exc:
                    log.warning("the API cannot open the ledger store", reason=str(exc))
                    raise Unavailable("the ledger store is unavailable; retry later") from None
                self._store = store
        return self._store

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()


class Services:
    """One per API server (one per worker)."""

    def __init__(self, settings: Settings, secret: str, money: Money, store: LazyStore) -> None:
        self.settings = settings
        self.secret = secret
        self.money = money
        self.platform = Platform(money)
        self.store = store

    def now(self) -> datetime:
        """The money core's clock, as an aware datetime (tests inject the clock)."""
        return datetime.fromtimestamp(self.money.clock() / 1000, UTC)
