"""Messages between the harness's coordinator and its worker processes (JSON lines).

The coordinator writes commands to a worker's stdin; the worker writes reports to
its stdout. Latencies travel as counts per 0.1 ms bucket (a viewers' ``Meter``), which
workers can add up at a few nanoseconds per event; the coordinator turns them into
HDR histograms.
"""

from __future__ import annotations

import msgspec

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


class Final(Report, tag="final"):
    totals: ViewerTotals


class Failed(Report, tag="failed"):
    error: str


AnyReport = Tick | ViewersReady | Acked | Final | Failed

encoder = msgspec.json.Encoder()
command_decoder = msgspec.json.Decoder(AnyCommand)
report_decoder = msgspec.json.Decoder(AnyReport)
plan_decoder = msgspec.json.Decoder(WorkerPlan)
