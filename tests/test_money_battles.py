"""Battles and gifter levels in the money core: each side's score moves with its gifts in
the same atomic step as the money (boosts included), exactly once, on one Redis and on a
Redis Cluster; the server's clock (here the injected one) decides start, windows and end."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.money.scripts import Script
from giftrelay.wire.errors import Code, Refused

from .conftest import Clock, ledger_entries

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster

MINUTE = 60_000


@pytest.fixture
async def live(money: Money) -> Money:
    await money.stream_open("s1", "ann", "Ann live")
    await money.stream_open("s2", "bea", "Bea live")
    for viewer in ("v1", "v2", "v3"):
        await money.topup(viewer, 100_000, f"grant-{viewer}")
    return money


async def stored(redis: Redis, stream: str, kind: str) -> list[dict[str, Any]]:
    """The stream's stored events of ``kind``, oldest first."""
    entries = await redis.xrange(keys.history(stream))
    events = [msgspec.json.decode(fields["e"]) for _, fields in entries]
    return [e for e in events if e["kind"] == kind]


async def started(money: Money, clock: Clock) -> str:
    """A one-minute battle between s1 (ann's) and s2 (bea's), accepted now."""
    invited = await money.battle_invite("s1", "s2", 60, "invite-000001", "ann")
    assert invited.status == "invited"
    running = await money.battle_answer(invited.battle, True, "bea")
    assert (running.status, running.starts_at, running.ends_at) == (
        "running",
        clock.ms,
        clock.ms + MINUTE,
    )
    return invited.battle


async def test_a_battle_scores_each_sides_gifts_with_the_boost_and_records_the_result(
    live: Money, redis: Redis, clock: Clock, redis_kind: str
) -> None:
    if redis_kind == "cluster":  # the two sides live on two shards: each keeps its own score
        nodes = {redis.get_node_from_key(keys.stream(s)).name for s in ("s1", "s2")}  # type: ignore[attr-defined]
        assert len(nodes) == 2
    await live.gift("v1", "s1", "rose", 5, "before-00001")  # before the battle: no points
    battle = await started(live, clock)
    [invite] = await stored(redis, "s2", "battle_invite")
    assert (invite["battle"], invite["opponent"], invite["opponent_creator"]) == (
        battle,
        "s1",
        "ann",
    )
    for stream in ("s1", "s2"):
        [start] = await stored(redis, stream, "battle_start")
        assert [s["stream"] for s in start["sides"]] == ["s1", "s2"]
        assert start["boosts"] == [
            {"starts_at": clock.ms + 30_000, "ends_at": clock.ms + MINUTE, "multiplier": 2}
        ]

    await live.gift("v1", "s1", "rose", 10, "early-000001")  # 10 diamonds, x1
    await live.gift("v2", "s2", "heart", 1, "early-000002")  # 5, x1
    clock.advance(30_000)  # the last 30 s count twice
    await live.gift("v1", "s1", "heart", 2, "boosted-0001")  # 10 diamonds, x2
    await live.gift("v3", "s2", "donut", 1, "boosted-0002")  # 30, x2
    again = await live.gift("v3", "s2", "donut", 1, "boosted-0002")  # a retry: nothing more
    assert again.replayed
    state = await live.battle_state(battle)
    assert state is not None
    assert [(s.stream, s.creator, s.score) for s in state.sides] == [
        ("s1", "ann", 30),
        ("s2", "bea", 65),
    ]
    assert [(c.user, c.points) for c in state.sides[1].top] == [("v3", 60), ("v2", 5)]
    clock.advance(30_000)  # the end: later gifts count for nothing
    await live.gift("v1", "s1", "crown", 1, "too-late-001")

    assert await live.end_battles(grace_ms=0) == 1
    assert await live.end_battles(grace_ms=0) == 0  # ended once
    assert await live.battle_state(battle) is None
    for stream in ("s1", "s2"):
        [end] = await stored(redis, stream, "battle_end")
        assert end["winner"] == "s2"
        assert [s["score"] for s in end["sides"]] == [30, 65]
        assert [t["user"] for t in end["sides"][0]["top"]] == ["v1"]
    [result] = await ledger_entries(redis, "battle")
    assert (result["id"], result["streams"], result["scores"], result["winner"]) == (
        battle,
        ["s1", "s2"],
        [30, 65],
        "s2",
    )
    # The streams are free again.
    assert (await live.battle_invite("s2", "s1", 30, "invite-000002", "bea")).status == "invited"


async def test_concurrent_gifts_on_both_sides_score_exactly_once(live: Money, clock: Clock) -> None:
    battle = await started(live, clock)
    clock.advance(20_000)
    plan = [("v1", "s1", "rose", 3), ("v2", "s2", "heart", 1), ("v3", "s1", "gg", 2)] * 40
    sends = [live.gift(v, s, g, n, f"g-{i:08d}") for i, (v, s, g, n) in enumerate(plan)]
    retries = [live.gift(v, s, g, n, f"g-{i:08d}") for i, (v, s, g, n) in enumerate(plan[:30])]
    await asyncio.gather(*sends)
    await asyncio.gather(*retries)
    clock.advance(20_000)  # inside the boosted window now
    boosted = [live.gift("v2", "s2", "rose", 1, f"b-{i:08d}") for i in range(50)]
    await asyncio.gather(*boosted)
    state = await live.battle_state(battle)
    assert state is not None
    assert [s.score for s in state.sides] == [40 * 3 + 40 * 2, 40 * 5 + 50 * 2]


async def test_gifts_report_levels_and_level_up_once(live: Money, redis: Redis) -> None:
    await live.gift("v1", "s1", "donut", 3, "level-00001")  # 90 coins: level 0
    await live.gift("v1", "s1", "heart", 2, "level-00002")  # 100: level 1
    await live.gift("v1", "s1", "heart", 2, "level-00002")  # a retry: no second level_up
    await live.gift("v1", "s2", "crown", 2, "level-00003")  # 1,100: level 2, on s2
    gifts = await stored(redis, "s1", "gift")
    assert [g["level"] for g in gifts] == [0, 1]
    assert [(e["user"], e["level"]) for e in await stored(redis, "s1", "level_up")] == [("v1", 1)]
    assert [(e["user"], e["level"]) for e in await stored(redis, "s2", "level_up")] == [("v1", 2)]
    assert await live.levels(["v1", "v2"]) == {"v1": 2, "v2": 0}


async def test_battle_refusals_move_nothing(live: Money, redis: Redis, clock: Clock) -> None:
    async def code(call: Any) -> str:
        with pytest.raises(Refused) as refused:
            await call
        return refused.value.code

    assert await code(live.battle_invite("s1", "s1", 60, "invite-000009", "ann")) == (
        Code.BAD_REQUEST
    )
    assert await code(live.battle_invite("s1", "s2", 5, "invite-000009", "ann")) == (
        Code.BAD_REQUEST
    )
    assert await code(live.battle_invite("s1", "s2", 60, "invite-000009", "bea")) == (
        Code.FORBIDDEN
    )
    assert await code(live.battle_invite("s1", "nope", 60, "invite-000009", "ann")) == (
        Code.UNKNOWN_STREAM
    )
    assert await code(live.battle_answer("bnothing", True, "bea")) == Code.UNKNOWN_BATTLE

    invited = await live.battle_invite("s1", "s2", 60, "invite-000010", "ann")
    assert await code(live.battle_answer(invited.battle, True, "ann")) == Code.FORBIDDEN
    declined = await live.battle_answer(invited.battle, False, "bea")
    assert declined.status == "declined"
    [notice] = await stored(redis, "s1", "battle_declined")
    assert (notice["battle"], notice["opponent"]) == (invited.battle, "s2")
    assert await code(live.battle_answer(invited.battle, True, "bea")) == Code.BATTLE_CLOSED

    late = await live.battle_invite("s1", "s2", 60, "invite-000011", "ann")
    clock.advance(61_000)  # the invitation (60 s) expired
    assert await code(live.battle_answer(late.battle, True, "bea")) == Code.BATTLE_CLOSED

    await started(live, clock)
    await live.stream_open("s3", "cid", "Cid live")
    assert await code(live.battle_invite("s3", "s1", 60, "invite-000012", "cid")) == (
        Code.BATTLE_BUSY
    )
    assert (await live.balance("v1")).coins == 100_000  # no battle call moved money


async def test_a_stream_busy_at_the_accept_cancels_the_battle(
    live: Money, redis: Redis, clock: Clock
) -> None:
    """Invitations do not hold a stream: one accepted elsewhere first makes the other's
    accept refused, and the stream that had joined announces the end, cancelled."""
    await live.stream_open("s3", "cid", "Cid live")
    first = await live.battle_invite("s1", "s2", 60, "invite-000020", "ann")
    other = await live.battle_invite("s3", "s2", 60, "invite-000021", "cid")
    await live.battle_answer(other.battle, True, "bea")  # s2 is in s3's battle now
    with pytest.raises(Refused) as refused:
        await live.battle_answer(first.battle, True, "bea")
    assert refused.value.code == Code.BATTLE_BUSY
    [start] = await stored(redis, "s1", "battle_start")
    [end] = await stored(redis, "s1", "battle_end")
    assert (start["battle"], end["battle"], end["cancelled"], end["winner"]) == (
        first.battle, first.battle, True, None,
    )  # fmt: skip
    assert [e["battle"] for e in await stored(redis, "s2", "battle_start")] == [other.battle]
    assert await stored(redis, "s2", "battle_end") == []  # s2's battle goes on
    assert await live.battle_state(first.battle) is None
    await live.gift("v1", "s1", "rose", 3, "after-cancel")  # s1 scores for nothing now
    clock.advance(61_000)
    assert await live.end_battles(grace_ms=0) == 1  # only s3's battle was running
    assert [e["id"] for e in await ledger_entries(redis, "battle")] == [other.battle]


async def test_a_battle_being_ended_reads_as_over_not_as_zero(live: Money, clock: Clock) -> None:
    """The referee lets the streams go one after the other: a state read in between sees
    the battle over (its battle_end is on its way), not a side fallen to 0."""
    battle = await started(live, clock)
    await live.gift("v1", "s1", "rose", 10, "scored-00001")
    state = await live.battle_state(battle)
    assert state is not None
    assert [s.score for s in state.sides] == [10, 0]
    left = await live.pipe.call(
        Script.BATTLE_LEAVE,
        [keys.stream("s1"), keys.history("s1"), keys.channel("s1"), keys.battle_top("s1")],
        [battle, "", live.settings.history_len],
        idempotent=True,
    )
    assert left == ["ok", 1]  # s1 let go, s2 not yet, the record still running
    assert await live.battle_state(battle) is None


async def test_a_battle_a_stream_is_not_in_at_its_end_is_cancelled_not_scored(
    live: Money, redis: Redis, clock: Clock
) -> None:
    """An accept that died half-way (one stream joined): the referee records no result and
    the joined stream announces the end, cancelled; a late join is refused."""
    battle = await started(live, clock)
    await live.pipe.call(
        Script.BATTLE_LEAVE,
        [keys.stream("s1"), keys.history("s1"), keys.channel("s1"), keys.battle_top("s1")],
        [battle, "", live.settings.history_len],
        idempotent=True,
    )  # as if s1 had never joined
    clock.advance(MINUTE)
    assert await live.end_battles(grace_ms=0) == 1
    assert await ledger_entries(redis, "battle") == []
    [end] = await stored(redis, "s2", "battle_end")
    assert (end["battle"], end["cancelled"]) == (battle, True)
    assert await stored(redis, "s1", "battle_end") == []
    late = await live.pipe.call(  # an accept's retry after the end joins nothing
        Script.BATTLE_JOIN,
        [keys.stream("s1"), keys.battle_top("s1"), keys.history("s1"), keys.channel("s1")],
        [battle, 0, clock.ms - 1, "", "{}", 1000, clock.ms],
        idempotent=True,
    )
    assert late[:2] == ["err", "battle_closed"]
