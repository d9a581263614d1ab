"""One websocket to a giftrelay, at the protocol's level, for the drivers that need their own.

:class:`giftrelay.client.Client` is what the harness's viewers and gifters use, as an app
would. This is the same protocol with the policy left to the drivers: it never retries
or reconnects by itself (a gifter resends the same id, a watcher rejoins with
``since``, each as its test needs), it may offer permessage-deflate as browsers do
(the fan-out is measured so), and a sink's connection drops every frame unread once
it has joined. Frames are the relay's own Structs; ``events`` frames are decoded whole.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from giftrelay.client import (
    ComboEndEvent,
    Disconnected,
    Event,
    EventsHandler,
    GiftEvent,
    GiftOk,
    GoalEvent,
    Hello,
    Joined,
    RelayError,
    ServerMessage,
    StreamEndedEvent,
    TopEvent,
    ViewersEvent,
    decode_event,
    new_id,
)
from giftrelay.wire import protocol

R = TypeVar("R", bound=protocol.Reply)
JoinedHandler = Callable[[Joined], Awaitable[None] | None]
OPEN_ERRORS = (OSError, InvalidHandshake, TimeoutError, ConnectionClosed, Disconnected)
"""What opening a connection may raise."""


class ConnectFailed(Disconnected):
    """The connection could not be opened (refused, a bad handshake, no hello in time)."""


class _Frame(msgspec.Struct, tag="events", tag_field="type", kw_only=True, frozen=True):
    stream: str
    events: list[GiftEvent | GoalEvent | StreamEndedEvent | ViewersEvent | TopEvent | ComboEndEvent]


class _Head(msgspec.Struct):
    ref: str | None = None


_frame = msgspec.json.Decoder(_Frame)
_reply = msgspec.json.Decoder(ServerMessage)
_head = msgspec.json.Decoder(_Head)
_encode = msgspec.json.Encoder().encode
EVENTS_HEAD = ('{"type":"events"', b'{"type":"events"')
_refs = itertools.count(1)


class Connection:
    """One connection (``open`` again after it closed). ``on_events`` receives the live
    events and ``on_missed`` (``on_events`` by default) the ``missed`` of a ``joined``
    reply, just after ``on_joined``: both before the next frame is read. A ``sink``
    drops every frame after its ``joined`` unread."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        compression: Literal["deflate"] | None = "deflate",
        ping_interval: float | None = 20.0,
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        on_events: EventsHandler | None = None,
        on_missed: EventsHandler | None = None,
        on_joined: JoinedHandler | None = None,
        sink: bool = False,
    ) -> None:
        self.url = url if token is None else f"{url}?token={token}"
        self.compression = compression
        self.ping_interval = ping_interval
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.on_events = on_events
        self.on_missed = on_missed or on_events
        self.on_joined = on_joined
        self.sink = sink
        self.ws: ClientConnection | None = None
        self.hello: Hello | None = None
        self.opened = 0
        self.close_codes: list[int | None] = []
        """One per connection that closed: its close code (None: none was received)."""
        self.reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[protocol.Reply]] = {}
        self._joined = False

    @property
    def connected(self) -> bool:
        return self.reader is not None and not self.reader.done()

    @property
    def reconnects(self) -> int:
        """Connections opened after the first."""
        return max(0, self.opened - 1)

    async def open(self) -> Hello:
        """Open the connection and read the hello; :class:`ConnectFailed` if it cannot be."""
        try:
            ws = await connect(
                self.url, max_size=None, open_timeout=self.open_timeout,
                compression=self.compression, ping_interval=self.ping_interval,
            )  # fmt: skip
        except OPEN_ERRORS as exc:
            raise ConnectFailed(repr(exc)) from exc
        try:
            async with asyncio.timeout(self.open_timeout):
                hello = _reply.decode(await ws.recv(decode=False))
            if not isinstance(hello, Hello):
                raise ConnectFailed(f"expected hello, got {type(hello).__name__}")
        except BaseException as exc:
            await ws.close()
            if isinstance(exc, ConnectFailed) or not isinstance(
                exc, (*OPEN_ERRORS, msgspec.DecodeError)
            ):
                raise
            raise ConnectFailed(repr(exc)) from exc
        self.ws, self.hello, self._joined = ws, hello, False
        self.opened += 1
        self.reader = asyncio.create_task(self._read(ws))
        return hello

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait([self.reader])

    async def closed(self) -> None:
        """Until the connection is closed (by either side)."""
        if self.reader is not None:
            await asyncio.wait([self.reader])

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                if self.sink and self._joined:
                    continue  # a sink reads and discards
                await self._on_frame(data)
        except ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            waiting, self._waiting = self._waiting, {}
            for future in waiting.values():
                if not future.done():
                    future.set_exception(Disconnected(f"connection closed ({ws.close_code})"))

    async def _on_frame(self, data: str | bytes) -> None:
        if data[:16] in EVENTS_HEAD:
            try:
                frame = _frame.decode(data)
            except msgspec.ValidationError:  # an event kind unknown here: one by one below
                pass
            else:
                await _call(self.on_events, frame.stream, list(frame.events))
                return
        try:
            reply = _reply.decode(data)
        except msgspec.ValidationError:  # a reply type unknown here
            ref = _head.decode(data).ref
            future = self._waiting.pop(ref, None) if ref else None
            if future is not None and not future.done():
                future.set_exception(RelayError("unknown_reply", "an unknown reply type"))
            return
        if isinstance(reply, protocol.Events):
            await _call(self.on_events, reply.stream, [decode_event(e) for e in reply.events])
            return
        if isinstance(reply, Joined):
            self._joined = True
            if self.on_joined is not None:
                result = self.on_joined(reply)
                if inspect.isawaitable(result):
                    await result
            if reply.missed:
                await _call(self.on_missed, reply.stream, [decode_event(e) for e in reply.missed])
        future = self._waiting.pop(reply.ref, None) if reply.ref else None
        if future is not None and not future.done():
            future.set_result(reply)

    async def request(self, message: protocol.Request, expect: type[R]) -> R:
        """Send a message, wait for its reply. No reply within ``request_timeout``: the
        connection is taken for hung and closed, and TimeoutError raised."""
        ws = self.ws
        if ws is None or not self.connected:
            raise Disconnected("not connected")
        ref = f"d{next(_refs)}"
        future: asyncio.Future[protocol.Reply] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        try:
            await ws.send(_encode(msgspec.structs.replace(message, ref=ref)), text=True)
            async with asyncio.timeout(self.request_timeout):
                reply = await future
        except ConnectionClosed as exc:
            raise Disconnected(str(exc)) from None
        except TimeoutError:
            await ws.close()
            raise
        finally:
            self._waiting.pop(ref, None)
        if isinstance(reply, protocol.Error):
            raise RelayError(reply.code, reply.message, reply.id)
        if not isinstance(reply, expect):
            raise RelayError("unexpected_reply", f"expected {expect.__name__}, got {reply!r}")
        return reply

    async def join(self, stream: str, since: str | None = None) -> Joined:
        return await self.request(protocol.Join(stream=stream, since=since), Joined)

    async def gift(
        self, stream: str, gift: str, count: int = 1, *, id: str | None = None,
        retry_for: float = 0.0,
    ) -> GiftOk:  # fmt: skip
        """One try, on this connection or, if it closed, a new one (``retry_for`` is not
        used: :mod:`loadtest.drivers.gifter` resends)."""
        if not self.connected:
            await self.open()
        message = protocol.Gift(stream=stream, gift=gift, count=count, id=id or new_id())
        return await self.request(message, GiftOk)


async def _call(handler: EventsHandler | None, stream: str, events: list[Event]) -> None:
    if handler is not None:
        result = handler(stream, events)
        if inspect.isawaitable(result):
            await result
