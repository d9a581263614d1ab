"""A script that meets bad data half-way must not leave half a gift behind.

Redis does not roll scripts back, so each script checks every key's type and
every number it will write before its first write. Each case plants bad data on
purpose and proves the database is byte-for-byte unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from giftrelay import keys
from giftrelay.errors import Code, Refused
from giftrelay.money import Money

from .conftest import dump

Plant = Callable[[Redis], Awaitable[object]]

PLANTS: dict[str, Plant] = {
    "top is a string": lambda r: r.set(keys.top("s1"), "x"),
    "history is a hash": lambda r: r.hset(keys.history("s1"), "a", "b"),
    "ledger is a list": lambda r: r.eval(
        "redis.call('DEL', KEYS[1]); return redis.call('RPUSH', KEYS[1], 'x')", 1, keys.LEDGER
    ),
    "creator wallet is a string": lambda r: r.set(keys.wallet("bob"), "x"),
    "creator diamonds not a number": lambda r: r.hset(keys.wallet("bob"), "diamonds", "lots"),
    "viewer coins a fraction": lambda r: r.hset(keys.wallet("alice"), "coins", "99.5"),
    "stream totals not a number": lambda r: r.hset(keys.stream("s1"), "diamonds", "x"),
    "combo is a hash": lambda r: r.hset(keys.combo("s1", "alice", "rose"), "a", "b"),
    "idempotency record is a set": lambda r: r.sadd(keys.gift_idem("alice", "gift-000001"), "x"),
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
