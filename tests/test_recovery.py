"""Money the ledger can prove after any loss: business keys, lost data, recover.

The reproduction of issue 16, item 1, against a real redis-server with AOF and real
SQLite and PostgreSQL stores: Redis is put back to an older copy of its own files
after the consumer has committed newer movements. Reconcile must see the loss, a
retried request must not count twice, and ``recover`` must bring Redis back. Each test
runs again on a real Redis Cluster: there every node's files go back to the copy.
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
from giftrelay.embedded import LocalCluster, RedisServer
from giftrelay.ledger.buckets import is_cluster
from giftrelay.ledger.postings import record
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.recover import Outcome, RecoverRefused, recover
from giftrelay.ledger.store import Store
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect

from .cluster_helpers import flush_cluster
from .conftest import event_pubsub
from .ledger_helpers import (
    Restorable,
    backup_aof,
    drain,
    ledger_records,
    mark_written,
    quick_consumer,
    restore_aof,
)

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster

RETENTION_MS = 3_600_000


@pytest.fixture(scope="module")
def aof_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster with AOF on every node, for this module's tests (each flushes it first)."""
    with LocalCluster(tmp_path_factory.mktemp("aof-cluster"), appendonly=True) as cluster:
        yield cluster


@pytest.fixture
async def aof_redis(
    redis_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Restorable]:
    """A redis-server with AOF (fsync always), or an empty cluster with AOF on every node,
    whose files the test may copy and put back."""
    if redis_kind == "cluster":
        cluster = request.getfixturevalue("aof_cluster")
        await flush_cluster(cluster)
        yield cluster
        return
    server = RedisServer(tmp_path / "redis", appendonly=True, appendfsync="always")
    server.start()
    yield server
    server.stop()


async def started(url: str) -> tuple[Redis, Money]:
    redis = connect(url)
    money = Money(redis, Settings.load({}), catalog.load())  # the real clock: retention counts
    await money.start()
    return redis, money


async def recover_all(redis: Redis, money: Money, store: Store, **options: bool) -> Outcome:
    """``recover`` as the command runs it: on a cluster with the money core's steps (the
    outboxes' gifts first) and its catalog."""
    return await recover(redis, store, retention_ms=RETENTION_MS, steps=money.steps,
                         catalog=money.catalog, **options)  # fmt: skip


async def test_a_replayed_movement_is_counted_once_and_a_conflict_is_kept_aside(
    redis: Redis, money: Money, store: Store
) -> None:
    await money.stream_open("s1", "creator", "t")
    await money.topup("alice", 100, "receipt-0001")
    await money.gift("alice", "s1", "rose", 1, "gift-00000001")
    first = await ledger_records(redis)
    assert (await store.write(first)).inserted == 2

    # The same movements under new stream ids: Redis ran the requests again.
    again = [record(f"{9_000_000_000_000 + n}-0", r.body, r.bucket) for n, r in enumerate(first)]
    result = await store.write(again)
    assert (result.inserted, result.replays, result.conflicts) == (0, 2, 0)
    # The same receipt moving other coins: a conflict, counted in no balance.
    [topup] = [r for r in first if r.kind == "topup"]
    other = record(
        "9100000000000-0", topup.body.replace('"coins":100', '"coins":999'), topup.bucket
    )
    result = await store.write([other])
    assert (result.inserted, result.conflicts) == (0, 1)
    assert (await store.write([other])).conflicts == 1  # redelivered
    assert await store.count() == 2
    assert (await store.balances())[("user:alice", "coins")] == 99
    [conflict] = await store.conflicts()
    assert conflict.business_key == "topup:receipt-0001"
    assert conflict.event_id == other.ref  # as the store names events
    assert conflict.stored_id == topup.ref

    await quick_consumer(redis, store).ensure_group()
    await mark_written(redis)  # the store holds what the stream(s) do
    report = await reconcile(redis, store, wait=5)
    assert not report.ok
    assert any("conflict: topup:receipt-0001" in line for line in report.lines())


async def test_reconcile_sees_a_restored_redis_and_recover_brings_it_back(
    aof_redis: Restorable, store: Store, tmp_path: Path
) -> None:
    redis, money = await started(aof_redis.url)
    try:
        await money.stream_open("s1", "creator", "t")
        await money.topup("alice", 10_000, "receipt-0001")
        await money.gift("alice", "s1", "rocket", 2, "gift-00000001")  # 2,000 diamonds
        await drain(quick_consumer(redis, store))
    finally:
        await money.aclose()
        await redis.aclose()
    backup_aof(aof_redis, tmp_path / "backup")

    redis, money = await started(aof_redis.url)
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

    restore_aof(aof_redis, tmp_path / "backup")
    redis, money = await started(aof_redis.url)
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
            await recover_all(redis, money, store)
        # ... and, forced (this test knows no consumer runs now), brings Redis back.
        outcome = await recover_all(redis, money, store, force=True)
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
        # No consumer ever ran: the movements are in Redis's ledger stream(s) only.
        outcome = await recover_all(redis, money, store)
        assert outcome.drained == 2
        assert (await money.balance("bob")).coins == 299
        await drain(quick_consumer(redis, store))
        report = await reconcile(redis, store, wait=5)
        assert report.ok, report.lines()
        assert (await money.gift("bob", "s1", "rose", 1, "gift-00000300")).replayed
    finally:
        await money.aclose()


async def test_recover_refuses_while_a_relay_is_subscribed(redis: Redis, store: Store) -> None:
    pubsub = await event_pubsub(redis, keys.channel("s1"))
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
    redis: Redis, redis_url: str, money: Money, store: Store
) -> None:
    await money.stream_open("s1", "creator", "t")
    await money.topup("carol", 40, "receipt-0004")
    pubsub = await event_pubsub(redis, keys.channel("s1"))  # a relay still running
    try:
        refused = await asyncio.to_thread(_giftrelay, "recover", url=redis_url, store=store)
    finally:
        await pubsub.aclose()
    assert refused.returncode == 1
    where = ""
    if is_cluster(redis):  # it names the node the relay is connected to
        node = redis.get_node_from_key(keys.channel("s1"))  # type: ignore[attr-defined]
        where = f" (node {node.name})"
    assert refused.stderr.strip().splitlines() == [
        f"Error: recover refused: a relay is connected to this Redis{where} (subscribed to"
        " events): stop every `giftrelay serve` first, or pass --force if you know it is safe"
    ]
    done = await asyncio.to_thread(_giftrelay, "recover", url=redis_url, store=store)
    assert done.returncode == 0, done.stderr
    assert "recovered from 1 ledger events: 1 wallets" in done.stdout
    assert "then run `giftrelay reconcile`" in done.stdout
    checked = await asyncio.to_thread(_giftrelay, "reconcile", url=redis_url, store=store)
    assert checked.returncode == 0, checked.stdout + checked.stderr
