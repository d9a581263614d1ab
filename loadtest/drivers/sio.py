"""A minimal Socket.IO client (engine.io v4, WebSocket transport only) for the peer benchmark.

Written here rather than using ``python-socketio`` so that both sides of the
comparison are read by the same machinery: the same ``websockets`` connection,
the same msgspec decoding into giftrelay's own reply and event structs, and
nothing extra per connection (python-socketio's asyncio client brings aiohttp and
background tasks of its own, which would cost the clients CPU the relay is
competing for on the same machine). The framing is small:

* engine.io packets: ``0`` open (JSON handshake), ``2`` ping -> answer ``3`` pong,
  ``4`` message; a Socket.IO packet rides inside a ``4``.
* Socket.IO packets: ``0`` connect (``40``), ``2`` event ``42[name, data]``, an
  event expecting an acknowledgement ``42<id>[name, data]``, and its ack
  ``43<id>[reply]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from giftrelay.client import (
    Disconnected,
    EventsHandler,
    GiftOk,
    Hello,
    Joined,
    JoinedHandler,
    RelayError,
    decode_event,
    new_id,
)
from giftrelay.client import ServerMessage as AnyReply
from giftrelay.wire.protocol import Balance, Error, Reply, StreamOk, TopupOk


class _Events(msgspec.Struct):
    stream: str
    events: list[msgspec.Raw]


_event_packet = msgspec.json.Decoder(tuple[str, _Events])
_ack_packet = msgspec.json.Decoder(tuple[AnyReply])
_enc = msgspec.json.Encoder()


class SioClient:
    """The subset of :class:`giftrelay.client.Client` the harness uses, over Socket.IO."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        on_events: EventsHandler | None = None,
        on_joined: JoinedHandler | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        parts = urlsplit(url)
        query = "EIO=4&transport=websocket" + (f"&token={token}" if token else "")
        self.url = f"{parts.scheme}://{parts.netloc}/socket.io/?{query}"
        self.on_events = on_events
        self.on_joined = on_joined
        self.request_timeout = request_timeout
        self.ws: ClientConnection | None = None
        self.reconnects = 0
        self.close_codes: Counter[int] = Counter()
        self.connected = False
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> Hello:
        ws = await connect(self.url, max_size=None, compression=None, ping_interval=None)
        opened = await ws.recv()
        if not str(opened).startswith("0"):
            raise Disconnected(f"not an engine.io open packet: {opened!r}")
        await ws.send("40")
        answer = str(await ws.recv())
        if not answer.startswith("40"):
            raise RelayError("unauthorized", answer)
        self.ws, self.connected = ws, True
        self._reader = asyncio.create_task(self._read())
        return Hello(v=1, server="socket.io", user=None, role="?")

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            async for data in ws:
                text = data if isinstance(data, str) else data.decode()
                if text == "2":
                    await ws.send("3")
                elif text.startswith("42"):
                    await self._on_event(text[2:])
                elif text.startswith("43"):
                    self._on_ack(text[2:])
        except ConnectionClosed:
            pass
        finally:
            self.connected = False
            if ws.close_code is not None:
                self.close_codes[ws.close_code] += 1
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(Disconnected("connection closed"))

    async def _on_event(self, body: str) -> None:
        name, payload = _event_packet.decode(body)
        if name != "events" or self.on_events is None:
            return
        result = self.on_events(payload.stream, [decode_event(raw) for raw in payload.events])
        if asyncio.iscoroutine(result):
            await result

    def _on_ack(self, body: str) -> None:
        bracket = body.index("[")
        future = self._waiting.pop(int(body[:bracket]), None)
        if future is not None and not future.done():
            (reply,) = _ack_packet.decode(body[bracket:])
            future.set_result(reply)

    async def _request(self, name: str, data: dict[str, Any], expect: type[Any]) -> Any:
        ws = self.ws
        if ws is None or not self.connected:
            raise Disconnected("not connected")
        ack = next(self._ids)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[ack] = future
        try:
            await ws.send(f"42{ack}" + _enc.encode([name, data]).decode())
            async with asyncio.timeout(self.request_timeout):
                reply = await future
        finally:
            self._waiting.pop(ack, None)
        if isinstance(reply, Error):
            raise RelayError(reply.code, reply.message, reply.id)
        if not isinstance(reply, expect):
            raise RelayError("unexpected_reply", repr(reply))
        return reply

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def reconnect(self, after: float = 0.0) -> None:
        raise NotImplementedError("the Socket.IO peer is benchmarked without storms")

    async def join(self, stream: str, since: str | None = None) -> Joined:
        joined: Joined = await self._request("join", {"stream": stream}, Joined)
        if self.on_joined is not None:
            result = self.on_joined(joined)
            if asyncio.iscoroutine(result):
                await result
        return joined

    async def gift(
        self, stream: str, gift: str, count: int = 1, *, id: str | None = None,
        retry_for: float = 30.0,
    ) -> GiftOk:  # fmt: skip
        data = {"stream": stream, "gift": gift, "count": count, "id": id or new_id()}
        ok: GiftOk = await self._request("gift", data, GiftOk)
        return ok

    async def balance(self) -> Balance:
        reply: Balance = await self._request("balance", {}, Balance)
        return reply

    async def topup(self, user: str, coins: int, id: str) -> TopupOk:
        reply: TopupOk = await self._request(
            "topup", {"user": user, "coins": coins, "id": id}, TopupOk
        )
        return reply

    async def stream_open(self, stream: str, title: str, creator: str | None = None) -> StreamOk:
        data = {"stream": stream, "title": title, "creator": creator}
        reply: StreamOk = await self._request("stream_open", data, StreamOk)
        return reply
