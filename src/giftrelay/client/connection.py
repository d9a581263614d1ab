"""One connection to a relay, kept up: it reconnects with backoff, rejoins every stream
with ``since``, and delivers each stream's events in order and once."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self, TypeVar

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from giftrelay.client.errors import Disconnected, RelayError
from giftrelay.client.messages import (
    STORED,
    AnyReply,
    Event,
    EventsHandler,
    JoinedHandler,
    KnownEvents,
    decode_event,
    decode_frame,
    offset_key,
    reply_decoder,
)
from giftrelay.wire import protocol
from giftrelay.wire.protocol import Error, Events, Hello, Joined, Reply

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Reply)

_encoder = msgspec.json.Encoder()


STABLE_AFTER = 10.0
"""Seconds a connection must stay up before the reconnect backoff starts over."""

EVENTS_KEPT = 10_000
"""Events :meth:`Client.events` keeps waiting for a slow consumer."""


class Connection:
    """One connection to a relay that reconnects, rejoins with ``since`` and delivers
    events; :class:`~giftrelay.client.Client` sends its typed requests over it.

    ``dedupe`` (default on) drops stored events at or below the last offset already
    delivered for their stream, so a reconnect never shows an app an event twice;
    load tests turn it off to see exactly what the relay sent.
    """

    _refs = itertools.count(1)

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        on_events: EventsHandler | None = None,
        on_joined: JoinedHandler | None = None,
        reconnect: bool = True,
        dedupe: bool = True,
        backoff: tuple[float, float] = (0.05, 5.0),
        open_timeout: float = 10.0,
        request_timeout: float = 10.0,
        max_queue: int | None = 16,
    ) -> None:
        self.url = url
        self.token = token
        self.on_events = on_events
        self.on_joined = on_joined
        self.reconnect_enabled = reconnect
        self.dedupe = dedupe
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.request_timeout = request_timeout
        self.max_queue = max_queue
        self.hello: Hello | None = None
        self.ws: ClientConnection | None = None
        self.streams: dict[str, str] = {}
        """Joined streams -> the offset to rejoin from (the latest one seen)."""
        self.reconnects = 0
        self.close_codes: Counter[int] = Counter()
        self.duplicates_dropped = 0
        self.events_dropped = 0
        self.gift_retries = 0
        self._last: dict[str, tuple[int, int]] = {}
        self._waiting: dict[str, asyncio.Future[Reply]] = {}
        self._queue: asyncio.Queue[tuple[str, Event]] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._reader: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._reconnect_after = 0.0
        self._rejoin: asyncio.Task[None] | None = None
        self._delay = backoff[0]
        self._opened_at = 0.0

    # -- life cycle ------------------------------------------------------------------------

    async def connect(self) -> Hello:
        """Open the connection (the first time; later ones are automatic)."""
        await self._open()
        self._reader = asyncio.create_task(self._run(), name="giftrelay-client")
        assert self.hello is not None
        return self.hello

    async def close(self) -> None:
        self._closing = True
        if self.ws is not None:
            await self.ws.close()
        for task in (self._rejoin, self._reader):
            if task is not None and not task.done():
                task.cancel()
                # wait() neither raises the task's error nor swallows our own cancellation
                await asyncio.wait([task])
        self._fail_waiting(Disconnected("the client was closed"))

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, within: float | None = None) -> None:
        """Until a connection is open (again); raises the fatal error if reconnecting gave up."""
        async with asyncio.timeout(within):
            while not self._connected.is_set():
                if self._failure is not None:
                    raise self._failure
                if self._closing or (self._reader is not None and self._reader.done()):
                    raise Disconnected("the client is closed")
                waiter = asyncio.ensure_future(self._connected.wait())
                try:
                    await asyncio.wait(
                        [waiter, *([self._reader] if self._reader else [])],
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                finally:
                    waiter.cancel()

    async def reconnect(self, after: float = 0.0) -> None:
        """Drop the connection now (as a network failure would) and reconnect ``after`` s later.

        Useful when an app knows its network changed; load tests use it for storms.
        """
        self._reconnect_after = after
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    async def _open(self) -> None:
        url = self.url if self.token is None else f"{self.url}?token={self.token}"
        ws = await connect(
            url,
            open_timeout=self.open_timeout,
            max_size=None,
            max_queue=self.max_queue,
            compression=None,
            ping_interval=None,
        )
        try:
            async with asyncio.timeout(self.open_timeout):
                first = await ws.recv(decode=False)
            try:
                hello = reply_decoder.decode(first)
            except RecursionError:  # msgspec decodes recursively: a hostile or broken peer
                raise Disconnected("the hello frame is nested too deeply to decode") from None
            if not isinstance(hello, Hello):
                raise Disconnected(f"expected hello, got {type(hello).__name__}")
        except BaseException:
            await ws.close()
            raise
        self.ws, self.hello = ws, hello
        self._opened_at = time.monotonic()
        self._connected.set()

    async def _run(self) -> None:
        """Read until closed; then, unless closing, reconnect and rejoin, for as long as needed."""
        while True:
            ws = self.ws
            assert ws is not None
            try:
                async for data in ws:
                    try:
                        await self._on_frame(data)
                    except Exception:  # the app's handler or a bad frame: not the connection
                        log.exception("giftrelay client could not handle a frame")
            except ConnectionClosed:
                pass
            self._connected.clear()
            code = ws.close_code
            if code is not None:
                self.close_codes[code] += 1
            self._fail_waiting(Disconnected(f"connection closed (code {code})"))
            if self._closing or not self.reconnect_enabled:
                return
            try:
                await self._reconnect_loop(code)
            except Exception as exc:
                self._failure = exc
                log.warning("giftrelay client gave up reconnecting", error=str(exc))
                return
            if self._closing:
                return

    async def _reconnect_loop(self, code: int | None) -> None:
        """Reconnect with full-jitter backoff. The backoff keeps growing across drops
        until a connection has stayed up a while, and "try again later" (1013) starts
        from a second: a relay that sheds load is not hammered by its own clients."""
        low, high = self.backoff
        if time.monotonic() - self._opened_at > STABLE_AFTER:
            self._delay = low
        if code == 1013:
            self._delay = max(self._delay, min(high, 1.0))
        pause, self._reconnect_after = self._reconnect_after, 0.0
        await asyncio.sleep(pause or random.random() * self._delay)
        while not self._closing:
            try:
                await self._open()
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    raise  # a bad or revoked token will not get better by retrying
                await self._back_off()
                continue
            except (OSError, TimeoutError, ConnectionClosed, Disconnected, msgspec.DecodeError):
                await self._back_off()
                continue
            self._delay = min(high, self._delay * 2)
            if self._closing:  # closed while the handshake went on
                assert self.ws is not None
                await self.ws.close()
                return
            self.reconnects += 1
            # Rejoin as its own task: replies are read by this same task's loop.
            self._rejoin = asyncio.create_task(self._rejoin_all())
            return

    async def _back_off(self) -> None:
        await asyncio.sleep(random.random() * self._delay)
        self._delay = min(self.backoff[1], self._delay * 2)

    async def _rejoin_all(self) -> None:
        ws = self.ws
        for stream, since in list(self.streams.items()):
            delay = self.backoff[0]
            while self.ws is ws and not self._closing:
                try:
                    await self.request(protocol.Join(stream=stream, since=since), Joined)
                    break
                except (Disconnected, TimeoutError):
                    return  # the next reconnect rejoins
                except RelayError as exc:
                    if exc.code != "unavailable":
                        log.warning(
                            "giftrelay client could not rejoin", stream=stream, code=exc.code
                        )
                        break
                # The relay is up but its Redis is not (yet): try again on this connection.
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(self.backoff[1], delay * 2)

    def _fail_waiting(self, exc: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)

    # -- receiving -------------------------------------------------------------------------

    async def _on_frame(self, data: str | bytes) -> None:
        try:
            message = decode_frame(data)
        except RecursionError:
            # msgspec decodes recursively: a frame nested about 1,000 deep cannot be read.
            # Dropped like any undecodable frame, and the connection stays open.
            log.warning("giftrelay client dropped a frame nested too deeply to decode")
            return
        if isinstance(message, KnownEvents):
            await self._deliver(message.stream, list(message.events))
            return
        if isinstance(message, AnyReply):  # a reply type added after this client
            future = self._waiting.pop(message.ref, None) if message.ref else None
            if future is not None and not future.done():
                future.set_exception(RelayError("unknown_reply", f"unexpected {message.type!r}"))
            return
        reply = message
        if isinstance(reply, Events):
            await self._deliver(reply.stream, [decode_event(raw) for raw in reply.events])
            return
        if isinstance(reply, Joined):
            # Here, before the next frame is read: live events follow the reply at once,
            # and what was missed must reach the app before them.
            await self._joined(reply)
        ref = reply.ref
        future = self._waiting.pop(ref, None) if ref else None
        if future is not None and not future.done():
            future.set_result(reply)

    async def _deliver(self, stream: str, decoded: list[Event]) -> None:
        events: list[Event] = []
        last = self._last.get(stream, (0, 0))
        newest = last
        dedupe = self.dedupe
        for event in decoded:
            ms, _, seq = event.offset.partition("-")
            key = (int(ms), int(seq or 0))  # offset_key, inline: this runs for every event
            if isinstance(event, STORED):
                if key <= last and dedupe:
                    self.duplicates_dropped += 1
                    continue
                if key > last:
                    last = key
            if key > newest:
                newest = key
            events.append(event)
        self._last[stream] = last
        if stream in self.streams and newest > offset_key(self.streams[stream]):
            self.streams[stream] = "{}-{}".format(*newest)
        if not events:
            return
        if self.on_events is not None:
            result = self.on_events(stream, events)
            if inspect.isawaitable(result):
                await result
        elif self._queue is not None:  # kept only once events() is used
            queue = self._queue
            for event in events:
                if queue.full():  # a consumer that stopped reading: drop the oldest
                    queue.get_nowait()
                    self.events_dropped += 1
                queue.put_nowait((stream, event))

    async def events(self) -> AsyncIterator[tuple[str, Event]]:
        """Every event as ``(stream, event)``, when no ``on_events`` handler was given:
        from the first call on, up to ``EVENTS_KEPT`` waiting (then the oldest go)."""
        if self._queue is None:
            self._queue = asyncio.Queue(EVENTS_KEPT)
        while True:
            yield await self._queue.get()

    # -- requests --------------------------------------------------------------------------

    async def request(self, message: protocol.Request, expect: type[R]) -> R:
        """Send a message and wait for its reply; an ``error`` reply raises :class:`RelayError`."""
        ws = self.ws
        if ws is None or not self._connected.is_set():
            raise Disconnected("not connected")
        ref = f"c{next(self._refs)}"
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        try:
            await ws.send(_encoder.encode(msgspec.structs.replace(message, ref=ref)), text=True)
            async with asyncio.timeout(self.request_timeout):
                reply = await future
        except ConnectionClosed as exc:
            raise Disconnected(str(exc)) from None
        finally:
            self._waiting.pop(ref, None)
        if isinstance(reply, Error):
            raise RelayError(reply.code, reply.message, reply.id, reply.resume_at)
        if not isinstance(reply, expect):
            raise RelayError("unexpected_reply", f"expected {expect.__name__}, got {reply!r}")
        return reply

    async def _joined(self, joined: Joined) -> None:
        stream = joined.stream
        previous = self.streams.get(stream)
        if previous is None or offset_key(joined.offset) > offset_key(previous):
            self.streams[stream] = joined.offset
        if self.on_joined is not None:
            result = self.on_joined(joined)
            if inspect.isawaitable(result):
                await result
        if joined.missed:  # before the offset below, or they would count as seen
            await self._deliver(stream, [decode_event(raw) for raw in joined.missed])
        self._last[stream] = max(self._last.get(stream, (0, 0)), offset_key(joined.offset))
