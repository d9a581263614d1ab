"""The worker processes as the coordinator sees them, and their ticks added up per second."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from ...drivers.target import ROOT
from . import wire


class WorkerProc:
    """One worker process and the reports it sends."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process, on_tick: Callable[..., None]):
        self.index = index
        self.proc = proc
        self.replies: asyncio.Queue[wire.Report] = asyncio.Queue()
        self.on_tick = on_tick
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            report = wire.report_decoder.decode(line)
            if isinstance(report, wire.Tick):
                self.on_tick(report)
            else:
                self.replies.put_nowait(report)
        self.replies.put_nowait(wire.Failed(worker=self.index, error="worker exited"))

    def send(self, command: wire.Command) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(wire.encoder.encode(command) + b"\n")

    async def reply(self, kind: type[wire.Report], within: float) -> Any:
        async with asyncio.timeout(within):
            report = await self.replies.get()
        if isinstance(report, wire.Failed):
            raise RuntimeError(f"worker {self.index}: {report.error}")
        if not isinstance(report, kind):
            raise RuntimeError(f"worker {self.index}: expected {kind.__name__}, got {report!r}")
        return report


async def start_worker(plan: wire.WorkerPlan, on_tick: Callable[..., None]) -> WorkerProc:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.scenarios.harness.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
        limit=1 << 30,
    )
    assert proc.stdin is not None
    proc.stdin.write(wire.encoder.encode(plan) + b"\n")
    return WorkerProc(plan.index, proc, on_tick)


class Timeline:
    """Ticks from every worker, added up per second since the run's start."""

    def __init__(self) -> None:
        self.seconds: dict[int, wire.Tick] = {}
        self.latency: Counter[int] = Counter()
        self.slow_latency: Counter[int] = Counter()
        self.ack_latency: Counter[int] = Counter()
        self.per_second_latency: dict[int, Counter[int]] = {}
        self.errors: Counter[str] = Counter()
        self.viewers: dict[tuple[int, int], int] = {}
        self.battle_ends = 0
        """``battle``: viewers that have received ``battle_end``, so far."""
        self.changed = asyncio.Event()

    def add(self, tick: wire.Tick) -> None:
        total = self.seconds.setdefault(tick.second, wire.Tick(worker=-1, second=tick.second))
        for name in ("gifts_sent", "gifts_acked", "coins_acked", "events", "gift_events",
                     "battle_events", "battle_ends"):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(tick, name))
        if tick.battle_scores:
            mine = total.battle_scores or [0] * len(tick.battle_scores)
            total.battle_scores = [max(a, b) for a, b in zip(mine, tick.battle_scores, strict=True)]
        self.battle_ends += tick.battle_ends
        total.frames += tick.frames
        total.reconnects += tick.reconnects
        self.viewers[(tick.second, tick.worker)] = tick.viewers
        total.viewers = sum(v for (s, _), v in self.viewers.items() if s == tick.second)
        for code, n in tick.errors.items():
            total.errors[code] = total.errors.get(code, 0) + n
        self.errors.update(tick.errors)
        self.latency.update(tick.latency)
        self.slow_latency.update(tick.slow_latency)
        self.ack_latency.update(tick.ack_latency)
        self.per_second_latency.setdefault(tick.second, Counter()).update(tick.latency)
        self.changed.set()

    async def reported(self, second: int, workers: int, within: float = 3.0) -> None:
        """Until every worker's tick for ``second`` is in (they come just after it ends)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while sum(1 for s, _ in self.viewers if s == second) < workers:
                    self.changed.clear()
                    await self.changed.wait()

    def window(self, first: int, last: int) -> list[wire.Tick]:
        return [t for s, t in sorted(self.seconds.items()) if first <= s <= last]

    def latency_in(self, first: int, last: int) -> Counter[int]:
        merged: Counter[int] = Counter()
        for second in range(first, last + 1):
            merged.update(self.per_second_latency.get(second, {}))
        return merged
