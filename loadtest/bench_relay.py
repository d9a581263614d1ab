"""Benchmark: the relay's fan-out. Events per relay CPU-second, gift->viewer latency, RSS.

    python -m loadtest.bench_relay [--viewers 1000,5000] [--rate 1000] [--seconds 10]
                                   [--idle 10000] [--baseline/--no-baseline]

For each viewer count it starts a relay (``giftrelay serve``, one worker, over a
private redis-server) and drives one live stream:

* gifters: 20 WebSocket connections sending ``--rate`` gifts per second in total,
  through the relay (the full money path), each reply awaited by a reader;
* measuring viewers: 50 full WebSocket clients that decode every event, record
  gift->viewer latency (receive time - the event's ``ts``) in an HDR histogram and
  check every acknowledged gift arrived once and in order;
* the other viewers are sinks in a second process: real TCP connections that did
  the WebSocket handshake and joined, then read and discard bytes (a Python
  client that decoded 5 M events/s would need more cores than the machine has).
  The relay's pings are spaced out (60 s) for the run because sinks never answer.

Relay CPU is ``utime + stime`` of its process over the measured window (/proc),
and events delivered come from its ``giftrelay_events_sent_total`` metric. The
baseline, in the same run, is the same relay with ``GIFTRELAY_TICK_MS=0``: every
event flushed at once, one frame per event per viewer.

``--idle N``: N idle connections (joined, no traffic); reports RSS per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import msgspec
from hdrh.histogram import HdrHistogram
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect

from giftrelay import auth, catalog, logs
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import Money
from giftrelay.redis_client import connect as redis_connect
from loadtest.relaystats import Sample, proc_sample

console = Console(width=180)
SECRET = secrets.token_urlsafe(32)
STREAM = "bench"
CREATOR = "bench_creator"
GIFTERS = 20
MEASURING = 50
PROFILE = os.environ.get("BENCH_RELAY_PROFILE", "")
"""A file for the relay's cProfile statistics (the relay runs under ``-m cProfile``)."""


class _Event(msgspec.Struct):
    kind: str
    offset: str
    ts: int = 0


class _Frame(msgspec.Struct):
    type: str
    events: list[_Event] = []
    offset: str = ""
    ref: str = ""


_frame = msgspec.json.Decoder(_Frame)


class Run(msgspec.Struct):
    name: str
    viewers: int
    gifts: int
    gifts_per_s: float
    events: int
    events_per_s: float
    cpu_s: float
    events_per_cpu_s: float
    frames: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    lost: int
    duplicates: int
    out_of_order: int
    rss_mib: float
    slow_closes: int = 0
    """Viewers the relay closed with 1013 for reading too slowly (sinks included)."""


# -- the relay process -------------------------------------------------------------------------


async def start_relay(
    redis_url: str, port: int, var: Path, workers: int = 1, **env: str
) -> asyncio.subprocess.Process:
    environ = {
        **os.environ,
        "GIFTRELAY_SECRET": SECRET,
        "GIFTRELAY_VAR_DIR": str(var),
        "GIFTRELAY_GIFT_RATE": "1000000",
        "GIFTRELAY_GIFT_BURST": "1000000",
        "GIFTRELAY_MESSAGE_RATE": "1000000",
        "GIFTRELAY_MESSAGE_BURST": "1000000",
        "GIFTRELAY_MAX_CONNECTIONS_PER_IP": "100000",
        "GIFTRELAY_PING_INTERVAL": "60",
        "GIFTRELAY_PING_TIMEOUT": "60",
        "GIFTRELAY_LOG_LEVEL": os.environ.get("BENCH_RELAY_LOG", "warning"),
        "GIFTRELAY_LOG_FORMAT": "json",
        **env,
    }
    profile = ["-m", "cProfile", "-o", PROFILE] if PROFILE else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *profile, "-m", "giftrelay", "serve", "--port", str(port),
        "--redis-url", redis_url, "--no-ledger", "--workers", str(workers),
        env=environ, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    while b"websocket:" not in await proc.stdout.readline():
        if proc.returncode is not None:
            raise RuntimeError("the relay did not start")
    return proc


async def stop_relay(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    try:
        async with asyncio.timeout(30):
            await proc.wait()
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _usage(pid: int) -> Sample:
    sample = proc_sample([pid])
    if sample is None:
        raise RuntimeError(f"the relay (pid {pid}) is gone")
    return sample


def cpu_seconds(pid: int) -> float:
    return _usage(pid).cpu_seconds


def rss_bytes(pid: int) -> int:
    return _usage(pid).rss_bytes


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# -- sinks: joined viewers that read and discard -------------------------------------------------


def _masked_text(payload: bytes) -> bytes:
    """One client text frame (clients must mask; a zero mask keeps the payload as is)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


class _Sink(asyncio.Protocol):
    received = 0

    def __init__(self, port: int, join: bool, opened: asyncio.Future[None]) -> None:
        self.port = port
        self.join = join
        self.opened = opened
        self.header = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        _Sink.received += len(data)
        if self.opened.done():
            return
        self.header += data
        if b"\r\n\r\n" in self.header:
            if not self.header.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(RuntimeError(self.header[:100].decode()))
                return
            if self.join:
                message = msgspec.json.encode({"type": "join", "stream": STREAM})
                self.transport.write(_masked_text(message))
            self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or RuntimeError("closed"))


def sink_main(port: int, count: int, join: bool, ready: Any, stop: Any, out: Any) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        transports = []
        gate = asyncio.Semaphore(200)

        async def one() -> None:
            async with gate:
                for attempt in range(20):
                    opened: asyncio.Future[None] = loop.create_future()
                    try:
                        transport, _ = await loop.create_connection(
                            functools.partial(_Sink, port, join, opened), "127.0.0.1", port
                        )
                        await opened
                        transports.append(transport)
                        return
                    except OSError:
                        await asyncio.sleep(0.05 * (attempt + 1))
                raise RuntimeError("could not connect a sink")

        await asyncio.gather(*(one() for _ in range(count)))
        ready.set()
        await loop.run_in_executor(None, stop.wait)
        out.put(_Sink.received)
        for t in transports:
            t.close()

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(run())


# -- measuring viewers and gifters ---------------------------------------------------------------


PROGRESS = asyncio.Event()
"""Set whenever a measuring viewer or a gifter receives something."""


async def until(check: Any, within: float = 30.0) -> None:
    """Wait until ``check()`` holds (or give up after ``within`` s: loss is reported)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not check():
                PROGRESS.clear()
                await PROGRESS.wait()


class Viewer:
    def __init__(self, ws: ClientConnection, hist: HdrHistogram) -> None:
        self.ws = ws
        self.hist = hist
        self.offsets: list[str] = []
        self.frames = 0
        self.measuring = False

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                frame = _frame.decode(raw)
                PROGRESS.set()
                if frame.type != "events":
                    continue
                self.frames += 1
                now = time.time() * 1000
                for e in frame.events:
                    if e.kind == "gift":
                        self.offsets.append(e.offset)
                        if self.measuring:
                            self.hist.record_value(max(1, int((now - e.ts) * 1000)))


class Gifter:
    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self.sent = 0
        self.acked: list[str] = []
        self.errors: dict[str, int] = {}

    async def read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                reply = msgspec.json.decode(raw)
                PROGRESS.set()
                if reply.get("type") == "gift_ok":
                    self.acked.append(reply["offset"])
                elif reply.get("type") == "error":
                    self.errors[reply["code"]] = self.errors.get(reply["code"], 0) + 1

    async def gift(self, tag: str) -> None:
        self.sent += 1
        message = {"type": "gift", "stream": STREAM, "gift": "rose", "id": f"{tag}-{self.sent:08d}"}
        await self.ws.send(msgspec.json.encode(message).decode())


async def drive(
    port: int,
    viewers: int,
    rate: float,
    seconds: float,
    name: str,
    tick_ms: int,
    redis_url: str,
    workers: int = 1,
) -> Run:
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-relay-"))
    relay = await start_relay(redis_url, port, var, workers, GIFTRELAY_TICK_MS=str(tick_ms))
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    sinks = max(0, viewers - MEASURING)
    sink = ctx.Process(target=sink_main, args=(port, sinks, True, ready, stop, out))
    sink.start()
    url = f"ws://127.0.0.1:{port}/ws"
    hist = HdrHistogram(1, 60_000_000, 3)
    watchers: list[Viewer] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(min(MEASURING, viewers)):
            ws = await connect(url, max_size=None, ping_interval=None)
            await ws.recv()
            await ws.send('{"type":"join","stream":"bench"}')
            await ws.recv()
            v = Viewer(ws, hist)
            watchers.append(v)
            tasks.append(asyncio.create_task(v.read()))
        gifters = []
        for g in range(GIFTERS):
            tok = auth.mint(SECRET, f"gifter{g}", auth.Role.VIEWER, ttl=3600)
            ws = await connect(f"{url}?token={tok}", ping_interval=None)
            await ws.recv()
            gifter = Gifter(ws, f"gifter{g}")
            gifters.append(gifter)
            tasks.append(asyncio.create_task(gifter.read()))
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 120)

        async def pace(duration: float, tag: str) -> None:
            step = 0.01
            per_step = rate * step
            due = 0.0
            started = time.perf_counter()
            i = 0
            while (elapsed := time.perf_counter() - started) < duration:
                due = rate * elapsed - i
                for _ in range(int(due)):
                    await gifters[i % GIFTERS].gift(tag)
                    i += 1
                await asyncio.sleep(max(0.0, step - (time.perf_counter() - started - elapsed)))
            del per_step

        tag = f"t{tick_ms}v{viewers}w{workers}-{secrets.token_hex(3)}"  # ids unique per run
        await pace(2.0, f"{tag}-warm")  # warm-up: not measured
        cpu0, events0 = cpu_seconds(relay.pid), metric(port, "giftrelay_events_sent_total")
        slow0 = metric(port, "giftrelay_slow_client_closes_total")
        frames0 = sum(v.frames for v in watchers)
        acked0 = sum(len(g.acked) for g in gifters)
        for v in watchers:
            v.measuring = True
        t0 = time.perf_counter()
        await pace(seconds, f"{tag}-run")
        window = time.perf_counter() - t0
        cpu = cpu_seconds(relay.pid) - cpu0
        events = metric(port, "giftrelay_events_sent_total") - events0
        slow = metric(port, "giftrelay_slow_client_closes_total") - slow0
        for v in watchers:
            v.measuring = False
        rss = rss_bytes(relay.pid)
        # Let the last events arrive, then check every acknowledged gift reached each viewer.
        sent = sum(g.sent for g in gifters)
        await until(lambda: sum(len(g.acked) + sum(g.errors.values()) for g in gifters) >= sent)
        acked = sorted(
            (o for g in gifters for o in g.acked), key=lambda o: tuple(map(int, o.split("-")))
        )
        await until(lambda: all(len(v.offsets) >= len(acked) for v in watchers))
        lost = dup = disorder = 0
        for v in watchers:
            got = v.offsets
            lost += len(set(acked) - set(got))
            dup += len(got) - len(set(got))
            disorder += got != sorted(got, key=lambda o: tuple(map(int, o.split("-"))))
        gifts = sum(len(g.acked) for g in gifters) - acked0
        frames = sum(v.frames for v in watchers) - frames0
        errors = {c: n for g in gifters for c, n in g.errors.items()}
        if errors:
            console.print(f"[yellow]{name}: gift errors {errors}[/]")
        stop.set()
        out.get(timeout=30)
        return Run(
            name=name,
            viewers=viewers,
            gifts=gifts,
            gifts_per_s=gifts / window,
            events=int(events),
            events_per_s=events / window,
            cpu_s=cpu,
            events_per_cpu_s=events / cpu if cpu else 0.0,
            frames=frames // max(1, len(watchers)),
            p50_ms=hist.get_value_at_percentile(50) / 1000,
            p99_ms=hist.get_value_at_percentile(99) / 1000,
            max_ms=hist.get_max_value() / 1000,
            lost=lost,
            duplicates=dup,
            out_of_order=disorder,
            rss_mib=rss / 2**20,
            slow_closes=int(slow),
        )
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        sink.join(timeout=30)
        if sink.is_alive():
            sink.kill()
        await stop_relay(relay)
        shutil.rmtree(var, ignore_errors=True)


async def idle(port: int, count: int, redis_url: str) -> tuple[float, float, float]:
    """RSS before and after ``count`` idle joined connections; bytes per connection."""
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-idle-"))
    relay = await start_relay(redis_url, port, var)
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    try:
        # One connection first, so the stream's room and its subscription exist.
        sink = ctx.Process(target=sink_main, args=(port, 1, True, ready, stop, out))
        sink.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
        before = rss_bytes(relay.pid)
        ready2, stop2 = ctx.Event(), ctx.Event()
        procs = [
            ctx.Process(target=sink_main, args=(port, count // 2, True, ready2, stop2, out))
            for _ in range(2)
        ]
        for p in procs:
            p.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, ready2.wait, 300)
        # Both halves connected: wait until the relay counts them all.
        async with asyncio.timeout(120):
            while metric(port, "giftrelay_open_connections") < count + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # polling the relay process's metric
        after = rss_bytes(relay.pid)
        stop.set()
        stop2.set()
        for p in [sink, *procs]:
            p.join(timeout=30)
        return before / 2**20, after / 2**20, (after - before) / count
    finally:
        stop.set()
        await stop_relay(relay)
        shutil.rmtree(var, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    logs.configure("console", "warning")
    directory = Path(tempfile.mkdtemp(prefix="giftrelay-bench-redis-"))
    server = RedisServer(directory, appendonly=True, appendfsync="everysec")
    server.start()
    runs: list[Run] = []
    try:
        redis = redis_connect(server.url)
        money = Money(redis, Settings.load({}), catalog.load())
        await money.start()
        await money.stream_open(STREAM, CREATOR, "bench")
        for g in range(GIFTERS):
            await money.topup(f"gifter{g}", 10**11, f"bench-grant-{g:04d}")
        await money.aclose()
        await redis.aclose()
        for viewers in args.viewers:
            plans = [
                (f"tick 25 ms, adaptive, {w} worker{'s' if w > 1 else ''}", 25, w)
                for w in args.workers
            ]
            if args.baseline:
                plans.insert(0, ("baseline: tick 0 (a frame per event)", 0, 1))
            for name, tick, workers in plans:
                console.print(f"[bold]{viewers} viewers, {args.rate:g} gifts/s: {name}[/]")
                run = await drive(
                    free_port(), viewers, args.rate, args.seconds, name, tick, server.url, workers
                )
                runs.append(run)
                console.print(msgspec.json.encode(run).decode())
        idle_result = None
        if args.idle:
            console.print(f"[bold]{args.idle} idle connections[/]")
            idle_result = await idle(free_port(), args.idle, server.url)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    report(runs, idle_result, args)


def report(runs: list[Run], idle_result: tuple[float, float, float] | None, args: Any) -> None:
    table = Table(title=f"relay fan-out, {args.rate:g} gifts/s offered, {args.seconds:g} s")
    for col in ("viewers", "what", "gifts/s", "events/s", "relay CPU s", "events/CPU-s",
                "x baseline", "frames/viewer", "p50 ms", "p99 ms", "max ms", "lost/dup/order",
                "closed slow", "RSS MiB"):  # fmt: skip
        table.add_column(col, justify="right")
    base: dict[int, float] = {}
    for r in runs:
        if r.name.startswith("baseline"):
            base[r.viewers] = r.events_per_cpu_s
        ratio = r.events_per_cpu_s / base[r.viewers] if base.get(r.viewers) else float("nan")
        table.add_row(
            str(r.viewers), r.name, f"{r.gifts_per_s:,.0f}", f"{r.events_per_s:,.0f}",
            f"{r.cpu_s:.2f}", f"{r.events_per_cpu_s:,.0f}", f"{ratio:.2f}", f"{r.frames:,}",
            f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}",
            f"{r.lost}/{r.duplicates}/{r.out_of_order}", f"{r.slow_closes:,}", f"{r.rss_mib:.0f}",
        )  # fmt: skip
    console.print(table)
    if idle_result:
        before, after, per = idle_result
        console.print(
            f"idle: RSS {before:.1f} MiB -> {after:.1f} MiB with {args.idle:,} connections: "
            f"{per / 1024:.1f} KiB per connection"
        )


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--viewers", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=[1000, 5000])  # fmt: skip
    p.add_argument("--rate", type=float, default=1000.0, help="gifts per second offered")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--idle", type=int, default=10_000, help="idle connections (0: skip)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",") if x], default=[1],
                   help="relay worker processes (serve --workers); a list runs each")  # fmt: skip
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
