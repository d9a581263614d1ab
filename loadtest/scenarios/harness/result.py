"""A run's result: what the JSON file holds, field for field (see docs/loadtest.md)."""

from __future__ import annotations

import msgspec

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


class TimePoint(msgspec.Struct, kw_only=True):
    second: int
    gifts_acked: int
    events: int
    frames: int
    viewers: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int


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

    def passed(self) -> bool:
        return all(v is not False for v in msgspec.structs.astuple(self))


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


result_decoder = msgspec.json.Decoder(Result)
