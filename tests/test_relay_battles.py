"""Battles and gifter levels through the relay: creators invite and answer over the
WebSocket, both streams' viewers see both sides' scores move, a late joiner finds the
battle in its snapshot, and the end reaches both streams once. One Redis, then a Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from giftrelay.auth import Role

from .conftest import ledger_entries
from .relay_helpers import Client, RelayHandle, running_relay, token

pytestmark = pytest.mark.both_redis

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


@pytest.fixture
async def relay(redis: Redis, redis_url: str) -> AsyncIterator[RelayHandle]:
    async with running_relay(redis_url, **FAST) as handle:
        await handle.money.stream_open("s1", "ann", "Ann live")
        await handle.money.stream_open("s2", "bea", "Bea live")
        for viewer in ("v1", "v2"):
            await handle.money.topup(viewer, 100_000, f"grant-{viewer}")
        yield handle


def kinds(client: Client, stream: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in client.events[stream] if e["kind"] == kind]


def scores(event: dict[str, Any]) -> list[int]:
    return [side["score"] for side in event["sides"]]


async def test_a_battle_played_over_the_relay(relay: RelayHandle, redis: Redis) -> None:
    ann = await Client.open(relay.ws, token("ann", Role.CREATOR))
    bea = await Client.open(relay.ws, token("bea", Role.CREATOR))
    watch1, watch2 = await Client.open(relay.ws), await Client.open(relay.ws)
    await watch1.join("s1")
    await watch2.join("s2")
    await bea.join("s2")  # the invited creator watches their own stream

    invited = await ann.request(
        type="battle_invite", stream="s1", opponent="s2", duration_s=60, id="invite-0001"
    )
    assert (invited["type"], invited["status"]) == ("battle_ok", "invited")
    battle = invited["battle"]
    await bea.wait_for(lambda: bool(kinds(bea, "s2", "battle_invite")), what="the invitation")
    [invite] = kinds(bea, "s2", "battle_invite")
    assert (invite["battle"], invite["opponent"], invite["duration_s"]) == (battle, "s1", 60)
    refused = await ann.request(type="battle_accept", battle=battle)
    assert (refused["type"], refused["code"]) == ("error", "forbidden")  # not ann's to answer

    accepted = await bea.request(type="battle_accept", battle=battle)
    assert (accepted["status"], accepted["ends_at"] - accepted["starts_at"]) == ("running", 60_000)
    for watcher, stream in ((watch1, "s1"), (watch2, "s2")):
        await watcher.wait_for(lambda w=watcher, s=stream: bool(kinds(w, s, "battle_start")))

    v1, v2 = await Client.open(relay.ws, token("v1")), await Client.open(relay.ws, token("v2"))
    await v1.request(type="gift", stream="s1", gift="donut", count=4, id="gift-v1-0001")  # 120
    await v2.request(type="gift", stream="s2", gift="heart", count=3, id="gift-v2-0001")  # 15
    # Both streams' viewers see both sides move (the other side's gifts are not on their
    # stream: the relay reads both sides).
    for watcher, stream in ((watch1, "s1"), (watch2, "s2")):
        await watcher.wait_for(
            lambda w=watcher, s=stream: any(scores(e) == [120, 15] for e in kinds(w, s, "battle")),
            what=f"both scores on {stream}",
        )
    last = kinds(watch2, "s2", "battle")[-1]
    assert [s["stream"] for s in last["sides"]] == ["s1", "s2"]
    assert last["sides"][0]["top"] == [{"user": "v1", "points": 120, "level": 1}]
    assert (last["multiplier"], last["ends_at"] - last["starts_at"]) == (1, 60_000)
    # Levels ride on gifts: 120 coins spent is level 1 (100).
    await watch1.wait_for(lambda: bool(kinds(watch1, "s1", "level_up")), what="level_up")
    assert [(e["from"], e["level"]) for e in watch1.gifts("s1")] == [("v1", 1)]
    assert [(e["user"], e["level"]) for e in kinds(watch1, "s1", "level_up")] == [("v1", 1)]

    late = await Client.open(relay.ws)
    snapshot = (await late.join("s2"))["snapshot"]
    assert snapshot["battle"]["battle"] == battle
    assert [s["score"] for s in snapshot["battle"]["sides"]] == [120, 15]
    assert snapshot["top"] == [{"user": "v2", "coins": 15, "level": 0}]

    # The referee, looking a minute ahead: the battle is over for it.
    assert await relay.money.end_battles(grace_ms=-61_000) == 1
    for watcher, stream in ((watch1, "s1"), (watch2, "s2"), (late, "s2")):
        await watcher.wait_for(lambda w=watcher, s=stream: bool(kinds(w, s, "battle_end")))
        [end] = kinds(watcher, stream, "battle_end")
        assert (end["winner"], scores(end)) == ("s1", [120, 15])
    [result] = await ledger_entries(redis, "battle")
    assert (result["winner"], result["scores"]) == ("s1", [120, 15])
    for client in (ann, bea, watch1, watch2, v1, v2, late):
        await client.close()


async def test_a_declined_invitation_tells_the_inviter(relay: RelayHandle) -> None:
    ann = await Client.open(relay.ws, token("ann", Role.CREATOR))
    bea = await Client.open(relay.ws, token("bea", Role.CREATOR))
    await ann.join("s1")
    invited = await ann.request(
        type="battle_invite", stream="s1", opponent="s2", duration_s=60, id="invite-0002"
    )
    declined = await bea.request(type="battle_decline", battle=invited["battle"])
    assert declined["status"] == "declined"
    await ann.wait_for(lambda: bool(kinds(ann, "s1", "battle_declined")), what="the decline")
    viewer = await Client.open(relay.ws, token("v1"))
    refused = await viewer.request(type="battle_invite", stream="s1", opponent="s2",
                                   duration_s=60, id="invite-0003")  # fmt: skip
    assert (refused["type"], refused["code"]) == ("error", "forbidden")  # creators only
    for client in (ann, bea, viewer):
        await client.close()
