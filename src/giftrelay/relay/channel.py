"""The worker's event channel: one pub/sub connection to Redis, kept alive.

It subscribes to streams' channels and says when Redis has confirmed each
subscription; it proves the connection alive with a PING every few seconds (a
connection that went quiet without closing counts as lost); and when the
connection is lost it reconnects, with back-off, and hands the fan-out a fresh
connection to resubscribe its rooms on (``on_connected``), so that it can fill
their gaps from the history. Messages go to ``on_message`` in the order Redis
sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import metrics
from giftrelay.redis_client import connect
from giftrelay.relay.room import as_text
from giftrelay.wire.errors import Unavailable

log = structlog.get_logger(__name__)

LIVENESS_PING = 5.0
"""Seconds between PINGs on the pub/sub connection; three without an answer: lost."""


class Channel:
    def __init__(
        self,
        url: str,
        on_message: Callable[[dict[str, Any]], None],
        on_connected: Callable[[], Awaitable[None]],
    ) -> None:
        # No retries inside redis-py: a lost connection must reach run(), which
        # reconnects and lets the fan-out resubscribe and fill its rooms' gaps.
        self.redis = connect(url, timeout=None, decode=False, retries=0, name="giftrelay-events")
        self.on_message = on_message
        self.on_connected = on_connected
        self.pubsub: PubSub | None = None
        self.confirms: dict[str, deque[asyncio.Future[None]]] = {}
        """Per channel, the subscriptions sent and not yet confirmed by Redis."""
        self.connected = asyncio.Event()
        self.log = log

    async def run(self) -> None:
        """Read the pub/sub connection; on a failure, reconnect (and resubscribe)."""
        delay = 0.1
        while True:
            try:
                await self._connect()
                delay = 0.1
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, Unavailable) as exc:
                # Unavailable: resubscribing on the fresh connection failed (it was lost
                # again at once); the next connection resubscribes.
                self._lost(exc)
                if not await self._after_loss():
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def aclose(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.aclose()
        await self.redis.aclose()

    async def subscribe(self, channels: list[str]) -> None:
        """Send the subscriptions; :meth:`subscribed` waits for Redis's confirmation."""
        pubsub = self.pubsub
        if pubsub is None or not self.connected.is_set():
            raise Unavailable("the event channel is reconnecting to Redis")
        loop = asyncio.get_running_loop()
        for channel in channels:
            self.confirms.setdefault(channel, deque()).append(loop.create_future())
        try:
            await pubsub.ssubscribe(*channels)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable("Redis is unavailable") from exc

    async def subscribed(self, channel: str) -> None:
        """Wait until this worker receives ``channel`` (subscribing if need be)."""
        if channel in self.confirms and not self.confirms[channel]:
            return  # subscribed and confirmed
        if channel not in self.confirms:
            await self.subscribe([channel])
        waiters = self.confirms.get(channel)
        if waiters:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(waiters[-1])
            except TimeoutError:
                raise Unavailable("Redis did not confirm the subscription") from None

    def confirmation(self, channel: str) -> asyncio.Future[None]:
        """The latest subscription of ``channel`` sent, to await its confirmation."""
        return self.confirms[channel][-1]

    async def unsubscribe(self, channels: list[str]) -> None:
        for channel in channels:
            self.confirms.pop(channel, None)
        if self.pubsub is not None and self.connected.is_set():
            await self.pubsub.sunsubscribe(*channels)

    async def _connect(self) -> None:
        """A fresh pub/sub connection; the fan-out resubscribes its rooms on it."""
        if self.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.aclose()
        self.pubsub = self.redis.pubsub()
        await self.pubsub.connect()  # type: ignore[no-untyped-call]
        self.connected.set()
        await self.on_connected()

    async def _listen(self) -> None:
        """Messages until the connection fails. A PING every few seconds proves it alive:
        a connection that went quiet without closing (a dead peer) counts as lost."""
        pubsub = self.pubsub
        assert pubsub is not None
        heard = pinged = time.monotonic()
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except ResponseError as exc:  # an error reply to a command: Redis is there
                self._refused(exc)
                message = {"type": "error"}
            now = time.monotonic()
            if message is not None:
                heard = now
                kind = message["type"]
                if kind == "smessage":
                    self.on_message(message)
                elif kind == "ssubscribe":
                    self._confirm(as_text(message["channel"]))
                elif kind == "sunsubscribe":
                    self._unsubscribed(as_text(message["channel"]))
            if now - pinged >= LIVENESS_PING:
                pinged = now
                await pubsub.ping()
            if now - heard > 3 * LIVENESS_PING:
                raise RedisConnectionError("no answer from Redis on the event channel")

    def _refused(self, exc: ResponseError) -> None:
        """Redis answered a command on this connection with an error: on one Redis, a
        subscription it refused, so reconnect (raise) and resubscribe."""
        raise exc

    def _unsubscribed(self, channel: str) -> None:
        """Redis confirmed an unsubscription; on one Redis only ever one asked for."""

    async def _after_loss(self) -> bool:
        """After a loss, before the back-off: whether to connect again (always, here)."""
        return True

    def _confirm(self, channel: str) -> None:
        waiters = self.confirms.get(channel)
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                break
        metrics.REDIS_UP.set(1)

    def _lost(self, exc: BaseException) -> None:
        if self.connected.is_set():
            self.log.warning("event channel lost; reconnecting", error=str(exc))
        self.connected.clear()
        metrics.REDIS_UP.set(0)
        for waiters in self.confirms.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(Unavailable("the event channel lost Redis"))
        self.confirms.clear()
