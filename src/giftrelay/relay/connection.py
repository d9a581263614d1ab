"""One WebSocket connection's I/O: frames in to its session, steps out to Redis and the socket.

The session (:mod:`giftrelay.relay.session`) decides; this loop does what it says.
Gifts run concurrently (bounded per connection) so one connection can keep many in
flight; everything else is answered in order. Every request gets ``request_timeout``
to be answered; past it the reply is ``unavailable`` (a retry with the same id is safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from giftrelay import metrics
from giftrelay.relay.requests import HANDLERS, Context
from giftrelay.relay.session import SHUTTING_DOWN, Answer, Close, Perform, Session
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable

if TYPE_CHECKING:
    from giftrelay.relay.requests import Relay

log = structlog.get_logger(__name__)

TIMED_OUT = Unavailable(
    "Redis did not answer in time; the request may or may not have taken effect:"
    " retry with the same id"
)


class Connection:
    """Drives one session over its socket."""

    __slots__ = ("busy", "context", "idle", "inflight", "session", "slots")

    def __init__(self, relay: Relay, conn: ServerConnection, session: Session) -> None:
        self.session = session
        self.context = Context(relay, conn, session)
        self.busy = 0
        """Requests being handled (shutdown waits for them)."""
        self.idle: asyncio.Event | None = None
        # Made on the first gift: most connections only watch.
        self.inflight: set[asyncio.Task[None]] | None = None
        self.slots: asyncio.Semaphore | None = None

    @property
    def conn(self) -> ServerConnection:
        return self.context.conn

    async def run(self) -> None:
        relay, conn, session = self.context.relay, self.context.conn, self.session
        await self.send(session.hello())
        try:
            async for data in conn:
                step = session.receive(data, time.monotonic(), stopping=relay.stopping)
                if type(step) is Perform:
                    if type(step.message) is protocol.Gift:
                        await self._gift(step)
                    else:
                        self._working(+1)
                        try:
                            await self.perform(step)
                        finally:
                            self._working(-1)
                elif type(step) is Answer:
                    await self.send(step.reply)
                elif type(step) is Close:
                    await conn.close(step.code, step.reason)
        except ConnectionClosed:
            pass
        finally:
            for stream in session.streams:
                relay.fanout.leave(conn, stream)
            session.streams.clear()

    async def finish(self) -> None:
        """Let every request in flight get its answer (shutdown: new ones are refused)."""
        while self.busy:
            self.idle = asyncio.Event()
            await self.idle.wait()

    def _working(self, n: int) -> None:
        self.busy += n
        if not self.busy and self.idle is not None:
            self.idle.set()

    async def send(self, reply: protocol.Reply) -> None:
        session = self.session
        session.messages_out += 1
        if type(reply) is protocol.Error:
            metrics.ERRORS.labels(reply.code).inc()
        codec = session.codec
        with contextlib.suppress(ConnectionClosed):
            await self.context.conn.send(codec.encode(reply), text=not codec.binary)

    async def _gift(self, step: Perform) -> None:
        """Start the gift and return: the next frame is read while it runs."""
        if self.slots is None or self.inflight is None:
            settings = self.context.relay.settings
            self.slots = asyncio.Semaphore(settings.max_inflight_per_connection)
            self.inflight = set()
        self._working(+1)
        try:
            await self.slots.acquire()
            if self.context.relay.stopping:  # began while this gift waited for a slot
                self.slots.release()
                await self.send(self.session.refusal(step.message, SHUTTING_DOWN))
                return
            task = asyncio.create_task(self._gift_task(step, self.slots))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
            self.busy += 1  # until the task is done
        finally:
            self._working(-1)

    async def _gift_task(self, step: Perform, slots: asyncio.Semaphore) -> None:
        try:
            started = time.perf_counter()
            await self.perform(step)
            metrics.SCRIPT_SECONDS.observe(time.perf_counter() - started)
        finally:
            slots.release()
            self._working(-1)

    async def perform(self, step: Perform) -> None:
        """Run one request and send its reply, or its error."""
        message = step.message
        try:
            async with asyncio.timeout(self.context.relay.settings.request_timeout):
                reply = await HANDLERS[type(message)](self.context, step)
        except TimeoutError:
            await self._refused(message, TIMED_OUT)
            return
        except Refused as exc:
            await self._refused(message, exc)
            return
        except Exception:
            log.exception("request failed", type=type(message).__name__)
            await self.send(self.session.refusal(message, Refused(Code.INTERNAL)))
            return
        if reply is not None:
            await self.send(reply)

    async def _refused(self, message: protocol.ClientMessage, exc: Refused) -> None:
        if type(message) is protocol.Gift:
            metrics.GIFTS.labels(exc.code.value).inc()
        await self.send(self.session.refusal(message, exc))
