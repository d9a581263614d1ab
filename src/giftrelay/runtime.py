"""What every command needs: the secret, the catalog, and a Redis with the money core.

On the embedded default (no ``GIFTRELAY_REDIS_URL``) Redis is the private server
under ``var/redis``: the one a running ``giftrelay serve`` owns, or, for a
one-off command while none runs, one started for the command and stopped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog

from giftrelay import auth
from giftrelay.config import ConfigError, Settings
from giftrelay.embedded import RedisServer, running_url
from giftrelay.ledger import open_store
from giftrelay.ledger.consumer import LedgerConsumer
from giftrelay.ledger.store import Store, StoreUnavailable
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect

log = structlog.get_logger(__name__)


def secret_for(settings: Settings) -> str:
    """``GIFTRELAY_SECRET``, or on the embedded default one kept under ``var/``."""
    if settings.secret:
        if len(settings.secret) < 32:
            raise ConfigError("GIFTRELAY_SECRET: use at least 32 characters")
        return settings.secret
    if settings.embedded:
        return auth.load_or_create_secret(settings.var_path)
    raise ConfigError("GIFTRELAY_SECRET must be set when GIFTRELAY_REDIS_URL is")


@contextlib.asynccontextmanager
async def redis_url(settings: Settings) -> AsyncIterator[str]:
    """The Redis URL to use, starting the embedded server for this command if need be."""
    if settings.redis_url:
        yield settings.redis_url
        return
    directory = settings.var_path / "redis"
    url = running_url(directory)
    if url:
        yield url
        return
    server = RedisServer(directory)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def ledger_store(settings: Settings, *, wait: float = 30.0) -> AsyncIterator[Store]:
    """The opened (and migrated) ledger store, closed on exit; waits ``wait`` s for it."""
    try:
        store = open_store(settings.ledger)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    delay = 0.5
    deadline = time.monotonic() + wait
    while True:
        try:
            await store.open()
            break
        except StoreUnavailable as exc:
            if time.monotonic() + delay > deadline:
                raise ConfigError(f"the ledger store is unavailable: {exc}") from None
            log.warning("ledger store unavailable; retrying", reason=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        yield store
    finally:
        await store.close()


def consumer(settings: Settings, url: str, store: Store, name: str | None = None) -> LedgerConsumer:
    """A ledger consumer with its own client: its reads block longer than money calls may."""
    block_ms = 500
    redis = connect(url, timeout=settings.redis_timeout + block_ms / 1000, name="giftrelay-ledger")
    return LedgerConsumer(
        redis,
        store,
        name=name,
        batch=settings.ledger_batch,
        block_ms=block_ms,
        claim_idle_ms=settings.ledger_claim_idle_ms,
        max_deliveries=settings.ledger_max_deliveries,
    )


@contextlib.asynccontextmanager
async def money(settings: Settings, url: str) -> AsyncIterator[Money]:
    """A started :class:`Money` over a fresh client, closed on exit."""
    redis = connect(url, timeout=settings.redis_timeout)
    core = Money(redis, settings, catalog.load(settings.catalog))
    try:
        await core.start()
        yield core
    finally:
        await core.aclose()
        await redis.aclose()
