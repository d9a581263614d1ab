"""Presence: each stream's viewer count and top gifters, kept up to date.

Every worker writes its audience of each stream to the stream's viewer hash with an
expiry (a heartbeat); the count viewers see is the sum over live workers. The top
gifters are read again after gifts. A change becomes a live ``viewers`` or ``top``
event in the room.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from giftrelay.money.api import Money
from giftrelay.relay.room import Room
from giftrelay.wire import events


class Presence:
    def __init__(self, money: Money, worker: str, heartbeat_ttl_ms: int) -> None:
        self.money = money
        self.worker = worker
        self.heartbeat_ttl_ms = heartbeat_ttl_ms

    async def beat(self, rooms: list[Room], now: float) -> list[Room]:
        """Heartbeats for the rooms whose audience changed (or every 2 s) and top lists
        for the rooms that got gifts; the rooms given a live event to send."""
        changed: list[Room] = []
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
                room.add_live(events.ViewersEvent(offset=room.last_offset, ts=ts, count=int(total)))
                changed.append(room)
        for room, top in zip(tops, results[len(beating) :], strict=True):
            if isinstance(top, BaseException):
                room.top_dirty = True
                continue
            entries = [events.TopEntry(user=u, coins=c) for u, c in top]
            if entries != room.top:
                room.top = entries
                room.add_live(events.TopEvent(offset=room.last_offset, ts=ts, top=entries))
                changed.append(room)
        return changed
