"""A harness run's outcome: money conservation, ``giftrelay reconcile``, the result's figures."""

from __future__ import annotations

import asyncio
import math
import sys
from collections import Counter
from fractions import Fraction
from typing import TYPE_CHECKING

import msgspec

from ...drivers.viewer import LATENCY_UNIT_MS, percentile, summarise_latency
from . import wire
from .relaystats import Sample
from .result import (
    Checks,
    Conservation,
    Delivery,
    GiftTotals,
    Reconcile,
    RelayUsage,
    Result,
    Step,
    TimePoint,
)

if TYPE_CHECKING:
    from .battle import Verdict
    from .coordinator import Harness

FUNDS = 10**9
"""Coins per gifter: never the limit, and well inside the relay's ``max_balance``."""
PASSING_ERRORS = frozenset({"rate_limited", "unavailable"})
"""Refusals a busy or recovering relay may give without the run failing (they are retried)."""


def conserve(
    acked: list[wire.Acked],
    before: dict[str, int],
    after: dict[str, int],
    coins_left: int | None,
    gifters: int,
    diamonds_per_coin: str,
) -> Conservation:
    """Coins the harness had acknowledged = the fall of the gifters' wallets = the
    diamonds credited to the creators x ``diamonds_per_coin``."""
    coins = sum(a.coins for a in acked)
    gifts = sum(a.gifts for a in acked)
    unresolved = sum(a.unresolved for a in acked)
    rate = Fraction(diamonds_per_coin)
    price = coins // gifts if gifts else 0
    expected = gifts * math.floor(price * rate)
    credited = sum(after.values()) - sum(before.values())
    wallets = None if coins_left is None else gifters * FUNDS - coins_left
    ok = credited == expected and unresolved == 0 and wallets in (None, coins)
    detail = (
        f"harness acknowledged {coins} coins in {gifts} gifts; "
        f"creators were credited {credited} diamonds (expected {expected})"
    )
    if wallets is not None:
        detail += f"; gifters' wallets went down by {wallets} coins"
    if unresolved:
        detail += f"; {unresolved} gifts with no known outcome"
    return Conservation(
        coins_acked=coins,
        coins_from_wallets=wallets,
        diamonds_credited=credited,
        diamonds_expected=expected,
        unresolved=unresolved,
        ok=ok,
        detail=detail,
    )


async def reconcile() -> Reconcile:
    """``giftrelay reconcile`` with this environment (it reads GIFTRELAY_* like the relay)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "reconcile", "--wait", "30",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return Reconcile(ok=proc.returncode == 0, exit_status=proc.returncode or 0,
                     output=out.decode(errors="replace")[-4000:])  # fmt: skip


def result(
    h: Harness,
    *,
    started_at: float,
    run: tuple[float, float],
    streams: list[str],
    gifters: int,
    viewers_total: int,
    connected: int,
    failed: int,
    samples: tuple[Sample | None, Sample | None, Sample | None],
    acked_reports: list[wire.Acked],
    finals: list[wire.Final],
    conservation: Conservation,
    reconcile: Reconcile | None,
    steps: list[Step],
    battle: Verdict | None = None,
) -> Result:
    o = h.o
    tl = h.timeline
    seconds = max(1e-9, run[1] - run[0])
    # Rates from the whole seconds inside the run (the first and last are partial).
    first, last = math.ceil(run[0]), max(math.ceil(run[0]), math.floor(run[1]) - 1)
    ticks = tl.window(first, last)
    span = max(1, last - first + 1)
    totals = wire.ViewerTotals()
    codes: Counter[int] = Counter()
    for f in finals:
        t = f.totals
        for name in wire.ViewerTotals.__struct_fields__:
            if name != "close_codes":
                setattr(totals, name, getattr(totals, name) + getattr(t, name))
        codes.update(t.close_codes)
    events = sum(t.events for t in ticks)
    gifts_acked = sum(a.gifts for a in acked_reports)
    gift_events = sum(t.gift_events for t in ticks)
    frames = sum(t.frames for t in ticks)
    before, idle, at_stop = samples
    usage = RelayUsage(source=h.sampler.source)
    if before and idle:
        usage.rss_before_viewers = before.rss_bytes
        usage.rss_idle = idle.rss_bytes
        if connected:
            usage.rss_per_idle_connection = (idle.rss_bytes - before.rss_bytes) / connected
    run_samples = [s for t, s in h.samples if run[0] - 1.5 <= t <= run[1] + 0.5]
    if idle and at_stop:
        usage.cpu_seconds = at_stop.cpu_seconds - idle.cpu_seconds
        usage.rss_max = max([s.rss_bytes for s in run_samples] + [at_stop.rss_bytes])
        if usage.cpu_seconds > 0:  # over the run: rates x its length / CPU in it
            usage.events_per_cpu_second = events / span * seconds / usage.cpu_seconds
            usage.gifts_per_cpu_second = gifts_acked / usage.cpu_seconds
    lat = summarise_latency(tl.latency)
    checks = Checks(
        no_loss=totals.lost == 0 and totals.undrained == 0,
        no_duplicates=totals.duplicates == 0,
        in_order=totals.order_violations == 0,
        no_unexpected=totals.unexpected == 0,
        conservation=conservation.ok,
        p99=None if o.max_p99 is None else lat.p99 <= o.max_p99,
        reconcile=None if reconcile is None else reconcile.ok,
        all_viewers_connected=failed == 0,
        gifts_applied=gifts_acked > 0 and set(tl.errors) <= PASSING_ERRORS,
    )
    if battle is not None:
        checks.battle_start_everywhere = battle.start_everywhere
        checks.battle_end_everywhere = battle.end_everywhere
        checks.battle_scores = battle.scores
        checks.battle_scores_never_fall = battle.never_fall
        checks.battle_winner = battle.winner
    timeline = [
        TimePoint(
            second=s,
            gifts_acked=t.gifts_acked,
            events=t.events,
            frames=t.frames,
            viewers=t.viewers,
            p50_ms=percentile(tl.per_second_latency.get(s, {}), 50),
            p99_ms=percentile(tl.per_second_latency.get(s, {}), 99),
            max_ms=percentile(tl.per_second_latency.get(s, {}), 100),
            errors=sum(t.errors.values()),
            battle_events=t.battle_events,
            battle_scores=t.battle_scores,
        )
        for s, t in sorted(tl.seconds.items())
    ]
    knee = None
    if steps:
        good = [s for s in steps if s.ok]
        knee = good[-1] if good else None
    acked = sum(t.gifts_acked for t in ticks)
    return Result(
        name=o.name or o.scenario,
        scenario=o.scenario,
        flavour=o.flavour,
        url=o.url,
        run_id=h.run_id,
        started_at=started_at,
        duration_s=seconds,
        processes=len(h.workers),
        options=msgspec.to_builtins(o, builtin_types=None)
        | {
            "secret": None,
            "admin_token": None,
            "gifter_tokens": None,
        },
        streams=len(streams),
        viewers=viewers_total,
        viewers_connected=connected,
        viewers_failed=failed,
        slow_viewers=totals.slow_viewers,
        gifters=gifters,
        gifts=GiftTotals(
            sent=sum(t.gifts_sent for t in tl.seconds.values()),
            acked=sum(a.gifts for a in acked_reports),
            acked_in_window=acked,
            per_second=gifts_acked / seconds,
            unresolved=conservation.unresolved,
        ),
        ack_latency_ms=summarise_latency(tl.ack_latency),
        latency_ms=lat,
        slow_latency_ms=summarise_latency(tl.slow_latency),
        events_per_s=events / span,
        gift_events_per_s=gift_events / span,
        frames_per_s=frames / span,
        events_per_frame=events / frames if frames else 0.0,
        delivery=Delivery(
            expected=totals.expected,
            received=totals.received,
            lost=totals.lost,
            viewers_with_loss=totals.viewers_with_loss,
            duplicates=totals.duplicates,
            order_violations=totals.order_violations,
            unexpected=totals.unexpected,
            not_recovered=totals.not_recovered,
            excused=totals.excused,
            undrained=totals.undrained,
        ),
        errors=dict(tl.errors),
        reconnects=totals.reconnects,
        close_codes={str(k): v for k, v in sorted(codes.items())},
        relay=usage,
        conservation=conservation,
        reconcile=reconcile,
        timeline=timeline,
        latency_histogram=histogram_buckets(tl.latency),
        steps=steps,
        knee=knee,
        checks=checks,
        passed=checks.passed(),
        battle=battle.figures if battle is not None else None,
    )


def histogram_buckets(counts: Counter[int]) -> list[tuple[float, int]]:
    """Latency counts in log-spaced bins (upper bound in ms, count), for the report's chart."""
    if not counts:
        return []
    edges = [0.5 * (2 ** (i / 2)) for i in range(0, 34)]  # 0.5 ms .. ~65 s
    bins = [0] * len(edges)
    for bucket, n in counts.items():
        ms = max(0, bucket) * LATENCY_UNIT_MS
        for i, edge in enumerate(edges):
            if ms <= edge or i == len(edges) - 1:
                bins[i] += n
                break
    while bins and bins[-1] == 0:
        bins.pop()
    return [(round(edges[i], 3), bins[i]) for i in range(len(bins))]
