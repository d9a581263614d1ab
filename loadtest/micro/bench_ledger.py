"""Benchmark: ledger events per second from the Redis stream into each store.

    python -m loadtest.micro.bench_ledger [--events 100000] [--batch 1000]
                                          [--stores sqlite,postgresql]

For each store it preloads the ``ledger`` stream with realistic gift entries
(as the money core writes them) and times a :class:`LedgerConsumer` draining it:

* ``batch N``: the consumer as shipped, N entries per read and per transaction;
* ``batch 1``: one entry per transaction, the baseline the other is a ratio of.

Then the lag test: entries arrive at ``--rate`` per second (default 10,000, paced
by a second process) for ``--seconds``, while one consumer writes them; it reports
the largest and the final lag (entries not yet written) and the consumer's rate.

PostgreSQL: ``--postgres-url`` (default the local server); a database is created
and dropped for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from giftrelay import logs
from giftrelay.embedded import RedisServer
from giftrelay.ledger.consumer import LedgerConsumer, group_info
from giftrelay.ledger.postgres import PostgresStore
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.ledger.store import Store
from giftrelay.money import keys
from giftrelay.redis_client import connect

console = Console()


def entry(i: int) -> bytes:
    """A gift ledger entry, as gift.lua writes it."""
    return msgspec.json.encode(
        {
            "v": 1, "kind": "gift", "id": f"bench-{i:010d}", "ts": 1_795_435_200_000 + i,
            "stream": "bench", "offset": f"{1_795_435_200_000 + i}-0", "from": f"v{i % 1000}",
            "to": "bench_creator", "gift": "rose", "count": 1, "coins": 1, "diamonds": 1,
            "coins_after": 1_000_000 - i, "diamonds_after": i + 1,
        }
    )  # fmt: skip


async def preload(redis: Redis, start: int, count: int) -> None:
    for chunk in range(start, start + count, 5000):
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(chunk, min(chunk + 5000, start + count)):
                pipe.xadd(keys.LEDGER, {"e": entry(i)})
            await pipe.execute()


async def reset(redis: Redis) -> None:
    await redis.delete(keys.LEDGER, keys.LEDGER_DEAD)


async def drain_rate(redis: Redis, store: Store, events: int, batch: int, start: int) -> float:
    await reset(redis)
    await preload(redis, start, events)
    consumer = LedgerConsumer(redis, store, batch=batch, block_ms=10, trim_every_ms=1000)
    await consumer.ensure_group()
    began = time.perf_counter()
    while consumer.stats.written + consumer.stats.duplicates < events:
        await consumer.step()
    return events / (time.perf_counter() - began)


def _produce(url: str, rate: int, seconds: float, start: int) -> None:
    """In its own process: XADD entries at ``rate`` per second, in 10 ms slices."""

    async def go() -> None:
        redis = connect(url)
        per_slice = max(1, rate // 100)
        began = time.perf_counter()
        i = start
        while (elapsed := time.perf_counter() - began) < seconds:
            async with redis.pipeline(transaction=False) as pipe:
                for _ in range(per_slice):
                    pipe.xadd(keys.LEDGER, {"e": entry(i)})
                    i += 1
                await pipe.execute()
            target = (i - start) / rate
            if target > elapsed:
                await asyncio.sleep(target - elapsed)
        await redis.aclose()

    asyncio.run(go())


async def lag_under_load(
    url: str, redis: Redis, store: Store, rate: int, seconds: float, batch: int, start: int
) -> tuple[int, int, float]:
    await reset(redis)
    consumer = LedgerConsumer(redis, store, batch=batch, block_ms=10, trim_every_ms=1000)
    await consumer.ensure_group()
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    producer = multiprocessing.get_context("spawn").Process(
        target=_produce, args=(url, rate, seconds, start)
    )
    producer.start()
    worst = 0
    began = time.perf_counter()
    while producer.is_alive():
        worst = max(worst, await _lag(redis))
        await asyncio.sleep(0.1)
    final = await _lag(redis)
    stop.set()
    await task
    return worst, final, consumer.stats.written / (time.perf_counter() - began)


async def _lag(redis: Redis) -> int:
    group = await group_info(redis)
    if group is None:
        return 0
    return int(group["pending"]) + int(group.get("lag") or 0)


async def open_stores(names: list[str], directory: Path, pg_url: str) -> dict[str, Store]:
    stores: dict[str, Store] = {}
    for name in names:
        if name == "sqlite":
            stores[name] = SQLiteStore(f"sqlite:///{directory}/bench.sqlite3")
        else:
            db = f"giftrelay_bench_{secrets.token_hex(3)}"
            admin = await asyncpg.connect(pg_url)
            await admin.execute(f'CREATE DATABASE "{db}"')
            await admin.close()
            stores[name] = PostgresStore(f"{pg_url.rpartition('/')[0]}/{db}")
        await stores[name].open()
    return stores


async def run(args: argparse.Namespace) -> None:
    logs.configure("console", "warning")
    directory = Path(tempfile.mkdtemp(prefix="giftrelay-bench-ledger-"))
    server = RedisServer(directory / "redis", appendonly=True)
    server.start()
    redis = connect(server.url, timeout=10)
    stores = await open_stores(args.stores.split(","), directory, args.postgres_url)
    table = Table(title=f"ledger: events/s from the stream into the store ({args.events:,} events)")
    for column in ("store", "what", "events/s", "x batch 1"):
        table.add_column(column, justify="left" if column in ("store", "what") else "right")
    lag_rows = []
    start = 0
    try:
        for name, store in stores.items():
            base = await drain_rate(redis, store, args.baseline_events, 1, start)
            start += args.baseline_events
            rate = await drain_rate(redis, store, args.events, args.batch, start)
            start += args.events
            table.add_row(name, "batch 1 (one transaction per event)", f"{base:,.0f}", "1.00")
            table.add_row(name, f"batch {args.batch}", f"{rate:,.0f}", f"{rate / base:.1f}")
            worst, final, written = await lag_under_load(
                server.url, redis, store, args.rate, args.seconds, args.batch, start
            )
            start += int(args.rate * args.seconds) + 1
            lag_rows.append((name, worst, final, written))
    finally:
        for store in stores.values():
            await store.close()
        if "postgresql" in stores:
            admin = await asyncpg.connect(args.postgres_url)
            db = stores["postgresql"].url.rpartition("/")[2]
            await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.close()
        await redis.aclose()
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    console.print(table)
    lag = Table(title=f"lag while entries arrive at {args.rate:,}/s for {args.seconds:.0f} s")
    for column in ("store", "largest lag (entries)", "lag at the end", "written/s"):
        lag.add_column(column, justify="left" if column == "store" else "right")
    for name, worst, final, written in lag_rows:
        lag.add_row(name, f"{worst:,}", f"{final:,}", f"{written:,.0f}")
    console.print(lag)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--baseline-events", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=1000, help="entries per batch")
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument("--rate", type=int, default=10_000, help="entries/s for the lag test")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
