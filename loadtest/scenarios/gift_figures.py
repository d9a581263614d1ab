"""What ``giftrelay-loadtest gifts`` reports: each run's figures, their medians over the
rounds, and the ratios that issue 21 sets goals for, as tables and JSON."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import msgspec
from rich.table import Table

from ..drivers.viewer import Latency

GOAL_GIFTS_PER_CPU_S = 25_000

# -- results ----------------------------------------------------------------------------------


class CommandStat(msgspec.Struct):
    calls: int
    usec: int


class RedisCost(msgspec.Struct):
    """Redis's work over a window, from ``INFO cpu`` and ``INFO commandstats`` deltas."""

    cpu_seconds: float
    commands: dict[str, CommandStat]
    """By command (``evalsha``, ...), the window's calls and µs; INFO itself left out."""

    def per_call_us(self, command: str) -> float:
        stat = self.commands.get(command)
        return stat.usec / stat.calls if stat and stat.calls else 0.0


class TargetRun(msgspec.Struct):
    target: str
    round: int
    seconds: float
    connected: int
    sent: int
    acked: int
    gifts_per_s: float
    errors: dict[str, int]
    unanswered: int
    ack_latency_ms: Latency
    relay_cpu_seconds: float
    relay_cpu_us_per_gift: float
    gifts_per_relay_cpu_second: float
    client_cpu_seconds: float
    redis: RedisCost
    redis_cpu_us_per_gift: float
    redis_calls_per_gift: float
    """Commands Redis ran per gift, those inside scripts included (commandstats)."""
    evalsha_us_per_call: float


class Reference(msgspec.Struct):
    """The gift script under redis-benchmark: what Redis spends per gift at least."""

    round: int
    gifts: int
    applied: int
    gifts_per_s: float
    redis: RedisCost
    redis_cpu_us_per_gift: float
    evalsha_us_per_call: float


class Outcome(msgspec.Struct):
    runs: list[TargetRun]
    references: list[Reference]
    not_completed: list[str]


# -- summary ----------------------------------------------------------------------------------

ROWS: list[tuple[str, str]] = [
    ("users connected", "connected"),
    ("gifts/s acknowledged", "gifts_per_s"),
    ("errors", "error_count"),
    ("gifts per relay CPU-s", "gifts_per_relay_cpu_second"),
    ("µs of relay CPU per gift", "relay_cpu_us_per_gift"),
    ("µs of Redis CPU per gift", "redis_cpu_us_per_gift"),
    ("Redis commands per gift", "redis_calls_per_gift"),
    ("EVALSHA µs per call", "evalsha_us_per_call"),
    ("ack p50 ms", "ack_latency_ms.p50"),
    ("ack p99 ms", "ack_latency_ms.p99"),
    ("ack p99.9 ms", "ack_latency_ms.p999"),
    ("client CPU s", "client_cpu_seconds"),
    ("relay CPU s", "relay_cpu_seconds"),
]


def _value(run: Any, path: str) -> float:
    if path == "error_count":
        return float(sum(run.errors.values()))
    value: Any = run
    for part in path.split("."):
        value = getattr(value, part)
    return float(value)


def medians(outcome: Outcome) -> dict[str, dict[str, float]]:
    """Per target (and ``redis-benchmark``), each figure's median over the rounds."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(run.target for run in outcome.runs):
        runs = [run for run in outcome.runs if run.target == name]
        out[name] = {path: statistics.median(_value(x, path) for x in runs) for _, path in ROWS}
    if outcome.references:
        refs = outcome.references
        out["redis-benchmark"] = {
            path: statistics.median(_value(x, path) for x in refs)
            for path in ("gifts_per_s", "redis_cpu_us_per_gift", "evalsha_us_per_call")
        }
    return out


class Ratio(msgspec.Struct):
    value: float | None
    goal: str
    met: bool | None
    note: str = ""


def ratios(m: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, Ratio]:
    """The figures issue 21 sets goals for, from the medians (None: a side is missing)."""
    relay, echo, naive = m.get("giftrelay", {}), m.get("echo", {}), m.get("naive", {})
    ref = m.get("redis-benchmark", {})

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def judged(value: float | None, goal: str, ok: Any, note: str = "") -> Ratio:
        return Ratio(value, goal, None if value is None or ok is None else bool(ok(value)), note)

    p99 = relay.get("ack_latency_ms.p99")
    at_5000 = args.rate == 5000
    return {
        "gifts per relay CPU-s": judged(
            relay.get("gifts_per_relay_cpu_second"), f">= {GOAL_GIFTS_PER_CPU_S:,}",
            lambda v: v >= GOAL_GIFTS_PER_CPU_S,
        ),
        "relay CPU per gift ÷ echo's": judged(
            ratio(relay.get("relay_cpu_us_per_gift"), echo.get("relay_cpu_us_per_gift")),
            "<= 1.5", lambda v: v <= 1.5,
        ),
        "Redis CPU per gift ÷ redis-benchmark's": judged(
            ratio(relay.get("redis_cpu_us_per_gift"), ref.get("redis_cpu_us_per_gift")),
            "<= 1.5", lambda v: v <= 1.5,
        ),
        "EVALSHA µs per call ÷ redis-benchmark's": judged(
            ratio(relay.get("evalsha_us_per_call"), ref.get("evalsha_us_per_call")),
            "(no goal)", None,
        ),
        "gifts/s ÷ naive's": judged(
            ratio(relay.get("gifts_per_s"), naive.get("gifts_per_s")), ">= 5",
            lambda v: v >= 5,
        ),
        "ack p99 ms": judged(
            p99 if at_5000 else None, "<= 20 at --rate 5000", lambda v: v <= 20,
            "" if at_5000 else f"needs --rate 5000; here {p99 or 0:.1f}",
        ),
    }  # fmt: skip


def tables(outcome: Outcome, args: argparse.Namespace) -> tuple[Table, Table]:
    m = medians(outcome)
    loop = f"open loop, {args.rate:,.0f} gifts/s" if args.rate else "closed loop"
    figures = Table(
        title=f"gifts: medians over {args.repeat} round(s); {loop}, {args.processes} x "
        f"{args.connections} connections, {args.inflight} in flight, {args.workers} worker(s)"
    )
    figures.add_column("figure")
    names = list(m)
    for name in names:
        figures.add_column(name, justify="right")
    for label, path in ROWS:
        cells = [_shown(m[n][path]) if path in m[n] else "" for n in names]
        figures.add_row(label, *cells)
    goals = Table(title="issue 21's goals (giftrelay, in this run)")
    for column in ("figure", "value", "goal", "met"):
        goals.add_column(column, justify="left" if column == "figure" else "right")
    for name, r in ratios(m, args).items():
        met = "-" if r.met is None else ("[green]yes[/]" if r.met else "[red]no[/]")
        value = (
            "-" if r.value is None else (f"{r.value:,.2f}" if r.value < 100 else _shown(r.value))
        )
        goals.add_row(name + (f" ({r.note})" if r.note else ""), value, r.goal, met)
    return figures, goals


def _shown(v: float) -> str:
    """Whole numbers as such, small figures with two decimals, the rest with none."""
    if v.is_integer() or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.2f}"
