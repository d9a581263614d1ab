"""The ledger on a real Redis Cluster (3 primaries, a replica each) and real SQLite and
PostgreSQL stores: the consumer over the 64 bucket streams, reconcile with gifts in flight
and under load, and recover after a shard lost its data. Users and streams lie on every
shard (test_money_cluster.py checks the names)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from giftrelay.config import Settings
from giftrelay.embedded import LocalCluster
from giftrelay.ledger.buckets import backlog, consuming, dead_letters, last_ids
from giftrelay.ledger.postgres import PostgresStore
from giftrelay.ledger.postings import record
from giftrelay.ledger.reconcile import Difference, reconcile
from giftrelay.ledger.recover import RecoverRefused, recover
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.ledger.store import Store, migrations, statements
from giftrelay.money import catalog, keys, rules
from giftrelay.money.api import Money
from giftrelay.money.common import priced
from giftrelay.money.platform import Platform
from giftrelay.money.scripts import Script
from giftrelay.money.transfers import Steps
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Code, Refused, Unavailable

from .cluster_helpers import flush_cluster
from .ledger_helpers import (
    caught_up,
    drain,
    drop_postgres_database,
    postgres_database,
    quick_consumer,
    wait_for,
)

VIEWERS = [f"viewer{i}" for i in range(12)]
STREAMS = [f"stream{i}" for i in range(6)]
CREATORS = [f"creator{i}" for i in range(3)]  # stream i's creator is creator{i % 3}
RETENTION_MS = 3_600_000


@pytest.fixture
async def money(redis_cluster: LocalCluster) -> AsyncIterator[Money]:
    """The money core on the session's cluster, flushed; 1 diamond per 2 coins, so that
    coins debited = diamonds credited ÷ rate says something."""
    await flush_cluster(redis_cluster)
    redis = connect(redis_cluster.url, timeout=5.0)
    settings = Settings.load(
        {"GIFTRELAY_DIAMONDS_PER_COIN": "1/2", "GIFTRELAY_PAYOUT_MIN_DIAMONDS": "1"}
    )
    core = Money(redis, settings, catalog.load())
    await core.start()
    yield core
    await core.aclose()
    await redis.aclose()


def steps_of(core: Money) -> Steps:
    assert core.steps is not None
    return core.steps


async def open_streams(core: Money) -> None:
    for i, stream in enumerate(STREAMS):
        await core.stream_open(stream, CREATORS[i % 3], f"stream {i}")


async def debit_only(core: Money, viewer: str, stream: str, count: int, request_id: str) -> Any:
    """A gift's first step alone (gift_debit.lua through the money core's router), as a
    relay that died right after it leaves it: the coins moved, the transfer waits."""
    creator = CREATORS[STREAMS.index(stream) % 3]
    item, coins = priced(core.catalog, core.settings.max_gift_count, "rose", count)
    now = core.clock()
    reply = await core.pipe.call(
        Script.GIFT_DEBIT,
        [keys.wallet(viewer), keys.gift_idem(viewer, request_id),
         keys.spending(viewer, now // rules.DAY_MS)],
        [request_id, viewer, creator, stream, "rose", item.name, count, coins,
         rules.diamonds_for(coins, core.diamond_rate), int(item.streakable), now,
         RETENTION_MS, 0, "", core.level_thresholds],
        idempotent=True,
        shard=(keys.outbox,),
    )  # fmt: skip
    assert reply[0] == "ok", reply
    return reply


async def movements(core: Money) -> dict[str, Any]:
    """Top-ups, gifts (with retries), a payout, a cap, a chargeback over every shard;
    the acknowledged requests by kind and the gifts' receipts by id."""
    platform = Platform(core)
    await open_streams(core)
    await asyncio.gather(*(core.topup(v, 400, f"grant-{v}") for v in VIEWERS))
    plan = [(VIEWERS[i % 12], STREAMS[i % 6], f"gift-{i:05d}") for i in range(240)]
    receipts = {}
    for start in range(0, len(plan), 60):  # rose x2: 2 coins, 1 diamond
        part = plan[start : start + 60]
        done = await asyncio.gather(*(core.gift(v, s, "rose", 2, rid) for v, s, rid in part))
        receipts.update({rid: r for (_, _, rid), r in zip(part, done, strict=True)})
    again = await asyncio.gather(*(core.gift(v, s, "rose", 2, rid) for v, s, rid in plan[:30]))
    assert all(r.replayed for r in again)  # retries: no movement
    await core.payout("creator1", 10, "payout-00001")
    await core.set_cap("viewer5", 1000)
    await platform.chargeback("grant-viewer7", "fraud", "viewer7")
    return {"counts": Counter(topup=12, gift=240, payout=1, cap=1, chargeback=1),
            "receipts": receipts, "plan": plan}  # fmt: skip


async def test_the_consumer_writes_every_bucket_exactly_once(money: Money, store: Store) -> None:
    made = await movements(money)
    redis = money.redis
    assert await backlog(redis) == sum(made["counts"].values())  # the lag watch's count
    poison = await redis.xadd(keys.ledger(40), {"e": '{"kind": "gift", "coins": "lots"}'})
    # Two consumers share every bucket's group; a third read entries of a bucket and died.
    await quick_consumer(redis, store).ensure_group()
    lengths = [await redis.xlen(s) for s in keys.LEDGERS]
    busy = keys.LEDGERS[next(b for b, n in enumerate(lengths) if n)]
    [(_, stuck)] = await redis.xreadgroup(keys.LEDGER_GROUP, "dead", {busy: ">"}, count=5)
    first = quick_consumer(redis, store, claim_idle_ms=0)
    second = quick_consumer(redis, store, claim_idle_ms=0)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await drain(second)
    stop.set()
    await task
    assert await consuming(redis)  # the group's members on every bucket count

    rows = [row async for row in store.export(None, None)]
    assert Counter(r.kind for r in rows) == made["counts"]  # ledger rows = acknowledged requests
    assert first.stats.written + second.stats.written == len(rows)
    assert {r.bucket for r in rows} <= set(range(keys.BUCKETS))
    assert len({r.bucket for r in rows}) > 8
    assert all(r.event_id == f"b{r.bucket:02d}:{r.position[0]}-{r.position[1]}" for r in rows)
    assert stuck  # claimed from the dead member, written (once), acknowledged
    assert (await redis.xpending(busy, keys.LEDGER_GROUP))["pending"] == 0
    # The poison entry went to its bucket's dead letters, the rest flowed around it.
    [(_, dead)] = await redis.xrange(dead_letters(40))
    assert dead["entry"] == poison
    assert "not a ledger event" in dead["reason"]

    balances = await store.balances()
    for user in VIEWERS + CREATORS:
        wallet = await money.balance(user)
        assert (wallet.coins, wallet.diamonds) == (
            balances.get((f"user:{user}", "coins"), 0),
            balances.get((f"user:{user}", "diamonds"), 0),
        ), user
    spent = Counter(v for v, _, _ in made["plan"])
    assert (await money.balance("viewer0")).coins == 400 - 2 * spent["viewer0"]
    assert balances[("system:gifts", "coins")] == 480  # coins debited by 240 gifts of 2
    assert -balances[("system:diamonds_issued", "diamonds")] * 2 == 480  # = diamonds ÷ rate
    # Trimmed per stream, never below what the group has not acknowledged.
    await first.trim()
    assert await backlog(redis) <= keys.BUCKETS + 1
    report = await reconcile(redis, store, wait=5)
    assert report.lines() == ["dead letters: 1 entries in ledger:dead:{…} are not in the ledger"]
    assert len(report.shards) == 3
    assert sum(s.wallets for s in report.shards) == 15


async def test_reconcile_counts_gifts_in_flight_then_agrees_after_the_sweep(
    money: Money, store: Store
) -> None:
    await open_streams(money)
    await asyncio.gather(*(money.topup(v, 100, f"grant-{v}") for v in VIEWERS))
    await money.gift("viewer0", "stream3", "rose", 2, "gift-whole-001")
    # Relays that died after the viewers' debits, on every shard.
    left = ["viewer0", "viewer1", "viewer2", "viewer5"]
    for n, viewer in enumerate(left):
        await debit_only(money, viewer, STREAMS[n], 2, f"gift-left-{n:03d}")
    consumer = quick_consumer(money.redis, store)
    await drain(consumer)

    report = await reconcile(money.redis, store, wait=5)
    assert report.ok, report.lines()
    assert report.in_flight == len(left)  # debited in Redis, not yet in the ledger
    assert sorted(s.in_flight for s in report.shards) == [1, 1, 2]
    assert all(str(s).endswith(": OK") for s in report.shards)
    assert (await money.balance("viewer1")).coins == 98

    swept = await steps_of(money).sweep(grace_ms=0)  # the mover
    await steps_of(money).aclose()
    assert swept.moved == len(left)
    await drain(consumer)
    report = await reconcile(money.redis, store, wait=5)
    assert report.ok, report.lines()
    assert report.in_flight == 0
    assert await store.count() == 12 + 1 + len(left)

    await money.redis.hincrby(keys.wallet("viewer5"), "coins", 7)
    report = await reconcile(money.redis, store, wait=5)
    assert report.differences == [Difference("viewer5", "coins", 105, 98)]
    shard = next(s for s in report.shards if s.differences)
    assert str(shard).endswith("1 difference(s)")


async def test_reconcile_counts_earnings_and_holds_collects(money: Money, store: Store) -> None:
    """A creator's diamonds are their wallet's plus their earnings on their streams:
    reconcile counts both, lets a collect left half-way finish first, and holds collects
    (hold:{bucket}) while it counts; a payout that needs a held collect waits."""
    await open_streams(money)
    await asyncio.gather(*(money.topup(v, 100, f"grant-{v}") for v in VIEWERS))
    await asyncio.gather(
        *(money.gift(v, STREAMS[i % 6], "rose", 2, f"gift-{i:03d}") for i, v in enumerate(VIEWERS))
    )  # rose x2: 2 coins, 1 diamond; creator0 earns 2 on stream0 and 2 on stream3
    assert (await money.balance("creator0")).diamonds == 4
    taken = await money.pipe.call(  # a payout's collect, its process dead after step 1
        Script.COLLECT,
        [keys.stream("stream0")],
        ["stream0", money.clock(), "creator0"],
        idempotent=False,
        shard=(keys.outbox, keys.hold),
    )
    assert taken[0] == "ok"
    assert taken[1]
    consumer = quick_consumer(money.redis, store)
    await drain(consumer)

    await money.redis.sadd(keys.HOLDS[0], "another-reconcile")  # running beside this one
    report = await reconcile(money.redis, store, wait=0.3)
    assert not report.caught_up
    assert report.waiting == "1 collect(s) of earnings still in the outboxes"
    assert await money.redis.smembers(keys.HOLDS[0]) == {"another-reconcile"}  # not released
    await money.redis.delete(keys.HOLDS[0])
    assert not any([await money.redis.exists(key) for key in keys.HOLDS])  # its own released
    assert (await steps_of(money).sweep(grace_ms=0)).moved == 1  # the mover finishes it
    report = await reconcile(money.redis, store, wait=5)
    assert report.ok, report.lines()
    assert report.wallets == len(VIEWERS) + len(CREATORS)

    for key in keys.HOLDS:  # as a reconcile holds them
        await money.redis.sadd(key, "a-reconcile")
    with pytest.raises(Unavailable):  # the wallet holds 2, the payout needs the earnings
        await money.payout("creator0", 3, "payout-00001")
    for key in keys.HOLDS:
        await money.redis.delete(key)
    paid = await money.payout("creator0", 3, "payout-00001")  # the client's retry
    assert (paid.diamonds, paid.diamonds_left) == (3, 1)
    await drain(consumer)
    report = await reconcile(money.redis, store, wait=5)
    assert report.ok, report.lines()
    balances = await store.balances()
    assert balances[("user:creator0", "diamonds")] == 1


async def test_reconcile_agrees_while_gifts_flow(money: Money, tmp_path: Path) -> None:
    """A busy cluster reconciles: every wallet and stream's earnings as of its node's
    instant, against the ledger up to later ids, corrected for what came after and for
    gifts in flight, while payouts collect earnings between reconciles."""
    store = SQLiteStore(f"sqlite:///{tmp_path}/ledger.sqlite3")
    await store.open()
    await open_streams(money)
    await asyncio.gather(*(money.topup(v, 100_000, f"grant-{v}") for v in VIEWERS))
    stop = asyncio.Event()
    consumer = asyncio.create_task(quick_consumer(money.redis, store).run(stop))

    async def load() -> None:
        for start in range(0, 1500, 30):
            await asyncio.gather(
                *(money.gift(VIEWERS[i % 12], STREAMS[i % 6], "rose", 2, f"gift-{i:05d}")
                  for i in range(start, start + 30)),
                money.topup(CREATORS[start % 3], 10, f"more-{start:05d}"),
                money.topup(VIEWERS[start % 12], 10, f"again-{start:05d}"),
                paying(CREATORS[start % 3], f"pay-{start:05d}", first=start == 0),
            )  # fmt: skip

    async def paying(creator: str, request_id: str, *, first: bool) -> None:
        """A payout, collecting the creator's earnings, retried while a reconcile holds
        (the first round's may find no diamonds yet: its gifts go at the same time)."""
        while True:
            try:
                await money.payout(creator, 2, request_id)
                return
            except Unavailable:
                await asyncio.sleep(0.01)
            except Refused as exc:
                if not first or exc.code != Code.INSUFFICIENT_DIAMONDS:
                    raise
                return

    flowing = asyncio.create_task(load())
    reports = []
    try:
        while not flowing.done() or not reports:
            reports.append(await reconcile(money.redis, store, wait=10))
        await flowing
    finally:
        stop.set()
        await consumer
        await store.close()
    assert len(reports) >= 3
    assert [r.lines() for r in reports] == [[]] * len(reports)


async def test_recover_after_a_shard_lost_its_data(
    money: Money, store: Store, redis_cluster: LocalCluster
) -> None:
    made = await movements(money)
    redis = money.redis
    await drain(quick_consumer(redis, store))
    users = VIEWERS + CREATORS
    before = {u: await money.balance(u) for u in users}
    lifetimes = {v: await redis.hget(keys.wallet(v), "lifetime") for v in VIEWERS}
    assert set(lifetimes.values()) == {"40"}  # 20 gifts of 2 coins each: the gifter level
    assert (await reconcile(redis, store, wait=5)).ok

    # A shard loses everything: its primary flushed, and its replica with it.
    lost = redis_cluster.owner_of_slot(key_slot(keys.wallet("viewer0").encode()))
    async with Redis(port=lost) as primary:
        await primary.flushall()
        assert await primary.wait(1, 5000) == 1
    report = await reconcile(redis, store, wait=5)
    assert not report.ok
    gone = {keys.ledger(b) for b in range(keys.BUCKETS)
            if redis_cluster.owner_of_slot(256 * b) == lost}  # fmt: skip
    assert report.lost_buckets
    assert set(report.lost_buckets) <= gone
    assert [s.lost > 0 for s in report.shards].count(True) == 1
    assert any("giftrelay recover" in line for line in report.lines())

    # A gift a relay left half done on a shard that kept its data; recover applies it.
    survivor = "viewer1"
    assert redis_cluster.owner_of_slot(key_slot(keys.wallet(survivor).encode())) != lost
    await debit_only(money, survivor, "stream2", 2, "gift-left-001")

    # Refused while a relay is subscribed on any node, replicas too, or a consumer runs.
    replica = redis_cluster.replica_of(next(p for p in redis_cluster.primary_ports() if p != lost))
    async with Redis(port=replica) as node:
        relay = node.pubsub()
        await relay.subscribe("anything")
        with pytest.raises(
            RecoverRefused, match=f"relay is connected to this Redis \\(node .*:{replica}\\)"
        ):
            await recover(redis, store, retention_ms=RETENTION_MS, steps=steps_of(money))
        await relay.aclose()
    with pytest.raises(RecoverRefused, match="ledger consumer"):  # drained just now
        await recover(redis, store, retention_ms=RETENTION_MS, steps=steps_of(money))

    outcome = await recover(
        redis, store, retention_ms=RETENTION_MS, receipt_retention_ms=RETENTION_MS,
        force=True, steps=steps_of(money), catalog=money.catalog,
    )  # fmt: skip
    assert outcome.swept == 1
    assert outcome.drained == 1  # the swept gift's entry, written before the rebuild
    await drain(quick_consumer(redis, store))
    report = await reconcile(redis, store, wait=5)
    assert report.ok, report.lines()
    after = {u: await money.balance(u) for u in users}
    before["viewer1"] = msgspec.structs.replace(
        before["viewer1"],
        coins=before["viewer1"].coins - 2,
        spent_today=before["viewer1"].spent_today + 2,
    )
    before["creator2"] = msgspec.structs.replace(
        before["creator2"], diamonds=before["creator2"].diamonds + 1
    )
    assert after == before
    lifetimes["viewer1"] = "42"  # and the gift swept from the outbox
    assert {v: await redis.hget(keys.wallet(v), "lifetime") for v in VIEWERS} == lifetimes
    # A creator's diamonds are all in the wallet now: no stream holds earnings.
    held = [await redis.hget(keys.stream(stream), "earnings") for stream in STREAMS]
    assert {h for h in held if h is not None} == {"0"}  # (the lost shard's streams are gone)
    for creator in CREATORS:
        wallet = int(await redis.hget(keys.wallet(creator), "diamonds") or 0)
        assert wallet == after[creator].diamonds

    # Every request the store holds is a replay again, wherever its records were lost.
    stored = await store.count()
    for viewer, stream, rid in made["plan"][:24]:
        again = await money.gift(viewer, stream, "rose", 2, rid)
        first = made["receipts"][rid]
        assert again.replayed, rid
        assert (again.offset, again.balance, again.combo_id) == (
            first.offset,
            first.balance,
            first.combo_id,
        )
    assert (await money.topup("viewer0", 400, "grant-viewer0")).replayed
    assert (await money.payout("creator1", 10, "payout-00001")).replayed
    assert (await Platform(money).chargeback("grant-viewer7", "fraud", "viewer7")).replayed
    # New movements get ids past everything stored in their bucket; reconcile agrees.
    await money.gift("viewer0", "stream2", "rose", 2, "gift-new-0001")
    await drain(quick_consumer(redis, store))
    assert await store.count() == stored + 1
    assert (await reconcile(redis, store, wait=5)).ok


async def test_the_commands_on_a_cluster(
    money: Money, store: Store, redis_cluster: LocalCluster
) -> None:
    """``giftrelay reconcile`` says a line per shard; ``giftrelay recover`` sweeps first."""
    await open_streams(money)
    await money.topup("viewer2", 50, "grant-viewer2")
    await debit_only(money, "viewer2", "stream3", 2, "gift-left-001")
    env = {**os.environ, "GIFTRELAY_REDIS_URL": redis_cluster.url, "GIFTRELAY_SECRET": "s" * 32,
           "GIFTRELAY_LEDGER_URL": store.url, "GIFTRELAY_LOG_LEVEL": "warning"}  # fmt: skip

    def giftrelay(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "giftrelay", *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    done = await asyncio.to_thread(giftrelay, "recover")
    assert done.returncode == 0, done.stderr
    assert "applied 1 gift(s) waiting in the outboxes first" in done.stdout
    assert "recovered from 2 ledger events: 2 wallets" in done.stdout
    checked = await asyncio.to_thread(giftrelay, "reconcile")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert lines[0] == (
        f"reconcile: 2 wallets on 3 shards against the ledger of 64 bucket streams (newest id"
        f" {lines[0].split('newest id ')[1].split(')')[0]}), 0 gift(s) in flight"
    )
    assert sum(line.startswith("shard 127.0.0.1:") and line.endswith(": OK") for line in lines) == 3
    assert lines[-1].startswith("OK")


async def test_the_consumer_follows_a_bucket_that_moves_and_a_failover(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    """Its reads go to each bucket's node by the slot map; a bucket that moved (MOVED) is
    followed, and a primary that died is replaced by its promoted replica."""
    redis = connect(own_cluster.url, timeout=2.0)
    core = Money(redis, Settings.load({}), catalog.load())
    await core.start()
    store = SQLiteStore(f"sqlite:///{tmp_path}/ledger.sqlite3")
    await store.open()
    stop = asyncio.Event()
    consumer = quick_consumer(redis, store)
    running = asyncio.create_task(consumer.run(stop))
    try:
        await open_streams(core)
        await asyncio.gather(*(core.topup(v, 100, f"grant-{v}") for v in VIEWERS))
        await asyncio.gather(*(core.gift(v, "stream2", "rose", 1, f"gift-a-{v}") for v in VIEWERS))
        await wait_for(lambda: caught_up(redis), within=20)
        # The bucket of viewer0's slot moves, with its ledger stream, group and outbox.
        bucket = key_slot(keys.wallet("viewer0").encode()) // keys.BUCKET_SLOT_SPAN
        source = own_cluster.owner_of_slot(256 * bucket)
        target = next(p for p in own_cluster.primary_ports() if p != source)
        await asyncio.to_thread(own_cluster.migrate_slot, 256 * bucket, target)
        await asyncio.gather(*(core.gift(v, "stream3", "rose", 1, f"gift-b-{v}") for v in VIEWERS))
        await wait_for(lambda: caught_up(redis), within=20)
        assert await store.count() == 36
        # A primary dies (what it acknowledged had reached its replica); its replica serves.
        victim = own_cluster.owner_of_slot(key_slot(keys.wallet("viewer1").encode()))
        async with Redis(port=victim) as primary:
            assert await primary.wait(1, 2000) == 1
        own_cluster.kill(victim)
        await asyncio.to_thread(own_cluster.wait_failover, victim)
        await asyncio.gather(*(_retried(core, v, "stream4", f"gift-c-{v}") for v in VIEWERS))
        await wait_for(lambda: caught_up(redis), within=30)
        assert await store.count() == 48  # every movement once
        assert consumer.failures > 0  # it waited for the failover, and went on
        report = await reconcile(redis, store, wait=5)
        assert report.ok, report.lines()
    finally:
        stop.set()
        await running
        await store.close()
        await core.aclose()
        await redis.aclose()


async def _retried(core: Money, viewer: str, stream: str, request_id: str) -> None:
    """A gift as a client sends it: again with the same id while the answer is unavailable."""
    for _ in range(100):
        try:
            await core.gift(viewer, stream, "rose", 1, request_id)
            return
        except Unavailable:
            await asyncio.sleep(0.1)
    raise AssertionError(f"{request_id} still unavailable")


# -- the store: events keyed by (bucket, id) -----------------------------------------------


def _topup(receipt: str, user: str = "alice", coins: int = 5) -> bytes:
    return msgspec.json.encode({"kind": "topup", "v": 1, "ts": 1, "id": receipt, "user": user,
                                "coins": coins, "coins_after": coins})  # fmt: skip


async def test_equal_ids_of_two_buckets_are_two_events(store: Store) -> None:
    a = record("1000-0", _topup("receipt-a"), 3)
    b = record("1000-0", _topup("receipt-b", "bob"), 7)
    assert (await store.write([a, b])).inserted == 2
    assert (await store.write([b])).duplicates == 1  # redelivered: same bucket, same id
    # One movement per business key, across buckets: the same receipt again is a replay.
    assert (await store.write([record("1000-0", _topup("receipt-a"), 9)])).replays == 1
    conflict = await store.write([record("2000-1", _topup("receipt-b", "bob", 6), 3)])
    assert conflict.conflicts == 1
    [kept] = await store.conflicts()
    assert (kept.event_id, kept.stored_id) == ("b03:2000-1", "b07:1000-0")
    assert await store.heads() == {3: (1000, 0), 7: (1000, 0)}
    assert [r.event_id async for r in store.export(None, None)] == ["b03:1000-0", "b07:1000-0"]
    assert await store.balances({3: (999, 0), 7: (1000, 0)}) == {
        ("user:bob", "coins"): 5, ("system:coins_sold", "coins"): -5
    }  # fmt: skip
    assert [r.event_id async for r in store.between({7: ((0, 0), (1000, 0))})] == ["b07:1000-0"]
    assert await store.holders(["topup:receipt-b", "topup:nope"]) == {
        "topup:receipt-b": (7, (1000, 0))
    }


SQLITE_BEFORE = 3
POSTGRES_BEFORE = 2


async def _old_rows(execute: Any) -> None:
    await execute(
        "INSERT INTO events VALUES (1, 0, 'topup', 'r1', 'alice', 1, '{}', 'topup:r1', 'alice|5')"
    )
    await execute("INSERT INTO postings VALUES (1, 0, 0, 'user:alice', 'coins', 5)")
    await execute("INSERT INTO postings VALUES (1, 0, 1, 'system:coins_sold', 'coins', -5)")


async def _migrated_keeps_the_single_redis_ledger(store: Store) -> None:
    assert [(r.event_id, r.bucket) async for r in store.export(None, None)] == [("1-0", -1)]
    assert (await store.balances((1, 0)))[("user:alice", "coins")] == 5
    assert await store.heads() == {-1: (1, 0)}
    # A cluster's entry with the same stream id is another event; the receipt stays unique.
    assert (await store.write([record("1-0", _topup("r2", "bob"), 0)])).inserted == 1
    assert (await store.write([record("5-0", _topup("r1"), 0)])).replays == 1


async def test_sqlite_migration_0004_keys_the_old_events_as_bucket_minus_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
               " applied_ms INTEGER NOT NULL)")  # fmt: skip
    for migration in migrations("sqlite")[:SQLITE_BEFORE]:
        for statement in statements(migration.sql):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, 'x', 0)", (migration.version,))

    async def execute(sql: str) -> None:
        db.execute(sql)

    await _old_rows(execute)
    db.close()
    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        await _migrated_keeps_the_single_redis_ledger(store)
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert db.execute("PRAGMA foreign_key_list(postings)").fetchall()[0][2] == "events"
    db.close()


async def test_postgres_migration_0003_keys_the_old_events_as_bucket_minus_one() -> None:
    url, name = await postgres_database()
    try:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                           " name TEXT NOT NULL, applied_ms BIGINT NOT NULL)")  # fmt: skip
        for migration in migrations("postgresql")[:POSTGRES_BEFORE]:
            for statement in statements(migration.sql):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations VALUES ($1, 'x', 0)", migration.version
            )
        await _old_rows(conn.execute)
        await conn.close()
        store = PostgresStore(url)
        await store.open()
        try:
            await _migrated_keeps_the_single_redis_ledger(store)
        finally:
            await store.close()
    finally:
        await drop_postgres_database(name)


async def test_last_ids_of_missing_streams_are_zero(money: Money) -> None:
    await money.topup("viewer3", 5, "grant-viewer3")
    ids = await last_ids(money.redis, keys.LEDGERS)
    assert sum(at > (0, 0) for at in ids) == 1
