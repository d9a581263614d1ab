"""Which events may be sent now, pure: ordered per wallet, no wallet waiting for another.

Every wallet has a lane: its queued events in ledger order. An event may be sent
when it heads the lane of every wallet it names (a gift: the sender's and the
creator's), it is not already being sent, and its retry time has come. It leaves
its lanes only when delivered or dead-lettered, so a later movement of a wallet
never overtakes an earlier one, while other wallets' lanes flow on.

Lanes are all in one order (the ledger's), so the oldest queued event always heads
every lane it is in: events waiting on each other cannot form a circle.

Runnable events (heading all their lanes) sit in a heap by retry time, so each
decision costs a logarithm, not a walk over every wallet.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque

from giftrelay.webhooks.events import Pending
from giftrelay.wire.offsets import Offset


class Plan:
    def __init__(self) -> None:
        self._events: dict[str, Pending] = {}
        self._lanes: dict[str, deque[Pending]] = {}
        self._busy: set[str] = set()
        self._runnable: list[tuple[int, Offset, str]] = []
        """(next_ms, order, entry) of events heading all their lanes; stale items are
        skipped when popped (see :meth:`_valid`)."""

    def __len__(self) -> int:
        return len(self._events)

    def __contains__(self, entry: str) -> bool:
        return entry in self._events

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    def get(self, entry: str) -> Pending:
        return self._events[entry]

    def add(self, event: Pending) -> None:
        """Queue ``event`` behind its wallets' earlier events (ignored if queued already)."""
        if event.entry in self._events:
            return
        self._events[event.entry] = event
        for wallet in event.wallets:
            lane = self._lanes.setdefault(wallet, deque())
            if lane and lane[-1].order > event.order:  # loaded out of order: keep the order
                position = bisect.bisect([e.order for e in lane], event.order)
                lane.insert(position, event)
            else:
                lane.append(event)
        self._consider(event)

    def take(self, now_ms: int, limit: int) -> list[Pending]:
        """Up to ``limit`` events to send now; each is in flight until settled."""
        out: list[Pending] = []
        while self._runnable and len(out) < limit and self._runnable[0][0] <= now_ms:
            item = heapq.heappop(self._runnable)
            event = self._current(item)
            if event is not None:
                self._busy.add(event.entry)
                out.append(event)
        return out

    def next_due(self) -> int | None:
        """When the earliest runnable event not in flight is due (ms), or None."""
        while self._runnable:
            if self._current(self._runnable[0]) is not None:
                return self._runnable[0][0]
            heapq.heappop(self._runnable)
        return None

    def done(self, entry: str) -> None:
        """Delivered or dead-lettered: out of its lanes; the events behind it move up."""
        event = self._events.pop(entry)
        self._busy.discard(entry)
        for wallet in event.wallets:
            lane = self._lanes[wallet]
            if lane[0] is event:
                lane.popleft()
            else:
                lane.remove(event)
            if lane:
                self._consider(lane[0])
            else:
                del self._lanes[wallet]

    def retry(self, event: Pending) -> None:
        """Failed, to be sent again at ``event.next_ms``; it keeps its place in its lanes."""
        old = self._events[event.entry]
        self._events[event.entry] = event
        for wallet in event.wallets:
            lane = self._lanes[wallet]
            lane[lane.index(old)] = event
        self._busy.discard(event.entry)
        self._consider(event)

    def oldest_ms(self) -> int | None:
        """The time of the oldest queued movement, or None."""
        return min((e.ms for e in self._events.values()), default=None)

    def blocked(self, entry: str) -> bool:
        """Whether ``entry`` waits behind an earlier event of one of its wallets."""
        event = self._events[entry]
        return not all(self._lanes[w][0] is event for w in event.wallets)

    def _heads_all(self, event: Pending) -> bool:
        return all(self._lanes[w][0] is event for w in event.wallets)

    def _current(self, item: tuple[int, Offset, str]) -> Pending | None:
        """The item's event if the item still stands: the event is queued, runnable, and
        due at the item's time (a retry pushes a new item and leaves the old one stale)."""
        event = self._events.get(item[2])
        if event is None or event.next_ms != item[0] or not self._valid(event):
            return None
        return event

    def _valid(self, event: Pending) -> bool:
        return event.entry not in self._busy and self._heads_all(event)

    def _consider(self, event: Pending) -> None:
        if self._valid(event):
            heapq.heappush(self._runnable, (event.next_ms, event.order, event.entry))
