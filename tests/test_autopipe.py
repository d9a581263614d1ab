"""The automatic pipeline: calls share round trips, and closing waits for every reply."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.asyncio import Redis

from giftrelay import keys
from giftrelay.autopipe import AutoPipeline
from giftrelay.errors import Unavailable
from giftrelay.money import Money


class CountingPipeline(AutoPipeline):
    """Records the size of every pipeline sent."""

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.sizes: list[int] = []

    async def _execute(self, batch: list[Any]) -> list[Any]:
        self.sizes.append(len(batch))
        return await super()._execute(batch)


async def test_concurrent_calls_share_round_trips(money: Money, redis: Redis) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 10_000, "receipt-alice-1")
    money.pipe = counting = CountingPipeline(redis)
    await asyncio.gather(
        *(money.gift("alice", "s1", "rose", 1, f"gift-{i:06d}") for i in range(500))
    )
    assert sum(counting.sizes) == 500
    assert len(counting.sizes) <= 10  # at most 4 in flight, up to 256 calls each
    assert (await money.balance("alice")).coins == 9_500


async def test_a_lone_call_is_sent_alone(money: Money, redis: Redis) -> None:
    money.pipe = counting = CountingPipeline(redis)
    await money.topup("alice", 5, "receipt-alice-1")
    await money.topup("alice", 5, "receipt-alice-2")
    assert counting.sizes == [1, 1]


async def test_close_waits_for_calls_not_yet_sent(money: Money, redis: Redis) -> None:
    pending = asyncio.create_task(money.topup("alice", 5, "receipt-alice-1"))
    await asyncio.sleep(0)  # the call is queued, its flush scheduled, nothing on the wire
    await asyncio.wait_for(money.aclose(), 2)
    assert pending.done()
    assert (await pending).coins == 5
    assert await redis.hget(keys.wallet("alice"), "coins") == "5"


async def test_a_primary_short_of_replicas_is_unavailable(money: Money, redis: Redis) -> None:
    """NOREPLICAS (min-replicas-to-write) ran nothing: unavailable, not internal."""
    await redis.config_set("min-replicas-to-write", 1)
    try:
        with pytest.raises(Unavailable):
            await money.topup("alice", 5, "receipt-norepl")
    finally:
        await redis.config_set("min-replicas-to-write", 0)
    assert (await money.topup("alice", 5, "receipt-norepl")).coins == 5
