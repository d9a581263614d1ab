"""The ledger: exactly once into real SQLite and PostgreSQL stores, whatever breaks; from
one Redis's ``ledger`` stream and from a Redis Cluster's 64 bucket streams alike."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.ledger.postgres import PostgresStore
from giftrelay.ledger.postings import Asset, Posting, Record, record
from giftrelay.ledger.reconcile import Difference, reconcile
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.ledger.store import Store, StoreDataError, WriteResult, migrations, statements
from giftrelay.money import keys
from giftrelay.money.api import Money

from .ledger_helpers import (
    add_raw,
    busiest_stream,
    caught_up,
    dead_entries,
    delivered,
    drain,
    gift_load,
    quick_consumer,
    set_postgres_available,
    stream_lengths,
    true,
    wait_for,
)

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster (tests with a Redis)


async def assert_exactly_once(redis: Redis, store: Store, expected: int) -> None:
    """Every ledger event once, balanced per asset, and every wallet agreeing."""
    assert await store.count() == expected
    report = await reconcile(redis, store, wait=5)
    assert report.lines() == []
    assert report.ok


async def test_thousands_of_events_land_exactly_once(
    money: Money, redis: Redis, store: Store
) -> None:
    events = await gift_load(money, viewers=20, gifts=3000)
    await drain(quick_consumer(redis, store, batch=500))
    await assert_exactly_once(redis, store, events)
    balances = await store.balances()
    left = sum([(await money.balance(f"v{v}")).coins for v in range(20)])
    sold = -balances[("system:coins_sold", "coins")]
    assert balances[("system:gifts", "coins")] == sold - left  # coins spent = sold - held
    assert balances[("user:creator", "diamonds")] == sold - left  # = diamonds credited (rate 1)


async def test_a_consumer_cancelled_between_commit_and_ack_is_replayed_once(
    money: Money, redis: Redis, store: Store
) -> None:
    events = await gift_load(money, viewers=5, gifts=1000)
    watched = Watched(store)
    first = quick_consumer(redis, watched, name="first", batch=300)  # type: ignore[arg-type]
    committed: list[str] = []

    async def hang(ids: Sequence[str]) -> None:
        committed.extend(ids)
        await asyncio.Event().wait()  # never acknowledges: cancelled here

    first.after_commit = hang
    await first.ensure_group()
    task = asyncio.create_task(first.step())
    # Every batch of its round committed (the next ones are read ahead meanwhile).
    await wait_for(lambda: true(bool(committed) and not watched.writing))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.count() == len(committed)  # committed, never acknowledged
    read, pending = await delivered(redis)
    assert pending == read >= len(committed)  # none acknowledged

    second = quick_consumer(redis, store, name="second", batch=300, claim_idle_ms=0)
    await drain(second)
    assert second.stats.written == events - len(committed)  # the committed ones: a no-op
    # Claimed again (and, claiming at once, maybe some it had read ahead itself).
    assert second.stats.duplicates >= len(committed)
    await assert_exactly_once(redis, store, events)


class Watched:
    """A store that counts the writes under way: a consumer's round is all committed once
    one was and none is under way (its batches start writing together)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.writing = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def write(self, records: Sequence[Record]) -> WriteResult:
        self.writing += 1
        try:
            return await self.store.write(records)
        finally:
            self.writing -= 1


async def test_two_consumers_at_once_write_each_event_once(
    money: Money, redis: Redis, store: Store
) -> None:
    stop = asyncio.Event()
    consumers = [quick_consumer(redis, store, name=f"c{i}", batch=50) for i in range(2)]
    await consumers[0].ensure_group()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    events = await gift_load(money, viewers=10, gifts=4000)
    await wait_for(lambda: caught_up(redis))
    stop.set()
    await asyncio.gather(*tasks)
    assert all(c.stats.written > 0 for c in consumers)
    assert sum(c.stats.written for c in consumers) == events
    await assert_exactly_once(redis, store, events)


async def test_store_down_lag_grows_then_catches_up(
    money: Money, redis: Redis, store: Store, tmp_path: Path
) -> None:
    stop = asyncio.Event()
    consumer = quick_consumer(redis, store)
    task = asyncio.create_task(consumer.run(stop))

    blocker: sqlite3.Connection | None = None
    if isinstance(store, SQLiteStore):  # another process holds the write lock
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
    else:
        assert isinstance(store, PostgresStore)
        name = store.url.rpartition("/")[2]
        await set_postgres_available(name, False)

    events = await gift_load(money, viewers=5, gifts=500)
    await wait_for(lambda: true(consumer.failures >= 3))
    assert not await caught_up(redis)  # the lag grew: nothing was acknowledged

    if blocker is not None:
        blocker.execute("ROLLBACK")
        blocker.close()
    else:
        await set_postgres_available(name, True)
    await wait_for(lambda: caught_up(redis))
    stop.set()
    await task
    await assert_exactly_once(redis, store, events)


async def test_a_poison_entry_goes_to_the_dead_letters_and_the_rest_flows(
    money: Money, redis: Redis, store: Store
) -> None:
    events = await gift_load(money, viewers=3, gifts=100)
    _, poison = await add_raw(redis, '{"kind": "gift", "coins": "lots"}')  # among the gifts
    events += await gift_load(money, viewers=3, gifts=100, stream="s2") - 3  # same viewers

    await drain(quick_consumer(redis, store, claim_idle_ms=0))

    [dead] = await dead_entries(redis)
    assert dead["entry"] == poison
    assert "not a ledger event" in dead["reason"]
    assert int(dead["deliveries"]) >= 3
    assert await store.count() == events
    report = await reconcile(redis, store, wait=5)
    assert report.differences == []
    assert report.dead_letters == 1
    assert not report.ok  # a dead letter is money the ledger does not have


async def test_trimming_never_drops_an_unacknowledged_entry(
    money: Money, redis: Redis, store: Store
) -> None:
    await gift_load(money, viewers=2, gifts=98)
    consumer = quick_consumer(redis, store, claim_idle_ms=60_000)
    await consumer.ensure_group()
    streams = await stream_lengths(redis)
    stream = await busiest_stream(redis)  # where the gifts are
    [(_, stuck)] = await redis.xreadgroup(keys.LEDGER_GROUP, "stuck", {stream: ">"}, count=30)
    stuck_ids = [entry_id for entry_id, _ in stuck]
    await drain(consumer, pending=30)  # writes and acknowledges the other 70
    await consumer.trim()

    remaining = [entry_id for entry_id, _ in await redis.xrange(stream)]
    assert set(stuck_ids) <= set(remaining)
    assert remaining[0] == stuck_ids[0]

    await redis.xack(stream, keys.LEDGER_GROUP, *stuck_ids)  # as if written
    await consumer.trim()
    # Only the last delivered entry of each stream is kept.
    assert await stream_lengths(redis) == dict.fromkeys(streams, 1)


async def test_reconcile_passes_under_live_load_and_fails_after_tampering(
    money: Money, redis: Redis, store: Store
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(quick_consumer(redis, store).run(stop))
    load = asyncio.create_task(gift_load(money, viewers=10, gifts=2000))
    await asyncio.sleep(0)
    report = await reconcile(redis, store, wait=20)  # a snapshot taken mid-load
    assert report.lines() == []
    await load
    await wait_for(lambda: caught_up(redis))

    coins = (await money.balance("v3")).coins
    await redis.hincrby(keys.wallet("v3"), "coins", 5)
    report = await reconcile(redis, store, wait=5)
    stop.set()
    await task
    assert report.differences == [Difference("v3", "coins", coins + 5, coins)]
    assert report.lines() == [f"difference: wallet=v3 asset=coins redis={coins + 5} ledger={coins}"]
    assert not report.ok


async def test_reconcile_says_when_the_consumer_has_not_caught_up(
    money: Money, redis: Redis, store: Store
) -> None:
    await gift_load(money, viewers=2, gifts=10)
    report = await reconcile(redis, store, wait=0.2)
    assert not report.caught_up
    assert "no ledger consumer group" in report.lines()[0]


async def test_migrations_are_versioned_and_applied_once(store: Store) -> None:
    await store.open()  # a second start applies nothing new
    assert await store.count() == 0


async def test_events_keep_the_money_cores_words(money: Money, redis: Redis, store: Store) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 100, "receipt-alice-1")
    await money.gift("alice", "s1", "heart", 2, "gift-000001")
    await money.set_cap("alice", 50)
    await drain(quick_consumer(redis, store))
    # (On a cluster the three lie in different buckets: ledger order is not theirs.)
    rows = [row async for row in store.export(None, None)]
    assert sorted((r.kind, r.actor, r.request_id) for r in rows) == [
        ("cap", "alice", None),
        ("gift", "alice", "gift-000001"),
        ("topup", "alice", "receipt-alice-1"),
    ]
    [row] = [r for r in rows if r.kind == "gift"]
    gift = msgspec.json.decode(row.body)
    assert (gift["to"], gift["coins"], gift["coins_after"]) == ("bob", 10, 90)
    assert [(p.account, p.asset, p.amount) for p in row.postings] == [
        ("user:alice", "coins", -10),
        ("system:gifts", "coins", 10),
        ("user:bob", "diamonds", 10),
        ("system:diamonds_issued", "diamonds", -10),
    ]


def _gift_record(ms: int, sender: str = "alice") -> Record:
    body = msgspec.json.encode(
        {"v": 1, "kind": "gift", "id": f"g{ms}", "ts": ms, "stream": "s1", "offset": f"{ms}-0",
         "from": sender, "to": "bob", "gift": "rose", "count": 1, "coins": 3, "diamonds": 3,
         "coins_after": 0, "diamonds_after": 0}
    )  # fmt: skip
    return record(f"{ms}-0", body)


async def test_a_batch_partly_stored_writes_only_the_new_events_and_their_postings(
    store: Store,
) -> None:
    first = [_gift_record(ms) for ms in (1, 2)]
    assert await store.write(first) == WriteResult(inserted=2, duplicates=0)
    # A redelivery that overlaps new entries: the fast path (all new) does not apply.
    again = await store.write([*first, _gift_record(3, "carol"), _gift_record(2)])
    assert again == WriteResult(inserted=1, duplicates=3)
    assert await store.count() == 3
    balances = await store.balances()
    assert balances[("user:alice", "coins")] == -6  # not doubled by the replay
    assert balances[("user:carol", "coins")] == -3
    assert balances[("user:bob", "diamonds")] == 9
    assert [len(row.postings) async for row in store.export(None, None)] == [4, 4, 4]


async def test_the_store_refuses_a_posting_outside_the_schema_and_writes_nothing(
    store: Store,
) -> None:
    bad = msgspec.structs.replace(_gift_record(2), postings=(Posting("user:x", Asset.COINS, 0),))
    with pytest.raises(StoreDataError):
        await store.write([_gift_record(1), bad])
    assert await store.count() == 0  # the whole batch rolled back


async def test_sqlite_migration_0002_keeps_the_postings(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
               " applied_ms INTEGER NOT NULL)")  # fmt: skip
    for statement in statements(migrations("sqlite")[0].sql):
        db.execute(statement)
    db.execute("INSERT INTO schema_migrations VALUES (1, 'ledger', 0)")
    db.execute("INSERT INTO events VALUES (1, 0, 'topup', 'r1', 'alice', 1, '{}')")
    db.execute("INSERT INTO postings VALUES (1, 0, 0, 'user:alice', 'coins', 5)")
    db.execute("INSERT INTO postings VALUES (1, 0, 1, 'system:coins_sold', 'coins', -5)")
    db.close()

    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        assert await store.balances() == {
            ("user:alice", "coins"): 5,
            ("system:coins_sold", "coins"): -5,
        }
        with pytest.raises(StoreDataError):  # the amount rule survives the rebuild
            await store.write([msgspec.structs.replace(
                _gift_record(2), postings=(Posting("user:x", Asset.COINS, 0),)
            )])  # fmt: skip
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert [v for (v,) in db.execute("SELECT version FROM schema_migrations")] == [1, 2, 3, 4]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # and the asset rule
        db.execute("INSERT INTO postings VALUES (1, 0, 2, 'user:alice', 'bitcoin', 5, -1)")
    db.close()


async def test_sqlite_migration_0003_lists_a_movement_stored_twice_as_a_conflict(
    tmp_path: Path,
) -> None:
    """A store from before business keys may hold a top-up twice (Redis lost its record
    and ran it again): the migration keeps the first and reports the second."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
               " applied_ms INTEGER NOT NULL)")  # fmt: skip
    for migration in migrations("sqlite")[:2]:
        for statement in statements(migration.sql):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (migration.version, "x"))
    body = (
        '{"kind":"topup","v":1,"ts":1,"id":"receipt-0001","user":"alice","coins":5,"coins_after":5}'
    )
    for ms in (1, 2):
        db.execute("INSERT INTO events VALUES (?, 0, 'topup', 'receipt-0001', 'alice', 1, ?)",
                   (ms, body))  # fmt: skip
    db.close()

    store = SQLiteStore(f"sqlite:///{path}")
    await store.open()
    try:
        [conflict] = await store.conflicts()
        assert (conflict.event_id, conflict.stored_id) == ("2-0", "1-0")
        assert conflict.business_key == "topup:receipt-0001"
        # From now on the key is taken: the same receipt again is a replay.
        again = record("3-0", body)
        assert (await store.write([again])).replays == 1
    finally:
        await store.close()
