"""A script that meets bad data half-way must not leave half a gift behind.

Redis does not roll scripts back, so each script checks every key's type and
every number it will write before its first write. Each case plants bad data on
purpose and proves the database is byte-for-byte unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.wire.errors import Code, Refused

from .conftest import Clock, dump

Plant = Callable[[Redis], Awaitable[object]]
TODAY = Clock().ms // 86_400_000
"""The UTC day of the fixture clock's gifts: their spending key's."""

PLANTS: dict[str, Plant] = {
    "top is a string": lambda r: r.set(keys.top("s1"), "x"),
    "history is a hash": lambda r: r.hset(keys.history("s1"), "a", "b"),
    "ledger is a list": lambda r: r.eval(
        "redis.call('DEL', KEYS[1]); return redis.call('RPUSH', KEYS[1], 'x')", 1, keys.LEDGER
    ),
    "creator wallet is a string": lambda r: r.set(keys.wallet("bob"), "x"),
    "creator diamonds not a number": lambda r: r.hset(keys.wallet("bob"), "diamonds", "lots"),
    "viewer coins a fraction": lambda r: r.hset(keys.wallet("alice"), "coins", "99.5"),
    # Lua's tonumber reads these, HINCRBY refuses them: they must be caught before any write.
    "creator diamonds 5.0": lambda r: r.hset(keys.wallet("bob"), "diamonds", "5.0"),
    "creator diamonds hex": lambda r: r.hset(keys.wallet("bob"), "diamonds", "0x10"),
    "creator diamonds at int64 max": lambda r: r.hset(
        keys.wallet("bob"), "diamonds", "9223372036854775807"
    ),
    "stream coins 1e2": lambda r: r.hset(keys.stream("s1"), "coins", "1e2"),
    "viewer spent padded": lambda r: r.hset(keys.wallet("alice"), "spent", " 5"),
    "stream totals not a number": lambda r: r.hset(keys.stream("s1"), "diamonds", "x"),
    "combo is a hash": lambda r: r.hset(keys.combo("s1", "alice", "rose"), "a", "b"),
    "idempotency record is a set": lambda r: r.sadd(keys.gift_idem("alice", "gift-000001"), "x"),
    # The spending key is written without a read (HINCRBY), as the script's first write.
    "spending is a string": lambda r: r.set(keys.spending("alice", TODAY), "x"),
    "spending not a number": lambda r: r.hset(keys.spending("alice", TODAY), "bob", "x"),
    "viewer cool_log malformed": lambda r: r.hset(
        keys.wallet("alice"), mapping={"cool_coins": 5, "cool_minutes": 1, "cool_log": "1:x,"}
    ),
}


@pytest.mark.parametrize("plant", list(PLANTS.values()), ids=list(PLANTS))
async def test_bad_data_mid_gift_leaves_no_partial_write(
    money: Money, redis: Redis, plant: Plant
) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 100, "receipt-alice-1")
    await plant(redis)
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await money.gift("alice", "s1", "rose", 1, "gift-000001")
    assert refused.value.code == Code.INTERNAL
    assert await dump(redis) == before


async def test_the_money_core_survives_a_script_cache_flush(money: Money, redis: Redis) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 100, "receipt-alice-1")
    await redis.script_flush()
    receipt = await money.gift("alice", "s1", "rose", 1, "gift-000001")
    assert receipt.balance == 99


async def test_a_creator_at_the_largest_balance_gets_no_more_and_the_viewer_keeps_coins(
    redis: Redis, clock: Clock
) -> None:
    core = Money(
        redis, Settings.load({"GIFTRELAY_MAX_BALANCE": "1000"}), catalog.load(), clock=clock
    )
    await core.start()
    await core.stream_open("s1", "bob", "t")
    await core.topup("alice", 1000, "receipt-alice-1")
    await core.gift("alice", "s1", "crown", 1, "gift-000001")  # bob: 500 diamonds
    await core.topup("carol", 1000, "receipt-carol-1")
    await core.gift("carol", "s1", "heart", 99, "gift-000002")  # bob: 995
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await core.gift("carol", "s1", "donut", 1, "gift-000003")  # would be 1025
    assert refused.value.code == Code.INTERNAL
    assert await dump(redis) == before
    await core.aclose()
