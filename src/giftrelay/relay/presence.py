"""Presence: each stream's viewer count, top gifters and battle, kept up to date.

Every worker writes its audience of each stream to the stream's viewer hash with an
expiry (a heartbeat); the count viewers see is the sum over live workers. The top
gifters are read again after gifts. A running battle's two sides are read each beat (the
other stream's gifts are not on this room's channel). A change becomes a live
``viewers``, ``top`` or ``battle`` event in the room.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any

from giftrelay.money.api import Money
from giftrelay.money.catalog import multiplier_at
from giftrelay.relay.room import Room
from giftrelay.wire import events, protocol

FORGET_BATTLE = 40
"""Beats (10 s) a room's battle may read as not running before the room stops looking:
the battle_end event ends it; this only bounds a battle whose end the room missed."""


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
            calls.append(self.money.top_entries(room.stream))
        battles = sorted({room.battle for room in rooms if room.battle is not None})
        calls.extend(self.money.battle_state(battle) for battle in battles)
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
        done = len(beating) + len(tops)
        for room, entries in zip(tops, results[len(beating) : done], strict=True):
            if isinstance(entries, BaseException):
                room.top_dirty = True
                continue
            if entries != room.top:
                room.top = entries
                room.add_live(events.TopEvent(offset=room.last_offset, ts=ts, top=entries))
                changed.append(room)
        states = dict(zip(battles, results[done:], strict=True))
        for room in rooms:
            state = states.get(room.battle or "", ValueError())  # a battle that began since
            if isinstance(state, BaseException):
                continue
            if state is None:  # not both sides in it yet, or over (its battle_end will say)
                room.battle_misses += 1
                if room.battle_misses > FORGET_BATTLE:
                    room.battle = None
                continue
            room.battle_misses = 0
            multiplier = multiplier_at(state.boosts, ts)
            seen = (state.sides, multiplier)
            if seen != room.battle_seen:
                room.battle_seen = seen
                room.add_live(battle_event(state, room.last_offset, ts, multiplier))
                changed.append(room)
        return changed


def battle_event(
    state: protocol.BattleState, offset: str, ts: int, multiplier: int
) -> events.BattleEvent:
    return events.BattleEvent(
        offset=offset,
        ts=ts,
        battle=state.battle,
        sides=state.sides,
        starts_at=state.starts_at,
        ends_at=state.ends_at,
        boosts=state.boosts,
        multiplier=multiplier,
    )
