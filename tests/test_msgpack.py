"""The ``giftrelay.v1.msgpack`` subprotocol: the same messages as MessagePack in binary frames."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from giftrelay.embedded import RedisServer
from giftrelay.wire import protocol

from .relay_helpers import Client, RelayHandle, running_relay, token

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


@pytest.fixture
async def relay(redis: Redis, redis_server: RedisServer) -> AsyncIterator[RelayHandle]:
    async with running_relay(redis_server.url, **FAST) as handle:
        await handle.money.stream_open("s1", "cre", "packed")
        await handle.money.topup("alice", 100, "grant-alice")
        yield handle


async def packed(url: str, tok: str | None = None) -> ClientConnection:
    full = f"{url}?token={tok}" if tok else url
    ws = await connect(full, subprotocols=[protocol.MSGPACK], max_size=None)  # type: ignore[list-item]
    assert ws.subprotocol == protocol.MSGPACK
    return ws


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(10):
        data = await ws.recv()
    assert isinstance(data, bytes), "MessagePack connections get binary frames"
    message: dict[str, Any] = msgspec.msgpack.decode(data)
    return message


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(msgspec.msgpack.encode(message))


async def test_every_message_travels_as_msgpack(relay: RelayHandle) -> None:
    viewer = await packed(relay.ws)
    hello = await recv(viewer)
    assert (hello["type"], hello["role"]) == ("hello", "anonymous")
    await send(viewer, type="join", stream="s1", ref="j1")
    joined = await recv(viewer)
    assert (joined["type"], joined["ref"], joined["snapshot"]["creator"]) == ("joined", "j1", "cre")
    json_viewer = await Client.open(relay.ws)
    await json_viewer.join("s1")

    alice = await packed(relay.ws, token("alice"))
    await recv(alice)  # hello
    await send(alice, type="gift", stream="s1", gift="rose", count=2, id="packed-gift-1", ref="g")
    ok = await recv(alice)
    assert (ok["type"], ok["coins"], ok["balance"], ok["ref"]) == ("gift_ok", 2, 98, "g")

    frame = await recv(viewer)
    while frame["type"] != "events" or not any(e["kind"] == "gift" for e in frame["events"]):
        frame = await recv(viewer)
    gift = next(e for e in frame["events"] if e["kind"] == "gift")
    await json_viewer.wait_for(lambda: len(json_viewer.gifts("s1")) == 1)
    assert gift == json_viewer.gifts("s1")[0]  # the same event, whatever the framing

    await send(alice, type="catalog")
    catalog = await recv(alice)
    assert catalog["gifts"][0]["id"] == "gg"


async def test_errors_and_recovery_in_msgpack(relay: RelayHandle) -> None:
    alice = await packed(relay.ws, token("alice"))
    await recv(alice)
    await alice.send(b"\xc1 not msgpack")
    error = await recv(alice)
    assert (error["type"], error["code"]) == ("error", "bad_request")
    await send(alice, type="gift", stream="s1", gift="rose", id="short", ref="r9")
    error = await recv(alice)
    assert (error["code"], error["ref"], error["id"]) == ("bad_request", "r9", "short")
    await send(alice, type="gift", stream="s1", gift="rose", id="packed-gift-2")
    first = await recv(alice)
    await send(alice, type="gift", stream="s1", gift="heart", id="packed-gift-3")
    second = await recv(alice)
    viewer = await packed(relay.ws)
    await recv(viewer)
    await send(viewer, type="join", stream="s1", since=first["offset"])
    joined = await recv(viewer)
    assert joined["recovered"] is True
    assert [e["offset"] for e in joined["missed"]] == [second["offset"]]


async def test_without_the_subprotocol_it_is_json(relay: RelayHandle) -> None:
    async with connect(relay.ws, subprotocols=["something.else"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol is None
        hello = await ws.recv()
        assert isinstance(hello, str)
        assert json.loads(hello)["type"] == "hello"
