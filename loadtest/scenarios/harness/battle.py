"""The ``battle`` scenario's own parts (docs/loadtest.md, "The battle").

In the worker processes: :class:`BattleViewer`, a measuring viewer that also follows the
battle (giftrelay's client delivers the v1.2 events typed); :class:`BattleLog`, a
worker's viewers' battle, added up into a :class:`~.wire.BattleSeen`.

In the coordinator: :func:`start`, the invitation by one stream's creator and the
acceptance by the other's, over the protocol; :func:`judge`, the figures and the
checks. Each side's final score is checked against the gift events the viewers
received, priced here from ``battle_start``'s boosts as docs/protocol.md says (not with
the server's code): a gift between the stream's ``battle_start`` and ``battle_end``
whose ``ts`` lies in [starts_at, ends_at) adds its diamonds x the largest multiplier of
the boost windows holding its ``ts`` (1 outside them).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import msgspec

from giftrelay.client import Client, Event, GiftEvent, RelayError
from giftrelay.wire import protocol
from giftrelay.wire.events import BattleEndEvent, BattleEvent, BattleSide, BattleStartEvent, Boost

from ...drivers.viewer import Meter, Viewer, key_int, summarise_latency
from . import wire
from .options import UsageError
from .result import BattleFigures, BattleSideFigures

AnyBattleEvent = BattleStartEvent | BattleEvent | BattleEndEvent


# -- the viewers' side (worker processes) ------------------------------------------------------


class BattleLog:
    """A worker's viewers' battle: every gift event they received (once each, by offset),
    and this second's counts for the tick."""

    def __init__(self) -> None:
        self.gifts: dict[str, dict[str, tuple[int, int]]] = {}
        """By stream: offset -> (ts, diamonds)."""
        self.events = 0
        self.ends = 0
        self.scores: list[int] = []
        self.end_latency: Counter[int] = Counter()

    def saw(self, sides: Sequence[BattleSide]) -> None:
        if len(self.scores) != len(sides):
            self.scores = [0] * len(sides)
        self.scores = [max(a, side.score) for a, side in zip(self.scores, sides, strict=True)]

    def take(self) -> tuple[int, int, list[int]]:
        """This second's battle events, ``battle_end`` arrivals and highest scores."""
        taken = self.events, self.ends, self.scores
        self.events, self.ends, self.scores = 0, 0, []
        return taken

    def seen(self, viewers: Iterable[BattleViewer]) -> wire.BattleSeen:
        out = wire.BattleSeen()
        starts: dict[tuple[str, bytes], wire.StartSeen] = {}
        ends: dict[tuple[str, bytes], wire.EndSeen] = {}
        per_viewer: list[int] = []
        by_stream: Counter[str] = Counter()
        for v in viewers:
            out.viewers += 1
            by_stream[v.stream] += 1
            per_viewer.append(v.events)
            for start in v.starts[:1]:
                key = (v.stream, msgspec.json.encode(start))
                first = wire.StartSeen(stream=v.stream, start=start, viewers=0)
                starts.setdefault(key, first).viewers += 1
            for end in v.ends[:1]:
                key = (v.stream, msgspec.json.encode(end))
                last = wire.EndSeen(stream=v.stream, end=end, viewers=0)
                ends.setdefault(key, last).viewers += 1
            out.extra_starts += max(0, len(v.starts) - 1)
            out.extra_ends += max(0, len(v.ends) - 1)
            out.score_falls += v.falls
            out.viewers_with_falls += v.falls > 0
            out.late_events += v.late
        out.viewers_by_stream = dict(by_stream)
        out.starts, out.ends = list(starts.values()), list(ends.values())
        out.events = sum(per_viewer)
        out.events_min, out.events_max = min(per_viewer, default=0), max(per_viewer, default=0)
        out.end_latency = dict(self.end_latency)
        out.gifts = {
            stream: [(offset, ts, diamonds) for offset, (ts, diamonds) in gifts.items()]
            for stream, gifts in self.gifts.items()
        }
        return out


class BattleViewer(Viewer):
    """A measuring :class:`~loadtest.drivers.viewer.Viewer` (gifts: loss, order, latency)
    that also follows the battle: its ``battle_start`` and ``battle_end``, how many live
    ``battle`` events, whether a side's score ever went down; and adds the gift events it
    receives to its worker's :class:`BattleLog`."""

    def __init__(self, stream: str, meter: Meter, log: BattleLog) -> None:
        super().__init__(stream, meter)
        self.log = log
        self.received = log.gifts.setdefault(stream, {})
        self.starts: list[wire.BattleStart] = []
        self.ends: list[wire.BattleEnd] = []
        self.events = 0
        self.scores: dict[str, int] = {}
        self.falls = 0
        self.late = 0

    def on_events(self, stream: str, events: list[Event], live: bool = True) -> None:
        super().on_events(stream, events, live)
        received = self.received
        battle: list[AnyBattleEvent] = []
        for e in events:
            if type(e) is GiftEvent and not e.test and e.offset not in received:
                received[e.offset] = (e.ts, e.diamonds)
            elif isinstance(e, BattleStartEvent | BattleEvent | BattleEndEvent):
                battle.append(e)
        if battle:
            self.on_battle(stream, battle)

    def on_battle(self, stream: str, events: list[AnyBattleEvent]) -> None:
        for e in events:
            if isinstance(e, BattleStartEvent):
                self.starts.append(
                    wire.BattleStart(battle=e.battle, offset=e.offset, starts_at=e.starts_at,
                                     ends_at=e.ends_at, boosts=e.boosts)
                )  # fmt: skip
            elif isinstance(e, BattleEvent):
                self.events += 1
                self.log.events += 1
                self.late += bool(self.ends)
                self._scores(e.sides)
            else:
                self.ends.append(
                    wire.BattleEnd(battle=e.battle, offset=e.offset,
                                   streams=[s.stream for s in e.sides],
                                   scores=[s.score for s in e.sides], winner=e.winner)
                )  # fmt: skip
                if len(self.ends) == 1:
                    self.log.ends += 1
                    self.log.end_latency[int((time.time() * 1000 - e.ends_at) * 10)] += 1
                self._scores(e.sides)

    def _scores(self, sides: list[BattleSide]) -> None:
        for side in sides:
            self.falls += side.score < self.scores.get(side.stream, 0)
            self.scores[side.stream] = side.score
        self.log.saw(sides)


# -- the coordinator's side --------------------------------------------------------------------


class Started(NamedTuple):
    battle: str
    starts_at: int
    ends_at: int
    duration_s: int
    start_ms: float
    """From sending the invitation to the acceptance's reply."""


async def request(url: str, token: str, message: protocol.Request) -> protocol.BattleOk:
    """One battle request on a connection of its own: its ``battle_ok``, or RelayError."""
    async with Client(url, token, reconnect=False) as client:
        if isinstance(message, protocol.BattleInvite):
            return await client.battle_invite(
                message.stream, message.opponent, message.duration_s, message.id
            )
        assert isinstance(message, protocol.BattleAccept)
        return await client.battle_answer(message.battle, accept=True)


async def start(
    url: str, streams: Sequence[str], tokens: Sequence[str], seconds: int, request_id: str
) -> Started:
    """The creator of ``streams[0]`` (``tokens[0]``) invites the other stream's; its creator
    accepts: the battle runs from the acceptance, on the server's clock."""
    began = time.perf_counter()
    invite = protocol.BattleInvite(
        stream=streams[0], opponent=streams[1], duration_s=seconds, id=request_id
    )
    try:
        invited = await request(url, tokens[0], invite)
    except RelayError as exc:
        if exc.code == "bad_request":  # a duration outside the relay catalog's bounds
            raise UsageError(
                f"--battle-seconds {seconds}: the relay refused it ({exc.message})"
            ) from None
        raise
    accepted = await request(url, tokens[1], protocol.BattleAccept(battle=invited.battle))
    if accepted.status != "running" or accepted.starts_at is None or accepted.ends_at is None:
        raise RuntimeError(f"the battle did not start: {accepted!r}")
    return Started(
        battle=accepted.battle,
        starts_at=accepted.starts_at,
        ends_at=accepted.ends_at,
        duration_s=seconds,
        start_ms=(time.perf_counter() - began) * 1000,
    )


def multiplier(boosts: Iterable[Boost], ts: int) -> int:
    """docs/protocol.md: the largest boost window holding ``ts`` (end exclusive), else 1."""
    return max((b.multiplier for b in boosts if b.starts_at <= ts < b.ends_at), default=1)


class Verdict(NamedTuple):
    figures: BattleFigures
    start_everywhere: bool
    end_everywhere: bool
    scores: bool
    never_fall: bool
    winner: bool


def _one(seen: Sequence[wire.StartSeen] | Sequence[wire.EndSeen]) -> Any:
    return seen[0] if len(seen) == 1 else None


def judge(
    started: Started, streams: Sequence[str], creators: dict[str, str], seen: list[wire.BattleSeen]
) -> Verdict:
    """The battle's figures, and its checks (:class:`~.result.Checks`, ``battle_*``)."""
    viewers: Counter[str] = Counter()
    gifts: dict[str, dict[str, tuple[int, int]]] = {s: {} for s in streams}
    starts: dict[str, list[wire.StartSeen]] = {s: [] for s in streams}
    ends: dict[str, list[wire.EndSeen]] = {s: [] for s in streams}
    latency: Counter[int] = Counter()
    for w in seen:
        viewers.update(w.viewers_by_stream)
        latency.update(w.end_latency)
        for stream, received in w.gifts.items():
            gifts.setdefault(stream, {}).update((o, (ts, d)) for o, ts, d in received)
        _merge(starts, w.starts, lambda x: x.start)
        _merge(ends, w.ends, lambda x: x.end)
    sides: list[BattleSideFigures] = []
    for stream in streams:
        start: wire.StartSeen | None = _one(starts[stream])
        end: wire.EndSeen | None = _one(ends[stream])
        sides.append(_side(stream, creators[stream], started, start, end, gifts[stream]))
    total = sum(w.viewers for w in seen)
    start_everywhere = all(
        len(starts[s]) == 1
        and starts[s][0].viewers == viewers[s]
        and (starts[s][0].start.battle, starts[s][0].start.starts_at, starts[s][0].start.ends_at)
        == (started.battle, started.starts_at, started.ends_at)
        for s in streams
    ) and not sum(w.extra_starts for w in seen)
    contents = {
        (e.end.battle, tuple(e.end.streams), tuple(e.end.scores), e.end.winner)
        for s in streams
        for e in ends[s]
    }
    end_everywhere = (
        all(len(ends[s]) == 1 and ends[s][0].viewers == viewers[s] for s in streams)
        and len(contents) == 1
        and next(iter(contents))[0] == started.battle
        and not sum(w.extra_ends for w in seen)
    )
    winner = bool(contents) and all(w == _winner(list(ss), list(sc)) for _, ss, sc, w in contents)
    first = next((s for s in starts[streams[0]]), None)
    figures = BattleFigures(
        battle=started.battle,
        duration_s=started.duration_s,
        starts_at=started.starts_at,
        ends_at=started.ends_at,
        boosts=first.start.boosts if first is not None else [],
        start_ms=started.start_ms,
        sides=sides,
        winner=next(iter(contents))[3] if len(contents) == 1 else None,
        gifts=sum(s.gifts for s in sides),
        gifts_boosted=sum(s.gifts_boosted for s in sides),
        viewers=total,
        viewers_started=sum(x.viewers for s in streams for x in starts[s]),
        viewers_ended=sum(x.viewers for s in streams for x in ends[s]),
        distinct_ends=len(contents),
        extra_starts=sum(w.extra_starts for w in seen),
        extra_ends=sum(w.extra_ends for w in seen),
        events=sum(w.events for w in seen),
        events_per_viewer=sum(w.events for w in seen) / total if total else 0.0,
        events_per_viewer_min=min((w.events_min for w in seen if w.viewers), default=0),
        events_per_viewer_max=max((w.events_max for w in seen), default=0),
        score_falls=sum(w.score_falls for w in seen),
        viewers_with_falls=sum(w.viewers_with_falls for w in seen),
        late_events=sum(w.late_events for w in seen),
        end_latency_ms=summarise_latency(latency),
    )
    return Verdict(
        figures=figures,
        start_everywhere=start_everywhere,
        end_everywhere=end_everywhere,
        scores=all(s.score == s.expected for s in sides),
        never_fall=figures.score_falls == 0,
        winner=winner,
    )


def _merge(
    into: dict[str, list[Any]], items: list[Any], content: Callable[[Any], msgspec.Struct]
) -> None:
    """Add workers' distinct starts (or ends) of each stream: the same content, its viewers."""
    for item in items:
        same = [x for x in into.setdefault(item.stream, []) if content(x) == content(item)]
        if same:
            same[0].viewers += item.viewers
        else:
            into[item.stream].append(msgspec.structs.replace(item))


def _winner(streams: list[str], scores: list[int]) -> str | None:
    best = max(scores)
    leaders = [s for s, score in zip(streams, scores, strict=True) if score == best]
    return leaders[0] if len(leaders) == 1 else None


def _side(
    stream: str,
    creator: str,
    started: Started,
    start: wire.StartSeen | None,
    end: wire.EndSeen | None,
    received: dict[str, tuple[int, int]],
) -> BattleSideFigures:
    """One side: its final score, and the score its stream's gift events make."""
    lo = key_int(start.start.offset) if start is not None else 0
    hi = key_int(end.end.offset) if end is not None else math.inf
    boosts = start.start.boosts if start is not None else []
    starts_at = start.start.starts_at if start is not None else started.starts_at
    ends_at = start.start.ends_at if start is not None else started.ends_at
    expected = gifts = boosted = points_boosted = outside = 0
    for offset, (ts, diamonds) in received.items():
        if not starts_at <= ts < ends_at:
            continue
        if not lo < key_int(offset) < hi:
            outside += 1
            continue
        m = multiplier(boosts, ts)
        expected += diamonds * m
        gifts += 1
        if m > 1:
            boosted += 1
            points_boosted += diamonds * m
    score = -1
    if end is not None and stream in end.end.streams:
        score = end.end.scores[end.end.streams.index(stream)]
    return BattleSideFigures(
        stream=stream,
        creator=creator,
        score=score,
        expected=expected,
        gifts=gifts,
        gifts_boosted=boosted,
        points_boosted=points_boosted,
        stamped_outside=outside,
    )
