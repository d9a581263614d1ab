"""Flushing: a room's pending events as one frame to every viewer, and the tick.

The frame is encoded once (and once more as MessagePack if any viewer speaks it)
and written to every viewer with :func:`giftrelay.relay.broadcast.send_all`, which
frames (and compresses) it once. Viewers whose write buffer is over the limit are
returned, for the fan-out to close.
"""

from __future__ import annotations

import msgspec
from websockets.asyncio.server import ServerConnection

from giftrelay import metrics
from giftrelay.relay.broadcast import send_all
from giftrelay.relay.room import Room
from giftrelay.wire import protocol

FLUSH_SHARE = 0.8
"""Under load, the largest share of a worker's time that flushing may take."""
FLUSH_PAUSE = (1 - FLUSH_SHARE) / FLUSH_SHARE


def write_events(
    room: Room, events: list[msgspec.Raw], buffer_limit: int
) -> list[ServerConnection]:
    """Write ``events`` to the room's viewers as one frame; the viewers too slow to take it."""
    message = protocol.Events(stream=room.stream, events=events)
    frame = protocol.encode(message)
    slow: list[ServerConnection] = []
    if room.binary:  # MessagePack viewers get the same frame, converted once
        text = room.viewers - room.binary
        packed = protocol.MSGPACK_CODEC.encode(message)
        sent = send_all(room.binary, packed, text=False, buffer_limit=buffer_limit)
        slow += sent.slow
        metrics.BYTES_SENT.inc(sent.wire_bytes)
    else:
        text = room.viewers
    sent = send_all(text, frame, text=True, buffer_limit=buffer_limit)
    slow += sent.slow
    n = len(room.viewers)
    metrics.FRAMES_SENT.inc(n)
    metrics.BYTES_SENT.inc(sent.wire_bytes)
    metrics.EVENTS_SENT.inc(n * len(events))
    return slow


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
