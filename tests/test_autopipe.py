"""The automatic pipeline: calls share round trips, and closing waits for every reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.money.autopipe import AutoPipeline
from giftrelay.money.receipts import GiftReceipt
from giftrelay.money.shards import Router
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Unavailable

from .conftest import Clock, ledger_entries


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
    counting = CountingPipeline(redis)
    money.pipe = Router(counting)
    await asyncio.gather(
        *(money.gift("alice", "s1", "rose", 1, f"gift-{i:06d}") for i in range(500))
    )
    assert sum(counting.sizes) == 500
    assert len(counting.sizes) <= 10  # at most 4 in flight, up to 256 calls each
    assert (await money.balance("alice")).coins == 9_500


async def test_a_lone_call_is_sent_alone(money: Money, redis: Redis) -> None:
    counting = CountingPipeline(redis)
    money.pipe = Router(counting)
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


# -- a connection that breaks after the batch ran ----------------------------------------------


class ReplyCutter:
    """A TCP proxy in front of a real redis-server that can lose a reply.

    Armed, it forwards the next request to Redis (which runs it) and, when Redis's reply
    comes back, drops the reply and cuts both connections: the caller's connection
    breaks after its batch was sent and ran, the one case a resend can repeat.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.armed = False
        self.cut = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.connections = 0
        self.handlers: set[asyncio.Task[Any]] = set()
        self.cuts: list[Callable[[], None]] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def aclose(self) -> None:
        assert self.server is not None
        self.server.close()
        for cut in self.cuts:
            cut()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.port)

        def cut_both() -> None:
            client_w.transport.abort()
            redis_w.transport.abort()

        self.cuts.append(cut_both)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            while data := await src.read(65536):
                if replies and self.armed:
                    self.armed = False
                    cut_both()
                    self.cut.set()
                    return
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(
            pump(client_r, redis_w, False), pump(redis_r, client_w, True), return_exceptions=True
        )
        cut_both()


@pytest.fixture
async def cutter(redis_server: RedisServer) -> AsyncIterator[ReplyCutter]:
    proxy = ReplyCutter(redis_server.port)
    yield proxy
    await proxy.aclose()


async def test_a_broken_connection_resends_the_gift_but_never_the_cap(
    redis: Redis, cutter: ReplyCutter, clock: Clock
) -> None:
    """set_cap has no id: sent again it would append a second cap entry to the ledger.
    The gift in the same batch is idempotent by its id: sent again, answered once."""
    via_proxy = connect(await cutter.start())
    money = Money(via_proxy, Settings.load({}), catalog.load(), clock=clock)
    await money.start()
    try:
        await money.stream_open("s1", "bob", "t")
        await money.topup("alice", 100, "receipt-alice-1")
        await money.gift("alice", "s1", "rose", 1, "gift-warm-0001")  # caches s1's creator
        counting = CountingPipeline(via_proxy)
        money.pipe = Router(counting)
        ledger_before = await redis.xlen(keys.LEDGER)

        cutter.armed = True
        cap, gift = await asyncio.gather(
            money.set_cap("alice", 50),
            money.gift("alice", "s1", "rose", 5, "gift-in-the-cut"),
            return_exceptions=True,
        )

        assert cutter.cut.is_set()
        assert counting.sizes == [2]  # one batch: both calls went out together
        # The cap ran once (it reached Redis before the cut) and was not run again.
        caps = await ledger_entries(redis, "cap")
        assert [(c["user"], c["daily_coins"]) for c in caps] == [("alice", 50)]
        assert await redis.hget(keys.wallet("alice"), "cap") == "50"
        assert isinstance(cap, Unavailable)  # the caller is told it may or may not have run
        assert "may or may not have taken effect" in cap.message
        # The gift was sent again and answered once: one debit, one ledger entry.
        assert isinstance(gift, GiftReceipt)
        assert (gift.coins, gift.balance) == (5, 94)
        gifts = [g for g in await ledger_entries(redis, "gift") if g["id"] == "gift-in-the-cut"]
        assert len(gifts) == 1
        assert await redis.hget(keys.wallet("alice"), "coins") == "94"
        assert await redis.xlen(keys.LEDGER) == ledger_before + 2
        assert cutter.connections >= 2  # the resend went out on a fresh connection
    finally:
        await money.aclose()
        await via_proxy.aclose()


def test_asking_replies_are_taken_out_of_a_full_and_a_broken_read() -> None:
    """A call sent with ASKING (a cluster slot in migration) has two replies, the
    ASKING's OK and its own: each call must get its own, also when the read broke."""
    from giftrelay.money.autopipe import _Call, _without_asking
    from giftrelay.money.scripts import Script

    def call(asking: bool) -> _Call:
        return _Call(Script.GIFT, [], [], None, True, asking)  # type: ignore[arg-type]

    batch = [call(True), call(False), call(True)]
    assert _without_asking(batch, ["OK", "A", "B", "OK", "C", 1]) == ["A", "B", "C", 1]
    assert _without_asking(batch, ["OK", "A", "B", "OK"]) == ["A", "B"]  # broke before C's
    assert _without_asking(batch, ["OK"]) == []
