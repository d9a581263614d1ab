"""What every command needs: the secret, the catalog, and a Redis with the money core.

On the embedded default (no ``GIFTRELAY_REDIS_URL``) Redis is the private server
under ``var/redis``: the one a running ``giftrelay serve`` owns, or, for a
one-off command while none runs, one started for the command and stopped after.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog

from giftrelay import auth, catalog
from giftrelay.config import ConfigError, Settings
from giftrelay.embedded import RedisServer, running_url
from giftrelay.money import Money
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
