"""A small asyncio client for the giftrelay protocol (docs/protocol.md), for apps and load tests.

It keeps the two promises a client has to keep by itself, so apps need not:

* **Recovery.** When the connection drops (a network blip, a relay worker going
  away with 1001, a slow reader closed with 1013), it reconnects with backoff and
  rejoins every stream with ``since`` = the last offset it saw, so missed events
  arrive in order before live ones. ``on_joined`` tells the app when the history
  no longer reached back (``recovered`` false: refresh from the snapshot).
* **Exactly-once gifts.** :meth:`Client.gift` sends an idempotency id and, on
  ``unavailable`` or a lost connection, retries with the *same* id until the relay
  answers: a gift moves money once, however many times it was sent. ``unavailable``
  does not mean the gift did not move (Redis may have run it after the relay stopped
  waiting); the retry's reply is the gift's one outcome.

Example::

    import asyncio
    from giftrelay.client import Client, GiftEvent

    async def main() -> None:
        def show(stream: str, events: list[Event]) -> None:
            for e in events:
                if isinstance(e, GiftEvent):
                    print(f"{e.sender} sent {e.count} x {e.name}")

        async with Client("ws://127.0.0.1:8080/ws", token, on_events=show) as client:
            await client.join("demo")
            ok = await client.gift("demo", "rose", count=3)
            print("coins left:", ok.balance)
            await asyncio.sleep(60)

    asyncio.run(main())

Messages are the relay's own msgspec Structs (:mod:`giftrelay.wire.protocol`,
:mod:`giftrelay.events`); events of a kind this client does not know yet arrive
as :class:`UnknownEvent` rather than breaking it.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TypeVar

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from giftrelay.wire import protocol
from giftrelay.wire.events import (
    ComboEndEvent,
    GiftEvent,
    GoalEvent,
    StreamEndedEvent,
    TopEvent,
    ViewersEvent,
)
from giftrelay.wire.offsets import parse_offset
from giftrelay.wire.protocol import (
    Balance,
    Error,
    Events,
    GiftOk,
    Hello,
    Joined,
    Reply,
    StreamOk,
    TopupOk,
)

__all__ = [
    "Balance",
    "Client",
    "ComboEndEvent",
    "Disconnected",
    "Event",
    "GiftEvent",
    "GiftOk",
    "GoalEvent",
    "Hello",
    "Joined",
    "RelayError",
    "StreamEndedEvent",
    "StreamOk",
    "TopEvent",
    "TopupOk",
    "UnknownEvent",
    "ViewersEvent",
    "offset_key",
]

log = structlog.get_logger(__name__)

R = TypeVar("R", bound=Reply)


class UnknownEvent(msgspec.Struct, frozen=True):
    """An event of a kind added to the protocol after this client was written."""

    kind: str
    offset: str
    ts: int = 0


Event = (
    GiftEvent
    | GoalEvent
    | StreamEndedEvent
    | ViewersEvent
    | TopEvent
    | ComboEndEvent
    | UnknownEvent
)
"""Everything ``on_events`` can receive. Only gift, goal and stream_ended are stored events."""

STORED = (GiftEvent, GoalEvent, StreamEndedEvent)

EventsHandler = Callable[[str, list[Event]], Awaitable[None] | None]
"""Called with each batch of a stream's events, in offset order. A coroutine result is
awaited before the next frame is read: a slow handler slows reading (backpressure)."""

JoinedHandler = Callable[[Joined], Awaitable[None] | None]


class _AnyReply(msgspec.Struct):
    type: str = ""
    ref: str | None = None


ServerMessage = (
    protocol.Hello
    | protocol.Joined
    | protocol.Left
    | protocol.GiftOk
    | protocol.Balance
    | protocol.Pong
    | protocol.CatalogReply
    | protocol.TopupOk
    | protocol.StreamOk
    | protocol.PayoutOk
    | protocol.CapOk
    | protocol.GoalOk
    | protocol.TestOk
    | protocol.RevokeOk
    | protocol.Error
    | protocol.Events
)
"""Every server -> client message this client knows, as the relay's own Structs."""
_reply_decoder = msgspec.json.Decoder(ServerMessage)


class _KnownEvents(msgspec.Struct, tag="events", tag_field="type", kw_only=True, frozen=True):
    """An ``events`` frame whose events are all of kinds this client knows, decoded with
    them in one call (a frame holding any other kind fails, then goes event by event)."""

    stream: str
    events: list[GiftEvent | GoalEvent | StreamEndedEvent | ViewersEvent | TopEvent | ComboEndEvent]


_frame_decoder = msgspec.json.Decoder(_KnownEvents)
EVENTS_HEAD = ('{"type":"events"', b'{"type":"events"')
"""How the relay's ``events`` frames start (msgspec writes the tag first)."""
_any_reply = msgspec.json.Decoder(_AnyReply)
_event_decoder = msgspec.json.Decoder(
    GiftEvent | GoalEvent | StreamEndedEvent | ViewersEvent | TopEvent | ComboEndEvent
)
_unknown_event = msgspec.json.Decoder(UnknownEvent)
_encoder = msgspec.json.Encoder()


STABLE_AFTER = 10.0
"""Seconds a connection must stay up before the reconnect backoff starts over."""

EVENTS_KEPT = 10_000
"""Events :meth:`Client.events` keeps waiting for a slow consumer."""


class RelayError(Exception):
    """The relay answered ``error``: ``code`` is the protocol's error code.

    Every code means nothing moved except ``unavailable``: the request may or may not
    have taken effect, and a retry with the same id returns its one outcome.
    """

    def __init__(self, code: str, message: str, id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


class Disconnected(Exception):
    """The connection dropped before a reply came; whether it was applied is unknown."""


def offset_key(offset: str) -> tuple[int, int]:
    """An offset as a pair that sorts like the stream: ``"17-3"`` -> (17, 3)."""
    return parse_offset(offset)


def decode_event(raw: msgspec.Raw | bytes) -> Event:
    """One event, typed; a kind unknown to this client gives :class:`UnknownEvent`."""
    try:
        event: Event = _event_decoder.decode(raw)
    except msgspec.ValidationError:
        return _unknown_event.decode(raw)
    return event


def _decode_frame(data: str | bytes) -> _KnownEvents | Reply | _AnyReply:
    """A server frame: an ``events`` frame of known kinds, a known reply, or the head of
    a reply added after this client. May raise RecursionError (see ``_on_frame``)."""
    if data[:16] in EVENTS_HEAD:  # most frames: decoded typed in one call
        try:
            frame: _KnownEvents = _frame_decoder.decode(data)
        except msgspec.ValidationError:
            pass  # it holds an event kind this client does not know: event by event
        else:
            return frame
    try:
        reply: Reply = _reply_decoder.decode(data)
    except msgspec.ValidationError:
        head: _AnyReply = _any_reply.decode(data)
        return head
    return reply


def new_id() -> str:
    """A fresh idempotency id (22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


class Client:
    """One connection to a relay that reconnects, rejoins with ``since`` and retries gifts.

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

    async def __aenter__(self) -> Client:
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
                hello = _reply_decoder.decode(first)
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
                    await self.join(stream, since)
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
            message = _decode_frame(data)
        except RecursionError:
            # msgspec decodes recursively: a frame nested about 1,000 deep cannot be read.
            # Dropped like any undecodable frame, and the connection stays open.
            log.warning("giftrelay client dropped a frame nested too deeply to decode")
            return
        if isinstance(message, _KnownEvents):
            await self._deliver(message.stream, list(message.events))
            return
        if isinstance(message, _AnyReply):  # a reply type added after this client
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
            raise RelayError(reply.code, reply.message, reply.id)
        if not isinstance(reply, expect):
            raise RelayError("unexpected_reply", f"expected {expect.__name__}, got {reply!r}")
        return reply

    async def join(self, stream: str, since: str | None = None) -> Joined:
        """Join a stream; events missed since ``since`` are delivered first, in order."""
        return await self.request(protocol.Join(stream=stream, since=since), Joined)

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

    async def leave(self, stream: str) -> None:
        self.streams.pop(stream, None)
        self._last.pop(stream, None)
        await self.request(protocol.Leave(stream=stream), protocol.Left)

    async def gift(
        self,
        stream: str,
        gift: str,
        count: int = 1,
        *,
        id: str | None = None,
        retry_for: float = 30.0,
        on_retry: Callable[[Exception], None] | None = None,
    ) -> GiftOk:
        """Send a gift; on ``unavailable`` or a dropped connection, retry with the same id.

        Either may leave the gift applied or not: ``unavailable`` means the relay could
        not learn the outcome in time, not that nothing moved. Retrying is safe because
        the relay applies an id once and answers a repeat with the first ``gift_ok``, so
        the reply that ends the retries is the gift's one outcome. After ``retry_for``
        seconds it gives up, raising the last ``unavailable`` or disconnection: the
        gift's outcome is then still unknown (pass the same ``id`` to learn it later).
        ``on_retry`` is told why before each retry (to show "reconnecting..." say).
        """
        message = protocol.Gift(stream=stream, gift=gift, count=count, id=id or new_id())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        delay = self.backoff[0]
        while True:
            try:
                if not self._connected.is_set():
                    await self.wait_connected(max(0.0, deadline - loop.time()))
                return await self.request(message, GiftOk)
            except RelayError as exc:
                if exc.code != "unavailable" or loop.time() + delay > deadline:
                    raise
                reason: Exception = exc
            except (Disconnected, TimeoutError) as exc:
                if loop.time() + delay > deadline or self._failure is not None:
                    raise
                reason = exc
            self.gift_retries += 1
            if on_retry is not None:
                on_retry(reason)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(self.backoff[1], delay * 2)

    async def balance(self) -> Balance:
        return await self.request(protocol.BalanceRequest(), Balance)

    async def ping(self) -> None:
        await self.request(protocol.Ping(), protocol.Pong)

    async def topup(self, user: str, coins: int, id: str) -> TopupOk:
        """Admin: credit coins; ``id`` is the payment receipt (idempotent)."""
        return await self.request(protocol.Topup(user=user, coins=coins, id=id), TopupOk)

    async def stream_open(self, stream: str, title: str, creator: str | None = None) -> StreamOk:
        """Creator (own stream) or admin (naming the ``creator``): open a live stream."""
        message = protocol.StreamOpen(stream=stream, title=title, creator=creator)
        return await self.request(message, StreamOk)

    async def stream_close(self, stream: str) -> StreamOk:
        return await self.request(protocol.StreamClose(stream=stream), StreamOk)
