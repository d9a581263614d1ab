"""Fan-out: every event of a stream to every viewer of it on this worker, once, in order.

A worker subscribes to a stream's channel (:mod:`giftrelay.relay.channel`; on a Redis
Cluster, on the stream's shard: :mod:`giftrelay.relay.sharded`) only while it holds a
viewer of it. Events are buffered per stream (a
:class:`~giftrelay.relay.room.Room`) and flushed every tick as one ``events`` frame,
encoded and framed once and written to every viewer (:mod:`giftrelay.relay.flush`). The
tick grows when flushing gets expensive, so a busy worker sends fewer, fuller frames
instead of queueing. Viewer counts and top gifters: :mod:`giftrelay.relay.presence`;
combo ends: :mod:`giftrelay.relay.combos`.

Ordering and exactly-once rest on offsets: Redis publishes a stream's events in
offset order, and a room drops anything at or below the last offset it has seen.
A join reads the history and the snapshot in one MULTI that also publishes a
marker on the stream's channel (:mod:`giftrelay.relay.reads`). Everything before
the marker on the channel is covered by what the join read; everything after it
is new. The viewer enters the room once its marker has come through, in the same
synchronous step as its ``joined`` reply, so no event falls between the reply and
what follows it, and none arrives twice. A gift the cluster's mover applied again after
a failover (a new offset, the same sender and id) is delivered once as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection
from typing import Any

import msgspec
import structlog
from redis.exceptions import RedisError
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.protocol import State

from giftrelay import metrics
from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.money.catalog import Catalog
from giftrelay.redis_client import CLUSTER_SCHEME
from giftrelay.relay.channel import Channel
from giftrelay.relay.combos import Combos
from giftrelay.relay.flush import next_tick, write_events
from giftrelay.relay.presence import Presence
from giftrelay.relay.reads import FAILURES, read_gap, read_join, stream_exists
from giftrelay.relay.room import (
    Gap,
    Head,
    Join,
    Room,
    as_text,
    gift_key,
    head_decoder,
    offset_of,
    with_offset,
)
from giftrelay.relay.sharded import ShardedChannel
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable
from giftrelay.wire.offsets import parse_offset

log = structlog.get_logger(__name__)

SLOW_CLOSE_REASON = "too slow a reader: rejoin with since"
GAP_CLOSE_REASON = "events may have been missed: rejoin with since"


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
    ) -> None:
        self.url = url
        self.money = money
        self.tick = tick
        self.max_tick = max(max_tick, tick)
        self.write_buffer_limit = write_buffer_limit
        self.heartbeat_ttl_ms = heartbeat_ttl_ms
        self.history_limit = history_limit
        self.linger = linger
        self.on_revoke = on_revoke
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.rooms: dict[str, Room] = {}
        self.dirty: set[Room] = set()
        self.combos = Combos(catalog, combo_window_ms)
        self.channel: Channel | ShardedChannel
        if url.startswith(CLUSTER_SCHEME + "://"):
            self.channel = ShardedChannel(url, self._on_message, self._resubscribe)
        else:
            self.channel = Channel(url, self._on_message, self._resubscribe)
        self.connected = self.channel.connected
        self.current_tick = tick
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.join_reads = asyncio.Semaphore(64)
        """Joins reading at once: a reconnect storm queues here, not on Redis's connections."""
        self.wake = asyncio.Event()
        self.presence = Presence(money, self.worker, heartbeat_ttl_ms)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.channel.run(), name="fanout-read"),
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
        await self.channel.aclose()

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
            if not await stream_exists(self.money.redis, stream):
                raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
            room = self.rooms.get(stream) or self.rooms.setdefault(stream, Room(stream))
        room.joining += 1
        room.empty_since = None
        token = secrets.token_hex(8)
        join = Join(conn, counted, codec)
        try:
            await self.channel.subscribed(room.channel)
            room.joins[token] = join
            join.reply = await self._read_join(room, token, since, ref, issued_ms)
            if join.marked:
                self._complete(room, join)
            return await asyncio.shield(join.done)
        finally:
            room.joining -= 1
            if room.joins.pop(token, None) is not None:  # not completed: failed or timed out
                self._discard_if_empty(room)

    def _complete(self, room: Room, join: Join) -> None:
        """The viewer enters the room: synchronous, so no event can fall in between."""
        assert join.reply is not None
        reply, mark = join.reply
        for token, candidate in list(room.joins.items()):
            if candidate is join:
                del room.joins[token]
        # Everything before the marker reached this worker and is covered by the read.
        key = parse_offset(mark)
        if key > room.last:
            room.last, room.last_offset = key, mark
        self.flush_room(room)  # what is pending goes to the viewers already there
        if join.after:
            reply = msgspec.structs.replace(
                reply, missed=[*reply.missed, *join.after], offset=offset_of(join.after[-1])
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

    async def _read_join(
        self, room: Room, token: str, since: str | None, ref: str | None, issued_ms: int | None
    ) -> tuple[protocol.Joined, str]:
        """The reply and its marker's offset (:func:`~giftrelay.relay.reads.read_join`)."""
        async with self.join_reads:
            money = self.money
            return await read_join(money, room, token, since, ref, issued_ms, self.history_limit)

    # -- reading the channel ---------------------------------------------------------------

    async def _resubscribe(self, channels: Collection[str] | None = None) -> None:
        """On a fresh event channel: every room (or those of ``channels``, on a shard
        that reconnected or that their slot moved to) subscribed again, its live events
        held back until its gap is filled from the history."""
        rooms = list(self.rooms.values())
        if channels is not None:
            wanted = set(channels)
            rooms = [room for room in rooms if room.channel in wanted]
        if rooms:
            for room in rooms:
                room.held = room.held if room.held is not None else []
            await self.channel.subscribe([room.channel for room in rooms])
            for room in rooms:
                waiter = self.channel.confirmation(room.channel)
                if room.filling is not None:
                    room.filling.cancel()
                room.filling = asyncio.create_task(self._fill_gap(room, waiter))
        log.info("event channel connected", rooms=len(rooms), all=channels is None)

    async def _fill_gap(self, room: Room, subscribed: asyncio.Future[None]) -> None:
        """After a reconnect: what the room missed, from its history, before what is held.

        A revocation is not in the history, only published: one stored since the room
        last applied one was missed, and closes the overlays it revokes as the live
        message would. If the history cannot be read or no longer reaches back, the
        room's viewers are closed with 1013: they rejoin with ``since`` rather than
        silently miss events.
        """
        gap: Gap | None = None
        try:
            async with asyncio.timeout(2.0):
                await asyncio.shield(subscribed)
            for attempt in range(3):
                try:
                    gap = await self._read_gap(room)
                    break
                except (*FAILURES, TimeoutError) as exc:
                    log.warning("could not read a stream's gap", stream=room.stream, error=str(exc))
                    await asyncio.sleep(0.2 * (attempt + 1))
        except (Unavailable, TimeoutError) as exc:
            log.warning(
                "no subscription to fill a stream's gap", stream=room.stream, error=str(exc)
            )
        finally:
            if room.filling is asyncio.current_task():  # not one started again since
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
            self._accept(room, entry_id, bytes(with_offset(entry_id, fields)), None)
        for data, head in held:
            self._dispatch(room, data, head)
        if entries:
            log.info("stream gap filled", stream=room.stream, events=len(entries))

    async def _read_gap(self, room: Room) -> Gap:
        """What the room missed (:func:`~giftrelay.relay.reads.read_gap`)."""
        return await read_gap(self.money.redis, room, self.history_limit)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["type"] != "smessage":
            return
        room = self.rooms.get(keys.channel_stream(as_text(message["channel"])))
        if room is None:
            return
        data = message["data"]
        head = head_decoder.decode(data)
        if head.kind == "revoke_overlays":
            self._revoke(room, head.before)
            return
        if room.held is not None:
            room.held.append((data, head))
            return
        self._dispatch(room, data, head)

    def _revoke(self, room: Room, before: int) -> None:
        """Overlay tokens of the room's stream issued before ``before`` (ms) are revoked:
        the relay closes this worker's overlays that hold one."""
        room.revoked_before = max(room.revoked_before, before)
        if self.on_revoke is not None:
            self.on_revoke(room.stream, before)

    def _dispatch(self, room: Room, data: bytes, head: Head) -> None:
        """A stored event, or a join's marker, in the channel's order."""
        if head.kind == "sync":
            join = room.joins.get(head.token)
            if join is not None and not join.marked:
                join.marked = True
                if join.reply is not None:
                    self._complete(room, join)
            return
        self._accept(room, head.offset, data, head)

    def _accept(self, room: Room, offset: str, data: bytes, head: Head | None) -> None:
        if head is None:
            head = head_decoder.decode(data)
        if not room.accept(offset, msgspec.Raw(data), gift_key(head)):
            return
        self.dirty.add(room)
        self.wake.set()
        if head.kind == "gift":
            metrics.EVENT_LAG.observe(max(0.0, time.time() - head.ts / 1000))
            if not head.test:
                room.top_dirty = True
            self.combos.extend(room, head)
        elif head.kind == "battle_start":  # its state is read each beat from now on
            room.battle, room.battle_seen = head.battle, None
        elif head.kind == "battle_end" and room.battle == head.battle:
            room.battle = None

    # -- flushing --------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                self.combos.end_due(self.rooms, self.dirty)
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
        pending, room.pending = room.pending, []
        self.dirty.discard(room)
        if not room.viewers:
            return
        for conn in write_events(room, pending, self.write_buffer_limit):
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
                metrics.SLOW_CLOSES.inc()
            task = asyncio.create_task(conn.close(1013, reason))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

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
        for room in await self.presence.beat(list(self.rooms.values()), now):
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
        await self.channel.unsubscribe([room.channel for room in idle])
        await asyncio.gather(
            *(self.money.viewers_heartbeat(r.stream, self.worker, 0, 1) for r in idle),
            return_exceptions=True,
        )
