"""A run's result: what the JSON file holds, field for field (see docs/loadtest.md)."""

from __future__ import annotations

import msgspec

from giftrelay.wire.events import Boost

from ...drivers.viewer import Latency


class GiftTotals(msgspec.Struct, kw_only=True):
    sent: int
    acked: int
    """Every acknowledged gift, including answers that came after the window."""
    acked_in_window: int
    per_second: float
    unresolved: int


class Delivery(msgspec.Struct, kw_only=True):
    expected: int
    received: int
    lost: int
    viewers_with_loss: int
    duplicates: int
    order_violations: int
    unexpected: int
    not_recovered: int
    excused: int
    undrained: int


class RelayUsage(msgspec.Struct, kw_only=True):
    source: str
    cpu_seconds: float = 0.0
    rss_before_viewers: int = 0
    rss_idle: int = 0
    rss_max: int = 0
    rss_per_idle_connection: float = 0.0
    events_per_cpu_second: float = 0.0
    gifts_per_cpu_second: float = 0.0


class Conservation(msgspec.Struct, kw_only=True):
    coins_acked: int
    coins_from_wallets: int | None
    diamonds_credited: int
    diamonds_expected: int
    unresolved: int
    ok: bool
    detail: str


class Reconcile(msgspec.Struct, kw_only=True):
    ok: bool
    exit_status: int
    output: str


class TimePoint(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One second of the run (the battle's fields are left out of other scenarios' files)."""

    second: int
    gifts_acked: int
    events: int
    frames: int
    viewers: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    battle_events: int = 0
    """``battle``: live ``battle`` events received that second."""
    battle_scores: list[int] = msgspec.field(default_factory=list)
    """``battle``: each side's highest live score seen that second (inviting side first)."""


class Step(msgspec.Struct, kw_only=True):
    index: int
    viewers: int
    gift_rate: float
    gifts_per_s: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    delivery: float = 0.0
    ok: bool = False
    reason: str = ""


class Checks(msgspec.Struct, kw_only=True):
    no_loss: bool
    no_duplicates: bool
    in_order: bool
    no_unexpected: bool
    conservation: bool
    p99: bool | None
    """None when no ``--max-p99`` was given."""
    reconcile: bool | None
    all_viewers_connected: bool = True
    """Every viewer connected and joined: a run of fewer viewers than asked is no pass."""
    gifts_applied: bool = True
    """Gifts were acknowledged, and refused only for passing reasons (a run in which
    every gift was refused delivers nothing, so loss alone cannot fail it)."""
    battle_start_everywhere: bool | None = None
    """``battle``: every viewer of both streams received the one ``battle_start`` of the
    battle the harness started, with its ``starts_at`` and ``ends_at``."""
    battle_end_everywhere: bool | None = None
    """``battle``: every viewer of both streams received ``battle_end`` once, and all of
    them the same sides, scores and winner."""
    battle_scores: bool | None = None
    """``battle``: each side's final score = the sum over the gifts its stream's viewers
    received during the battle of diamonds x the multiplier at the gift's ``ts``."""
    battle_scores_never_fall: bool | None = None
    """``battle``: no side's score ever went down, live ``battle`` events then ``battle_end``."""
    battle_winner: bool | None = None
    """``battle``: the winner is the side with more points, none on a draw."""

    def passed(self) -> bool:
        return all(v is not False for v in msgspec.structs.astuple(self))


class BattleSideFigures(msgspec.Struct, kw_only=True):
    stream: str
    creator: str
    score: int
    """As ``battle_end`` gave it (-1 when no viewer received one)."""
    expected: int
    """From the gift events received: diamonds x the multiplier at each gift's ``ts``."""
    gifts: int
    """Gifts counted: after ``battle_start`` and before ``battle_end`` on the stream, ``ts``
    in [starts_at, ends_at)."""
    gifts_boosted: int
    """Of those, the gifts whose ``ts`` falls in a boost window."""
    points_boosted: int
    stamped_outside: int
    """Gifts with ``ts`` in [starts_at, ends_at) but before ``battle_start`` or after
    ``battle_end`` on the stream: the server does not count them, the harness neither."""


class BattleFigures(msgspec.Struct, kw_only=True):
    """The ``battle`` scenario's battle: what it was, and what viewers received of it."""

    battle: str
    duration_s: int
    starts_at: int
    ends_at: int
    boosts: list[Boost]
    """As ``battle_start`` gave them (the server's clock, ms; end exclusive)."""
    start_ms: float
    """From sending ``battle_invite`` to the ``battle_ok`` of ``battle_accept``."""
    sides: list[BattleSideFigures]
    winner: str | None
    gifts: int
    gifts_boosted: int
    viewers: int
    viewers_started: int
    viewers_ended: int
    distinct_ends: int
    """Different ``battle_end`` contents received (sides, scores, winner): 1 when all agree."""
    extra_starts: int
    extra_ends: int
    events: int
    """Live ``battle`` events received, all viewers."""
    events_per_viewer: float
    events_per_viewer_min: int
    events_per_viewer_max: int
    score_falls: int
    viewers_with_falls: int
    late_events: int
    """Live ``battle`` events received after ``battle_end``."""
    end_latency_ms: Latency
    """``battle_end`` arrival at each viewer - ``ends_at`` (the referee's grace included)."""


class Result(msgspec.Struct, kw_only=True):
    name: str
    scenario: str
    flavour: str
    url: str
    run_id: str
    started_at: float
    duration_s: float
    processes: int
    options: dict[str, object]
    streams: int
    viewers: int
    viewers_connected: int
    viewers_failed: int
    slow_viewers: int
    gifters: int
    gifts: GiftTotals
    ack_latency_ms: Latency
    latency_ms: Latency
    """Gift -> viewer: receive wall time - the event's ``ts`` (normal viewers only)."""
    slow_latency_ms: Latency
    events_per_s: float
    gift_events_per_s: float
    frames_per_s: float
    events_per_frame: float
    delivery: Delivery
    errors: dict[str, int]
    reconnects: int
    close_codes: dict[str, int]
    relay: RelayUsage
    conservation: Conservation
    reconcile: Reconcile | None
    timeline: list[TimePoint]
    latency_histogram: list[tuple[float, int]]
    steps: list[Step]
    knee: Step | None
    checks: Checks
    passed: bool
    battle: BattleFigures | None = None
    """``battle`` only."""


result_decoder = msgspec.json.Decoder(Result)
