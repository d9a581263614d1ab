"""What every command needs: the secret, the catalog, and a Redis with the money core.

On the embedded default (no ``GIFTRELAY_REDIS_URL``) Redis is the private server
under ``var/redis``: the one a running ``giftrelay serve`` owns, or, for a
one-off command while none runs, one started for the command and stopped after.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from typing import IO

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import auth, mover
from giftrelay.config import ConfigError, Settings, redact
from giftrelay.embedded import RedisServer, running_url
from giftrelay.ledger import open_store
from giftrelay.ledger.buckets import backlog, consuming
from giftrelay.ledger.consumer import LedgerConsumer
from giftrelay.ledger.store import Store, StoreDenied, StoreUnavailable
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect

log = structlog.get_logger(__name__)


class Unreachable(RuntimeError):
    """Redis, or the giftrelay a command needs, does not answer; the message names the URL."""


class AlreadyRunning(RuntimeError):
    """Another ``giftrelay serve`` owns the var directory."""


def claim_var_dir(settings: Settings) -> IO[str]:
    """Lock ``var/serve.lock`` for this serve's lifetime, before anything else is touched:
    a second serve on the same directory is refused at once (:class:`AlreadyRunning`)."""
    settings.var_path.mkdir(parents=True, exist_ok=True)
    lock = open(settings.var_path / "serve.lock", "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise AlreadyRunning(
            f"another giftrelay serve (pid {pid}) already runs on "
            f"{settings.var_path.resolve()}: stop it first, or give this one its own "
            "GIFTRELAY_VAR_DIR"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


async def check_reachable(url: str, wait: float) -> None:
    """PING ``url`` once; :class:`Unreachable`, naming it with the password hidden, if not."""
    redis = connect(url, timeout=wait, retries=0)
    try:
        await redis.ping()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise Unreachable(
            f"Redis at {redact(url)} is unreachable ({exc}): start it, or fix GIFTRELAY_REDIS_URL"
        ) from None
    finally:
        await redis.aclose()


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
async def redis_url(
    settings: Settings, *, start: bool = True, check: bool = True, one_off: bool = True
) -> AsyncIterator[str]:
    """The Redis URL to use, starting the embedded server for this command if need be.

    A configured Redis that does not answer is :class:`Unreachable` unless ``check`` is
    False (a service that waits for it). With ``start=False`` (commands that only read)
    a directory where no giftrelay ever ran is :class:`Unreachable` rather than a new,
    empty Redis. A ``one_off`` command that starts the embedded Redis says so (``serve``
    starts it as its own).
    """
    if settings.redis_url:
        if check:
            await check_reachable(settings.redis_url, settings.redis_timeout)
        yield settings.redis_url
        return
    directory = settings.var_path / "redis"
    url = running_url(directory)
    if url:
        yield url
        return
    if not start and not directory.exists():
        raise Unreachable(
            f"no giftrelay runs here: there is no {directory}; run this where "
            "`giftrelay serve` runs, or set GIFTRELAY_VAR_DIR (or GIFTRELAY_REDIS_URL) "
            "to the relay's"
        )
    if one_off:
        log.info("no giftrelay serve runs here: starting the embedded Redis for this command",
                 dir=str(directory))  # fmt: skip
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
            if isinstance(exc, StoreDenied):
                raise ConfigError(
                    f"GIFTRELAY_LEDGER_URL: the ledger store at {redact(settings.ledger)} "
                    f"refused the login ({exc}): fix the user, password or database in it"
                ) from None
            if time.monotonic() + delay > deadline:
                raise Unreachable(
                    f"the ledger store at {redact(settings.ledger)} is unavailable ({exc}): "
                    "start it, or fix GIFTRELAY_LEDGER_URL"
                ) from None
            log.warning("ledger store unavailable; retrying", reason=str(exc), retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    try:
        yield store
    finally:
        await store.close()


LEDGER_WATCH_S = 60.0
"""How often ``serve`` without a consumer checks that another one consumes the ledger."""


async def watch_ledger(settings: Settings, url: str, stop: asyncio.Event) -> None:
    """Warn at once, and again each time the ledger stream has grown, while no ledger
    consumer reads it: the money moves, but nothing reaches the ledger store. On a Redis
    Cluster, the entries of every bucket's stream together."""
    redis = connect(url, timeout=settings.redis_timeout)
    warned_at = -1
    try:
        while not stop.is_set():
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                waiting = await backlog(redis)
                if waiting > warned_at and not await consuming(redis):
                    log.warning(
                        "nothing consumes the ledger stream: run `giftrelay ledger` "
                        "(same GIFTRELAY_REDIS_URL and GIFTRELAY_LEDGER_URL) beside this relay",
                        ledger_entries=waiting,
                    )
                    warned_at = waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LEDGER_WATCH_S)
    finally:
        await redis.aclose()


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
    if core.steps is not None:
        core.steps.observe = mover.count_transfer
    try:
        await core.start()
        yield core
    finally:
        await core.aclose()
        await redis.aclose()
