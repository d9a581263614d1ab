"""A stream's room on this worker, and the pure pieces of the fan-out.

A :class:`Room` holds a stream's viewers, the events waiting for the next tick and
the offsets that make delivery exactly-once and in order; the helpers read what
Redis returns (history entries, stream info, viewer heartbeats) into events and
snapshots. No I/O here: :mod:`giftrelay.relay.fanout` and :mod:`giftrelay.relay.reads`
do it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, NamedTuple

import msgspec
from websockets.asyncio.server import ServerConnection

from giftrelay.money import keys
from giftrelay.money.receipts import StreamInfo
from giftrelay.wire import events, protocol
from giftrelay.wire.offsets import parse_offset

ZERO = (0, 0)

RECENT_GIFTS = 4096
"""Gifts a room remembers (by sender and id) to deliver each once: after a failover
that lost a gift's stream step, the cluster's mover applies it again, at a new offset."""


class Head(msgspec.Struct):
    """The parts of a published event the fan-out itself needs."""

    kind: str
    offset: str = ""
    ts: int = 0
    sender: str = msgspec.field(name="from", default="")
    id: str = ""
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
    battle: str = ""
    """``battle_start``, ``battle_end``: the battle."""


head_decoder = msgspec.json.Decoder(Head)


class Gap(NamedTuple):
    """What a room missed while its channel was down."""

    entries: list[tuple[str, dict[str, str]]] | None
    """The history after the room's last offset; None when it no longer reaches back."""
    revoked_before: int
    """The stream's stored overlay revocation time (ms); 0 when never revoked."""


class Combo(msgspec.Struct):
    deadline: int
    stream: str
    event: events.ComboEndEvent


class Join:
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
        self.joins: dict[str, Join] = {}
        self.pending: list[msgspec.Raw] = []
        self.last = ZERO
        self.last_offset = "0-0"
        self.held: list[tuple[bytes, Head]] | None = None
        """While a gap is filled after a reconnect: live messages, held back in order."""
        self.filling: asyncio.Task[None] | None = None
        self.combos: dict[str, Combo] = {}
        self.top_dirty = False
        self.top: list[events.TopEntry] | None = None
        self.viewers_total = -1
        self.beat_count = -1
        self.beat_at = 0.0
        self.empty_since: float | None = None
        self.revoked_before = 0
        """The latest overlay revocation (ms) applied to this room's overlays."""
        self.recent: set[int] = set()
        """The latest RECENT_GIFTS gifts' :func:`gift_key`, oldest first in ``recent_order``."""
        self.recent_order: deque[int] = deque()
        self.battle: str | None = None
        """The battle the stream is in: its state is read each beat (both sides)."""
        self.battle_seen: tuple[object, ...] | None = None
        """The battle's state last sent (sides and multiplier)."""
        self.battle_misses = 0
        """Beats in a row that read the battle as not running (presence.FORGET_BATTLE)."""

    @property
    def channel(self) -> str:
        return keys.channel(self.stream)

    @property
    def audience(self) -> int:
        return len(self.viewers) - len(self.uncounted)

    def accept(self, offset: str, raw: msgspec.Raw, gift: int | None = None) -> bool:
        """Queue a stored event unless this room has already seen its offset, or, for a
        gift (``gift``: its :func:`gift_key`), the same gift at another offset."""
        key = parse_offset(offset)
        if key <= self.last:
            return False
        self.last, self.last_offset = key, offset
        if gift is not None:
            if gift in self.recent:
                return False
            self.recent.add(gift)
            self.recent_order.append(gift)
            if len(self.recent_order) > RECENT_GIFTS:
                self.recent.discard(self.recent_order.popleft())
        self.pending.append(raw)
        for join in self.joins.values():
            if join.marked:
                join.after.append(raw)
        return True

    def add_live(self, event: events.LiveEvent) -> None:
        """Queue an event that is not stored (viewers, top, combo_end)."""
        self.pending.append(protocol.encode_event(event))

    def discard(self, conn: ServerConnection) -> None:
        self.viewers.discard(conn)
        self.uncounted.discard(conn)
        self.binary.discard(conn)


def gift_key(head: Head) -> int | None:
    """What makes a gift event the same gift (its sender and id, and whether it is a test
    alert, whose ids are the alert's own), as a hash; None for other events."""
    if head.kind != "gift" or not head.id:
        return None
    return hash((head.sender, head.id, head.test))


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def with_offset(entry_id: bytes | str, fields: dict[Any, Any]) -> msgspec.Raw:
    """A history entry as its public event: the stored JSON with its offset put in front."""
    offset = as_text(entry_id)
    body = fields.get("e", fields.get(b"e", b"{}"))
    if isinstance(body, str):
        body = body.encode()
    return msgspec.Raw(b'{"offset":"' + offset.encode() + b'",' + body[1:])


def offset_of(raw: msgspec.Raw) -> str:
    return head_decoder.decode(raw).offset


def reaches_back(since: str, latest: str, xinfo: Any) -> bool:
    """True when the history still holds every event after ``since``.

    The history is only ever trimmed from the front (MAXLEN), so it is complete
    after ``since`` when nothing was trimmed, or when its first entry is at or
    before ``since``.
    """
    mark = parse_offset(since)
    if isinstance(xinfo, Exception):  # no history at all: nothing ever happened
        return mark == ZERO
    last = parse_offset(as_text(xinfo.get("last-generated-id", latest)))
    if mark >= last:
        return mark == last  # nothing after it; an offset from the future is not ours
    if xinfo.get("entries-added") == xinfo.get("length"):
        return True
    first = xinfo.get("first-entry")
    return bool(first) and parse_offset(as_text(first[0])) <= mark


def viewers_total(raw: dict[str, str]) -> int:
    now = time.time_ns() // 1_000_000
    total = 0
    for value in raw.values():
        count, _, expires = value.partition("|")
        if expires.isdigit() and int(expires) > now:
            total += int(count)
    return total


def snapshot_of(
    info: StreamInfo,
    top: list[Any],
    viewers: int,
    levels: dict[str, int],
    battle: protocol.BattleState | None,
) -> protocol.Snapshot:
    return protocol.Snapshot(
        creator=info.creator,
        title=info.title,
        live=info.live,
        viewers=viewers,
        diamonds=info.diamonds,
        top=[
            events.TopEntry(user=str(u), coins=int(c), level=levels.get(str(u), 0)) for u, c in top
        ],
        goal=info.goal,
        battle=battle,
    )
