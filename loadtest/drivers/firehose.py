"""The firehose: as many gifts as a relay worker takes, from lean client processes.

Each of ``processes`` spawned processes opens ``connections`` WebSockets (one user
each, ``u{process}_{i}``) and keeps up to ``inflight`` gifts on each without waiting
(closed loop: each answer sends the next), or sends ``rate`` gifts/s in all whatever
the answers do (open loop; a gift's latency then counts from when it was due, so a
relay that falls behind is not excused by a client that waited). Frames are put
together from pre-encoded parts (no encoder per gift); answers are read as bytes and
decoded into a three-field struct, matched by ``ref``. The clients share the cores
with the relay they measure, so every cost per gift here is one the relay loses.

The coordinator starts the processes, waits until every connection is open, then
names one wall-clock window (after a warm-up) that every process counts in, and
calls back at its start and end so that the server's CPU can be read at the same
moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from giftrelay import auth

from .viewer import Latency, latency_of

LATENCY_RANGE_US = (1, 60_000_000, 2)
"""HDR histogram of ack latency: 1 µs to 60 s, 2 significant digits."""


class Plan(msgspec.Struct, frozen=True):
    """What every client process does (its own index comes apart)."""

    url: str
    secret: str
    stream: str
    gift: str
    connections: int
    inflight: int
    rate: float
    """Gifts/s offered by this process; 0: closed loop."""
    user_rate: float
    """Closed loop: most gifts/s per connection (a token bucket, below the relay's
    per-user limit); 0: none."""
    user_burst: int
    hello: bool
    """The server greets each connection first (giftrelay and naive; not echo)."""
    ok_type: str
    """The reply type that acknowledges a gift (``gift`` for the echo server)."""
    tag: str
    """Makes gift ids unique across runs."""


class Window(msgspec.Struct, frozen=True):
    """Wall-clock times (``time.time()``): start sending, start counting, stop."""

    go: float
    start: float
    end: float


class Counts(msgspec.Struct):
    """One process's figures over the window."""

    sent: int = 0
    acked: int = 0
    errors: dict[str, int] = msgspec.field(default_factory=dict)
    histogram: str = ""
    """HDR histogram of ack latency (µs), encoded."""
    client_cpu: float = 0.0
    connected: int = 0
    unanswered: int = 0
    """Gifts still unanswered a second after the window (sent or due)."""
    closed: dict[str, int] = msgspec.field(default_factory=dict)
    """Connections the server closed during the run, by code."""


class Ready(msgspec.Struct, frozen=True):
    connected: int
    failures: dict[str, int]


def user(process: int, i: int) -> str:
    """The user of connection ``i`` of client process ``process``."""
    return f"u{process}_{i}"


def all_users(processes: int, connections: int) -> list[str]:
    return [user(p, i) for p in range(processes) for i in range(connections)]


class Reply(msgspec.Struct):
    """All the driver reads of an answer (an echoed gift, too)."""

    type: str = ""
    ref: str | None = None
    code: str | None = None


class _Meter:
    __slots__ = ("acked", "errors", "histogram", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.errors: Counter[str] = Counter()
        self.histogram = HdrHistogram(*LATENCY_RANGE_US)


class _Lane:
    """One connection: its gifts in flight and, in a closed loop, its token bucket."""

    __slots__ = ("inflight", "last", "tokens", "waiting", "ws")

    def __init__(self, ws: ClientConnection, burst: float) -> None:
        self.ws = ws
        self.inflight = 0
        self.tokens = burst
        self.last = time.perf_counter()
        self.waiting = False


class _Process:
    """The client side of one process: its lanes, the gifts awaiting answers, the meter."""

    def __init__(self, plan: Plan, index: int) -> None:
        self.plan = plan
        self.index = index
        self.lanes: list[_Lane] = []
        self.pending: dict[str, float] = {}
        """ref -> perf_counter when sent (closed loop) or due (open loop)."""
        self.meter = _Meter()
        self.sending = True
        self.drained = asyncio.Event()
        """Set once nothing is pending after the sending stopped."""
        self.numbers = itertools.count(1)
        self.head = b'{"type":"gift","ref":"'
        self.mid = b'","stream":"%s","gift":"%s","id":"%sp%d-' % (
            plan.stream.encode(), plan.gift.encode(), plan.tag.encode(), index
        )  # fmt: skip
        self.tail = b'"}'
        self.deferred: list[_Lane] = []
        """Closed loop: lanes waiting for a token."""
        self.unsent = 0
        """Open loop: gifts due that found no lane with room by the end."""
        self.failures: Counter[str] = Counter()
        self.closed: Counter[str] = Counter()
        """Connections lost while sending (warm-up included), by close code."""

    async def open(self) -> None:
        slots = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            token = auth.mint(self.plan.secret, user(self.index, i), auth.Role.VIEWER, ttl=7200)
            async with slots:
                try:
                    ws = await connect(
                        f"{self.plan.url}?token={token}", compression=None, max_size=1 << 20,
                        open_timeout=30, ping_interval=None, close_timeout=2,
                    )  # fmt: skip
                    if self.plan.hello:
                        await asyncio.wait_for(ws.recv(decode=False), 30)
                except Exception as exc:
                    self.failures[type(exc).__name__] += 1
                    return
            self.lanes.append(_Lane(ws, float(self.plan.user_burst)))

        await asyncio.gather(*(one(i) for i in range(self.plan.connections)))

    async def send(self, lane: _Lane, sent_at: float) -> None:
        """One gift; ``sent_at`` is what its latency counts from. Its ref is its number."""
        ref = str(next(self.numbers))
        r = ref.encode()
        self.pending[ref] = sent_at
        self.meter.sent += 1
        lane.inflight += 1
        await lane.ws.send(self.head + r + self.mid + r + self.tail, text=True)

    def _may_send(self, lane: _Lane, now: float) -> bool:
        """Closed loop: a token of the lane's bucket, or the lane is deferred until one."""
        rate = self.plan.user_rate
        if not rate:
            return True
        lane.tokens = min(float(self.plan.user_burst), lane.tokens + (now - lane.last) * rate)
        lane.last = now
        if lane.tokens >= 1:
            lane.tokens -= 1
            return True
        if not lane.waiting:
            lane.waiting = True
            self.deferred.append(lane)
        return False

    async def read(self, lane: _Lane) -> None:
        """Answers of one connection; in a closed loop, each sends the next gift."""
        recv = lane.ws.recv
        decode = msgspec.json.Decoder(Reply).decode
        pending = self.pending
        ok_type = self.plan.ok_type
        closed_loop = not self.plan.rate
        clock = time.perf_counter
        try:
            while True:
                reply = decode(await recv(decode=False))
                sent = pending.pop(reply.ref, None) if reply.ref is not None else None
                if sent is None:
                    continue  # hello, or an answer to nothing of ours
                now = clock()
                meter = self.meter
                if reply.type == ok_type:
                    meter.acked += 1
                    meter.histogram.record_value(max(1, int((now - sent) * 1e6)))
                else:
                    meter.errors[reply.code or reply.type] += 1
                lane.inflight -= 1
                if not self.sending and not pending:
                    self.drained.set()
                if closed_loop and self.sending and self._may_send(lane, now):
                    await self.send(lane, now)
        except ConnectionClosed as exc:
            if self.sending:  # the server closed it during the run, warm-up included
                self.closed[f"closed:{exc.rcvd.code if exc.rcvd else 'abnormal'}"] += 1
        except msgspec.DecodeError:
            self.closed["undecodable"] += 1

    async def closed_loop(self) -> None:
        """Fill every lane, then send deferred lanes' next gifts as their buckets refill."""
        now = time.perf_counter()
        for lane in self.lanes:
            for _ in range(self.plan.inflight):
                if self._may_send(lane, now):
                    await self.send(lane, time.perf_counter())
        while self.sending:
            await asyncio.sleep(0.005)
            deferred, self.deferred = self.deferred, []
            for lane in deferred:
                lane.waiting = False
                now = time.perf_counter()
                while self.sending and lane.inflight < self.plan.inflight:
                    if not self._may_send(lane, now):
                        break
                    await self.send(lane, now)

    async def open_loop(self) -> None:
        """``rate`` gifts/s round the lanes that have room; what is due waits for room."""
        rate, limit, lanes = self.plan.rate, self.plan.inflight, self.lanes
        started = time.perf_counter()
        due = 0
        turn = 0
        while self.sending:
            now = time.perf_counter()
            while due < int((now - started) * rate) and self.sending:
                for _ in range(len(lanes)):
                    lane = lanes[turn]
                    turn = (turn + 1) % len(lanes)
                    if lane.inflight < limit:
                        break
                else:
                    break  # every lane full: the rest stays due, its latency counting
                await self.send(lane, started + due / rate)
                due += 1
            await asyncio.sleep(0.002)
        self.unsent = max(0, int((time.perf_counter() - started) * rate) - due)


async def _process(plan: Plan, index: int, pipe: Connection) -> None:
    me = _Process(plan, index)
    await me.open()
    pipe.send_bytes(msgspec.msgpack.encode(Ready(len(me.lanes), dict(me.failures))))
    window = msgspec.msgpack.decode(await asyncio.to_thread(pipe.recv_bytes), type=Window)
    if not me.lanes:
        pipe.send_bytes(msgspec.msgpack.encode(Counts()))
        return
    loop = asyncio.get_running_loop()

    def at(wall: float) -> float:
        return loop.time() + max(0.0, wall - time.time())

    result = Counts(connected=len(me.lanes))
    cpu_at_start = 0.0

    def begin() -> None:
        nonlocal cpu_at_start
        me.meter = _Meter()
        cpu_at_start = time.process_time()

    def end() -> None:
        meter = me.meter
        me.meter = _Meter()  # what comes after is not counted
        me.sending = False
        result.sent, result.acked = meter.sent, meter.acked
        result.errors = dict(meter.errors)
        result.histogram = meter.histogram.encode().decode()
        result.client_cpu = time.process_time() - cpu_at_start

    await asyncio.sleep(max(0.0, window.go - time.time()))
    loop.call_at(at(window.start), begin)
    loop.call_at(at(window.end), end)
    readers = [asyncio.create_task(me.read(lane)) for lane in me.lanes]
    await (me.open_loop() if plan.rate else me.closed_loop())
    if me.pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(me.drained.wait(), 1.0)
    result.unanswered = len(me.pending) + me.unsent
    result.closed = dict(me.closed)
    pipe.send_bytes(msgspec.msgpack.encode(result))
    for task in readers:
        task.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(lane.ws.close() for lane in me.lanes)), 5)


def _main(plan: bytes, index: int, pipe: Connection) -> None:
    """A client process (spawned): its connections on one uvloop."""
    import uvloop

    uvloop.run(_process(msgspec.msgpack.decode(plan, type=Plan), index, pipe))


class Totals(msgspec.Struct):
    """Every process's figures over the window, added up."""

    seconds: float
    connected: int
    connect_failures: dict[str, int]
    sent: int
    acked: int
    errors: dict[str, int]
    unanswered: int
    closed: dict[str, int]
    client_cpu: float
    histogram: Any = None
    """The merged HdrHistogram (not serialised)."""

    def latency(self) -> Latency:
        """Ack latency over the window, in ms."""
        return latency_of(self.histogram) if self.histogram is not None else Latency()


Hook = Callable[[], Awaitable[None]]


async def run(
    plan: Plan, processes: int, warmup: float, duration: float, at_start: Hook, at_end: Hook
) -> Totals:
    """Start ``processes`` client processes, wait until each has its connections, run
    ``warmup`` + ``duration`` s, with ``at_start``/``at_end`` awaited as the counted
    window opens and closes; their figures added up."""
    ctx = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    procs = []
    encoded = msgspec.msgpack.encode(plan)
    for index in range(processes):
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_main, args=(encoded, index, theirs), daemon=True)
        proc.start()
        theirs.close()
        pipes.append(ours)
        procs.append(proc)
    try:
        readies = [msgspec.msgpack.decode(await _receive(p, 120), type=Ready) for p in pipes]
        failures: Counter[str] = Counter()
        for ready in readies:
            failures.update(ready.failures)
        go = time.time() + 0.2
        window = Window(go=go, start=go + warmup, end=go + warmup + duration)
        for p in pipes:
            p.send_bytes(msgspec.msgpack.encode(window))
        await asyncio.sleep(max(0.0, window.start - time.time()))
        started = time.perf_counter()
        await at_start()
        await asyncio.sleep(max(0.0, window.end - time.time()))
        await at_end()
        seconds = time.perf_counter() - started
        counts = [msgspec.msgpack.decode(await _receive(p, 30), type=Counts) for p in pipes]
    finally:
        for proc in procs:
            await asyncio.to_thread(proc.join, 10)
            if proc.is_alive():
                proc.kill()
        for p in pipes:
            p.close()
    return _add(counts, readies, failures, seconds)


async def _receive(pipe: Connection, within: float) -> bytes:
    if not await asyncio.to_thread(pipe.poll, within):
        raise TimeoutError(f"a client process did not report within {within:g} s")
    return await asyncio.to_thread(pipe.recv_bytes)


def _add(counts: list[Counts], readies: list[Ready], failures: Counter[str], s: float) -> Totals:
    histogram = HdrHistogram(*LATENCY_RANGE_US)
    errors: Counter[str] = Counter()
    closed: Counter[str] = Counter()
    for c in counts:
        errors.update(c.errors)
        closed.update(c.closed)
        if c.histogram:
            histogram.add(HdrHistogram.decode(c.histogram.encode()))
    return Totals(
        seconds=s, connected=sum(r.connected for r in readies), connect_failures=dict(failures),
        sent=sum(c.sent for c in counts), acked=sum(c.acked for c in counts),
        errors=dict(errors), unanswered=sum(c.unanswered for c in counts), closed=dict(closed),
        client_cpu=sum(c.client_cpu for c in counts), histogram=histogram,
    )  # fmt: skip
