"""Streams: ownership, closing, goals."""

from __future__ import annotations

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.protocol import GoalState as Goal

from .conftest import dump

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster


async def test_a_stream_belongs_to_its_first_creator(money: Money, redis: Redis) -> None:
    await money.stream_open("s1", "bob", "first")
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await money.stream_open("s1", "mallory", "mine now")
    assert refused.value.code == Code.FORBIDDEN
    with pytest.raises(Refused) as refused:
        await money.stream_close("s1", actor="mallory")
    assert refused.value.code == Code.FORBIDDEN
    with pytest.raises(Refused) as refused:
        await money.set_goal("s1", "mallory", "x", 10)
    assert refused.value.code == Code.FORBIDDEN
    assert await dump(redis) == before


async def test_close_tells_viewers_once_and_stops_gifts(money: Money, redis: Redis) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 10, "receipt-alice-1")
    info = await money.stream_close("s1", actor="bob")
    assert not info.live
    await money.stream_close("s1")  # closing again changes nothing
    history = await redis.xrange(keys.history("s1"))
    assert [msgspec.json.decode(f["e"])["kind"] for _, f in history] == ["stream_ended"]
    with pytest.raises(Refused) as refused:
        await money.gift("alice", "s1", "rose", 1, "gift-000001")
    assert refused.value.code == Code.STREAM_NOT_LIVE

    reopened = await money.stream_open("s1", "bob", "back")
    assert reopened.live
    assert reopened.title == "back"
    await money.gift("alice", "s1", "rose", 1, "gift-000001")


async def test_goal_progress_counts_from_when_it_was_set(money: Money) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 1000, "receipt-alice-1")
    await money.gift("alice", "s1", "donut", 1, "gift-000001")  # before the goal
    assert await money.set_goal("s1", "bob", "new mic", 100) == Goal("new mic", 100, 0)
    await money.gift("alice", "s1", "heart", 2, "gift-000002")
    info = await money.stream_info("s1")
    assert info.goal == Goal(title="new mic", target=100, progress=10)
    assert info.diamonds == 40


async def test_unknown_stream(money: Money) -> None:
    for call in (money.stream_info("nope"), money.stream_close("nope"),
                 money.set_goal("nope", None, "x", 1)):  # fmt: skip
        with pytest.raises(Refused) as refused:
            await call
        assert refused.value.code == Code.UNKNOWN_STREAM
