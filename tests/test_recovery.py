"""Money the ledger can prove after any loss: business keys, lost data, recover.

The reproduction of issue 16, item 1, against a real redis-server with AOF and real
SQLite and PostgreSQL stores: Redis is put back to an older copy of its own files
after the consumer has committed newer movements. Reconcile must see the loss, a
retried request must not count twice, and ``recover`` must bring Redis back.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer
from giftrelay.ledger.postings import record
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.recover import RecoverRefused, recover
from giftrelay.ledger.store import Store
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect

from .ledger_helpers import backup_aof, drain, make_store, quick_consumer, restore_aof

RETENTION_MS = 3_600_000


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for opened in make_store(request.param, tmp_path):
        yield opened


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server with AOF (fsync always) whose files the test may copy and put back."""
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always")
    server.start()
    yield server
    server.stop()


async def started(url: str) -> tuple[Redis, Money]:
    redis = connect(url)
    money = Money(redis, Settings.load({}), catalog.load())  # the real clock: retention counts
    await money.start()
    return redis, money


async def test_a_replayed_movement_is_counted_once_and_a_conflict_is_kept_aside(
    redis: Redis, money: Money, store: Store
) -> None:
    await money.stream_open("s1", "creator", "t")
    await money.topup("alice", 100, "receipt-0001")
    await money.gift("alice", "s1", "rose", 1, "gift-00000001")
    entries = await redis.xrange(keys.LEDGER)
    first = [record(i, f["e"]) for i, f in entries]
    assert (await store.write(first)).inserted == 2

    # The same movements under new stream ids: Redis ran the requests again.
    again = [record(f"{9_000_000_000_000 + n}-0", f["e"]) for n, (_, f) in enumerate(entries)]
    result = await store.write(again)
    assert (result.inserted, result.replays, result.conflicts) == (0, 2, 0)
    # The same receipt moving other coins: a conflict, counted in no balance.
    other = entries[0][1]["e"].replace('"coins":100', '"coins":999')
    result = await store.write([record("9100000000000-0", other)])
    assert (result.inserted, result.conflicts) == (0, 1)
    assert (await store.write([record("9100000000000-0", other)])).conflicts == 1  # redelivered
    assert await store.count() == 2
    assert (await store.balances())[("user:alice", "coins")] == 99
    [conflict] = await store.conflicts()
    assert conflict.business_key == "topup:receipt-0001"
    assert conflict.event_id == "9100000000000-0"
    assert conflict.stored_id == entries[0][0]

    await quick_consumer(redis, store).ensure_group()
    await redis.xgroup_setid(keys.LEDGER, "ledger-writers", "$")
    report = await reconcile(redis, store, wait=5)
    assert not report.ok
    assert any("conflict: topup:receipt-0001" in line for line in report.lines())


async def test_reconcile_sees_a_restored_redis_and_recover_brings_it_back(
    aof_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    redis, money = await started(aof_server.url)
    try:
        await money.stream_open("s1", "creator", "t")
        await money.topup("alice", 10_000, "receipt-0001")
        await money.gift("alice", "s1", "rocket", 2, "gift-00000001")  # 2,000 diamonds
        await drain(quick_consumer(redis, store))
    finally:
        await money.aclose()
        await redis.aclose()
    backup_aof(aof_server, tmp_path / "backup")

    redis, money = await started(aof_server.url)
    try:
        await money.topup("alice", 500, "receipt-0002")
        lost_gifts = [await money.gift("alice", "s1", "heart", 1, f"gift-0000010{i}")
                      for i in range(3)]  # fmt: skip
        await money.set_cap("alice", 5000)
        await money.payout("creator", 2000, "payout-00000001")
        await drain(quick_consumer(redis, store))
        before = await money.balance("alice")
        creator_before = await money.balance("creator")
        report = await reconcile(redis, store, wait=5)
        assert report.ok, report.lines()
    finally:
        await money.aclose()
        await redis.aclose()
    stored = await store.count()

    restore_aof(aof_server, tmp_path / "backup")
    redis, money = await started(aof_server.url)
    try:
        # 1. Reconcile no longer says OK: it names each wallet and what Redis lacks.
        report = await reconcile(redis, store, wait=5)
        assert not report.ok
        # alice: receipt-0002, three gifts, the cap; creator: three gifts, the payout.
        assert report.lost == {"alice": 5, "creator": 4}
        assert any("giftrelay recover" in line for line in report.lines())

        # 2. A retry that Redis no longer remembers runs again: the store counts it once.
        retried = await money.gift("alice", "s1", "heart", 1, "gift-00000100")
        assert not retried.replayed  # Redis lost its idempotency record
        consumer = quick_consumer(redis, store)
        await drain(consumer)
        assert consumer.stats.replays == 1
        assert await store.count() == stored

        # 3. recover refuses while a consumer has just been active ...
        with pytest.raises(RecoverRefused, match="ledger consumer"):
            await recover(redis, store, retention_ms=RETENTION_MS)
        # ... and, forced (this test knows no consumer runs now), brings Redis back.
        outcome = await recover(redis, store, retention_ms=RETENTION_MS, force=True)
        assert outcome.wallets == 2
        assert outcome.streams == 1
        after = await money.balance("alice")
        assert after == before  # coins, spent today and the cap, as before the restore
        assert (await money.balance("creator")).diamonds == creator_before.diamonds
        report = await reconcile(redis, store, wait=5)
        assert report.ok, report.lines()
        info = await money.stream_info("s1")
        assert info.diamonds == 2 * 1000 + 3 * 5  # 2 rockets and 3 hearts, at rate 1

        # 4. Every request the store holds is a replay again, and moves nothing.
        for gift in lost_gifts:
            again = await money.gift("alice", "s1", "heart", 1, gift.id)
            assert again.replayed
            assert again.offset == gift.offset
            assert again.balance == gift.balance
        topup = await money.topup("alice", 500, "receipt-0002")
        assert topup.replayed
        assert (await money.payout("creator", 2000, "payout-00000001")).replayed
        assert await money.balance("alice") == before
        # New movements get ids past everything stored, and reconcile still agrees.
        await money.gift("alice", "s1", "rose", 1, "gift-00000200")
        await drain(quick_consumer(redis, store))
        assert await store.count() == stored + 1
        report = await reconcile(redis, store, wait=5)
        assert report.ok, report.lines()
    finally:
        await money.aclose()
        await redis.aclose()


async def test_recover_first_writes_what_only_redis_holds(redis: Redis, store: Store) -> None:
    money = Money(redis, Settings.load({}), catalog.load())
    await money.start()
    try:
        await money.stream_open("s1", "creator", "t")
        await money.topup("bob", 300, "receipt-0003")
        await money.gift("bob", "s1", "rose", 1, "gift-00000300")
        # No consumer ever ran: the movements are in Redis's ledger stream only.
        outcome = await recover(redis, store, retention_ms=RETENTION_MS)
        assert outcome.drained == 2
        assert (await money.balance("bob")).coins == 299
        await drain(quick_consumer(redis, store))
        report = await reconcile(redis, store, wait=5)
        assert report.ok, report.lines()
        assert (await money.gift("bob", "s1", "rose", 1, "gift-00000300")).replayed
    finally:
        await money.aclose()


async def test_recover_refuses_while_a_relay_is_subscribed(redis: Redis, store: Store) -> None:
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(keys.channel("s1"))
    try:
        with pytest.raises(RecoverRefused, match="relay"):
            await recover(redis, store, retention_ms=RETENTION_MS)
    finally:
        await pubsub.aclose()


async def test_a_wallet_field_that_is_no_integer_is_a_finding(redis: Redis, store: Store) -> None:
    await redis.hset(keys.wallet("mallory"), mapping={"coins": "12.5", "diamonds": "0"})
    report = await reconcile(redis, store, wait=1)
    assert not report.ok
    assert report.lines() == ["unreadable: wallet=mallory field=coins is not an integer: '12.5'"]


def _giftrelay(*args: str, url: str, store: Store) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIFTRELAY_REDIS_URL": url, "GIFTRELAY_LEDGER_URL": store.url,
           "GIFTRELAY_SECRET": "s" * 32, "GIFTRELAY_LOG_LEVEL": "warning"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "giftrelay", *args], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


async def test_the_recover_command_refuses_in_one_line_then_recovers(
    redis: Redis, redis_server: RedisServer, money: Money, store: Store
) -> None:
    await money.stream_open("s1", "creator", "t")
    await money.topup("carol", 40, "receipt-0004")
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(keys.channel("s1"))  # a relay still running
    try:
        refused = await asyncio.to_thread(_giftrelay, "recover", url=redis_server.url, store=store)
    finally:
        await pubsub.aclose()
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "Error: recover refused: a relay is connected to this Redis (subscribed to events):"
        " stop every `giftrelay serve` first, or pass --force if you know it is safe"
    ]
    done = await asyncio.to_thread(_giftrelay, "recover", url=redis_server.url, store=store)
    assert done.returncode == 0, done.stderr
    assert "recovered from 1 ledger events: 1 wallets" in done.stdout
    assert "then run `giftrelay reconcile`" in done.stdout
    checked = await asyncio.to_thread(_giftrelay, "reconcile", url=redis_server.url, store=store)
    assert checked.returncode == 0, checked.stdout + checked.stderr
