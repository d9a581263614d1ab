"""giftrelay.client against a real relay: recovery with ``since``, and gifts retried once-only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from websockets.asyncio.server import serve

from giftrelay.auth import Role
from giftrelay.client import (
    BattleEvent,
    BattleStartEvent,
    Client,
    Event,
    GiftEvent,
    Joined,
    LevelUpEvent,
    RelayError,
    ViewersEvent,
)
from giftrelay.embedded import RedisServer

from .conftest import ledger_entries
from .relay_helpers import RelayHandle, running_relay, token

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


@pytest.fixture
async def relay(redis: Redis, redis_server: RedisServer) -> AsyncIterator[RelayHandle]:
    async with running_relay(redis_server.url, **FAST) as handle:
        yield handle


async def setup_stream(h: RelayHandle, *funded: str) -> Client:
    admin = Client(h.ws, token("admin", Role.ADMIN))
    await admin.connect()
    await admin.stream_open("s1", "client test", creator="cre")
    for user in funded:
        await admin.topup(user, 1000, f"grant-{user}-1")
    return admin


class Seen:
    """What a viewer's ``on_events`` received, with a wait that needs no polling sleeps."""

    def __init__(self) -> None:
        self.gifts: list[GiftEvent] = []
        self.other: list[Event] = []
        self.joins: list[Joined] = []
        self.changed = asyncio.Event()

    def on_events(self, stream: str, events: list[Event]) -> None:
        for e in events:
            (self.gifts if isinstance(e, GiftEvent) else self.other).append(e)  # type: ignore[arg-type]
        self.changed.set()

    def on_joined(self, joined: Joined) -> None:
        self.joins.append(joined)
        self.changed.set()

    async def until(self, check: object, within: float = 10.0) -> None:
        assert callable(check)
        async with asyncio.timeout(within):
            while not check():
                self.changed.clear()
                await self.changed.wait()


async def test_typed_events_and_replies(relay: RelayHandle) -> None:
    admin = await setup_stream(relay, "alice")
    seen = Seen()
    async with (
        Client(relay.ws, on_events=seen.on_events) as viewer,
        Client(relay.ws, token("alice")) as alice,
    ):
        assert viewer.hello is not None
        assert viewer.hello.role == "anonymous"
        joined = await viewer.join("s1")
        assert joined.snapshot.creator == "cre"
        ok = await alice.gift("s1", "heart", count=2)
        assert (ok.coins, ok.balance) == (10, 990)
        await seen.until(lambda: len(seen.gifts) == 1)
        event = seen.gifts[0]
        assert (event.id, event.sender, event.count, event.coins) == (ok.id, "alice", 2, 10)
        assert event.offset == ok.offset
        with pytest.raises(RelayError) as refused:
            await alice.gift("s1", "no-such-gift")
        assert refused.value.code == "unknown_gift"
        assert (await alice.balance()).coins == 990
        await seen.until(lambda: any(isinstance(e, ViewersEvent) for e in seen.other))
    await admin.close()


async def test_reconnect_with_since_recovers_missed_gifts(relay: RelayHandle) -> None:
    admin = await setup_stream(relay, "alice")
    seen = Seen()
    viewer = Client(relay.ws, on_events=seen.on_events, on_joined=seen.on_joined)
    alice = Client(relay.ws, token("alice"))
    await viewer.connect()
    await alice.connect()
    await viewer.join("s1")
    first = await alice.gift("s1", "rose", id="gift-before-1")
    await seen.until(lambda: len(seen.gifts) == 1)

    # The network drops; the client stays away for a second, then comes back by itself.
    await viewer.reconnect(after=1.0)
    missed = [await alice.gift("s1", "rose", id=f"gift-during-{i}") for i in range(3)]
    await seen.until(lambda: len(seen.joins) == 2)
    rejoin = seen.joins[1]
    assert rejoin.recovered
    # Everything sent while away came in the rejoin's ``missed``, in order, nothing twice.
    assert [e.offset for e in seen.gifts] == [first.offset] + [g.offset for g in missed]
    assert viewer.reconnects == 1

    after = await alice.gift("s1", "rose", id="gift-after-01")
    await seen.until(lambda: len(seen.gifts) == 5)
    assert [e.id for e in seen.gifts] == [
        "gift-before-1",
        "gift-during-0",
        "gift-during-1",
        "gift-during-2",
        "gift-after-01",
    ]
    assert seen.gifts[-1].offset == after.offset
    assert viewer.streams["s1"] == after.offset
    for client in (viewer, alice, admin):
        await client.close()


async def test_gift_retried_on_unavailable_moves_money_once(own_redis_server: RedisServer) -> None:
    async with running_relay(own_redis_server.url, **FAST) as h:
        admin = await setup_stream(h, "alice")
        await admin.close()
        alice = Client(h.ws, token("alice"), backoff=(0.05, 0.5))
        await alice.connect()
        own_redis_server.kill()

        retried = asyncio.Event()
        reasons: list[Exception] = []

        def on_retry(reason: Exception) -> None:
            reasons.append(reason)
            retried.set()

        task = asyncio.create_task(
            alice.gift("s1", "heart", id="retried-gift-1", retry_for=30, on_retry=on_retry)
        )
        async with asyncio.timeout(10):
            await retried.wait()  # the relay has answered ``unavailable`` at least once
        assert isinstance(reasons[0], RelayError)
        assert reasons[0].code == "unavailable"
        own_redis_server.start()
        ok = await task
        assert alice.gift_retries >= 1
        assert ok.id == "retried-gift-1"
        assert ok.coins == 5

        again = await alice.gift("s1", "heart", id="retried-gift-1")
        assert again.offset == ok.offset  # a repeat gets the first answer and moves nothing
        assert (await alice.balance()).coins == 995
        gifts = await ledger_entries(h.money.redis, "gift")
        assert [g["id"] for g in gifts] == ["retried-gift-1"]
        await alice.close()


async def test_join_with_since_on_a_new_client_delivers_what_was_missed(relay: RelayHandle) -> None:
    """An app starting again from an offset it saved gets what it missed, once."""
    admin = await setup_stream(relay, "alice")
    alice = Client(relay.ws, token("alice"))
    await alice.connect()
    first = await alice.gift("s1", "rose", id="gift-first-1")
    later = [await alice.gift("s1", "rose", id=f"gift-later-{i}") for i in range(3)]
    seen = Seen()
    viewer = Client(relay.ws, on_events=seen.on_events)
    await viewer.connect()
    joined = await viewer.join("s1", since=first.offset)
    assert len(joined.missed) == 3
    assert [e.offset for e in seen.gifts] == [g.offset for g in later]
    for c in (viewer, alice, admin):
        await c.close()


async def test_an_app_handler_that_raises_does_not_stop_the_client(relay: RelayHandle) -> None:
    admin = await setup_stream(relay, "alice")
    alice = Client(relay.ws, token("alice"))
    await alice.connect()
    failed = asyncio.Event()

    def broken(_stream: str, _events: list[Any]) -> None:
        failed.set()
        raise ValueError("a bug in the app")

    viewer = Client(relay.ws, on_events=broken, request_timeout=5.0)
    await viewer.connect()
    await viewer.join("s1")
    await alice.gift("s1", "rose")
    await failed.wait()
    await viewer.ping()  # still reading replies
    assert viewer.connected
    for c in (viewer, alice, admin):
        await c.close()


async def test_close_while_reconnecting_returns_and_leaves_nothing_open() -> None:
    opened = 0
    second = asyncio.Event()

    async def handler(ws: Any) -> None:
        nonlocal opened
        opened += 1
        await ws.send('{"type":"hello","v":1,"server":"x","user":null,"role":"anonymous"}')
        if opened == 1:
            await ws.close(1001, "going away")
            return
        async for _ in ws:
            pass

    async def slow(_conn: Any, _request: Any) -> None:
        if opened >= 1:
            second.set()
            await asyncio.sleep(1.0)  # the reconnect's handshake is slow (injected)

    async with serve(handler, "127.0.0.1", 0, process_request=slow) as server:
        port = server.sockets[0].getsockname()[1]
        client = Client(f"ws://127.0.0.1:{port}/ws", backoff=(0.01, 0.01))
        await client.connect()
        await second.wait()  # the first connection closed; the reconnect is in its handshake
        async with asyncio.timeout(5):
            await client.close()
        assert client.ws is not None
        assert client.ws.close_code is not None or client.ws.state.name in ("CLOSED", "CLOSING")


async def test_a_frame_with_an_event_kind_added_later_still_delivers_every_event() -> None:
    """Frames of known kinds are decoded in one call; a frame that also holds a kind this
    client does not know goes event by event: the unknown one as an UnknownEvent."""

    def gift(n: int) -> dict[str, Any]:
        return {
            "kind": "gift", "offset": f"{n}-0", "ts": 1, "id": f"g{n}", "from": "a",
            "gift": "rose", "name": "Rose", "count": 1, "coins": 1, "diamonds": 1, "combo": 1,
            "combo_id": "c",
        }  # fmt: skip

    sticker = {"kind": "sticker", "offset": "3-0"}
    frames = [  # compact, the tag first: as the relay writes them
        msgspec.json.encode({"type": "events", "stream": "s1", "events": events}).decode()
        for events in ([gift(1), gift(2)], [gift(3), sticker, gift(4)])
    ]

    async def handler(ws: Any) -> None:
        await ws.send('{"type":"hello","v":1,"server":"test","user":null,"role":"anonymous"}')
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    received: list[Event] = []
    done = asyncio.Event()

    def on_events(stream: str, events: list[Event]) -> None:
        received.extend(events)
        if len(received) >= 5:
            done.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with Client(f"ws://127.0.0.1:{port}/ws", on_events=on_events, reconnect=False):
            async with asyncio.timeout(5):
                await done.wait()
    assert [type(e).__name__ for e in received] == [
        "GiftEvent", "GiftEvent", "GiftEvent", "UnknownEvent", "GiftEvent",
    ]  # fmt: skip
    assert [e.offset for e in received] == ["1-0", "2-0", "3-0", "3-0", "4-0"]


async def test_mindful_spending_with_the_typed_client(relay: RelayHandle, redis: Redis) -> None:
    admin = await setup_stream(relay, "alice")
    async with Client(relay.ws, token("alice")) as alice:
        assert await alice.set_confirm(20) == 20
        with pytest.raises(RelayError) as asked:
            await alice.gift("s1", "heart", count=5)  # 25 coins: above 20
        assert asked.value.code == "confirm_required"
        assert asked.value.id is not None
        ok = await alice.gift("s1", "heart", count=5, id=asked.value.id, confirm=True)
        assert (ok.id, ok.coins, ok.balance) == (asked.value.id, 25, 975)
        cooldown = await alice.set_cooldown(25, 5)
        assert (cooldown.coins, cooldown.minutes) == (25, 5)
        await alice.gift("s1", "rose")  # the cool-down counts from now: 1 coin
        await alice.gift("s1", "heart", count=5, confirm=True)  # 26 coins: past 25
        with pytest.raises(RelayError) as cooling:
            await alice.gift("s1", "rose")
        assert cooling.value.code == "cooling_down"
        assert cooling.value.resume_at is not None
        spending = await alice.spending()
        assert (spending.today, spending.last_30_days) == (51, 51)
        assert [(c.creator, c.coins) for c in spending.per_creator] == [("cre", 51)]
        assert spending.cooldown is not None
        assert (spending.cooldown.spent, spending.cooldown.resume_at) == (
            26,
            cooling.value.resume_at,
        )
        assert spending.confirm_coins == 20
        assert (await alice.set_cooldown(None)).coins is None
    assert len(await ledger_entries(redis, "gift")) == 3
    await admin.close()


async def test_a_battle_with_the_typed_client(relay: RelayHandle) -> None:
    """v1.2 through the client: invite and accept, then typed battle and level events."""
    admin = await setup_stream(relay, "alice")
    await admin.stream_open("s2", "rival", creator="rival")
    seen = Seen()
    async with (
        Client(relay.ws, on_events=seen.on_events) as viewer,
        Client(relay.ws, token("cre", Role.CREATOR)) as creator,
        Client(relay.ws, token("rival", Role.CREATOR)) as rival,
        Client(relay.ws, token("alice")) as alice,
    ):
        await viewer.join("s1")
        invited = await creator.battle_invite("s1", "s2", 60, id="invite-00001")
        assert invited.status == "invited"
        running = await rival.battle_answer(invited.battle, accept=True)
        assert (running.status, running.battle) == ("running", invited.battle)
        await alice.gift("s1", "donut", count=4)  # 120 coins: level 1, 120 points
        await seen.until(lambda: any(isinstance(e, BattleEvent) for e in seen.other))
        [start] = [e for e in seen.other if isinstance(e, BattleStartEvent)]
        assert [s.stream for s in start.sides] == ["s1", "s2"]
        [level] = [e for e in seen.other if isinstance(e, LevelUpEvent)]
        assert (level.user, level.level, seen.gifts[0].level) == ("alice", 1, 1)
        await seen.until(
            lambda: any(isinstance(e, BattleEvent) and e.sides[0].score == 120 for e in seen.other)
        )
        with pytest.raises(RelayError) as refused:
            await rival.battle_answer(invited.battle, accept=False)
        assert refused.value.code == "battle_closed"
    await admin.close()
