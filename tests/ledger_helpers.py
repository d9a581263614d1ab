"""Shared pieces of the ledger tests: stores on real SQLite files and real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from giftrelay.embedded import RedisServer
from giftrelay.ledger.consumer import LedgerConsumer, group_info
from giftrelay.ledger.postgres import PostgresStore
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.ledger.store import Store
from giftrelay.money import keys
from giftrelay.money.api import Money

POSTGRES_ADMIN_URL = os.environ.get(
    "GIFTRELAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def postgres_database() -> tuple[str, str]:
    """Create a database of the test's own: (its URL, its name)."""
    name = f"giftrelay_test_{secrets.token_hex(4)}"
    try:
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc}); start it (see "
            ".ci/run) or point GIFTRELAY_TEST_POSTGRES_URL at a server the tests may use"
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = POSTGRES_ADMIN_URL.rpartition("/")
    return f"{base}/{name}", name


async def drop_postgres_database(name: str) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def set_postgres_available(name: str, available: bool) -> None:
    """Take a database away from its clients (and give it back): the store is down."""
    admin = await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(available).lower()}')
        if not available:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await admin.close()


async def make_store(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    if kind == "sqlite":
        store: Store = SQLiteStore(f"sqlite:///{tmp_path}/ledger.sqlite3", busy_timeout_ms=200)
        await store.open()
        yield store
        await store.close()
        return
    url, name = await postgres_database()
    store = PostgresStore(url, timeout=3)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await drop_postgres_database(name)


def quick_consumer(redis: Redis, store: Store, **options: int | str) -> LedgerConsumer:
    """A consumer tuned for tests: short blocks, claims at once, trims every round."""
    defaults: dict[str, int | str] = {
        "batch": 200,
        "block_ms": 20,
        "claim_idle_ms": 100,
        "claim_every_ms": 0,
        "trim_every_ms": 0,
        "max_deliveries": 3,
    }
    return LedgerConsumer(redis, store, **{**defaults, **options})  # type: ignore[arg-type]


async def caught_up(redis: Redis) -> bool:
    """True once every entry of ``ledger`` has been read and acknowledged by the group."""
    group = await group_info(redis)
    if group is None:
        return False
    last = await redis.xrevrange(keys.LEDGER, count=1)
    return int(group["pending"]) == 0 and (not last or group["last-delivered-id"] == last[0][0])


async def drain(consumer: LedgerConsumer, *, within: float = 30) -> None:
    """Run ``consumer`` until the group has acknowledged everything in the stream."""
    await consumer.ensure_group()

    async def go() -> None:
        while not await caught_up(consumer.redis):
            await consumer.step()

    await asyncio.wait_for(go(), within)


async def wait_for(condition: Callable[[], Awaitable[bool]], *, within: float = 20) -> None:
    """Await a predicate on state in Redis or a store, which has no event to await."""

    async def go() -> None:
        while not await condition():  # noqa: ASYNC110 - polls state owned by another process
            await asyncio.sleep(0.02)

    await asyncio.wait_for(go(), within)


async def true(value: bool) -> bool:
    """A predicate for :func:`wait_for` from a value read again on each call."""
    return value


def spawn(
    *args: str, env: dict[str, str], stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """``giftrelay ARGS...`` as a child process."""
    return subprocess.Popen(
        [sys.executable, "-m", "giftrelay", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


async def gift_load(money: Money, *, viewers: int, gifts: int, stream: str = "s1") -> int:
    """Top up ``viewers`` and send ``gifts`` concurrent gifts; returns ledger entries made."""
    await money.stream_open(stream, "creator", "load")
    await asyncio.gather(
        *(money.topup(f"v{v}", 1_000_000, f"receipt-v{v}-0001") for v in range(viewers))
    )
    gift_ids = ("rose", "heart", "donut", "confetti")
    await asyncio.gather(
        *(
            money.gift(f"v{i % viewers}", stream, gift_ids[i % 4], 1 + i % 3, f"{stream}-{i:08d}")
            for i in range(gifts)
        )
    )
    return viewers + gifts


def backup_aof(server: RedisServer, to: Path) -> None:
    """A copy of the server's AOF files, taken stopped so it is whole, as backups are."""
    server.stop()
    shutil.copytree(server.directory / "appendonlydir", to)
    server.start()


def restore_aof(server: RedisServer, backup: Path) -> None:
    """Put an older copy of the AOF files back, as an operator restoring from backups would."""
    server.stop()
    shutil.rmtree(server.directory / "appendonlydir")
    shutil.copytree(backup, server.directory / "appendonlydir")
    server.start()
