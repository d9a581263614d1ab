"""Shared pieces of the ledger tests: stores on real SQLite files and real PostgreSQL, and
the ledger's streams in Redis as the tests see them: one ``ledger`` stream on a single
Redis, or on a Redis Cluster one per bucket (``keys.LEDGERS``), each with its group and
its dead letters. A test states its promise once through these and runs on both."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from giftrelay.embedded import LocalCluster, RedisServer
from giftrelay.ledger.buckets import group_info, sources
from giftrelay.ledger.consumer import LedgerConsumer
from giftrelay.ledger.postgres import PostgresStore
from giftrelay.ledger.postings import Record, record
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


def ledger_streams(redis: Redis) -> list[str]:
    """The ledger streams of this Redis: ``ledger``, or on a cluster every bucket's."""
    return [source.key for source in sources(redis)]


async def caught_up(redis: Redis, *, pending: int = 0) -> bool:
    """True once the group has read every entry of every ledger stream and acknowledged all
    but ``pending`` of them. A stream holding entries without the group is not caught up;
    one holding none (or none at all) is."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in ledger_streams(redis):
            pipe.xinfo_groups(stream)
            pipe.xrevrange(stream, count=1)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    unacknowledged = 0
    for groups, last in zip(replies[::2], replies[1::2], strict=True):
        if isinstance(groups, ResponseError):  # no such stream: nothing was written there
            continue
        if isinstance(groups, Exception):
            raise groups
        ours = [g for g in groups if g["name"] == keys.LEDGER_GROUP]
        if not ours:
            if last:
                return False
            continue
        if last and ours[0]["last-delivered-id"] != last[0][0]:
            return False
        unacknowledged += int(ours[0]["pending"])
    return unacknowledged == pending


async def drain(consumer: LedgerConsumer, *, within: float = 30, pending: int = 0) -> None:
    """Run ``consumer`` until the group has read everything in the ledger stream(s) and
    acknowledged all of it, or all but ``pending`` entries (held by another member)."""
    await consumer.ensure_group()

    async def go() -> None:
        while not await caught_up(consumer.redis, pending=pending):
            await consumer.step()

    await asyncio.wait_for(go(), within)


class Delivered(NamedTuple):
    """The group's counts over every ledger stream."""

    read: int
    """Entries delivered to its members (``entries-read``)."""
    pending: int
    """Of those, the ones not acknowledged yet."""


async def delivered(redis: Redis) -> Delivered:
    """How many entries the group's members have read, and of those how many they have not
    acknowledged, over every ledger stream."""
    read = pending = 0
    for stream in ledger_streams(redis):
        group = await group_info(redis, stream)
        if group is None or group["last-delivered-id"] == "0-0":  # none read (counter unset)
            continue
        assert group["entries-read"] is not None, f"{stream}: the read counter is unknown"
        read += int(group["entries-read"])
        pending += int(group["pending"])
    return Delivered(read, pending)


async def stream_lengths(redis: Redis) -> dict[str, int]:
    """The entries of each ledger stream that holds any."""
    streams = ledger_streams(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xlen(stream)
        sizes: list[int] = await pipe.execute()
    return {stream: n for stream, n in zip(streams, sizes, strict=True) if n}


async def busiest_stream(redis: Redis) -> str:
    """The ledger stream holding the most entries (``ledger`` itself on one Redis)."""
    sizes = await stream_lengths(redis)
    return max(sizes, key=lambda stream: sizes[stream], default=ledger_streams(redis)[0])


async def add_raw(redis: Redis, body: str, stream: str | None = None) -> tuple[str, str]:
    """An entry written into a ledger stream as a money script writes one (``e``: the
    body), by default into the stream holding the most entries, so that it lies among the
    money core's: (stream, entry id)."""
    stream = stream or await busiest_stream(redis)
    return stream, str(await redis.xadd(stream, {"e": body}))


async def ledger_records(redis: Redis) -> list[Record]:
    """Every entry of the ledger stream(s) as the consumer records it (with its bucket)."""
    return [
        record(entry_id, fields["e"], source.bucket)
        for source in sources(redis)
        for entry_id, fields in await redis.xrange(source.key)
    ]


async def mark_written(redis: Redis) -> None:
    """Move the group past every entry of the ledger stream(s), as if its members had
    written them all (the group must exist: ``ensure_group``)."""
    for stream in ledger_streams(redis):
        await redis.xgroup_setid(stream, keys.LEDGER_GROUP, "$")


async def dead_entries(redis: Redis) -> list[dict[str, str]]:
    """Every entry of the ledger's dead-letter stream(s)."""
    streams = sorted({keys.LEDGER_DEAD, *(source.dead for source in sources(redis))})
    return [fields for stream in streams for _, fields in await redis.xrange(stream)]


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
    sends = [
        money.gift(f"v{i % viewers}", stream, gift_ids[i % 4], 1 + i % 3, f"{stream}-{i:08d}")
        for i in range(gifts)
    ]
    await asyncio.gather(*sends)
    return viewers + gifts


Restorable = RedisServer | LocalCluster
"""A Redis whose AOF files a test may copy and put back: one server, or every node of a
cluster (made with ``appendonly=True``)."""


def backup_aof(redis: Restorable, to: Path) -> None:
    """A copy of the AOF files, taken stopped so it is whole, as backups are."""
    with _stopped(redis) as servers:
        for place, server in servers.items():
            shutil.copytree(server.directory / "appendonlydir", to / place)


def restore_aof(redis: Restorable, backup: Path) -> None:
    """Put an older copy of the AOF files back, as an operator restoring from backups would
    (on a cluster, every node's: the whole cluster goes back to the copy)."""
    with _stopped(redis) as servers:
        for place, server in servers.items():
            shutil.rmtree(server.directory / "appendonlydir")
            shutil.copytree(backup / place, server.directory / "appendonlydir")


@contextlib.contextmanager
def _stopped(redis: Restorable) -> Iterator[dict[Path, RedisServer]]:
    """The server(s) stopped, by the place of their files in a backup; started again after.
    A cluster's replicas stop before their primaries and start after them, so that none
    sees its primary gone long enough to take over; then the cluster settles again."""
    if isinstance(redis, RedisServer):
        redis.stop()
        try:
            yield {Path(): redis}
        finally:
            redis.start()
        return
    primaries = set(redis.primary_ports())
    order = sorted(redis.nodes, key=lambda port: port in primaries)  # replicas first
    for port in order:
        redis.nodes[port].stop()
    try:
        yield {Path(f"node-{port}"): redis.nodes[port] for port in order}
    finally:
        for port in reversed(order):
            redis.nodes[port].start()
        redis.wait_stable()
