"""Idempotency: a repeated id moves money once; a changed request under a used id is refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Code, Refused, Unavailable

from .conftest import Clock, dump, ledger_entries

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster


@pytest.fixture
async def live(money: Money) -> Money:
    await money.stream_open("s1", "bob", "Bob live")
    await money.topup("alice", 1000, "receipt-alice-1")
    return money


async def test_same_gift_id_20_times_at_once_moves_money_once(live: Money, redis: Redis) -> None:
    receipts = await asyncio.gather(
        *(live.gift("alice", "s1", "heart", 2, "gift-repeat-1") for _ in range(20))
    )
    assert [r.replayed for r in receipts].count(False) == 1
    first = next(r for r in receipts if not r.replayed)
    assert {msgspec.structs.replace(r, replayed=False) for r in receipts} == {first}
    assert (await live.balance("alice")).coins == 990
    assert (await live.balance("bob")).diamonds == 10
    assert len(await ledger_entries(redis, "gift")) == 1
    assert await redis.xlen(keys.history("s1")) == 1


@pytest.mark.parametrize(
    ("stream", "gift", "count"),
    [("s1", "heart", 3), ("s1", "rose", 2), ("s2", "heart", 2)],
    ids=["other-count", "other-gift", "other-stream"],
)
async def test_reused_id_with_other_content_is_a_conflict(
    live: Money, redis: Redis, stream: str, gift: str, count: int
) -> None:
    await live.stream_open("s2", "bob", "second")
    await live.gift("alice", "s1", "heart", 2, "gift-repeat-1")
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await live.gift("alice", stream, gift, count, "gift-repeat-1")
    assert refused.value.code == Code.IDEMPOTENCY_CONFLICT
    assert await dump(redis) == before


async def test_ids_are_per_viewer(live: Money) -> None:
    await live.topup("dave", 1000, "receipt-dave-1")
    a = await live.gift("alice", "s1", "rose", 1, "gift-shared-1")
    d = await live.gift("dave", "s1", "rose", 2, "gift-shared-1")
    assert not a.replayed
    assert not d.replayed
    assert (await live.balance("bob")).diamonds == 3


async def test_gift_id_is_kept_for_the_retention_window(
    live: Money, redis: Redis, settings: Settings
) -> None:
    await live.gift("alice", "s1", "rose", 1, "gift-retained")
    ttl = await redis.pttl(keys.gift_idem("alice", "gift-retained"))
    assert settings.idempotency_ttl * 1000 - 5000 < ttl <= settings.idempotency_ttl * 1000


async def test_topup_receipt_credits_once(live: Money, redis: Redis) -> None:
    results = await asyncio.gather(*(live.topup("erin", 250, "receipt-erin-1") for _ in range(20)))
    assert [r.replayed for r in results].count(False) == 1
    assert {r.coins for r in results} == {250}
    assert (await live.balance("erin")).coins == 250
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await live.topup("erin", 300, "receipt-erin-1")
    assert refused.value.code == Code.IDEMPOTENCY_CONFLICT
    with pytest.raises(Refused):
        await live.topup("frank", 250, "receipt-erin-1")  # a receipt credits one wallet
    assert await dump(redis) == before
    assert len([e for e in await ledger_entries(redis, "topup") if e["user"] == "erin"]) == 1


async def test_payout_id_pays_once(live: Money, redis: Redis) -> None:
    await live.topup("rich", 30_000, "receipt-rich-1")
    for i in range(3):
        await live.gift("rich", "s1", "sports_car", 1, f"gift-car-{i:04d}")
    results = await asyncio.gather(*(live.payout("bob", 5000, "payout-bob-1") for _ in range(10)))
    assert [r.replayed for r in results].count(False) == 1
    assert (await live.balance("bob")).diamonds == 21_000 - 5000
    assert len(await ledger_entries(redis, "payout")) == 1


@pytest.fixture
async def restartable(own_redis_server: RedisServer, clock: Clock) -> AsyncIterator[Money]:
    """A money core over a Redis of the test's own, with a live stream and alice's 100 coins."""
    redis = connect(own_redis_server.url, timeout=1.0)
    core = Money(redis, Settings.load({}), catalog.load(), clock=clock)
    await core.start()
    await core.stream_open("s1", "bob", "t")
    await core.topup("alice", 100, "receipt-alice-1")
    yield core
    await core.aclose()
    await redis.aclose()


async def test_unavailable_is_not_remembered_and_the_retry_succeeds(
    own_redis_server: RedisServer, restartable: Money
) -> None:
    core = restartable

    own_redis_server.kill()
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await core.gift("alice", "s1", "rose", 1, "gift-outage-1")
    assert time.monotonic() - started < 2.0

    own_redis_server.start()  # AOF brings the wallets back; the script cache is empty
    receipt = await core.gift("alice", "s1", "rose", 1, "gift-outage-1")
    assert not receipt.replayed
    assert receipt.balance == 99


async def test_gifts_resume_at_once_after_a_redis_restart(
    own_redis_server: RedisServer, restartable: Money
) -> None:
    core = restartable
    own_redis_server.kill()
    own_redis_server.start()  # every pooled connection is now dead
    receipt = await core.gift("alice", "s1", "rose", 1, "gift-after-restart")
    assert receipt.balance == 99
