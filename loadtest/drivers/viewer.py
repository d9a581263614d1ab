"""Viewers: the measuring one, which checks every gift it receives, and the websocket one
that keeps watching a stream, measuring or only reading (a sink).

A :class:`Viewer` is fed by a connection's ``on_joined`` and ``on_events`` (those of
:class:`giftrelay.client.Client`, of the Socket.IO client or of a :class:`Watcher`)
and keeps, in a few integers, what it needs to check its gift events against the
gifts acknowledged to the gifters: order and duplicates as they arrive, from their
offsets; loss at the end (:meth:`Viewer.check`), from the count and the sum of the
offsets it received after the one it joined at. A rejoin answered ``recovered:
false`` excuses the gifts it skipped, as the protocol says. Gift -> viewer latency
(arrival time - the event's ``ts``, stamped by the relay when the gift was applied)
goes into a :class:`Meter` shared by many viewers, in buckets of 0.1 ms.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import math
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import msgspec
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from giftrelay.client import Disconnected, Event, GiftEvent, Joined, RelayError
from giftrelay.wire.offsets import parse_offset

from .connection import ConnectFailed, Connection

LATENCY_UNIT_MS = 0.1
"""One latency bucket: events carry ``ts`` in ms, so finer would be noise."""
SEQ = 1_000_000
RECENT = 512
"""Gift offsets a viewer remembers to tell a duplicate from one out of order."""


def key_int(offset: str) -> int:
    """An offset as one integer that sorts like the stream (``ms * 10**6 + seq``)."""
    ms, seq = parse_offset(offset)
    return ms * SEQ + seq


def offset_of(key: int) -> str:
    return f"{key // SEQ}-{key % SEQ}"


# -- latency ------------------------------------------------------------------------------------


class Meter:
    """What a group of viewers received since it was last taken: frames, events, gift
    events, and gift -> viewer latency as counts per 0.1 ms bucket."""

    __slots__ = ("events", "frames", "gift_events", "latency")

    def __init__(self) -> None:
        self.frames = 0
        self.events = 0
        self.gift_events = 0
        self.latency: Counter[int] = Counter()

    def take(self) -> Meter:
        """What was counted so far; the meter starts again from nothing."""
        taken = Meter()
        taken.frames, taken.events, taken.gift_events = self.frames, self.events, self.gift_events
        taken.latency, self.latency = self.latency, Counter()
        self.frames = self.events = self.gift_events = 0
        return taken


class Latency(msgspec.Struct, kw_only=True):
    count: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    p999: float = 0.0
    max: float = 0.0
    mean: float = 0.0


def summarise_latency(counts: Mapping[int, int]) -> Latency:
    """Bucketed latencies (0.1 ms units) through an HDR histogram (1 µs .. 10 min, 3 digits)."""
    h = HdrHistogram(1, 600_000_000, 3)
    for bucket, n in counts.items():
        h.record_value(max(1, int(bucket * LATENCY_UNIT_MS * 1000)), n)
    return latency_of(h)


def latency_of(h: HdrHistogram) -> Latency:
    """The percentiles, in ms, of an HDR histogram of µs."""
    if h.get_total_count() == 0:
        return Latency()

    def ms(us: float) -> float:
        return round(us / 1000, 2)

    return Latency(
        count=h.get_total_count(),
        p50=ms(h.get_value_at_percentile(50)),
        p90=ms(h.get_value_at_percentile(90)),
        p99=ms(h.get_value_at_percentile(99)),
        p999=ms(h.get_value_at_percentile(99.9)),
        max=ms(h.get_max_value()),
        mean=ms(h.get_mean_value()),
    )


def percentile(counts: Mapping[int, int], q: float) -> float:
    """The q-th percentile (0..100) of bucketed latencies, in ms."""
    total = sum(counts.values())
    if not total:
        return 0.0
    rank = max(1, math.ceil(total * q / 100))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return max(0, bucket) * LATENCY_UNIT_MS
    return max(counts) * LATENCY_UNIT_MS


# -- the measuring viewer -----------------------------------------------------------------------


class Delivery(msgspec.Struct, kw_only=True):
    """What viewers received against what they were due, added up over viewers."""

    viewers: int = 0
    expected: int = 0
    received: int = 0
    lost: int = 0
    viewers_with_loss: int = 0
    duplicates: int = 0
    order_violations: int = 0
    unexpected: int = 0
    """Gift events no acknowledged gift accounts for."""
    not_recovered: int = 0
    """Rejoins answered ``recovered: false`` (the history no longer reached back)."""
    excused: int = 0
    """Gifts inside those windows: not delivered, and not counted as loss."""
    undrained: int = 0
    """Viewers that had not caught up with the last gift when the drain ended."""

    def add(self, other: Delivery) -> None:
        for name in Delivery.__struct_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


class Expected:
    """The acknowledged gifts of each stream, as sorted offsets with running sums: what
    each viewer must have received."""

    def __init__(self, acked: Mapping[str, Iterable[int]]) -> None:
        self.keys = {stream: sorted(keys) for stream, keys in acked.items()}
        self.sums = {s: list(itertools.accumulate(k, initial=0)) for s, k in self.keys.items()}

    @classmethod
    def of_offsets(cls, acked: Mapping[str, Iterable[str]]) -> Expected:
        return cls({stream: map(key_int, offsets) for stream, offsets in acked.items()})

    def last(self, stream: str) -> int:
        keys = self.keys.get(stream)
        return keys[-1] if keys else 0

    def window(self, stream: str, lo: int, hi: int) -> tuple[int, int]:
        """How many acknowledged gifts have offsets in (lo, hi], and the sum of those offsets."""
        keys, sums = self.keys.get(stream, []), self.sums.get(stream, [0])
        i, j = bisect.bisect_right(keys, lo), bisect.bisect_right(keys, hi)
        return j - i, sums[j] - sums[i]

    def between(self, stream: str, lo: int, hi: int) -> list[int]:
        keys = self.keys.get(stream, [])
        return keys[bisect.bisect_right(keys, lo) : bisect.bisect_right(keys, hi)]


class Kept:
    """Every gift a viewer received: offsets, ids, and the latency (ms) of those that came live."""

    __slots__ = ("changed", "ids", "latencies", "offsets")

    def __init__(self) -> None:
        self.offsets: array[int] = array("q")
        self.ids: list[str] = []
        self.latencies: list[float] = []
        self.changed = asyncio.Event()
        """Set by every frame."""


class Viewer:
    """The checks on one viewer's gift events; see the module's docstring.

    ``keep``: also keep every gift's offset and id, and the latency (ms) of those that
    came live, for tests and for naming lost gifts; loss is then exact, and events no
    acknowledged gift accounts for are only counted (``unexpected``), not loss. Gifts
    the relay marks ``test`` are ignored then.
    """

    def __init__(self, stream: str, meter: Meter, *, keep: bool = False) -> None:
        self.stream = stream
        self.meter = meter
        self.start: int | None = None
        self.last = 0
        self.unique = 0
        self.keysum = 0
        self.duplicates = 0
        self.order = 0
        self.recent: deque[int] = deque(maxlen=RECENT)
        self.gaps: list[tuple[int, int]] = []
        self.not_recovered = 0
        self.target = 0
        """The last acknowledged gift's offset, once the gifts have stopped (:func:`drain`)."""
        self.drained: asyncio.Event | None = None
        self.kept = Kept() if keep else None

    @property
    def since(self) -> str | None:
        """The offset to rejoin from: the newest seen (gift or join)."""
        return None if self.start is None else offset_of(self.last)

    def joined(self, joined: Joined) -> None:
        key = key_int(joined.offset)
        if self.start is None:
            self.start = self.last = key
        elif not joined.recovered:
            self.not_recovered += 1
            if key > self.last:
                self.gaps.append((self.last, key))
                self.last = key
        self._check_drained()

    def on_events(self, stream: str, events: list[Event], live: bool = True) -> None:
        if self.kept is not None:
            self._keep(events, live)
            return
        meter = self.meter
        latency = meter.latency
        now = time.time() * 1000.0
        meter.frames += 1
        meter.events += len(events)
        last = self.last
        for event in events:  # most of a viewer's cost: kept lean
            if type(event) is not GiftEvent:
                continue
            meter.gift_events += 1
            latency[int((now - event.ts) * 10)] += 1
            ms, _, seq = event.offset.partition("-")
            key = int(ms) * SEQ + int(seq or 0)  # key_int, inline
            if key > last:
                last = key
                self.unique += 1
                self.keysum += key
                self.recent.append(key)
            elif key in self.recent:
                self.duplicates += 1
            else:
                self.order += 1
        self.last = last
        if self.target and last >= self.target:
            self._check_drained()

    def on_missed(self, stream: str, events: list[Event]) -> None:
        """The ``missed`` of a rejoin (a :class:`Connection` tells them from live ones)."""
        self.on_events(stream, events, live=False)

    def _keep(self, events: list[Event], live: bool) -> None:
        kept = self.kept
        assert kept is not None
        meter = self.meter
        now = time.time() * 1000.0
        meter.frames += 1
        meter.events += len(events)
        for event in events:
            if type(event) is not GiftEvent or event.test:
                continue
            meter.gift_events += 1
            meter.latency[int((now - event.ts) * 10)] += 1
            key = key_int(event.offset)
            kept.offsets.append(key)
            kept.ids.append(event.id)
            if live:
                kept.latencies.append(now - event.ts)
            if key > self.last:
                self.last = key
                self.unique += 1
                self.keysum += key
                self.recent.append(key)
            elif key in self.recent:
                self.duplicates += 1
            else:
                self.order += 1
        kept.changed.set()
        self._check_drained()

    def _check_drained(self) -> None:
        if self.target and self.last >= self.target and self.drained is not None:
            self.drained.set()

    def missing(self, expected: Expected) -> list[int]:
        """The acknowledged gifts due to this viewer that it did not receive (``keep``)."""
        assert self.kept is not None
        received = set(self.kept.offsets)
        return [k for k in self._due(expected) if k not in received]

    def _due(self, expected: Expected) -> list[int]:
        start = self.start or 0
        due = expected.between(self.stream, start, expected.last(self.stream))
        for lo, hi in self.gaps:
            gap = set(expected.between(self.stream, lo, hi))
            due = [k for k in due if k not in gap]
        return due

    def check(self, expected: Expected) -> Delivery:
        """This viewer's delivery: every acknowledged gift after the offset it joined at
        (less the excused) once, in order."""
        start = self.start or 0
        count, keysum = expected.window(self.stream, start, expected.last(self.stream))
        excused = 0
        for lo, hi in self.gaps:
            n, k = expected.window(self.stream, lo, hi)
            count, keysum, excused = count - n, keysum - k, excused + n
        if self.kept is not None:
            lost = len(self.missing(expected))
            unexpected = len(set(self.kept.offsets) - set(self._due(expected)))
        else:
            lost = max(0, count - self.unique)
            if lost == 0 and keysum != self.keysum:
                lost = 1  # as many as expected, but not the same ones
            unexpected = max(0, self.unique - count)
        return Delivery(
            viewers=1,
            expected=count,
            received=self.unique,
            lost=lost,
            viewers_with_loss=int(lost > 0),
            duplicates=self.duplicates,
            order_violations=self.order,
            unexpected=unexpected,
            not_recovered=self.not_recovered,
            excused=excused,
            undrained=int(bool(self.target) and self.last < self.target),
        )


async def drain(viewers: Sequence[Viewer], expected: Expected, within: float) -> None:
    """Until every viewer has received the last acknowledged gift of its stream (or
    ``within`` s have passed: :meth:`Viewer.check` reports it then)."""
    event = asyncio.Event()
    for v in viewers:
        v.drained, v.target = event, expected.last(v.stream)
    pending = [v for v in viewers if v.target and v.last < v.target]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while pending and loop.time() < deadline:
        event.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await event.wait()
        pending = [v for v in pending if v.last < v.target]


# -- a viewer on a websocket of its own ---------------------------------------------------------


class Watcher:
    """A viewer of ``stream`` that keeps watching: it joins, and when its connection
    closes it opens another (``urls`` in turn) and rejoins with ``since`` = the newest
    offset it saw, so that what it missed comes first. With a :class:`Viewer` it
    measures; without one it is a sink, which reads every frame and drops it unread.

    ``pause`` s after a connection that failed to open or a refused join, ``rejoin_after``
    s after a drop.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        stream: str,
        viewer: Viewer | None = None,
        *,
        index: int = 0,
        compression: Literal["deflate"] | None = "deflate",
        ping_interval: float | None = 20.0,
        open_timeout: float = 10.0,
        join_within: float = 15.0,
        pause: float = 0.1,
        rejoin_after: float = 0.0,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.stream = stream
        self.viewer = viewer
        self.index = index
        self.compression: Literal["deflate"] | None = compression
        self.ping_interval = ping_interval
        self.open_timeout = open_timeout
        self.join_within = join_within
        self.pause = pause
        self.rejoin_after = rejoin_after
        self.reconnects = 0
        """Connections lost after joining, and opened again."""
        self.join_refusals: Counter[str] = Counter()
        self.close_codes: list[int | None] = []
        self.joined = asyncio.Event()
        self.connection: Connection | None = None
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        self._stop.set()
        if self.connection is not None:
            with contextlib.suppress(Exception):
                await self.connection.close()
        if self.task is not None:
            await self.task

    async def reconnect(self) -> None:
        """Close the connection from this side: the watcher rejoins with ``since``."""
        self.joined.clear()
        if self.connection is not None and self.connection.ws is not None:
            await self.connection.ws.close()

    def _connection(self, attempt: int) -> Connection:
        v = self.viewer
        return Connection(
            self.urls[(self.index + attempt) % len(self.urls)],
            compression=self.compression,
            ping_interval=self.ping_interval,
            open_timeout=self.open_timeout,
            request_timeout=self.join_within,
            on_events=v.on_events if v is not None else None,
            on_missed=v.on_missed if v is not None else None,
            on_joined=v.joined if v is not None else None,
            sink=v is None,
        )

    async def run(self) -> None:
        for attempt in itertools.count():
            if self._stop.is_set():
                return
            conn = self.connection = self._connection(attempt)
            try:
                await conn.open()
            except ConnectFailed:
                await self._sleep(self.pause)
                continue
            since = self.viewer.since if self.viewer is not None else None
            try:
                await conn.join(self.stream, since)
            except (RelayError, Disconnected, TimeoutError) as exc:
                self.join_refusals[exc.code if isinstance(exc, RelayError) else "no reply"] += 1
                await conn.close()
                await self._sleep(self.pause)
                continue
            self.joined.set()
            stop = asyncio.create_task(self._stop.wait())
            closed = asyncio.create_task(conn.closed())
            await asyncio.wait({stop, closed}, return_when=asyncio.FIRST_COMPLETED)
            dropped = closed.done()
            stop.cancel()
            closed.cancel()
            if not dropped:
                await conn.close()
            self.close_codes.append(conn.close_codes[-1] if conn.close_codes else None)
            self.joined.clear()
            if self._stop.is_set():
                return
            self.reconnects += 1
            await self._sleep(self.rejoin_after)

    async def _sleep(self, seconds: float) -> None:
        """A client's pause before trying again, cut short by stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
