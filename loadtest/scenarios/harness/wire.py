"""Messages between the harness's coordinator and its worker processes (JSON lines).

The coordinator writes commands to a worker's stdin; the worker writes reports to
its stdout. Latencies travel as counts per 0.1 ms bucket (a viewers' ``Meter``), which
workers can add up at a few nanoseconds per event; the coordinator turns them into
HDR histograms.
"""

from __future__ import annotations

import msgspec

from giftrelay.wire.events import Boost

from ...drivers.viewer import Delivery


class WorkerPlan(msgspec.Struct, kw_only=True):
    index: int
    workers: int
    url: str
    flavour: str
    """``giftrelay`` (the relay or the naive peer) or ``socketio``."""
    run_id: str
    streams: list[str]
    gift: str
    gifter_tokens: list[str]
    t0: float
    """Wall-clock start of the run: ticks are numbered in seconds from it."""
    slow_share: float = 0.0
    slow_delay: float = 0.05
    connect_rate: float = 500.0
    """New connections per second per worker, so a big run does not SYN-flood itself."""
    retry_for: float = 10.0
    max_inflight: int = 20_000
    gift_streams: list[str] | None = None
    """The streams gifts go to, in turn (``streams`` when None): battle's 3:2 split."""
    battle: bool = False
    """``battle``: viewers also follow the battle's events (:mod:`.battle`)."""


# -- coordinator -> worker ------------------------------------------------------------------


class Command(msgspec.Struct, tag_field="cmd", kw_only=True):
    pass


class SetViewers(Command, tag="viewers"):
    count: int


class SetRate(Command, tag="rate"):
    gifts_per_s: float
    """0 stops; a negative value means as fast as the relay answers (``inflight`` per gifter)."""
    inflight: int = 4


class Storm(Command, tag="storm"):
    window: float


class StopGifts(Command, tag="stop"):
    pass


class Verify(Command, tag="verify"):
    acked: dict[str, list[int]]
    """Every acknowledged gift's offset (:func:`~loadtest.drivers.viewer.key_int`) by stream."""
    drain_timeout: float


class Exit(Command, tag="exit"):
    pass


AnyCommand = SetViewers | SetRate | Storm | StopGifts | Verify | Exit

# -- worker -> coordinator ------------------------------------------------------------------


class Report(msgspec.Struct, tag_field="ev", kw_only=True):
    worker: int


class Tick(Report, tag="tick"):
    second: int
    gifts_sent: int = 0
    gifts_acked: int = 0
    coins_acked: int = 0
    ack_latency: dict[int, int] = msgspec.field(default_factory=dict)
    latency: dict[int, int] = msgspec.field(default_factory=dict)
    slow_latency: dict[int, int] = msgspec.field(default_factory=dict)
    events: int = 0
    gift_events: int = 0
    frames: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    reconnects: int = 0
    viewers: int = 0
    """Viewer connections open at the end of the second."""
    battle_events: int = 0
    """``battle``: live ``battle`` events received."""
    battle_ends: int = 0
    """``battle``: viewers that received ``battle_end`` in this second."""
    battle_scores: list[int] = msgspec.field(default_factory=list)
    """``battle``: the highest score of each side (inviting side first) viewers saw."""


class ViewersReady(Report, tag="viewers_ready"):
    count: int
    failed: int
    seconds: float


class Acked(Report, tag="acked"):
    acked: dict[str, list[int]]
    coins: int
    gifts: int
    unresolved: int
    """Gifts whose outcome stayed unknown (no answer even after retrying the same id)."""


class ViewerTotals(Delivery, kw_only=True):
    """A worker's viewers: their :class:`~loadtest.drivers.viewer.Delivery`, and more."""

    slow_viewers: int = 0
    reconnects: int = 0
    close_codes: dict[int, int] = msgspec.field(default_factory=dict)


class BattleStart(msgspec.Struct, frozen=True, kw_only=True):
    """A ``battle_start`` event as viewers received it."""

    battle: str
    offset: str
    starts_at: int
    ends_at: int
    boosts: list[Boost]


class BattleEnd(msgspec.Struct, frozen=True, kw_only=True):
    """A ``battle_end`` event as viewers received it: sides' streams and scores in order."""

    battle: str
    offset: str
    streams: list[str]
    scores: list[int]
    winner: str | None


class StartSeen(msgspec.Struct, kw_only=True):
    stream: str
    start: BattleStart
    viewers: int


class EndSeen(msgspec.Struct, kw_only=True):
    stream: str
    end: BattleEnd
    viewers: int


class BattleSeen(msgspec.Struct, kw_only=True):
    """A worker's viewers' battle: what they received of it, added up."""

    viewers: int = 0
    viewers_by_stream: dict[str, int] = msgspec.field(default_factory=dict)
    starts: list[StartSeen] = msgspec.field(default_factory=list)
    """Each distinct ``battle_start`` of each stream, and how many viewers received it."""
    ends: list[EndSeen] = msgspec.field(default_factory=list)
    """Likewise ``battle_end``."""
    extra_starts: int = 0
    """``battle_start`` events a viewer received after its first."""
    extra_ends: int = 0
    events: int = 0
    """Live ``battle`` events received, all viewers."""
    events_min: int = 0
    """The fewest a viewer received."""
    events_max: int = 0
    score_falls: int = 0
    """A side's score lower than the one before it (live events, then ``battle_end``)."""
    viewers_with_falls: int = 0
    late_events: int = 0
    """Live ``battle`` events received after the viewer's ``battle_end``."""
    end_latency: dict[int, int] = msgspec.field(default_factory=dict)
    """``battle_end`` arrival - ``ends_at``, counts per 0.1 ms bucket."""
    gifts: dict[str, list[tuple[str, int, int]]] = msgspec.field(default_factory=dict)
    """Every gift event the viewers received, by stream: (offset, ts, diamonds), once each."""


class Final(Report, tag="final"):
    totals: ViewerTotals
    battle: BattleSeen | None = None


class Failed(Report, tag="failed"):
    error: str


AnyReport = Tick | ViewersReady | Acked | Final | Failed

encoder = msgspec.json.Encoder()
command_decoder = msgspec.json.Decoder(AnyCommand)
report_decoder = msgspec.json.Decoder(AnyReport)
plan_decoder = msgspec.json.Decoder(WorkerPlan)
