"""One load-test worker process: many viewer and gifter connections on one event loop.

Started by the coordinator (``python -m loadtest.worker``), it reads its plan and
then commands as JSON lines on stdin and writes a :class:`~loadtest.wire.Tick`
every second, plus the answers to commands, as JSON lines on stdout. Logs go to
stderr. Every viewer checks its own gift events as they arrive: order and
duplicates by offset, loss against the gifts acknowledged by all workers.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
import sys
import time
from collections import Counter, deque
from typing import Any, BinaryIO, Protocol

from giftrelay import logs
from giftrelay.client import Client, Event, GiftEvent, GiftOk, Joined, RelayError

from . import wire


class Connection(Protocol):
    """What the worker needs of a client: giftrelay's, or the Socket.IO adapter."""

    reconnects: int
    close_codes: Counter[int]

    async def connect(self) -> object: ...
    async def close(self) -> None: ...
    async def join(self, stream: str, since: str | None = None) -> Joined: ...
    async def reconnect(self, after: float = 0.0) -> None: ...
    async def gift(
        self, stream: str, gift: str, count: int = 1, *, id: str | None = None,
        retry_for: float = 30.0,
    ) -> GiftOk: ...  # fmt: skip


def make_client(flavour: str, url: str, token: str | None, **handlers: Any) -> Connection:
    if flavour == "socketio":
        from .drivers.sio import SioClient

        return SioClient(url, token, **handlers)
    return Client(url, token, dedupe=False, **handlers)


class Stats:
    """This second's counters; emptied into a Tick every second."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.gifts_sent = 0
        self.gifts_acked = 0
        self.coins_acked = 0
        self.ack_latency: Counter[int] = Counter()
        self.latency: Counter[int] = Counter()
        self.slow_latency: Counter[int] = Counter()
        self.events = 0
        self.gift_events = 0
        self.frames = 0
        self.errors: Counter[str] = Counter()
        self.reconnects = 0


class Viewer:
    """One viewer connection and the checks on what it receives."""

    def __init__(self, worker: Worker, stream: str, slow: bool) -> None:
        self.worker = worker
        self.stream = stream
        self.slow = slow
        self.start: int | None = None
        self.last = 0
        self.unique = 0
        self.keysum = 0
        self.duplicates = 0
        self.order = 0
        self.recent: deque[int] = deque(maxlen=512)
        self.gaps: list[tuple[int, int]] = []
        self.not_recovered = 0
        self.target = 0
        on_events = self.on_events_slow if slow else self.on_events
        self.client = make_client(
            worker.plan.flavour, worker.plan.url, None, on_events=on_events, on_joined=self.joined
        )

    def joined(self, joined: Joined) -> None:
        key = wire.key_int(joined.offset)
        if self.start is None:
            self.start = self.last = key
        elif not joined.recovered:
            self.not_recovered += 1
            if key > self.last:
                self.gaps.append((self.last, key))
                self.last = key
        self.check_drained()

    def on_events(self, stream: str, events: list[Event]) -> None:
        stats = self.worker.stats
        latency = stats.slow_latency if self.slow else stats.latency
        now = time.time() * 1000.0
        stats.frames += 1
        stats.events += len(events)
        last = self.last
        for event in events:  # this loop is most of a viewer's cost: kept lean
            if type(event) is not GiftEvent:
                continue
            stats.gift_events += 1
            latency[int((now - event.ts) * 10)] += 1
            ms, _, seq = event.offset.partition("-")
            key = int(ms) * 1_000_000 + int(seq or 0)  # wire.key_int, inline
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
        if self.target and self.last >= self.target:
            self.check_drained()

    async def on_events_slow(self, stream: str, events: list[Event]) -> None:
        self.on_events(stream, events)
        if not self.worker.draining:  # slow during the run; it catches up to be verified
            await asyncio.sleep(self.worker.plan.slow_delay)  # reading waits for the app

    def check_drained(self) -> None:
        if self.target and self.last >= self.target:
            self.worker.drained.set()


class Worker:
    def __init__(self, plan: wire.WorkerPlan, out: BinaryIO) -> None:
        self.plan = plan
        self.out = out
        self.stats = Stats()
        self.viewers: list[Viewer] = []
        self.gifters: list[Connection] = []
        self.rate = 0.0
        self.inflight_per_gifter = 4
        self.pacer: asyncio.Task[None] | None = None
        self.gift_tasks: set[asyncio.Task[None]] = set()
        self.acked: dict[str, list[str]] = {s: [] for s in plan.streams}
        self.coins = 0
        self.gifts = 0
        self.unknown: list[tuple[Connection, str, str]] = []
        """Gifts with no answer: (gifter, stream, id). Ids are per user: resend as the same one."""
        self.ids = itertools.count()
        self.drained = asyncio.Event()
        self.draining = False
        self.global_viewer = plan.index
        self.rng = random.Random(plan.index)
        self.reconnects_seen = 0

    def send(self, report: wire.Report) -> None:
        self.out.write(wire.encoder.encode(report) + b"\n")
        self.out.flush()

    # -- viewers ---------------------------------------------------------------------------

    async def set_viewers(self, count: int) -> None:
        started = time.monotonic()
        new: list[Viewer] = []
        while len(self.viewers) + len(new) < count:
            # Viewers are numbered across workers, so streams fill evenly.
            stream = self.plan.streams[self.global_viewer % len(self.plan.streams)]
            self.global_viewer += self.plan.workers
            slow = self.rng.random() < self.plan.slow_share
            new.append(Viewer(self, stream, slow))
        failed = 0
        gap = 1.0 / self.plan.connect_rate
        tasks = []
        for v in new:
            tasks.append(asyncio.create_task(self._open_viewer(v)))
            await asyncio.sleep(gap)
        for ok in await asyncio.gather(*tasks):
            failed += not ok
        self.viewers.extend(v for v, t in zip(new, tasks, strict=True) if t.result())
        self.send(
            wire.ViewersReady(
                worker=self.plan.index,
                count=len(self.viewers),
                failed=failed,
                seconds=time.monotonic() - started,
            )
        )

    async def _open_viewer(self, viewer: Viewer) -> bool:
        try:
            await viewer.client.connect()
            await viewer.client.join(viewer.stream)
        except (OSError, TimeoutError, RelayError, Exception) as exc:
            self.stats.errors[_code(exc)] += 1
            with contextlib.suppress(Exception):
                await viewer.client.close()
            return False
        return True

    def storm(self, window: float) -> None:
        """Every viewer drops its connection and rejoins with ``since`` within ``window`` s."""
        for viewer in self.viewers:
            asyncio.create_task(viewer.client.reconnect(self.rng.uniform(0, window)))  # noqa: RUF006

    # -- gifters ---------------------------------------------------------------------------

    async def open_gifters(self) -> None:
        for token in self.plan.gifter_tokens:
            client = make_client(self.plan.flavour, self.plan.url, token)
            await client.connect()
            self.gifters.append(client)

    def set_rate(self, rate: float, inflight: int) -> None:
        self.rate = rate
        self.inflight_per_gifter = inflight
        if self.pacer is not None:
            self.pacer.cancel()
            self.pacer = None
        if rate > 0:
            self.pacer = asyncio.create_task(self._pace(rate))
        elif rate < 0:
            self.pacer = asyncio.create_task(self._flood(inflight))

    async def _pace(self, rate: float) -> None:
        """Open loop: gifts at ``rate``/s whatever the answers do (as real viewers would)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        turn = itertools.cycle(range(len(self.gifters)))
        streams = itertools.cycle(self.plan.streams)
        while True:
            due = int((loop.time() - started) * rate)
            while sent < due:
                sent += 1
                if len(self.gift_tasks) >= self.plan.max_inflight:
                    self.stats.errors["harness_backlog"] += 1
                    continue
                task = asyncio.create_task(self._gift(self.gifters[next(turn)], next(streams)))
                self.gift_tasks.add(task)
                task.add_done_callback(self.gift_tasks.discard)
            await asyncio.sleep(min(0.01, max(0.001, 1.0 / rate)))

    async def _flood(self, inflight: int) -> None:
        """Closed loop: each gifter keeps ``inflight`` gifts waiting for answers."""
        streams = itertools.cycle(self.plan.streams)

        async def lane(gifter: Connection) -> None:
            while True:
                await self._gift(gifter, next(streams))

        lanes = [lane(g) for g in self.gifters for _ in range(inflight)]
        await asyncio.gather(*lanes)

    async def _gift(self, gifter: Connection, stream: str) -> None:
        gift_id = f"{self.plan.run_id}-{self.plan.index}-{next(self.ids)}"
        stats = self.stats
        stats.gifts_sent += 1
        started = time.perf_counter()
        try:
            ok = await gifter.gift(
                stream, self.plan.gift, id=gift_id, retry_for=self.plan.retry_for
            )
        except asyncio.CancelledError:
            self.unknown.append((gifter, stream, gift_id))
            raise
        except Exception as exc:
            code = _code(exc)
            stats.errors[code] += 1
            if code in ("disconnected", "timeout", "unavailable"):
                self.unknown.append((gifter, stream, gift_id))
            return
        self._acked(ok, started)

    def _acked(self, ok: GiftOk, started: float) -> None:
        stats = self.stats
        stats.gifts_acked += 1
        stats.coins_acked += ok.coins
        stats.ack_latency[int((time.perf_counter() - started) * 10_000)] += 1
        self.acked.setdefault(ok.stream, []).append(ok.offset)
        self.coins += ok.coins
        self.gifts += 1

    async def stop_gifts(self) -> None:
        """Stop sending; let answers in flight arrive; settle unknown outcomes by resending."""
        if self.pacer is not None:
            self.pacer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.pacer
            self.pacer = None
        if self.gift_tasks:
            _, late = await asyncio.wait(list(self.gift_tasks), timeout=self.plan.retry_for + 5)
            for task in late:  # cancelled gifts join the unknown ones, settled below
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        unknown, self.unknown = self.unknown, []
        slots = asyncio.Semaphore(256)

        async def settle(gifter: Connection, stream: str, gift_id: str) -> bool:
            async with slots:
                started = time.perf_counter()
                ok = await resend(gifter, stream, self.plan.gift, gift_id, within=5.0)
            if ok is None:
                return False
            self._acked(ok, started)
            return True

        settled = await asyncio.gather(*(settle(*gift) for gift in unknown))
        unresolved = settled.count(False)
        self.flush_tick()
        self.send(
            wire.Acked(
                worker=self.plan.index,
                acked=self.acked,
                coins=self.coins,
                gifts=self.gifts,
                unresolved=unresolved,
            )
        )

    # -- verification ----------------------------------------------------------------------

    async def verify(self, acked: dict[str, list[str]], drain_timeout: float) -> None:
        self.draining = True
        keys = {s: sorted(wire.key_int(o) for o in offsets) for s, offsets in acked.items()}
        prefix = {s: list(itertools.accumulate(k, initial=0)) for s, k in keys.items()}
        for viewer in self.viewers:
            stream_keys = keys.get(viewer.stream, [])
            viewer.target = stream_keys[-1] if stream_keys else 0
        pending = [v for v in self.viewers if v.target and v.last < v.target]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while pending and loop.time() < deadline:
            self.drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - loop.time())):
                    await self.drained.wait()
            pending = [v for v in pending if v.last < v.target]
        totals = wire.ViewerTotals(undrained=len(pending))
        codes: Counter[int] = Counter()
        for viewer in self.viewers:
            totals.viewers += 1
            totals.slow_viewers += viewer.slow
            stream_keys = keys.get(viewer.stream, [])
            sums = prefix.get(viewer.stream, [0])
            start = viewer.start or 0

            count, keysum = _window(stream_keys, sums, start, stream_keys[-1] if stream_keys else 0)
            for lo, hi in viewer.gaps:
                n, k = _window(stream_keys, sums, lo, hi)
                count -= n
                keysum -= k
                totals.excused += n
            totals.expected += count
            totals.received += viewer.unique
            lost = max(0, count - viewer.unique)
            if lost == 0 and keysum != viewer.keysum:
                lost = 1  # as many as expected, but not the same ones
            totals.lost += lost
            totals.viewers_with_loss += lost > 0
            totals.unexpected += max(0, viewer.unique - count)
            totals.duplicates += viewer.duplicates
            totals.order_violations += viewer.order
            totals.not_recovered += viewer.not_recovered
            totals.reconnects += viewer.client.reconnects
            codes.update(viewer.client.close_codes)
        totals.close_codes = dict(codes)
        self.flush_tick()
        self.send(wire.Final(worker=self.plan.index, totals=totals))

    # -- the loop --------------------------------------------------------------------------

    async def ticker(self) -> None:
        plan = self.plan
        while True:
            now = time.time()
            second = int(now - plan.t0)
            await asyncio.sleep(plan.t0 + second + 1 - now)
            self.flush_tick(second)  # labelled by the second it closes, however late it wakes

    def flush_tick(self, second: int | None = None) -> None:
        """Report what happened since the last tick (every second, and before answers)."""
        plan = self.plan
        if second is None:
            second = int(time.time() - plan.t0)
        s, self.stats = self.stats, Stats()
        reconnects = sum(v.client.reconnects for v in self.viewers)
        s.reconnects, self.reconnects_seen = reconnects - self.reconnects_seen, reconnects
        self.send(
            wire.Tick(
                worker=plan.index,
                second=second,
                gifts_sent=s.gifts_sent,
                gifts_acked=s.gifts_acked,
                coins_acked=s.coins_acked,
                ack_latency=dict(s.ack_latency),
                latency=dict(s.latency),
                slow_latency=dict(s.slow_latency),
                events=s.events,
                gift_events=s.gift_events,
                frames=s.frames,
                errors=dict(s.errors),
                reconnects=s.reconnects,
                viewers=sum(1 for v in self.viewers if _open(v.client)),
            )
        )


def _window(keys: list[int], prefix: list[int], lo: int, hi: int) -> tuple[int, int]:
    """How many acknowledged gifts have offsets in (lo, hi], and the sum of those offsets."""
    i, j = bisect.bisect_right(keys, lo), bisect.bisect_right(keys, hi)
    return j - i, prefix[j] - prefix[i]


async def resend(
    gifter: Connection, stream: str, gift: str, gift_id: str, *, within: float
) -> GiftOk | None:
    """The outcome of a gift whose answer was lost, by sending it again with the same id
    (applied once, whether or not the first try got through); None if none was had.

    A relay that limits messages may refuse the resend right after a flood, and
    ``rate_limited`` moves nothing and says nothing of the first try: it is sent again
    after a pause, until ``within`` seconds have passed.
    """
    deadline = time.monotonic() + within
    pause = 0.05
    while True:
        left = deadline - time.monotonic()
        try:
            return await gifter.gift(stream, gift, id=gift_id, retry_for=max(0.1, left))
        except Exception as exc:
            if _code(exc) != "rate_limited" or left < pause:
                return None
        await asyncio.sleep(pause)
        pause = min(2 * pause, 1.0)


def _open(client: Connection) -> bool:
    connected = getattr(client, "connected", None)
    return bool(connected)


def _code(exc: BaseException) -> str:
    if isinstance(exc, RelayError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    name = type(exc).__name__
    if name == "Disconnected":
        return "disconnected"
    if name == "InvalidStatus":
        return f"http_{getattr(getattr(exc, 'response', None), 'status_code', '?')}"
    if isinstance(exc, OSError):
        return "connect_failed"
    return name


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    plan = wire.plan_decoder.decode(await reader.readline())
    worker = Worker(plan, sys.stdout.buffer)
    try:
        await worker.open_gifters()
    except Exception as exc:
        worker.send(wire.Failed(worker=plan.index, error=f"gifters could not connect: {exc!r}"))
        return
    ticker = asyncio.create_task(worker.ticker())
    try:
        while line := await reader.readline():
            match wire.command_decoder.decode(line):
                case wire.SetViewers(count=count):
                    await worker.set_viewers(count)
                case wire.SetRate(gifts_per_s=rate, inflight=inflight):
                    worker.set_rate(rate, inflight)
                case wire.Storm(window=window):
                    worker.storm(window)
                case wire.StopGifts():
                    await worker.stop_gifts()
                case wire.Verify(acked=acked, drain_timeout=drain):
                    await worker.verify(acked, drain)
                case wire.Exit():
                    break
    finally:
        ticker.cancel()
        await asyncio.gather(
            *(c.close() for c in [*worker.gifters, *(v.client for v in worker.viewers)]),
            return_exceptions=True,
        )


def run() -> None:
    logs.configure("json", "error")
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main())


if __name__ == "__main__":
    run()
