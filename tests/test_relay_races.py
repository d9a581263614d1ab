"""Races and failures around fan-out, joins and shutdown (found by review; each fails on
the code before its fix). Faults are injected by wrapping the relay's own methods."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from websockets.asyncio.client import connect

from giftrelay.auth import Role
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.wire.errors import Unavailable

from .relay_helpers import SECRET, Client, RelayHandle, running_relay, slow_closes, token

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


async def setup(h: RelayHandle, coins: int = 1000) -> None:
    await h.money.stream_open("s1", "cre", "t")
    await h.money.topup("alice", coins, "grant-alice")


async def reconnected(h: RelayHandle, redis: Redis) -> None:
    """Drop the relay's pub/sub connection and wait until it is back and subscribed."""
    fan = h.relay.fanout
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    async with asyncio.timeout(10):
        while fan.connected.is_set():  # noqa: ASYNC110 - waiting on the relay's own state
            await asyncio.sleep(0.01)
        while not fan.connected.is_set() or any(r.held is not None for r in fan.rooms.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_quiet_room_gets_no_old_events_after_a_reconnect(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        for i in range(3):
            await h.money.gift("alice", "s1", "rose", 1, f"old-gift-{i}")
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        await reconnected(h, redis)
        await h.money.gift("alice", "s1", "rose", 1, "new-gift-0")
        await viewer.wait_for(lambda: len(viewer.gifts("s1")) >= 1)
        assert [e["id"] for e in viewer.gifts("s1")] == ["new-gift-0"]


async def test_joins_while_the_channel_lags_get_each_event_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        a = await Client.open(h.ws)
        since = (await a.join("s1"))["offset"]
        fan = h.relay.fanout
        deliver = fan._on_message
        lagging: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def lag(message: dict[str, Any]) -> None:  # the channel 0.3 s behind the money path
            lagging.put_nowait((loop.time() + 0.3, message))

        async def later() -> None:
            while True:
                when, message = await lagging.get()
                await asyncio.sleep(max(0.0, when - loop.time()))  # the injected lag itself
                deliver(message)

        mover = asyncio.create_task(later())
        fan._on_message = lag  # type: ignore[method-assign]
        try:
            first = await h.money.gift("alice", "s1", "rose", 1, "gift-e1-0001")
            b = await Client.open(h.ws)
            jb = await b.join("s1", since=since)
            c = await Client.open(h.ws)
            jc = await c.join("s1")
            await h.money.gift("alice", "s1", "rose", 1, "gift-e2-0002")
            for v in (a, b, c):
                await v.wait_for(lambda v=v: any(e["id"] == "gift-e2-0002" for e in v.gifts("s1")))
        finally:
            mover.cancel()
        assert [e["id"] for e in a.gifts("s1")] == ["gift-e1-0001", "gift-e2-0002"]
        assert [e["id"] for e in b.gifts("s1")] == ["gift-e1-0001", "gift-e2-0002"]
        assert [e["offset"] for e in jb["missed"]] == [first.offset]
        assert jc["offset"] == first.offset
        assert [e["id"] for e in c.gifts("s1")] == ["gift-e2-0002"]


async def test_a_plain_join_keeps_an_event_sent_while_it_reads(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        a = await Client.open(h.ws)
        await a.join("s1")
        fan = h.relay.fanout
        read = fan._read_join

        async def read_then_gift(*args: Any) -> Any:
            reply = await read(*args)
            await h.money.gift("alice", "s1", "rose", 1, "gift-window")
            await a.wait_for(lambda: len(a.gifts("s1")) == 1)  # it went through the channel
            return reply

        fan._read_join = read_then_gift  # type: ignore[method-assign]
        b = await Client.open(h.ws)
        joined = await b.join("s1")
        fan._read_join = read  # type: ignore[method-assign]
        await h.money.gift("alice", "s1", "rose", 1, "gift-after")
        await b.wait_for(lambda: len(b.gifts("s1")) == 2)
        assert [e["id"] for e in b.gifts("s1")] == ["gift-window", "gift-after"]
        assert [e["id"] for e in joined["missed"]] == ["gift-window"]


async def test_a_gap_that_cannot_be_filled_closes_viewers_with_1013(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        fan = h.relay.fanout

        async def cannot_read(_room: Any) -> Any:
            raise ConnectionError("history unreadable")

        fan._read_gap = cannot_read  # type: ignore[method-assign]
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert await viewer.closed() == 1013  # told to rejoin with since, not left behind


async def test_a_slow_reader_closed_leaves_no_room_behind(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, write_buffer_bytes=65536, **FAST) as h:
        h.relay.fanout.linger = 0.1
        await setup(h, 1_000_000)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", h.port))
        slow = await connect(
            h.ws, sock=sock, max_queue=1, max_size=None, close_timeout=0.5, compression=None
        )
        await slow.recv()
        await slow.send(json.dumps({"type": "join", "stream": "s1", "ref": "j"}))
        sent = 0
        closed_before = slow_closes()
        while slow_closes() == closed_before and sent < 40_000:
            await asyncio.gather(
                *(h.money.gift("alice", "s1", "gg", 1, f"flood-{sent + i:06d}") for i in range(500))
            )
            sent += 500
        assert slow_closes() == closed_before + 1
        slow.transport.abort()
        async with asyncio.timeout(10):
            while "s1" in h.relay.fanout.rooms:  # noqa: ASYNC110 - the beat drops idle rooms
                await asyncio.sleep(0.05)
        assert (await redis.pubsub_shardnumsub("ev:{s1}"))[0][1] == 0


async def test_shutdown_answers_inline_requests_and_gifts_waiting_for_a_slot(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, max_inflight_per_connection=1, **FAST) as h:
        await setup(h, 10_000)
        for i in range(5):
            await h.money.gift("alice", "s1", "crown", 1, f"crown-gift-{i}")
        payout, gift = h.money.payout, h.money.gift
        entered = asyncio.Event()

        async def slow_payout(*args: Any) -> Any:
            entered.set()
            await asyncio.sleep(0.3)  # injected: the money call is slow
            return await payout(*args)

        async def slow_gift(*args: Any) -> Any:
            await asyncio.sleep(0.3)  # injected
            return await gift(*args)

        h.money.payout = slow_payout  # type: ignore[method-assign]
        h.money.gift = slow_gift  # type: ignore[method-assign]
        creator = await Client.open(h.ws, token("cre", Role.CREATOR))
        alice = await Client.open(h.ws, token("alice"))
        paid = asyncio.ensure_future(creator.request(type="payout", diamonds=2000, id="payout-01"))
        gifts = [
            asyncio.ensure_future(
                alice.request(type="gift", stream="s1", gift="rose", id=f"slot-gift-{i}")
            )
            for i in range(2)
        ]
        await entered.wait()
        await h.relay.shutdown()
        assert (await paid)["type"] == "payout_ok"
        replies = [await g for g in gifts]
        spent = 10_000 - 2500 - (await h.money.balance("alice")).coins
        assert spent == [r["type"] for r in replies].count("gift_ok")
        assert {r.get("code") for r in replies if r["type"] == "error"} <= {"unavailable"}


async def test_rate_limited_errors_echo_ref_and_id(redis: Redis, redis_server: RedisServer) -> None:
    async with running_relay(redis_server.url, message_rate=0.01, message_burst=1) as h:
        c = await Client.open(h.ws)
        assert (await c.request(type="ping"))["type"] == "pong"
        reply = await c.request(type="gift", stream="s1", gift="rose", id="abcdefgh")
        assert (reply["code"], reply["id"]) == ("rate_limited", "abcdefgh")


async def test_an_offset_beyond_redis_ids_is_a_bad_request(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        c = await Client.open(h.ws)
        reply = await c.request(type="join", stream="s1", since="99999999999999999999-0")
        assert reply["code"] == "bad_request"


async def test_a_revoked_overlay_that_had_not_joined_cannot_join(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        overlay = await Client.open(h.ws, token("ov", Role.OVERLAY, stream="s1"))
        creator = await Client.open(h.ws, token("cre", Role.CREATOR))
        assert (await creator.request(type="revoke_overlays", stream="s1"))["type"] == "revoke_ok"
        reply = await overlay.request(type="join", stream="s1")
        assert reply["code"] == "unauthorized"


async def test_overlays_are_not_counted_as_viewers(redis: Redis, redis_server: RedisServer) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await setup(h)
        overlay = await Client.open(h.ws, token("ov", Role.OVERLAY, stream="s1"))
        await overlay.join("s1")
        viewer = await Client.open(h.ws)
        await viewer.join("s1")

        def counts() -> list[int]:
            return [e["count"] for e in overlay.events["s1"] if e["kind"] == "viewers"]

        await overlay.wait_for(lambda: counts()[-1:] == [1])
        await viewer.close()
        await overlay.wait_for(lambda: counts()[-1:] == [0])


async def test_a_test_alert_combo_ends_marked_as_a_test(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, combo_window_ms=200, **FAST) as h:
        await setup(h)
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        creator = await Client.open(h.ws, token("cre", Role.CREATOR))
        await creator.request(type="test_alert", stream="s1", gift="rose", count=2)
        await viewer.wait_for(lambda: any(e["kind"] == "combo_end" for e in viewer.events["s1"]))
        end = next(e for e in viewer.events["s1"] if e["kind"] == "combo_end")
        assert (end["test"], end["total"]) == (True, 2)


async def test_ctrl_c_stops_every_worker_in_order(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    core = Money(redis, Settings.load({}), catalog.load())
    await core.start()
    await core.stream_open("s1", "cre", "t")
    port = free_port()
    env = {**os.environ, "GIFTRELAY_SECRET": SECRET, "GIFTRELAY_VAR_DIR": str(tmp_path / "var")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "serve", "--port", str(port),
        "--redis-url", redis_server.url, "--no-ledger", "--workers", "2",
        env=env, stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while b"websocket:" not in await proc.stdout.readline():
                assert proc.returncode is None
        url = f"ws://127.0.0.1:{port}/ws"
        viewers = [await Client.open(url) for _ in range(8)]
        for v in viewers:
            await v.join("s1")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl+C in a terminal does: the whole group
        assert set(await asyncio.gather(*(v.closed() for v in viewers))) == {1001}
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await core.aclose()


def test_unavailable_is_the_shutdown_refusal() -> None:
    from giftrelay.relay.session import SHUTTING_DOWN

    assert isinstance(SHUTTING_DOWN, Unavailable)


async def test_a_burst_of_joins_beyond_the_redis_pool_all_join(
    redis: Redis, redis_server: RedisServer
) -> None:
    """More joins at once than Redis connections: they queue, none is refused."""
    async with running_relay(redis_server.url, max_connections_per_ip=1000) as h:
        await setup(h)
        clients = await asyncio.gather(*(Client.open(h.ws) for _ in range(300)))
        replies = await asyncio.gather(*(c.request(type="join", stream="s1") for c in clients))
        assert [r["type"] for r in replies] == ["joined"] * 300
        for c in clients:
            await c.close()
