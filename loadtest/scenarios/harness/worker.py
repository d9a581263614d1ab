"""One load-test worker process: many viewer and gifter connections on one event loop.

Started by the coordinator (``python -m loadtest.scenarios.harness.worker``), it reads
its plan and then commands as JSON lines on stdin and writes a :class:`~.wire.Tick`
every second, plus the answers to commands, as JSON lines on stdout. Logs go to
stderr. Its viewers and gifters are the drivers' (:mod:`loadtest.drivers.viewer`,
:mod:`loadtest.drivers.gifter`) over :class:`giftrelay.client.Client`, as an app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any, BinaryIO, NamedTuple, Protocol

from giftrelay import logs
from giftrelay.client import Client, Event, EventsHandler, GiftOk, Joined

from ...drivers.gifter import Book, Gifter, error_code, pace
from ...drivers.viewer import Expected, Meter, Viewer, drain
from . import wire
from .battle import BattleLog, BattleViewer


class Connection(Protocol):
    """What the worker needs of a client: giftrelay's, or the Socket.IO adapter."""

    reconnects: int
    close_codes: Counter[int]

    @property
    def connected(self) -> bool: ...

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
        from ...drivers.sio import SioClient

        return SioClient(url, token, **handlers)
    return Client(url, token, dedupe=False, **handlers)


class Seat(NamedTuple):
    """One viewer: its checks, its connection, and whether it reads slowly."""

    viewer: Viewer
    client: Connection
    slow: bool


class Worker:
    def __init__(self, plan: wire.WorkerPlan, out: BinaryIO) -> None:
        self.plan = plan
        self.out = out
        self.meter = Meter()
        self.slow_meter = Meter()
        self.book = Book()
        """Every gift this worker's gifters had acknowledged, and this second's counts."""
        self.errors: Counter[str] = Counter()
        """This second's viewer errors (failed connections and joins)."""
        self.seats: list[Seat] = []
        self.gifters: list[Gifter] = []
        self.gifter_clients: list[Connection] = []
        self.pacer: asyncio.Task[None] | None = None
        self.gift_tasks: set[asyncio.Task[GiftOk | None]] = set()
        self.ids = itertools.count()
        self.draining = False
        self.global_viewer = plan.index
        self.rng = random.Random(plan.index)
        self.reconnects_seen = 0
        self.battle = BattleLog() if plan.battle else None
        """``battle``: the viewers' battle, added up (their viewers are BattleViewers)."""

    def send(self, report: wire.Report) -> None:
        self.out.write(wire.encoder.encode(report) + b"\n")
        self.out.flush()

    # -- viewers ---------------------------------------------------------------------------

    def _seat(self, stream: str, slow: bool) -> Seat:
        if self.battle is not None:
            return self._battle_seat(stream)
        viewer = Viewer(stream, self.slow_meter if slow else self.meter)
        on_events: EventsHandler = viewer.on_events
        if slow:

            async def on_events(stream: str, events: list[Event]) -> None:
                viewer.on_events(stream, events)
                if not self.draining:  # slow during the run; it catches up to be verified
                    await asyncio.sleep(self.plan.slow_delay)  # reading waits for the app

        client = make_client(
            self.plan.flavour, self.plan.url, None, on_events=on_events, on_joined=viewer.joined
        )
        return Seat(viewer, client, slow)

    def _battle_seat(self, stream: str) -> Seat:
        assert self.battle is not None
        viewer = BattleViewer(stream, self.meter, self.battle)
        client = Client(
            self.plan.url, None, dedupe=False, on_events=viewer.on_events, on_joined=viewer.joined
        )
        return Seat(viewer, client, False)

    async def set_viewers(self, count: int) -> None:
        started = time.monotonic()
        new: list[Seat] = []
        while len(self.seats) + len(new) < count:
            # Viewers are numbered across workers, so streams fill evenly.
            stream = self.plan.streams[self.global_viewer % len(self.plan.streams)]
            self.global_viewer += self.plan.workers
            new.append(self._seat(stream, self.rng.random() < self.plan.slow_share))
        gap = 1.0 / self.plan.connect_rate
        tasks = []
        for seat in new:
            tasks.append(asyncio.create_task(self._open(seat)))
            await asyncio.sleep(gap)
        opened = await asyncio.gather(*tasks)
        self.seats.extend(seat for seat, ok in zip(new, opened, strict=True) if ok)
        self.send(
            wire.ViewersReady(
                worker=self.plan.index,
                count=len(self.seats),
                failed=opened.count(False),
                seconds=time.monotonic() - started,
            )
        )

    async def _open(self, seat: Seat) -> bool:
        try:
            await seat.client.connect()
            await seat.client.join(seat.viewer.stream)
        except Exception as exc:
            self.errors[error_code(exc)] += 1
            with contextlib.suppress(Exception):
                await seat.client.close()
            return False
        return True

    def storm(self, window: float) -> None:
        """Every viewer drops its connection and rejoins with ``since`` within ``window`` s."""
        for seat in self.seats:
            asyncio.create_task(seat.client.reconnect(self.rng.uniform(0, window)))  # noqa: RUF006

    # -- gifters ---------------------------------------------------------------------------

    async def open_gifters(self) -> None:
        for token in self.plan.gifter_tokens:
            client = make_client(self.plan.flavour, self.plan.url, token)
            await client.connect()
            self.gifter_clients.append(client)
            self.gifters.append(Gifter(client, "", self.book, gift=self.plan.gift))

    def set_rate(self, rate: float, inflight: int) -> None:
        if self.pacer is not None:
            self.pacer.cancel()
            self.pacer = None
        turn = itertools.cycle(self.gifters)
        streams = itertools.cycle(self.plan.gift_streams or self.plan.streams)
        if rate > 0:  # open loop: at ``rate`` whatever the answers do (as real viewers would)

            def start() -> None:
                if len(self.gift_tasks) >= self.plan.max_inflight:
                    self.book.meter.errors["harness_backlog"] += 1
                    return
                task = asyncio.create_task(self._gift(next(turn), next(streams)))
                self.gift_tasks.add(task)
                task.add_done_callback(self.gift_tasks.discard)

            tick = min(0.01, max(0.001, 1.0 / rate))
            self.pacer = asyncio.create_task(pace(rate, start, tick=tick))
        elif rate < 0:  # closed loop: each gifter keeps ``inflight`` gifts waiting for answers

            async def lane(gifter: Gifter) -> None:
                while True:
                    await self._gift(gifter, next(streams))

            lanes = [lane(g) for g in self.gifters for _ in range(inflight)]
            self.pacer = asyncio.create_task(_all(lanes))

    async def _gift(self, gifter: Gifter, stream: str) -> GiftOk | None:
        gift_id = f"{self.plan.run_id}-{self.plan.index}-{next(self.ids)}"
        return await gifter.send(stream, gift_id, retry_for=self.plan.retry_for)

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
        slots = asyncio.Semaphore(256)
        unresolved = await asyncio.gather(*(g.settle_unknown(5.0, slots) for g in self.gifters))
        self.flush_tick()
        book = self.book
        self.send(
            wire.Acked(
                worker=self.plan.index,
                acked={stream: list(keys) for stream, keys in book.acked.items()},
                coins=book.coins,
                gifts=book.gifts,
                unresolved=sum(unresolved),
            )
        )

    # -- verification ----------------------------------------------------------------------

    async def verify(self, acked: dict[str, list[int]], drain_timeout: float) -> None:
        self.draining = True
        expected = Expected(acked)
        await drain([seat.viewer for seat in self.seats], expected, drain_timeout)
        totals = wire.ViewerTotals()
        codes: Counter[int] = Counter()
        for seat in self.seats:
            totals.add(seat.viewer.check(expected))
            totals.slow_viewers += seat.slow
            totals.reconnects += seat.client.reconnects
            codes.update(seat.client.close_codes)
        totals.close_codes = dict(codes)
        battle = None
        if self.battle is not None:
            viewers = [seat.viewer for seat in self.seats]
            battle = self.battle.seen(v for v in viewers if isinstance(v, BattleViewer))
        self.flush_tick()
        self.send(wire.Final(worker=self.plan.index, totals=totals, battle=battle))

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
        seen, slow, gifts = self.meter.take(), self.slow_meter.take(), self.book.meter.take()
        errors, self.errors = self.errors, Counter()
        errors.update(gifts.errors)
        reconnects = sum(seat.client.reconnects for seat in self.seats)
        new_reconnects, self.reconnects_seen = reconnects - self.reconnects_seen, reconnects
        battle_events, battle_ends, battle_scores = (
            self.battle.take() if self.battle is not None else (0, 0, [])
        )
        self.send(
            wire.Tick(
                worker=plan.index,
                second=second,
                gifts_sent=gifts.sent,
                gifts_acked=gifts.acked,
                coins_acked=gifts.coins,
                ack_latency=dict(gifts.ack_latency),
                latency=dict(seen.latency),
                slow_latency=dict(slow.latency),
                events=seen.events + slow.events,
                gift_events=seen.gift_events + slow.gift_events,
                frames=seen.frames + slow.frames,
                errors=dict(errors),
                reconnects=new_reconnects,
                viewers=sum(1 for seat in self.seats if seat.client.connected),
                battle_events=battle_events,
                battle_ends=battle_ends,
                battle_scores=battle_scores,
            )
        )


async def _all(lanes: list[Coroutine[Any, Any, None]]) -> None:
    await asyncio.gather(*lanes)


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
        clients = [*worker.gifter_clients, *(seat.client for seat in worker.seats)]
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def run() -> None:
    logs.configure("json", "error")
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main())


if __name__ == "__main__":
    run()
