"""Fan-out: every event of a stream to every viewer of it on this worker, once, in order.

A worker subscribes to a stream's channel only while it holds a viewer of it.
Events are buffered per stream (a :class:`Room`) and flushed every tick as one
``events`` frame, encoded and framed once and written to every viewer
(:mod:`giftrelay.broadcast`). The tick grows when flushing gets expensive, so a busy
worker sends fewer, fuller frames instead of queueing.

Ordering and exactly-once rest on offsets: Redis publishes a stream's events in
offset order, and a room drops anything at or below the last offset it has seen.
A join reads the history and the snapshot in one MULTI that also publishes a
marker on the stream's channel. Everything before the marker on the channel is
covered by what the join read; everything after it is new. The viewer enters the
room once its marker has come through, in the same synchronous step as its
``joined`` reply, so no event falls between the reply and what follows it, and
none arrives twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

import msgspec
import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from giftrelay import keys, metrics, protocol
from giftrelay.broadcast import send_all
from giftrelay.catalog import Catalog
from giftrelay.errors import Code, Refused, Unavailable
from giftrelay.money import Money, StreamInfo
from giftrelay.redis_client import connect

log = structlog.get_logger(__name__)

ZERO = (0, 0)
SLOW_CLOSE_REASON = "too slow a reader: rejoin with since"
GAP_CLOSE_REASON = "events may have been missed: rejoin with since"
FLUSH_SHARE = 0.8
"""Under load, the largest share of a worker's time that flushing may take."""
FLUSH_PAUSE = (1 - FLUSH_SHARE) / FLUSH_SHARE
LIVENESS_PING = 5.0
"""Seconds between PINGs on the pub/sub connection; three without an answer: lost."""


class _Head(msgspec.Struct):
    """The parts of a published event the fan-out itself needs."""

    kind: str
    offset: str = ""
    ts: int = 0
    sender: str = msgspec.field(name="from", default="")
    gift: str = ""
    count: int = 0
    coins: int = 0
    combo: int = 0
    combo_id: str = ""
    test: bool = False
    before: int = 0
    """``revoke_overlays``: overlay tokens issued before this (ms) are revoked."""
    token: str = ""
    """``sync``: the marker a join published."""


_head = msgspec.json.Decoder(_Head)


class _Gap(NamedTuple):
    """What a room missed while its channel was down."""

    entries: list[tuple[str, dict[str, str]]] | None
    """The history after the room's last offset; None when it no longer reaches back."""
    revoked_before: int
    """The stream's stored overlay revocation time (ms); 0 when never revoked."""


class _Combo(msgspec.Struct):
    deadline: int
    stream: str
    event: protocol.ComboEndEvent


class _Join:
    """A viewer on its way into a room: what it read, and what came after its marker."""

    __slots__ = ("after", "codec", "conn", "counted", "done", "marked", "reply")

    def __init__(self, conn: ServerConnection, counted: bool, codec: protocol.Codec) -> None:
        self.conn = conn
        self.counted = counted
        self.codec = codec
        self.marked = False
        """Its marker came through the channel: events from now on are newer than its read."""
        self.after: list[msgspec.Raw] = []
        self.reply: tuple[protocol.Joined, str] | None = None
        """The reply without the events after the marker, and the marker's offset."""
        self.done: asyncio.Future[protocol.Joined] = asyncio.get_running_loop().create_future()


class Room:
    """One stream on this worker: its viewers, and events waiting for the next tick."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.viewers: set[ServerConnection] = set()
        self.uncounted: set[ServerConnection] = set()
        """Viewers that are overlays: they watch for a broadcast, not as an audience."""
        self.binary: set[ServerConnection] = set()
        """Viewers that speak MessagePack."""
        self.joining = 0
        self.joins: dict[str, _Join] = {}
        self.pending: list[msgspec.Raw] = []
        self.last = ZERO
        self.last_offset = "0-0"
        self.held: list[tuple[bytes, _Head]] | None = None
        """While a gap is filled after a reconnect: live messages, held back in order."""
        self.filling: asyncio.Task[None] | None = None
        self.combos: dict[str, _Combo] = {}
        self.top_dirty = False
        self.top: list[protocol.TopEntry] | None = None
        self.viewers_total = -1
        self.beat_count = -1
        self.beat_at = 0.0
        self.empty_since: float | None = None
        self.revoked_before = 0
        """The latest overlay revocation (ms) applied to this room's overlays."""

    @property
    def channel(self) -> str:
        return keys.channel(self.stream)

    @property
    def audience(self) -> int:
        return len(self.viewers) - len(self.uncounted)

    def accept(self, offset: str, raw: msgspec.Raw) -> bool:
        """Queue a stored event unless this room has already seen its offset."""
        key = protocol.parse_offset(offset)
        if key <= self.last:
            return False
        self.last, self.last_offset = key, offset
        self.pending.append(raw)
        for join in self.joins.values():
            if join.marked:
                join.after.append(raw)
        return True

    def add_live(self, event: protocol.LiveEvent) -> None:
        """Queue an event that is not stored (viewers, top, combo_end)."""
        self.pending.append(protocol.encode_event(event))

    def discard(self, conn: ServerConnection) -> None:
        self.viewers.discard(conn)
        self.uncounted.discard(conn)
        self.binary.discard(conn)


class Fanout:
    """The worker's rooms, its pub/sub connection and the tick that flushes them."""

    def __init__(
        self,
        url: str,
        money: Money,
        catalog: Catalog,
        *,
        tick: float = 0.025,
        max_tick: float = 0.25,
        combo_window_ms: int = 3000,
        write_buffer_limit: int = 1 << 20,
        heartbeat_ttl_ms: int = 6000,
        history_limit: int = 5000,
        linger: float = 5.0,
        on_revoke: Callable[[str, int], None] | None = None,
        drop_hook: Callable[[str, bytes], bool] | None = None,
    ) -> None:
        self.url = url
        self.money = money
        self.catalog = catalog
        self.tick = tick
        self.max_tick = max(max_tick, tick)
        self.combo_window_ms = combo_window_ms
        self.write_buffer_limit = write_buffer_limit
        self.heartbeat_ttl_ms = heartbeat_ttl_ms
        self.history_limit = history_limit
        self.linger = linger
        self.on_revoke = on_revoke
        self.drop_hook = drop_hook
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.rooms: dict[str, Room] = {}
        self.dirty: set[Room] = set()
        self.combo_heap: list[tuple[int, str, str]] = []
        # No retries inside redis-py: a lost connection must reach _read(), which
        # resubscribes and fills the gap from the history.
        self.redis = connect(url, timeout=None, decode=False, retries=0, name="giftrelay-events")
        self.pubsub: PubSub | None = None
        self.confirms: dict[str, deque[asyncio.Future[None]]] = {}
        self.connected = asyncio.Event()
        self.current_tick = tick
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.stats_slow_closes = 0
        self.join_reads = asyncio.Semaphore(64)
        """Joins reading at once: a reconnect storm queues here, not on Redis's connections."""
        self.wake = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read(), name="fanout-read"),
            asyncio.create_task(self._flush_loop(), name="fanout-flush"),
            asyncio.create_task(self._beat_loop(), name="fanout-beat"),
        ]
        # Ready means the event channel is up; give it a moment (Redis may be down:
        # then the relay starts anyway, not ready, and connects when it can).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.connected.wait()

    async def aclose(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.flush_all()
        for room in self.rooms.values():
            if room.filling is not None:
                room.filling.cancel()
        with contextlib.suppress(RedisError, OSError):
            for room in self.rooms.values():
                await self.money.viewers_heartbeat(room.stream, self.worker, 0, 1)
        if self.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.aclose()
        await self.redis.aclose()

    # -- joining and leaving ---------------------------------------------------------------

    async def join(
        self,
        conn: ServerConnection,
        stream: str,
        since: str | None,
        ref: str | None,
        *,
        counted: bool = True,
        issued_ms: int | None = None,
        codec: protocol.Codec = protocol.JSON_CODEC,
    ) -> protocol.Joined:
        """Subscribe if need be, read what the viewer needs, and add it to the room.

        The returned ``joined`` reply has already been written to the connection:
        it had to be, in the same step as entering the room. ``counted`` is False
        for overlays (not part of the audience); ``issued_ms`` is an overlay
        token's issue time, refused if the stream's overlays were revoked since.
        """
        room = self.rooms.get(stream)
        if room is None:
            if not await self._exists(stream):
                raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
            room = self.rooms.get(stream) or self.rooms.setdefault(stream, Room(stream))
        room.joining += 1
        room.empty_since = None
        token = secrets.token_hex(8)
        join = _Join(conn, counted, codec)
        try:
            await self._subscribed(room)
            room.joins[token] = join
            join.reply = await self._read_join(room, token, since, ref, issued_ms)
            if join.marked:
                self._complete(room, join)
            return await asyncio.shield(join.done)
        finally:
            room.joining -= 1
            if room.joins.pop(token, None) is not None:  # not completed: failed or timed out
                self._discard_if_empty(room)

    def _complete(self, room: Room, join: _Join) -> None:
        """The viewer enters the room: synchronous, so no event can fall in between."""
        assert join.reply is not None
        reply, mark = join.reply
        for token, candidate in list(room.joins.items()):
            if candidate is join:
                del room.joins[token]
        # Everything before the marker reached this worker and is covered by the read.
        key = protocol.parse_offset(mark)
        if key > room.last:
            room.last, room.last_offset = key, mark
        self.flush_room(room)  # what is pending goes to the viewers already there
        if join.after:
            reply = msgspec.structs.replace(
                reply, missed=[*reply.missed, *join.after], offset=_offset_of(join.after[-1])
            )
        binary = join.codec.binary
        broadcast([join.conn], join.codec.encode(reply), text=not binary)
        room.viewers.add(join.conn)
        if not join.counted:
            room.uncounted.add(join.conn)
        if binary:
            room.binary.add(join.conn)
        metrics.JOINS.inc()
        join.done.set_result(reply)

    def leave(self, conn: ServerConnection, stream: str) -> bool:
        room = self.rooms.get(stream)
        if room is None or conn not in room.viewers:
            return False
        room.discard(conn)
        self._discard_if_empty(room)
        return True

    def _discard_if_empty(self, room: Room) -> None:
        if not room.viewers and not room.joining and room.empty_since is None:
            room.empty_since = time.monotonic()

    async def _subscribed(self, room: Room) -> None:
        """Wait until this worker receives the room's channel (subscribing if need be)."""
        if room.channel in self.confirms and not self.confirms[room.channel]:
            return  # subscribed and confirmed
        if room.channel not in self.confirms:
            await self._subscribe([room])
        waiters = self.confirms.get(room.channel)
        if waiters:
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(waiters[-1])
            except TimeoutError:
                raise Unavailable("Redis did not confirm the subscription") from None

    async def _subscribe(self, rooms: list[Room]) -> None:
        pubsub = self.pubsub
        if pubsub is None or not self.connected.is_set():
            raise Unavailable("the event channel is reconnecting to Redis")
        loop = asyncio.get_running_loop()
        for room in rooms:
            self.confirms.setdefault(room.channel, deque()).append(loop.create_future())
        try:
            await pubsub.subscribe(*(room.channel for room in rooms))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable("Redis is unavailable") from exc

    async def _exists(self, stream: str) -> bool:
        try:
            return bool(await self.money.redis.exists(keys.stream(stream)))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable() from exc

    async def _read_join(
        self, room: Room, token: str, since: str | None, ref: str | None, issued_ms: int | None
    ) -> tuple[protocol.Joined, str]:
        """The reply (history after ``since``, snapshot) and its marker's offset.

        One MULTI reads the latest offset, the history and the snapshot, and
        publishes the marker: all at one instant of the stream.
        """
        stream = room.stream
        hist = keys.history(stream)
        marker = msgspec.json.encode({"kind": "sync", "token": token})
        try:
            async with self.join_reads, self.money.redis.pipeline(transaction=True) as pipe:
                pipe.xrevrange(hist, "+", "-", count=1)
                pipe.publish(room.channel, marker)
                pipe.hgetall(keys.stream(stream))
                pipe.zrevrange(keys.top(stream), 0, 9, withscores=True)
                pipe.hgetall(keys.viewers(stream))
                if since is not None:
                    pipe.xrange(hist, f"({since}", "+", count=self.history_limit)
                    pipe.xinfo_stream(hist)
                replies = await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise Unavailable() from exc
        latest_raw, _, info_raw, top_raw, viewers_raw = replies[:5]
        for reply in replies[:5]:
            if isinstance(reply, Exception):
                raise Refused(Code.INTERNAL) from reply
        if not info_raw:
            raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
        if issued_ms is not None and issued_ms < int(info_raw.get("overlay_epoch", 0)):
            raise Refused(Code.UNAUTHORIZED, "this overlay token was revoked")
        latest = latest_raw[0][0] if latest_raw else "0-0"
        info = Money.parse_stream(stream, info_raw)
        snapshot = _snapshot(info, top_raw, _viewers_total(viewers_raw))
        missed: list[msgspec.Raw] = []
        recovered = True
        if since is not None:
            entries, xinfo = replies[5], replies[6]
            if isinstance(entries, Exception):
                raise Refused(Code.BAD_REQUEST, f"since: {entries}") from entries
            recovered = _reaches_back(since, latest, xinfo) and len(entries) < self.history_limit
            if recovered:
                missed = [_with_offset(entry_id, fields) for entry_id, fields in entries]
        reply = protocol.Joined(
            ref=ref,
            stream=stream,
            offset=latest,
            recovered=recovered,
            missed=missed,
            snapshot=snapshot,
        )
        return reply, latest

    # -- reading the channel ---------------------------------------------------------------

    async def _read(self) -> None:
        """Read the pub/sub connection; on a failure, reconnect, resubscribe, fill the gap."""
        delay = 0.1
        while True:
            try:
                await self._connect()
                delay = 0.1
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._disconnected(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _listen(self) -> None:
        """Messages until the connection fails. A PING every few seconds proves it alive:
        a connection that went quiet without closing (a dead peer) counts as lost."""
        pubsub = self.pubsub
        assert pubsub is not None
        heard = pinged = time.monotonic()
        while True:
            message = await pubsub.get_message(timeout=1.0)
            now = time.monotonic()
            if message is not None:
                heard = now
                self._on_message(message)
            if now - pinged >= LIVENESS_PING:
                pinged = now
                await pubsub.ping()
            if now - heard > 3 * LIVENESS_PING:
                raise RedisConnectionError("no answer from Redis on the event channel")

    async def _connect(self) -> None:
        """A fresh pub/sub connection holding every room this worker has."""
        if self.pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.aclose()
        self.pubsub = self.redis.pubsub()
        await self.pubsub.connect()  # type: ignore[no-untyped-call]
        self.connected.set()
        rooms = list(self.rooms.values())
        if rooms:
            for room in rooms:
                room.held = room.held if room.held is not None else []
            await self._subscribe(rooms)
            for room in rooms:
                waiter = self.confirms[room.channel][-1]
                if room.filling is not None:
                    room.filling.cancel()
                room.filling = asyncio.create_task(self._fill_gap(room, waiter))
        log.info("event channel connected", rooms=len(rooms))

    def _disconnected(self, exc: BaseException) -> None:
        if self.connected.is_set():
            log.warning("event channel lost; reconnecting", error=str(exc))
        self.connected.clear()
        metrics.REDIS_UP.set(0)
        for waiters in self.confirms.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(Unavailable("the event channel lost Redis"))
        self.confirms.clear()

    async def _fill_gap(self, room: Room, subscribed: asyncio.Future[None]) -> None:
        """After a reconnect: what the room missed, from its history, before what is held.

        A revocation is not in the history, only published: one stored since the room
        last applied one was missed, and closes the overlays it revokes as the live
        message would. If the history cannot be read or no longer reaches back, the
        room's viewers are closed with 1013: they rejoin with ``since`` rather than
        silently miss events.
        """
        gap: _Gap | None = None
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(subscribed)
            for attempt in range(3):
                try:
                    gap = await self._read_gap(room)
                    break
                except (RedisError, OSError, TimeoutError) as exc:
                    log.warning("could not read a stream's gap", stream=room.stream, error=str(exc))
                    await asyncio.sleep(0.2 * (attempt + 1))
        except (Unavailable, TimeoutError) as exc:
            log.warning(
                "no subscription to fill a stream's gap", stream=room.stream, error=str(exc)
            )
        finally:
            room.filling = None
        held, room.held = room.held or [], None
        if gap is not None and gap.revoked_before > room.revoked_before:
            log.info("overlay revocation missed; applied", stream=room.stream)
            self._revoke(room, gap.revoked_before)
        entries = None if gap is None else gap.entries
        if entries is None:
            for conn in list(room.viewers):
                self.close_slow(conn, reason=GAP_CLOSE_REASON, count=False)
            return
        for entry_id, fields in entries:
            self._accept(room, entry_id, bytes(_with_offset(entry_id, fields)), None)
        for data, head in held:
            self._dispatch(room, data, head)
        if entries:
            log.info("stream gap filled", stream=room.stream, events=len(entries))

    async def _read_gap(self, room: Room) -> _Gap:
        """The history after the room's last offset, and the stream's revocation time.

        Read after the resubscription was confirmed: a later revocation is published
        to this worker, an earlier one is stored, so none falls in between.
        """
        hist = keys.history(room.stream)
        async with asyncio.timeout(2.0), self.money.redis.pipeline(transaction=True) as pipe:
            pipe.xrange(hist, f"({room.last_offset}", "+", count=self.history_limit)
            pipe.xinfo_stream(hist)
            pipe.hget(keys.stream(room.stream), "overlay_epoch")
            entries, xinfo, epoch = await pipe.execute(raise_on_error=False)
        for reply in (entries, epoch):
            if isinstance(reply, Exception):
                raise reply
        revoked = int(epoch) if isinstance(epoch, str) and epoch.isdigit() else 0
        last = _text(xinfo["last-generated-id"]) if isinstance(xinfo, dict) else "0-0"
        if not _reaches_back(room.last_offset, last, xinfo) and room.last != ZERO:
            return _Gap(None, revoked)
        return _Gap(cast(list[tuple[str, dict[str, str]]], entries), revoked)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            channel = _text(message["channel"])
            room = self.rooms.get(channel[4:-1])  # ev:{stream}
            if room is None:
                return
            data = message["data"]
            head = _head.decode(data)
            if head.kind == "revoke_overlays":
                self._revoke(room, head.before)
                return
            if room.held is not None:
                room.held.append((data, head))
                return
            self._dispatch(room, data, head)
        elif kind == "subscribe":
            waiters = self.confirms.get(_text(message["channel"]))
            while waiters:
                future = waiters.popleft()
                if not future.done():
                    future.set_result(None)
                    break
            metrics.REDIS_UP.set(1)

    def _revoke(self, room: Room, before: int) -> None:
        """Overlay tokens of the room's stream issued before ``before`` (ms) are revoked:
        the relay closes this worker's overlays that hold one."""
        room.revoked_before = max(room.revoked_before, before)
        if self.on_revoke is not None:
            self.on_revoke(room.stream, before)

    def _dispatch(self, room: Room, data: bytes, head: _Head) -> None:
        """A stored event, or a join's marker, in the channel's order."""
        if head.kind == "sync":
            join = room.joins.get(head.token)
            if join is not None and not join.marked:
                join.marked = True
                if join.reply is not None:
                    self._complete(room, join)
            return
        self._accept(room, head.offset, data, head)

    def _accept(self, room: Room, offset: str, data: bytes, head: _Head | None) -> None:
        if self.drop_hook is not None and self.drop_hook(room.stream, data):
            return
        if not room.accept(offset, msgspec.Raw(data)):
            return
        self.dirty.add(room)
        self.wake.set()
        if head is None:
            head = _head.decode(data)
        if head.kind == "gift":
            metrics.EVENT_LAG.observe(max(0.0, time.time() - head.ts / 1000))
            if not head.test:
                room.top_dirty = True
            item = self.catalog.get(head.gift)
            if item is not None and item.streakable and head.count:
                deadline = head.ts + self.combo_window_ms + 50
                price = head.coins // head.count
                room.combos[head.combo_id] = _Combo(
                    deadline=deadline,
                    stream=room.stream,
                    event=protocol.ComboEndEvent(
                        offset="",
                        ts=0,
                        combo_id=head.combo_id,
                        sender=head.sender,
                        gift=head.gift,
                        total=head.combo,
                        coins=head.combo * price,
                        test=head.test,
                    ),
                )
                heapq.heappush(self.combo_heap, (deadline, room.stream, head.combo_id))

    # -- flushing --------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self._end_combos()
                self.flush_all()
            except Exception:
                log.exception("fan-out flush failed")
            if self.tick == 0:  # flush at once: wake on the next event (or for combo ends)
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.wake.wait()
                continue
            spent = loop.time() - started
            self.current_tick = next_tick(self.tick, self.max_tick, spent)
            metrics.TICK_SECONDS.set(self.current_tick)
            await asyncio.sleep(self.current_tick)

    def flush_all(self) -> None:
        dirty, self.dirty = self.dirty, set()
        for room in dirty:
            self.flush_room(room)

    def flush_room(self, room: Room) -> None:
        """Write the room's pending events to its viewers as one frame."""
        if not room.pending:
            return
        events, room.pending = room.pending, []
        self.dirty.discard(room)
        if not room.viewers:
            return
        message = protocol.Events(stream=room.stream, events=events)
        frame = protocol.encode(message)
        limit = self.write_buffer_limit
        slow: list[ServerConnection] = []
        if room.binary:  # MessagePack viewers get the same frame, converted once
            text = room.viewers - room.binary
            packed = protocol.MSGPACK_CODEC.encode(message)
            sent = send_all(room.binary, packed, text=False, buffer_limit=limit)
            slow += sent.slow
            metrics.BYTES_SENT.inc(sent.wire_bytes)
        else:
            text = room.viewers
        sent = send_all(text, frame, text=True, buffer_limit=limit)
        slow += sent.slow
        n = len(room.viewers)
        metrics.FRAMES_SENT.inc(n)
        metrics.BYTES_SENT.inc(sent.wire_bytes)
        metrics.EVENTS_SENT.inc(n * len(events))
        for conn in slow:
            self.close_slow(conn)

    def close_slow(
        self, conn: ServerConnection, reason: str = SLOW_CLOSE_REASON, *, count: bool = True
    ) -> None:
        """A viewer that cannot keep up is closed with 1013; it recovers with ``since``."""
        for room in self.rooms.values():
            if conn in room.viewers:
                room.discard(conn)
                self._discard_if_empty(room)
        if conn.protocol.state is State.OPEN:
            if count:
                self.stats_slow_closes += 1
                metrics.SLOW_CLOSES.inc()
            task = asyncio.create_task(conn.close(1013, reason))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def _end_combos(self) -> None:
        now = time.time_ns() // 1_000_000
        heap = self.combo_heap
        while heap and heap[0][0] <= now:
            deadline, stream, combo_id = heapq.heappop(heap)
            room = self.rooms.get(stream)
            if room is None:
                continue
            combo = room.combos.get(combo_id)
            if combo is None or combo.deadline != deadline:
                continue  # extended since: a later deadline is in the heap
            del room.combos[combo_id]
            room.add_live(msgspec.structs.replace(combo.event, offset=room.last_offset, ts=now))
            self.dirty.add(room)

    # -- viewers, top, and lingering rooms --------------------------------------------------

    async def _beat_loop(self) -> None:
        """A few times a second: viewer counts, top gifters, and rooms nobody watches."""
        while True:
            await asyncio.sleep(0.25)
            try:
                await self._beat()
            except (Refused, RedisError, OSError) as exc:
                log.debug("heartbeat skipped", error=str(exc))

    async def _beat(self) -> None:
        now = time.monotonic()
        rooms = list(self.rooms.values())
        calls: list[Awaitable[Any]] = []
        beating = []
        for room in rooms:
            count = room.audience
            if count != room.beat_count or now - room.beat_at > 2.0:
                beating.append((room, count))
                calls.append(
                    self.money.viewers_heartbeat(
                        room.stream, self.worker, count, self.heartbeat_ttl_ms
                    )
                )
        tops = [room for room in rooms if room.top_dirty]
        for room in tops:
            room.top_dirty = False
            calls.append(self.money.top(room.stream))
        results = await asyncio.gather(*calls, return_exceptions=True)
        ts = time.time_ns() // 1_000_000
        for (room, count), total in zip(beating, results[: len(beating)], strict=True):
            if isinstance(total, BaseException):
                continue
            room.beat_count, room.beat_at = count, now
            if total != room.viewers_total:
                room.viewers_total = total
                room.add_live(
                    protocol.ViewersEvent(offset=room.last_offset, ts=ts, count=int(total))
                )
                self.dirty.add(room)
        for room, top in zip(tops, results[len(beating) :], strict=True):
            if isinstance(top, BaseException):
                room.top_dirty = True
                continue
            entries = [protocol.TopEntry(user=u, coins=c) for u, c in top]
            if entries != room.top:
                room.top = entries
                room.add_live(protocol.TopEvent(offset=room.last_offset, ts=ts, top=entries))
                self.dirty.add(room)
        await self._drop_idle_rooms(now)

    async def _drop_idle_rooms(self, now: float) -> None:
        idle = [
            room
            for room in self.rooms.values()
            if room.empty_since is not None
            and now - room.empty_since >= self.linger
            and not room.viewers
            and not room.joining
        ]
        if not idle:
            return
        for room in idle:
            del self.rooms[room.stream]
            self.dirty.discard(room)
            self.confirms.pop(room.channel, None)
        if self.pubsub is not None and self.connected.is_set():
            await self.pubsub.unsubscribe(*(room.channel for room in idle))
        await asyncio.gather(
            *(self.money.viewers_heartbeat(r.stream, self.worker, 0, 1) for r in idle),
            return_exceptions=True,
        )

    def viewer_count(self) -> int:
        return sum(len(room.viewers) for room in self.rooms.values())


def next_tick(tick: float, max_tick: float, spent: float) -> float:
    """The wait after a flush that took ``spent`` seconds.

    A flush that cost more than four ticks is followed by a wait of a quarter of its
    cost, so flushing takes at most ``FLUSH_SHARE`` of the worker's time (while a
    flush costs less than four ``max_tick``) and the rest is left for requests and
    joins; meanwhile events gather, so the next frames carry more of them. It waits
    no longer than that: past a few kB per frame the kernel's copy of the bytes costs
    more than the number of writes, so a longer wait would save little work and add
    its whole length to every event's latency.
    """
    return min(max_tick, max(tick, spent * FLUSH_PAUSE))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _with_offset(entry_id: bytes | str, fields: dict[Any, Any]) -> msgspec.Raw:
    """A history entry as its public event: the stored JSON with its offset put in front."""
    offset = _text(entry_id)
    body = fields.get("e", fields.get(b"e", b"{}"))
    if isinstance(body, str):
        body = body.encode()
    return msgspec.Raw(b'{"offset":"' + offset.encode() + b'",' + body[1:])


def _offset_of(raw: msgspec.Raw) -> str:
    return _head.decode(raw).offset


def _reaches_back(since: str, latest: str, xinfo: Any) -> bool:
    """True when the history still holds every event after ``since``.

    The history is only ever trimmed from the front (MAXLEN), so it is complete
    after ``since`` when nothing was trimmed, or when its first entry is at or
    before ``since``.
    """
    mark = protocol.parse_offset(since)
    if isinstance(xinfo, Exception):  # no history at all: nothing ever happened
        return mark == ZERO
    last = protocol.parse_offset(_text(xinfo.get("last-generated-id", latest)))
    if mark >= last:
        return mark == last  # nothing after it; an offset from the future is not ours
    if xinfo.get("entries-added") == xinfo.get("length"):
        return True
    first = xinfo.get("first-entry")
    return bool(first) and protocol.parse_offset(_text(first[0])) <= mark


def _viewers_total(raw: dict[str, str]) -> int:
    now = time.time_ns() // 1_000_000
    total = 0
    for value in raw.values():
        count, _, expires = value.partition("|")
        if expires.isdigit() and int(expires) > now:
            total += int(count)
    return total


def _snapshot(info: StreamInfo, top: list[Any], viewers: int) -> protocol.Snapshot:
    goal = info.goal
    return protocol.Snapshot(
        creator=info.creator,
        title=info.title,
        live=info.live,
        viewers=viewers,
        diamonds=info.diamonds,
        top=[protocol.TopEntry(user=str(u), coins=int(c)) for u, c in top],
        goal=None
        if goal is None
        else protocol.GoalState(title=goal.title, target=goal.target, progress=goal.progress),
    )
