"""One WebSocket connection's I/O: frames in to its session, steps out to Redis and the socket.

The session (:mod:`giftrelay.relay.session`) decides; this loop does what it says.
Gifts run concurrently (bounded per connection) so one connection can keep many in
flight; everything else is answered in order. Every request gets ``request_timeout``
to be answered; past it the reply is ``unavailable`` (a retry with the same id is safe).

A gift is the hot path, and costs no task and no timer of its own: its script call
joins the next pipeline at once (:meth:`Money.gift_soon`) and its future calls back;
one timer per connection watches the oldest deadline. Replies are framed here and
written together once per turn of the event loop, so a pipeline's worth of answers to
one connection is one write, not one system call each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from giftrelay import metrics
from giftrelay.relay.compression import MIN_BYTES
from giftrelay.relay.inbox import DirectConnection
from giftrelay.relay.requests import HANDLERS, Context
from giftrelay.relay.session import SHUTTING_DOWN, Answer, Close, Perform, Session, Step
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable

if TYPE_CHECKING:
    from giftrelay.relay.requests import Relay

log = structlog.get_logger(__name__)

TIMED_OUT = Unavailable(
    "Redis did not answer in time; the request may or may not have taken effect:"
    " retry with the same id"
)
OPEN = State.OPEN

QUEUE_LIMIT = 16
"""Steps queued for a connection's task past which its socket is not read."""

_tasks: set[asyncio.Task[None]] = set()
"""Tasks of our own (gifts the long way, waits for a drain), kept from the collector."""


def frame_header(size: int, *, binary: bool) -> bytes:
    """An unmasked, unfragmented, uncompressed frame's header (RFC 6455 5.2)."""
    first = 0x82 if binary else 0x81
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return bytes((first, 126)) + size.to_bytes(2, "big")
    return bytes((first, 127)) + size.to_bytes(8, "big")


class _Gift:
    """A gift in flight on the fast path; answered once, by its reply or its deadline."""

    __slots__ = ("answered", "deadline", "started", "step")

    def __init__(self, step: Perform, started: float, deadline: float) -> None:
        self.step = step
        self.started = started
        self.deadline = deadline
        self.answered = False


class Connection:
    """Drives one session over its socket."""

    __slots__ = (
        "busy",
        "context",
        "gifts",
        "idle",
        "inflight",
        "limit",
        "out",
        "paused_for",
        "performing",
        "queue",
        "session",
        "slot_free",
        "timer",
        "wakeup",
    )

    def __init__(self, relay: Relay, conn: ServerConnection, session: Session) -> None:
        self.session = session
        self.context = Context(relay, conn, session)
        self.limit = relay.settings.max_inflight_per_connection
        self.busy = 0
        """Requests received and not answered yet (shutdown waits for them)."""
        self.idle: asyncio.Event | None = None
        self.out: list[bytes] | None = None
        """Frames to write at the end of this turn of the loop."""
        self.queue: list[Step] = []  # at most QUEUE_LIMIT-ish: a list is smaller than a deque
        """Steps for the connection's task, in order: requests that need it, and whatever
        came after them (so that nothing overtakes a request still being answered)."""
        self.performing = False
        self.wakeup: asyncio.Future[None] | None = None
        self.paused_for: tuple[str, ...] = ()
        """Why reading from the socket is paused now; read again when empty. (A tuple:
        the empty one costs a connection nothing, and a relay holds tens of thousands.)"""
        self.inflight = 0
        """Gifts sent and not answered (at most ``max_inflight_per_connection``)."""
        self.slot_free: asyncio.Future[None] | None = None
        # Made on the first gift: most connections only watch.
        self.gifts: collections.deque[_Gift] | None = None
        self.timer: asyncio.TimerHandle | None = None
        if isinstance(conn, DirectConnection):
            conn.on_message = self.on_message

    @property
    def conn(self) -> ServerConnection:
        return self.context.conn

    def on_message(self, data: str | bytes) -> None:
        """One message from the client, as soon as it is parsed: answered, or its gift
        sent, at once when nothing is ahead of it; else queued for the task, in order."""
        relay = self.context.relay
        step = self.session.receive(data, time.monotonic(), stopping=relay.stopping)
        if step is None:
            return
        if self.queue or self.performing:
            self._enqueue(step)
        elif type(step) is Answer:
            self.write(step.reply)
        elif type(step) is Perform and type(step.message) is protocol.Gift:
            if self.inflight < self.limit:
                self._gift(step)
            else:
                self._enqueue(step)  # the task waits for a slot
        else:
            self._enqueue(step)

    def _enqueue(self, step: Step) -> None:
        if type(step) is Perform:
            self._working(+1)
        self.queue.append(step)
        if len(self.queue) >= QUEUE_LIMIT:
            self._pause("queue")
        wakeup = self.wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def run(self) -> None:
        relay, conn, session = self.context.relay, self.context.conn, self.session
        self.write(session.hello())
        closed = conn.connection_lost_waiter
        closed.add_done_callback(self._closed)
        try:
            if not isinstance(conn, DirectConnection):  # pragma: no cover - not served so
                raise TypeError("the relay serves DirectConnection")
            while not closed.done():
                if not self.queue:
                    self.wakeup = conn.loop.create_future()
                    await self.wakeup
                    continue
                step = self.queue.pop(0)
                if len(self.queue) < QUEUE_LIMIT:
                    self._resume("queue")
                if type(step) is Perform:
                    await self._step(step)
                elif type(step) is Answer:
                    self.write(step.reply)
                elif type(step) is Close:
                    await conn.close(step.code, step.reason)
        except ConnectionClosed:
            pass
        finally:
            closed.remove_done_callback(self._closed)
            for stream in session.streams:
                relay.fanout.leave(conn, stream)
            session.streams.clear()
            if self.timer is not None:
                self.timer.cancel()
            if self.queue:  # received, never to be answered: nobody is waiting any more
                self._working(-sum(type(s) is Perform for s in self.queue))
                self.queue.clear()

    def _closed(self, _: asyncio.Future[None]) -> None:
        wakeup = self.wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _step(self, step: Perform) -> None:
        """A queued request: a gift waits for a slot; anything else is answered first."""
        if type(step.message) is protocol.Gift:
            self.performing = True  # what comes next waits behind it, as behind any request
            try:
                if self.inflight >= self.limit:
                    await self._slot()
            finally:
                self.performing = False
                self._working(-1)  # _gift counts it again while it is in flight
            self._gift(step)
            return
        self.performing = True
        self._flush()  # what came before goes first (a join writes its own)
        try:
            await self.perform(step)
        finally:
            self.performing = False
            self._working(-1)

    async def finish(self) -> None:
        """Let every request in flight get its answer (shutdown: new ones are refused)."""
        while self.busy:
            self.idle = asyncio.Event()
            await self.idle.wait()

    def _working(self, n: int) -> None:
        self.busy += n
        if not self.busy and self.idle is not None:
            self.idle.set()

    def _pause(self, why: str) -> None:
        """Stop reading the client's frames (it asks faster than it is answered)."""
        if why in self.paused_for:
            return
        if not self.paused_for:
            self.context.conn.transport.pause_reading()
        self.paused_for += (why,)

    def _resume(self, why: str) -> None:
        if why in self.paused_for:
            self.paused_for = tuple(r for r in self.paused_for if r != why)
            if not self.paused_for:
                transport = self.context.conn.transport
                if not transport.is_closing():
                    transport.resume_reading()

    # -- replies out ------------------------------------------------------------------------

    def write(self, reply: protocol.Reply) -> None:
        """Frame ``reply`` now; it goes out with the others of this turn of the loop."""
        session = self.session
        session.messages_out += 1
        if type(reply) is protocol.Error:
            metrics.ERRORS.labels(reply.code).inc()
        conn = self.context.conn
        ws = conn.protocol
        if ws.state is not OPEN:
            return  # closing: the reply has nowhere to go
        codec = session.codec
        data = codec.encode(reply)
        if ws.extensions and len(data) >= MIN_BYTES:
            # Compressed as the connection agreed: websockets frames it, into our queue.
            if codec.binary:
                ws.send_binary(data)
            else:
                ws.send_text(data)
            frames = ws.data_to_send()
        else:
            frames = [frame_header(len(data), binary=codec.binary), data]
        if self.out is None:
            self.out = frames
            conn.loop.call_soon(self._flush)
        else:
            self.out += frames

    def _flush(self) -> None:
        out, self.out = self.out, None
        conn = self.context.conn
        if conn.protocol.state is not OPEN or not out:
            return  # closing: what was not written is not wanted
        try:
            conn.transport.write(b"".join(out))
        except Exception as exc:  # a transport closing under us: its connection ends anyway
            log.debug("reply write failed", error=repr(exc))
            return
        if conn.paused and "writes" not in self.paused_for:
            # The client does not read its answers: stop reading its requests until it does.
            self._pause("writes")
            task = conn.loop.create_task(self._drained())
            _tasks.add(task)
            task.add_done_callback(_tasks.discard)

    async def _drained(self) -> None:
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.context.conn.drain()
        self._resume("writes")

    # -- gifts --------------------------------------------------------------------------------

    async def _slot(self) -> None:
        """Wait until a gift in flight is answered (the connection has its fill)."""
        while self.inflight >= self.limit:
            self.slot_free = asyncio.get_running_loop().create_future()
            await self.slot_free

    def _gift(self, step: Perform) -> None:
        """Send the gift's script call and return: the next frame is read while it runs."""
        relay = self.context.relay
        if relay.stopping:  # began while this gift waited for a slot
            self.write(self.session.refusal(step.message, SHUTTING_DOWN))
            return
        m = step.message
        assert type(m) is protocol.Gift
        try:
            future = relay.money.gift_soon(
                step.user, m.stream, m.gift, m.count, m.id, m.confirm is True
            )
        except Refused as exc:
            self._refused(m, exc)
            return
        if future is None:  # the stream's creator is not known here yet: the long way
            self._perform_soon(step)
            return
        now = time.monotonic()
        gift = _Gift(step, time.perf_counter(), now + relay.settings.request_timeout)
        self._began()
        future.add_done_callback(partial(self._gift_done, gift))
        gifts = self.gifts
        if gifts is None:
            gifts = self.gifts = collections.deque()
        gifts.append(gift)
        if self.inflight >= self.limit:
            self._pause("inflight")
        if self.timer is None:
            self.timer = self.context.conn.loop.call_at(gift.deadline, self._expire)

    def _gift_done(self, gift: _Gift, future: asyncio.Future[Any]) -> None:
        if gift.answered:
            return  # timed out before
        gift.answered = True
        gifts = self.gifts
        while gifts and gifts[0].answered:  # the deadline watch needs only the unanswered
            gifts.popleft()
        m = gift.step.message
        assert type(m) is protocol.Gift
        try:
            receipt = self.context.relay.money.gift_receipt(future.result(), m.stream, m.id)
        except Refused as exc:
            self._refused(m, exc)
        except asyncio.CancelledError:
            self._refused(m, TIMED_OUT)
        except Exception:
            log.exception("request failed", type="Gift")
            self.write(self.session.refusal(m, Refused(Code.INTERNAL)))
        else:
            if receipt is None:  # the stream changed creator: the long way, which reads it
                self._perform_soon(gift.step)
            else:
                (metrics.GIFTS_REPLAYED if receipt.replayed else metrics.GIFTS_OK).inc()
                metrics.SCRIPT_SECONDS.observe(time.perf_counter() - gift.started)
                self.write(receipt.reply(m.ref))
        self._ended()

    def _expire(self) -> None:
        """Answer ``unavailable`` to every gift past its deadline; watch the next one."""
        self.timer = None
        gifts = self.gifts
        if not gifts:
            return
        now = time.monotonic()
        while gifts and (gifts[0].answered or gifts[0].deadline <= now):
            gift = gifts.popleft()
            if not gift.answered:
                gift.answered = True
                self._refused(gift.step.message, TIMED_OUT)
                self._ended()
        if gifts:
            self.timer = self.context.conn.loop.call_at(gifts[0].deadline, self._expire)

    def _began(self) -> None:
        self.inflight += 1
        self._working(+1)

    def _ended(self) -> None:
        self.inflight -= 1
        self._working(-1)
        if self.inflight < self.limit:
            self._resume("inflight")
        waiter = self.slot_free
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _perform_soon(self, step: Perform) -> None:
        """The gift the long way, in a task of its own (rare: a stream new to this worker)."""
        self._began()
        task = asyncio.create_task(self.perform(step))
        _tasks.add(task)
        task.add_done_callback(self._performed)

    def _performed(self, task: asyncio.Task[None]) -> None:
        _tasks.discard(task)
        self._ended()

    # -- everything else, in order ------------------------------------------------------------

    async def perform(self, step: Perform) -> None:
        """Run one request and write its reply, or its error."""
        message = step.message
        try:
            async with asyncio.timeout(self.context.relay.settings.request_timeout):
                reply = await HANDLERS[type(message)](self.context, step)
        except TimeoutError:
            self._refused(message, TIMED_OUT)
            return
        except Refused as exc:
            self._refused(message, exc)
            return
        except Exception:
            log.exception("request failed", type=type(message).__name__)
            self.write(self.session.refusal(message, Refused(Code.INTERNAL)))
            return
        if reply is not None:
            self.write(reply)

    def _refused(self, message: protocol.ClientMessage, exc: Refused) -> None:
        if type(message) is protocol.Gift:
            metrics.GIFTS.labels(exc.code.value).inc()
        self.write(self.session.refusal(message, exc))
