"""Combo ends: a streak of one gift ends with a ``combo_end`` event once its window has
passed without another gift of it. Not stored: each worker tells its own viewers."""

from __future__ import annotations

import heapq
import time

import msgspec

from giftrelay.money.catalog import Catalog
from giftrelay.relay.room import Combo, Head, Room
from giftrelay.wire import events


class Combos:
    """A worker's streaks in flight, by deadline."""

    def __init__(self, catalog: Catalog, window_ms: int) -> None:
        self.catalog = catalog
        self.window_ms = window_ms
        self.heap: list[tuple[int, str, str]] = []
        """(deadline ms, stream, combo id), earliest first; an extended streak's older
        entries stay, and are skipped when they come up."""

    def extend(self, room: Room, head: Head) -> None:
        """A gift starts or extends its streak, if its kind streaks."""
        item = self.catalog.get(head.gift)
        if item is not None and item.streakable and head.count:
            deadline = head.ts + self.window_ms + 50
            price = head.coins // head.count
            room.combos[head.combo_id] = Combo(
                deadline=deadline,
                stream=room.stream,
                event=events.ComboEndEvent(
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
            heapq.heappush(self.heap, (deadline, room.stream, head.combo_id))

    def end_due(self, rooms: dict[str, Room], dirty: set[Room]) -> None:
        """Queue the ``combo_end`` of every streak past its deadline; its room goes to ``dirty``."""
        now = time.time_ns() // 1_000_000
        heap = self.heap
        while heap and heap[0][0] <= now:
            deadline, stream, combo_id = heapq.heappop(heap)
            room = rooms.get(stream)
            if room is None:
                continue
            combo = room.combos.get(combo_id)
            if combo is None or combo.deadline != deadline:
                continue  # extended since: a later deadline is in the heap
            del room.combos[combo_id]
            room.add_live(msgspec.structs.replace(combo.event, offset=room.last_offset, ts=now))
            dirty.add(room)
