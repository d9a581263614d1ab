"""Faults under live gift load, each ending with exact money and ledger checks.

Sizes are CI-sized and named; docs/reliability.md records the big runs
(``RELIABILITY_STORM_VIEWERS=2000``, longer outages) and their figures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer
from giftrelay.ledger.consumer import LedgerConsumer
from giftrelay.ledger.postgres import PostgresStore
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.ledger.store import Store
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect

from .fault_helpers import (
    FAST,
    TOPUP,
    GiftLoad,
    Watcher,
    check_ledger,
    check_money,
    check_watchers,
    p99,
    quantile,
    serve,
    wait_until,
)
from .ledger_helpers import (
    POSTGRES_ADMIN_URL,
    caught_up,
    drop_postgres_database,
    postgres_database,
    quick_consumer,
    set_postgres_available,
)
from .relay_helpers import SECRET, running_relay, slow_closes

CREATOR = "cre"
STREAM = "live"

REDIS_OUTAGE_S = 3.0
"""How long Redis stays down (the promise: service back within 15 s of its return)."""
STORE_OUTAGE_S = float(os.environ.get("RELIABILITY_STORE_OUTAGE_S", "5"))
"""The issue asks for 30 s; CI holds the store down 5 s (same code path, shorter wait)."""
STORM_VIEWERS = int(os.environ.get("RELIABILITY_STORM_VIEWERS", "300"))
"""The issue's storm is 2,000 viewers; CI runs 300 (docs/reliability.md has the 2,000 run)."""


async def money_over(url: str) -> Money:
    core = Money(redis_connect(url), Settings.load({}), catalog.load())
    await core.start()
    return core


async def setup_stream(core: Money, users: list[str]) -> None:
    await core.stream_open(STREAM, CREATOR, "fault test")
    await asyncio.gather(*(core.topup(u, TOPUP, f"fund-{u}-000") for u in users))


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = SQLiteStore(f"sqlite:///{tmp_path}/ledger.sqlite3")
    await store.open()
    yield store
    await store.close()


async def consume(
    url: str, store: Store
) -> tuple[LedgerConsumer, asyncio.Event, asyncio.Task[None]]:
    """A ledger consumer in this process, as ``giftrelay serve`` runs it."""
    consumer = quick_consumer(redis_connect(url, timeout=1), store)
    stop = asyncio.Event()
    return consumer, stop, asyncio.create_task(consumer.run(stop))


async def finish(consumer: LedgerConsumer, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    await wait_until(lambda: caught_up(consumer.redis), 60, "the ledger to catch up")
    stop.set()
    await task
    await consumer.redis.aclose()


async def start_watchers(urls: str | list[str], count: int) -> list[Watcher]:
    watchers = [Watcher(urls, STREAM, i) for i in range(count)]
    for w in watchers:
        w.start()
    async with asyncio.timeout(60):
        await asyncio.gather(*(w.joined.wait() for w in watchers))
    return watchers


# -- Redis SIGKILLed and restarted with AOF ----------------------------------------------------


async def test_redis_sigkill_under_load(own_redis_server: RedisServer, sqlite_store: Store) -> None:
    url = own_redis_server.url
    users = [f"v{i}" for i in range(8)]
    async with running_relay(url, **FAST) as h:
        await setup_stream(h.money, users)
        consumer, stop, task = await consume(url, sqlite_store)
        watchers = await start_watchers(h.ws, 20)
        load = GiftLoad(h.ws, users, STREAM, rate=15, prefix="rk")
        load.start()
        await load.wait_acked(100)

        loop = asyncio.get_running_loop()
        killed = loop.time()
        own_redis_server.kill()
        # During the outage every gift is answered `unavailable`, fast, and is retried.
        await wait_until(lambda: load.codes(killed)["unavailable"] >= 3 * len(users), 20)
        await asyncio.sleep(max(0.0, REDIS_OUTAGE_S - (loop.time() - killed)))  # the outage
        own_redis_server.start()
        back = loop.time()
        acked_at_return = len(load.acked)
        await wait_until(lambda: len(load.acked) >= acked_at_return + 50, 15, "service back")
        resumed = loop.time() - back
        await load.wait_acked(100)
        await load.stop()

        during = [r for r in load.replies if killed <= r.sent < back]
        assert during, "no gift was sent while Redis was down"
        assert {r.code for r in during} <= {"unavailable", "gift_ok"}
        assert max(r.seconds for r in during) < 2.0, max(r.seconds for r in during)
        assert not load.unanswered, f"gifts that hung: {load.unanswered[:5]}"
        assert resumed < 15
        ids = set(load.acked)
        for w in watchers:
            await w.wait_for_ids(ids)
        check_watchers(watchers, load)
        assert sum(w.reconnects for w in watchers) == 0, "viewers had to reconnect"
        for w in watchers:
            await w.stop()
        redis = redis_connect(url)
        await check_money(redis, load, creator=CREATOR)
        await finish(consumer, stop, task)
        await check_ledger(redis, sqlite_store, load, topups=len(users))
        await redis.aclose()


# -- a relay worker SIGKILLed under serve --workers 2 ------------------------------------------


async def test_worker_sigkill_viewers_recover_elsewhere(
    redis: Redis, redis_server: RedisServer, sqlite_store: Store, tmp_path: Path
) -> None:
    users = [f"v{i}" for i in range(6)]
    core = await money_over(redis_server.url)
    await setup_stream(core, users)
    consumer, stop, task = await consume(redis_server.url, sqlite_store)
    async with serve(tmp_path, redis_server.url, "--workers", "2") as relay:
        watchers = await start_watchers(relay.ws, 30)
        load = GiftLoad(relay.ws, users, STREAM, rate=20, prefix="wk")
        load.start()
        await load.wait_acked(100)
        victim = relay.workers()[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: sum(w.reconnects for w in watchers) > 0, 20, "a reconnect")
        await load.wait_acked(200)
        await load.stop()
        ids = set(load.acked)
        for w in watchers:
            await w.wait_for_ids(ids)
        moved = [w for w in watchers if w.reconnects]
        assert moved, "the kill should hit some viewers"
        assert len(moved) < len(watchers), "the kill should hit some viewers, not all"
        assert all(code == 1006 for w in moved for code in w.close_codes)
        check_watchers(watchers, load)  # every missed event recovered with `since`
        for w in watchers:
            await w.stop()
    await check_money(redis, load, creator=CREATOR)
    await finish(consumer, stop, task)
    await check_ledger(redis, sqlite_store, load, topups=len(users))
    await core.aclose()
    await core.redis.aclose()


# -- the ledger consumer killed mid-batch, then the store down ---------------------------------


def ledger_process(redis_url: str, store_url: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GIFTRELAY_REDIS_URL": redis_url,
        "GIFTRELAY_LEDGER_URL": store_url,
        "GIFTRELAY_SECRET": SECRET,
        "GIFTRELAY_LOG_FORMAT": "json",
        "GIFTRELAY_LEDGER_BATCH": "50",
        "GIFTRELAY_LEDGER_CLAIM_IDLE_MS": "300",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "giftrelay", "ledger"], env=env, stdout=out, stderr=out
        )


BACKLOG = 4000


async def lag(redis: Redis) -> int:
    group = {g["name"]: g for g in await redis.xinfo_groups(keys.LEDGER)}[keys.LEDGER_GROUP]
    return int(group["pending"]) + int(group.get("lag") or 0)


async def test_ledger_consumer_killed_and_store_down_under_relay_load(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    assert POSTGRES_ADMIN_URL
    store_url, name = await postgres_database()
    store = PostgresStore(store_url, timeout=3)
    await store.open()
    log = tmp_path / "ledger.log"
    users = [f"v{i}" for i in range(6)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with running_relay(redis_server.url, **FAST) as h:
            await setup_stream(h.money, [*users, "burster"])
            # A backlog first, so that the consumer is busy with full batches when killed.
            backlog = await asyncio.gather(
                *(
                    h.money.gift("burster", STREAM, "rose", 1, f"backlog-{i:06d}")
                    for i in range(BACKLOG)
                )
            )
            load = GiftLoad(h.ws, users, STREAM, rate=20, prefix="lg")
            load.start()
            pending = 0
            for _ in range(8):  # until a kill lands between a batch's read and its ack
                first = ledger_process(redis_server.url, store_url, log)
                procs.append(first)
                written = await store.count()
                await wait_until(lambda w=written: _more(store, w), 30, "the consumer to write")
                first.send_signal(signal.SIGKILL)
                first.wait()
                pending = int((await redis.xpending(keys.LEDGER, keys.LEDGER_GROUP))["pending"])
                if pending:
                    break
            assert pending > 0, "the consumer was never killed mid-batch"

            await set_postgres_available(name, False)
            second = ledger_process(redis_server.url, store_url, log)
            procs.append(second)
            down_lag = await lag(redis)
            await asyncio.sleep(STORE_OUTAGE_S)  # the outage itself
            grown = await lag(redis)
            assert grown > down_lag, "the lag should grow while the store is down"
            assert second.poll() is None, "the consumer must ride out the outage"
            await set_postgres_available(name, True)
            recovered_from = time.monotonic()
            # Under continued load the lag falls back to a batch or two.
            await wait_until(lambda: _lag_below(redis, 150), 60, "the lag to recover")
            recovery_s = time.monotonic() - recovered_from
            await load.stop()
            await wait_until(lambda: caught_up(redis), 60, "the ledger to catch up")
            assert recovery_s < 30
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
        assert b"claimed pending ledger entries" in log.read_bytes()
        await check_money(redis, load, creator=CREATOR, extra_diamonds=len(backlog))
        extra = {f"backlog-{i:06d}" for i in range(BACKLOG)}
        await check_ledger(redis, store, load, topups=len(users) + 1, extra_gifts=extra)
        assert await lag(redis) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await set_postgres_available(name, True)
        await store.close()
        await drop_postgres_database(name)


async def _more(store: Store, count: int) -> bool:
    return await store.count() > count


async def _lag_below(redis: Redis, limit: int) -> bool:
    return await lag(redis) < limit


# -- slow readers among fast ones ---------------------------------------------------------------


SLOW_READERS = 10
FAST_VIEWERS = 20
PHASE_S = 3.0


async def slow_reader(port: int, ws_url: str) -> tuple[Any, int]:
    """A viewer that joins and then never reads: a tiny receive buffer, nothing taken off it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    # Uncompressed, so that the flood fills its buffers fast.
    ws = await connect(ws_url, sock=sock, max_queue=1, max_size=None, compression=None)
    await ws.recv()  # hello
    await ws.send(json.dumps({"type": "join", "stream": STREAM}))
    return ws, sock.getsockname()[1]


async def test_slow_readers_do_not_slow_fast_viewers(
    redis: Redis, redis_server: RedisServer
) -> None:
    users = [f"v{i}" for i in range(10)]
    async with running_relay(redis_server.url, write_buffer_bytes=65536, **FAST) as h:
        closed_before = slow_closes()  # the relay's count is the process's: count from here
        await setup_stream(h.money, [*users, "burster"])
        watchers = await start_watchers(h.ws, FAST_VIEWERS)
        load = GiftLoad(h.ws, users, STREAM, rate=20, prefix="sl")
        load.start()
        await load.wait_acked(50)
        bursts: list[int] = []

        async def burst_until(done: Any, then: Any = None) -> None:
            """Gifts as fast as the money core takes them (not measured) until ``done()``;
            then ``then()``, and wait for the fast viewers to catch up."""
            async with asyncio.timeout(120):
                while not done():
                    base = len(bursts)
                    replies = await asyncio.gather(
                        *(
                            h.money.gift("burster", STREAM, "gg", 1, f"burst-{base + i:07d}")
                            for i in range(200)
                        )
                    )
                    bursts.extend(r.coins for r in replies)
            if then is not None:
                then()
            # Measure only once the fast viewers have caught up with the burst.
            burst_ids = {f"burst-{i:07d}" for i in range(len(bursts))}
            for w in watchers:
                await w.wait_for_ids(burst_ids, within=60)

        async def phase(seconds: float) -> list[float]:
            marks = [len(w.latencies) for w in watchers]
            await asyncio.sleep(seconds)  # measuring over a wall-clock window
            return [x for w, m in zip(watchers, marks, strict=True) for x in w.latencies[m:]]

        before = await phase(PHASE_S)
        slow = [await slow_reader(h.port, h.ws) for _ in range(SLOW_READERS)]
        ports = {port for _, port in slow}

        def slow_buffers() -> list[int]:
            return [
                s.conn.transport.get_write_buffer_size()
                for s in h.relay.sessions
                if s.conn.remote_address[1] in ports and s.conn.transport is not None
            ]

        # Fill the slow readers' kernel buffers: from here on the relay holds their backlog.
        await burst_until(lambda: all(b > 0 for b in slow_buffers()))
        during = await phase(PHASE_S)

        async def read_to_close(ws: Any) -> int | None:
            """A closed slow reader reads again and finds its close frame, 1013. It must
            start within the relay's close timeout (5 s), or the relay aborts it (1006)."""
            try:
                async with asyncio.timeout(30):
                    async for _ in ws:
                        pass
            except ConnectionClosed:
                pass
            return ws.close_code

        closing: list[asyncio.Task[int | None]] = []
        await burst_until(
            lambda: slow_closes() - closed_before >= SLOW_READERS,
            then=lambda: closing.extend(asyncio.create_task(read_to_close(ws)) for ws, _ in slow),
        )
        after = await phase(PHASE_S)
        await load.stop()

        def p90(values: list[float]) -> float:
            return quantile(values, 0.90)

        sys.stdout.write(  # figures for docs/reliability.md (pytest -s)
            f"slow readers: fast p90/p99 before {p90(before):.1f}/{p99(before):.1f} ms, with "
            f"{SLOW_READERS} slow {p90(during):.1f}/{p99(during):.1f} ms, after "
            f"{p90(after):.1f}/{p99(after):.1f} ms ({len(during)} samples)\n"
        )
        # A relay held up by its slow readers would delay every frame: the p90 shows
        # it. Not the p99 of a 3 s window: one frame ~100 ms late now and then, with or
        # without slow readers (seen before and after them too), moves it on its own.
        baseline = max(p90(before), p90(after))
        assert p90(during) <= 1.2 * baseline, (p90(before), p90(during), p90(after))
        assert p99(during) < 500, p99(during)
        assert [await task for task in closing] == [1013] * SLOW_READERS
        ids = set(load.acked)
        for w in watchers:
            await w.wait_for_ids(ids)
        check_watchers(watchers, load)
        assert sum(w.reconnects for w in watchers) == 0
        for w in watchers:
            await w.stop()
        await check_money(redis, load, creator=CREATOR, extra_diamonds=sum(bursts))


# -- a reconnect storm ----------------------------------------------------------------------------


async def test_reconnect_storm(
    redis: Redis, redis_server: RedisServer, sqlite_store: Store, tmp_path: Path
) -> None:
    users = [f"v{i}" for i in range(4)]
    core = await money_over(redis_server.url)
    await setup_stream(core, users)
    consumer, stop, task = await consume(redis_server.url, sqlite_store)
    async with serve(tmp_path, redis_server.url) as relay:
        watchers = await start_watchers(relay.ws, STORM_VIEWERS)
        load = GiftLoad(relay.ws, users, STREAM, rate=10, prefix="st")
        load.start()
        await load.wait_acked(40)
        rss_before = relay.rss_kb()
        started = time.monotonic()
        await asyncio.gather(*(w.reconnect() for w in watchers))  # all at once
        async with asyncio.timeout(60):
            await asyncio.gather(*(w.joined.wait() for w in watchers))
        rejoined_s = time.monotonic() - started
        await load.wait_acked(40)
        await load.stop()
        rss_after = relay.rss_kb()
        ids = set(load.acked)
        for w in watchers:
            await w.wait_for_ids(ids)
        check_watchers(watchers, load)
        assert all(w.reconnects >= 1 for w in watchers)
        for w in watchers:
            await w.stop()
        # Bounded: a storm costs the relay no more than ~60 kB per viewer, and no leak of it.
        assert rss_after - rss_before < 60 * STORM_VIEWERS, (rss_before, rss_after)
        sys.stdout.write(  # figures for docs/reliability.md (pytest -s)
            f"storm: {STORM_VIEWERS} viewers rejoined in {rejoined_s:.1f} s, "
            f"relay RSS {rss_before} -> {rss_after} kB, join refusals "
            f"{sum((w.join_refusals for w in watchers), start=Counter())}\n"
        )
    await check_money(redis, load, creator=CREATOR)
    await finish(consumer, stop, task)
    await check_ledger(redis, sqlite_store, load, topups=len(users))
    await core.aclose()
    await core.redis.aclose()


# -- SIGTERM under load ---------------------------------------------------------------------


async def test_sigterm_under_load_loses_no_acknowledged_gift(
    redis: Redis, redis_server: RedisServer, sqlite_store: Store, tmp_path: Path
) -> None:
    users = [f"v{i}" for i in range(8)]
    core = await money_over(redis_server.url)
    await setup_stream(core, users)
    consumer, stop, task = await consume(redis_server.url, sqlite_store)
    answers: dict[str, dict[str, Any]] = {}
    closes: list[int | None] = []
    answered: list[int] = []
    async with serve(tmp_path, redis_server.url, "--workers", "2") as relay:
        watchers = await start_watchers(relay.ws, 10)

        async def gifter(user: str) -> None:
            from .relay_helpers import Client, token

            client = await Client.open(relay.ws, token(user))
            futures = {}
            n = 0
            try:
                while client.ws.close_code is None:  # 16 in flight at a time until the close
                    batch = []
                    for _ in range(16):
                        gid = f"term-{user}-{n:05d}"
                        n += 1
                        fut = asyncio.get_running_loop().create_future()
                        client.waiting[gid] = futures[gid] = fut
                        message = {"type": "gift", "stream": STREAM, "gift": "rose", "id": gid}
                        await client.ws.send(json.dumps({**message, "ref": gid}))
                        batch.append(fut)
                    await asyncio.wait(batch, timeout=10)
                    if not all(f.done() for f in batch):
                        break
                    answered.append(len(batch))
            except ConnectionClosed:
                pass
            async with asyncio.timeout(20):
                await client.ws.wait_closed()
            closes.append(client.ws.close_code)
            for gid, fut in futures.items():
                if fut.done():
                    answers[gid] = fut.result()

        gifters = [asyncio.create_task(gifter(u)) for u in users]
        await wait_until(lambda: sum(answered) > 500, 30, "gifts flowing")
        relay.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(40):
            await asyncio.gather(*gifters)
        async with asyncio.timeout(30):
            assert await relay.proc.wait() == 0
        for w in watchers:
            await w.stop()
    assert set(closes) == {1001}, closes  # an orderly close, never a dropped connection
    acked = {gid: r for gid, r in answers.items() if r["type"] == "gift_ok"}
    refused = {r.get("code") for r in answers.values() if r["type"] != "gift_ok"}
    assert refused <= {"unavailable"}
    assert len(acked) > 100
    # Every gift that moved money was acknowledged, and every acknowledged gift moved money.
    for user in users:
        spent = sum(r["coins"] for gid, r in acked.items() if gid.startswith(f"term-{user}-"))
        assert int(await redis.hget(keys.wallet(user), "coins")) == TOPUP - spent
    diamonds = int(await redis.hget(keys.wallet(CREATOR), "diamonds"))
    assert diamonds == sum(r["coins"] for r in acked.values())
    await finish(consumer, stop, task)
    rows = [row async for row in sqlite_store.export(None, None)]
    assert {r.request_id for r in rows if r.kind == "gift"} == set(acked)
    await core.aclose()
    await core.redis.aclose()


async def test_a_burst_of_joins_is_answered_joined(redis: Redis, redis_server: RedisServer) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup_stream(h.money, [])
        from .relay_helpers import Client

        clients = [await Client.open(h.ws) for _ in range(150)]
        replies = await asyncio.gather(*(c.request(type="join", stream=STREAM) for c in clients))
        codes = [r.get("code", r["type"]) for r in replies]
        for c in clients:
            await c.close()
        assert codes == ["joined"] * len(clients), Counter(codes)
