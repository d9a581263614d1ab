"""The soak's rows: every ``--interval`` seconds, what tells a relay that grows or slows.

The relay's and Redis's RSS (/proc), the ledger lag, gifts acknowledged, gift ->
viewer latency p50/p99/max of the interval and reconnects, and what tells where a
late event was held: this process's own longest event-loop stall and garbage
collection (a stall here delays the reading, not the relay), the events that reached
the relay's fan-out over 250 ms after their gift (its ``giftrelay_fanout_lag_seconds``:
held before the relay wrote them), and Redis's AOF rewrites, delayed fsyncs and
latest fork time.
"""

from __future__ import annotations

import asyncio
import csv
import gc
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from giftrelay.money import keys

from ..drivers import procstats
from ..drivers.gifter import Book, Gifter
from ..drivers.viewer import Latency, Meter, Watcher, percentile, summarise_latency

COLUMNS = ["elapsed_s", "relay_rss_mb", "redis_rss_mb", "ledger_lag", "gifts_acked",
           "gifts_per_s", "lat_p50_ms", "lat_p99_ms", "lat_max_ms", "reconnects",
           "retries", "soak_loop_stall_ms", "soak_gc_max_ms", "late_at_relay",
           "aof_rewrites", "aof_delayed_fsync", "redis_fork_ms"]  # fmt: skip
LATE_BUCKET = 'giftrelay_fanout_lag_seconds_bucket{le="0.25"}'


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


class Stalls:
    """This process's longest event-loop stall and garbage collection per interval."""

    def __init__(self) -> None:
        self.loop_ms = 0.0
        self.gc_ms = 0.0
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_ms = max(self.gc_ms, (time.perf_counter() - self._gc_start) * 1000)

    async def watch(self, stop: asyncio.Event) -> None:
        """Sleeps of 10 ms: how much later than that one ends is how long the loop stalled."""
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.loop_ms = max(self.loop_ms, (time.perf_counter() - t - 0.01) * 1000)

    def take(self) -> tuple[float, float]:
        taken = (self.loop_ms, self.gc_ms)
        self.loop_ms = self.gc_ms = 0.0
        return taken


def late_at_relay(http: str) -> int:
    """Events that reached the relay's fan-out over 250 ms after their gift, so far."""
    try:
        with urllib.request.urlopen(f"{http}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1
    count = within = 0.0
    for line in text.splitlines():
        if line.startswith("giftrelay_fanout_lag_seconds_count"):
            count += float(line.split()[-1])
        elif line.startswith(LATE_BUCKET):
            within += float(line.split()[-1])
    return int(count - within)


async def redis_persistence(redis: Any) -> tuple[int, int, float]:
    """Redis's AOF rewrites and delayed fsyncs so far, and its latest fork in ms."""
    try:
        info = {**await redis.info("persistence"), **await redis.info("stats")}
    except Exception:
        return -1, -1, float("nan")
    return (
        int(info.get("aof_rewrites", -1)),
        int(info.get("aof_delayed_fsync", -1)),
        int(info.get("latest_fork_usec", 0)) / 1000,
    )


async def ledger_lag(redis: Any) -> int:
    try:
        for group in await redis.xinfo_groups(keys.LEDGER):
            if group["name"] == keys.LEDGER_GROUP:
                return int(group["pending"]) + int(group.get("lag") or 0)
    except Exception:
        return -1
    return -1


def _ms(value: float, count: int) -> float:
    return round(value, 1) if count else float("nan")


class Samples:
    """Rows of the soak (printed, and written to ``path`` as CSV), and their peaks."""

    def __init__(
        self,
        path: Path,
        relay_pid: int,
        http: str,
        redis: Any,
        meter: Meter,
        book: Book,
        watchers: list[Watcher],
        gifters: list[Gifter],
    ) -> None:
        self.path = path
        self.relay_pid = relay_pid
        self.http = http
        self.redis = redis
        self.meter = meter
        self.book = book
        self.watchers = watchers
        self.gifters = gifters
        self.latency: Counter[int] = Counter()
        """Every measured latency of the run (0.1 ms buckets)."""
        self.peak_relay_mb = 0.0
        self.peak_lag = 0
        self.stalls = Stalls()
        self._stop = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._out = path.open("w", newline="")
        self._csv = csv.writer(self._out)
        self.started = self._last_t = time.monotonic()
        self._last_acked = 0
        self._late = -1

    async def start(self) -> None:
        self._csv.writerow(COLUMNS)
        say(" ".join(f"{c:>12}" for c in COLUMNS))
        self.started = self._last_t = time.monotonic()
        self._late = await asyncio.to_thread(late_at_relay, self.http)
        self._watch = asyncio.create_task(self.stalls.watch(self._stop))
        self.meter.take()  # the interval starts now
        self.stalls.take()

    async def row(self) -> None:
        now = time.monotonic()
        seen = self.meter.take().latency  # percentiles of the buckets: an HDR costs a stall
        self.latency.update(seen)
        pids = procstats.tree([self.relay_pid])
        redis_kb = sum(_kb(p) for p in pids if procstats.comm(p).startswith("redis"))
        relay_kb = sum(_kb(p) for p in pids if not procstats.comm(p).startswith("redis"))
        acked = self.book.gifts
        lag = await ledger_lag(self.redis)
        loop_ms, gc_ms = self.stalls.take()
        late = await asyncio.to_thread(late_at_relay, self.http)
        rewrites, delayed, fork_ms = await redis_persistence(self.redis)
        self.peak_relay_mb = max(self.peak_relay_mb, relay_kb / 1024)
        self.peak_lag = max(self.peak_lag, lag)
        row = [
            round(now - self.started),
            round(relay_kb / 1024, 1),
            round(redis_kb / 1024, 1),
            lag,
            acked,
            round((acked - self._last_acked) / max(1e-9, now - self._last_t), 1),
            _ms(percentile(seen, 50), len(seen)),
            _ms(percentile(seen, 99), len(seen)),
            _ms(percentile(seen, 100), len(seen)),
            sum(w.reconnects for w in self.watchers),
            sum(g.retries for g in self.gifters),
            round(loop_ms, 1),
            round(gc_ms, 1),
            late - self._late if late >= 0 and self._late >= 0 else -1,
            rewrites,
            delayed,
            round(fork_ms, 1),
        ]
        self._late = late
        self._csv.writerow(row)
        self._out.flush()
        say(" ".join(f"{c:>12}" for c in row))
        self._last_acked, self._last_t = acked, now

    async def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            await self._watch
        self._out.close()

    def total(self) -> Latency:
        """Every latency measured in the run, the last events' included."""
        self.latency.update(self.meter.take().latency)
        return summarise_latency(self.latency)


def _kb(pid: int) -> int:
    return procstats.rss_bytes(pid) // 1024
