"""The connection's I/O (relay/connection.py, relay/inbox.py): messages taken straight
from the frame parser, answered in order, gifts pipelined, and reading paused while
a client has its fill or does not read its answers."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from giftrelay.embedded import RedisServer

from .relay_helpers import RelayHandle, running_relay, token


async def setup(h: RelayHandle, coins: int = 100_000) -> None:
    await h.money.stream_open("s1", "cre", "t")
    await h.money.topup("alice", coins, "grant-alice")


def gift(n: int, **extra: Any) -> str:
    return json.dumps(
        {"type": "gift", "ref": f"g{n}", "stream": "s1", "gift": "rose", "id": f"gift-{n:06d}"}
        | extra
    )


async def replies(ws: Any, n: int, within: float = 20.0) -> list[dict[str, Any]]:
    out = []
    async with asyncio.timeout(within):
        while len(out) < n:
            out.append(json.loads(await ws.recv()))
    return out


async def test_a_request_is_answered_before_what_came_after_it_runs(
    redis: Redis, redis_server: RedisServer
) -> None:
    """set_cap then a gift, sent together: the gift runs after the cap is set, so it is
    refused. Nothing overtakes a request (gifts, once started, run concurrently)."""
    async with running_relay(redis_server.url) as h:
        await setup(h)
        ws = await connect(f"{h.ws}?token={token('alice')}")
        await ws.recv()  # hello
        await ws.send(json.dumps({"type": "set_cap", "ref": "cap", "daily_coins": 0}))
        await ws.send(gift(1))
        await ws.send(json.dumps({"type": "ping", "ref": "p"}))
        got = {r["ref"]: r for r in await replies(ws, 3)}
        assert got["g1"]["code"] == "spend_limit"  # the cap was set before the gift ran
        assert (await h.money.balance("alice")).coins == 100_000
        await ws.close()


async def test_gifts_pipelined_past_the_in_flight_limit_are_all_answered_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Three times as many gifts as may be in flight, sent without reading: the relay
    stops reading while it has its fill, and every gift is answered, each exactly once."""
    async with running_relay(
        redis_server.url, max_inflight_per_connection=8, gift_rate=10_000.0, gift_burst=10_000
    ) as h:
        await setup(h)
        ws = await connect(f"{h.ws}?token={token('alice')}")
        await ws.recv()
        for n in range(24):
            await ws.send(gift(n))
        got = await replies(ws, 24)
        assert sorted(r["ref"] for r in got) == sorted(f"g{n}" for n in range(24))
        assert {r["type"] for r in got} == {"gift_ok"}
        assert (await h.money.balance("alice")).coins == 100_000 - 24
        assert h.relay.sessions
        connection = next(iter(h.relay.sessions))
        assert connection.inflight == 0
        assert not connection.paused_for
        await ws.close()


async def test_a_client_that_does_not_read_is_not_read_either(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Answers pile up in the kernel, then in the relay's buffer; past its high-water
    mark the relay stops reading the client's requests until the client reads again."""
    async with running_relay(redis_server.url, message_rate=100_000.0, message_burst=100_000) as h:
        ws = await connect(h.ws, max_queue=None)
        await ws.recv()
        connection = next(iter(h.relay.sessions))
        # Small kernel buffers on both sides, so that the relay's own fills within seconds.
        for transport in (ws.transport, connection.conn.transport):
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        catalog = json.dumps({"type": "catalog", "ref": "c"})
        ws.transport.pause_reading()  # the client reads nothing from now on
        sent = 0

        async def flood() -> None:
            nonlocal sent
            while True:
                await ws.send(catalog)  # blocks once the relay stops reading
                sent += 1

        flooding = asyncio.create_task(flood())
        async with asyncio.timeout(30):
            while "writes" not in connection.paused_for:  # noqa: ASYNC110 - the relay's state
                await asyncio.sleep(0.01)
        flooding.cancel()
        ws.transport.resume_reading()
        await ws.send(json.dumps({"type": "ping", "ref": "p"}))
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not got or got[-1]["type"] != "pong":
                got.append(json.loads(await ws.recv()))
        assert {r["type"] for r in got[:-1]} == {"catalog"}
        assert len(got) - 1 >= sent > 0  # every request read was answered, in order
        assert not connection.paused_for  # reading again


async def test_a_fragmented_message_is_one_message(redis: Redis, redis_server: RedisServer) -> None:
    async with running_relay(redis_server.url) as h:
        await setup(h)
        ws = await connect(f"{h.ws}?token={token('alice')}")
        await ws.recv()
        text = gift(7)
        await ws.send([text[:20], text[20:40], text[40:]])  # an iterable: fragments
        (reply,) = await replies(ws, 1)
        assert (reply["type"], reply["ref"]) == ("gift_ok", "g7"), reply
        await ws.close()


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(redis_server: RedisServer) -> None:
    async with running_relay(redis_server.url) as h:
        ws = await connect(h.ws)
        await ws.recv()
        async with ws.send_context():
            ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"type":"ping","ref":"\xff"}'))
        async with asyncio.timeout(10):
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed:
                pass
        assert ws.close_code == 1007


async def test_a_gift_past_its_deadline_is_unavailable_and_answered_once(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Redis paused past request_timeout: the gift is answered unavailable at its deadline
    (one timer watches them all), and the late script reply is not sent a second time."""
    async with running_relay(redis_server.url, request_timeout=0.5) as h:
        await setup(h)
        ws = await connect(f"{h.ws}?token={token('alice')}")
        await ws.recv()
        await redis.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        await ws.send(gift(1))
        (reply,) = await replies(ws, 1, within=5)
        assert (reply["code"], reply["ref"]) == ("unavailable", "g1")
        assert await redis.ping()  # answered once the pause is over
        await ws.send(gift(1))  # the retry: the one outcome
        (retried,) = await replies(ws, 1, within=10)
        assert (retried["type"], retried["ref"]) == ("gift_ok", "g1")
        await ws.send(json.dumps({"type": "ping", "ref": "p"}))
        (pong,) = await replies(ws, 1)
        assert pong["ref"] == "p"  # nothing else came: the late reply was dropped
        assert (await h.money.balance("alice")).coins == 100_000 - 1
        await ws.close()
