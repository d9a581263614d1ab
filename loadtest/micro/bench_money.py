"""Benchmark: gifts per second through the money core, against baselines in the same run.

    python -m loadtest.micro.bench_money [--gifts 20000] [--callers 64]

It starts a private redis-server (AOF on, fsync every second, as the embedded
default runs) and measures, one after the other on the same server:

* ``redis-benchmark``: the gift script by EVALSHA from C, pipelined: the ceiling;
* ``naive loop``: one await per gift, each waiting for the last (what a first
  version does): the baseline the others are given as ratios of;
* ``concurrent, unbatched``: ``--callers`` tasks, a round trip per gift;
* ``giftrelay``: the same callers through :class:`giftrelay.money.api.Money`, whose
  automatic pipelining shares round trips between concurrent calls.

It also measures the memory one retained idempotency id costs in Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from giftrelay import logs
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.money.autopipe import AutoPipeline
from giftrelay.money.scripts import SCRIPTS, Script
from giftrelay.money.shards import Router
from giftrelay.redis_client import connect

console = Console()
STREAM, CREATOR = "bench", "bench_creator"


class Result(msgspec.Struct):
    name: str
    gifts: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.gifts / self.seconds


RB_VIEWER = "rb"
"""redis-benchmark's sender: funded, so that its gifts take the script's full path."""


async def _setup(money: Money, viewers: int) -> None:
    await money.redis.flushall()
    await money.stream_open(STREAM, CREATOR, "benchmark")
    for v in range(viewers):
        await money.topup(f"v{v}", 10**11, f"bench-receipt-{v:06d}")
    await money.topup(RB_VIEWER, 10**11, "bench-receipt-rb")


async def _timed(name: str, gifts: int, run: Callable[[], Awaitable[None]]) -> Result:
    started = time.perf_counter()
    await run()
    return Result(name, gifts, time.perf_counter() - started)


async def naive(money: Money, gifts: int) -> Result:
    async def run() -> None:
        for i in range(gifts):
            await money.gift(f"v{i % 64}", STREAM, "rose", 1, f"naive-{i:08d}")

    return await _timed("naive loop (1 await per gift)", gifts, run)


async def concurrent(money: Money, gifts: int, callers: int, name: str, tag: str) -> Result:
    per_caller = gifts // callers

    async def caller(c: int) -> None:
        for i in range(per_caller):
            await money.gift(f"v{c}", STREAM, "rose", 1, f"{tag}-{c:03d}-{i:07d}")

    async def run() -> None:
        await asyncio.gather(*(caller(c) for c in range(callers)))

    return await _timed(name, per_caller * callers, run)


def redis_benchmark(port: int, gifts: int, clients: int, *, max_balance: int) -> Result | None:
    """The gift script by EVALSHA from redis-benchmark, with every argument the money core
    passes: the sender (``RB_VIEWER``) must be funded by :func:`_setup`, or each call stops
    at ``insufficient_coins`` and measures only the script's reads."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        console.print("[yellow]redis-benchmark not found (apt-get install redis-tools)[/]")
        return None
    viewer, rnd, now = RB_VIEWER, "__rand_int__", int(time.time() * 1000)
    cmd = [
        binary, "-p", str(port), "-n", str(gifts), "-c", str(clients), "-P", "16",
        "-r", "100000000000", "-q",
        "EVALSHA", SCRIPTS.sha[Script.GIFT], "11",
        keys.wallet(viewer), keys.wallet(CREATOR), f"idem:{{{viewer}}}:g:{rnd}",
        keys.stream(STREAM), keys.top(STREAM), keys.history(STREAM),
        keys.combo(STREAM, viewer, "rose"), keys.LEDGER, keys.channel(STREAM),
        keys.spending(viewer, now // 86_400_000), keys.battle_top(STREAM),
        f"rb-{rnd}", viewer, CREATOR, STREAM, "rose", "Rose", "1", "1", "1", "1",
        str(now), "3000", "3600000", "1000", str(max_balance), "0", "100,1000,10000",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"([\d.]+) requests per second", out)
    if match is None:
        raise RuntimeError(f"cannot read redis-benchmark's output: {out!r}")
    rate = float(match.group(1))
    return Result("redis-benchmark EVALSHA (C client, -P 16)", gifts, gifts / rate)


async def idempotency_bytes(redis: Redis, sample: int = 20_000) -> tuple[int, float]:
    """MEMORY USAGE of one record, and used_memory growth per id over ``sample`` ids."""
    records = [k async for k in redis.scan_iter("idem:{v*", count=1000)]
    one = int(await redis.memory_usage(records[0]) or 0)
    before = int((await redis.info("memory"))["used_memory"])
    async with redis.pipeline(transaction=False) as pipe:
        value = await redis.get(records[0])
        assert value is not None
        for i in range(sample):
            pipe.set(f"idem:{{v0}}:g:probe-{i:08d}", value, px=3_600_000)
        await pipe.execute()
    after = int((await redis.info("memory"))["used_memory"])
    await redis.delete(*[f"idem:{{v0}}:g:probe-{i:08d}" for i in range(sample)])
    return one, (after - before) / sample


def start_replica(primary: RedisServer, directory: Path) -> subprocess.Popen[bytes]:
    """A replica of ``primary`` (for ``--replica``: the cost of GIFTRELAY_ACK_REPLICAS)."""
    binary = shutil.which("redis-server")
    assert binary is not None
    directory.mkdir()
    return subprocess.Popen(
        [binary, "--port", str(free_port()), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", str(primary.port)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


async def synced(redis: Redis) -> None:
    async with asyncio.timeout(30):
        while await redis.wait(0, 0) < 1:  # noqa: ASYNC110 - until the replica is in sync
            await asyncio.sleep(0.05)


async def run(gifts: int, callers: int, *, replica: bool = False) -> None:
    logs.configure("console", "warning")
    directory = Path(tempfile.mkdtemp(prefix="giftrelay-bench-"))
    server = RedisServer(directory, appendonly=True, appendfsync="everysec")
    server.start()
    follower = start_replica(server, directory / "replica") if replica else None
    settings = Settings.load({})
    redis = connect(server.url)
    money = Money(redis, settings, catalog.load())
    await money.start()
    results: list[Result] = []
    try:
        await _setup(money, callers)
        ledger_before = await redis.xlen(keys.LEDGER)
        rb = redis_benchmark(server.port, gifts * 2, 50, max_balance=settings.max_balance)
        applied = await redis.xlen(keys.LEDGER) - ledger_before
        if rb is not None and applied != rb.gifts:
            raise RuntimeError(f"redis-benchmark: {applied} of {rb.gifts} gifts applied")

        await _setup(money, callers)
        results.append(await naive(money, gifts // 4))

        await _setup(money, callers)
        unbatched = Money(redis, settings, catalog.load())
        unbatched.pipe = Router(AutoPipeline(redis, max_batch=1, max_inflight=callers))
        results.append(
            await concurrent(unbatched, gifts, callers, f"{callers} callers, unbatched", "u")
        )

        if follower is not None:
            await synced(redis)
            await _setup(money, callers)
            acked = Money(redis, Settings.load({"GIFTRELAY_ACK_REPLICAS": "1"}), catalog.load())
            name = f"{callers} callers, giftrelay, ACK_REPLICAS=1 (WAIT)"
            results.append(await concurrent(acked, gifts, callers, name, "a"))

        await _setup(money, callers)
        results.append(
            await concurrent(money, gifts, callers, f"{callers} callers, giftrelay", "g")
        )
        one, per_id = await idempotency_bytes(redis)
        ledger_len = await redis.xlen(keys.LEDGER)
        balance_sum = 0
        for v in range(callers):
            balance_sum += (await money.balance(f"v{v}")).coins
        spent = callers * 10**11 - balance_sum
        credited = (await money.balance(CREATOR)).diamonds
    finally:
        await money.aclose()
        await redis.aclose()
        if follower is not None:
            follower.terminate()
            follower.wait(10)
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)

    baseline = results[0].rate
    table = Table(title=f"money core: gifts/s (1 coin each), {callers} callers")
    table.add_column("what")
    table.add_column("gifts", justify="right")
    table.add_column("gifts/s", justify="right")
    table.add_column("x naive loop", justify="right")
    for r in ([rb] if rb else []) + results:
        table.add_row(r.name, f"{r.gifts:,}", f"{r.rate:,.0f}", f"{r.rate / baseline:.2f}")
    console.print(table)
    console.print(f"conservation (last run): coins spent {spent:,} = diamonds credited "
                  f"{credited:,}: {'OK' if spent == credited else 'FAILED'}; "
                  f"ledger entries {ledger_len:,}")  # fmt: skip
    console.print(
        f"idempotency record: MEMORY USAGE {one} B; used_memory per retained id {per_id:.0f} B"
        f" -> 24 h at 10,000 gifts/s (864 M ids) = {per_id * 864e6 / 2**30:,.0f} GiB"
    )
    if spent != credited:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gifts", type=int, default=20_000, help="gifts per concurrent run")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers")
    parser.add_argument(
        "--replica", action="store_true",
        help="also run with a replica and GIFTRELAY_ACK_REPLICAS=1: what durable acks cost",
    )  # fmt: skip
    args = parser.parse_args(argv)
    asyncio.run(run(args.gifts, args.callers, replica=args.replica))


if __name__ == "__main__":
    main()
