"""giftrelay.client against a real relay: recovery with ``since``, and gifts retried once-only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from giftrelay.auth import Role
from giftrelay.client import Client, Event, GiftEvent, Joined, RelayError, ViewersEvent
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
