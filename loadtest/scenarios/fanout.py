"""``giftrelay-loadtest fanout``: the servers' fan-out. Events per server CPU-second,
gift->viewer latency, RSS.

    giftrelay-loadtest fanout [--viewers 1000,5000] [--rate 1000] [--seconds 10]
                              [--idle 10000] [--baseline/--no-baseline] [--workers 1]
                              [--peers giftrelay,socketio] [--compression deflate,off]

For each viewer count it starts a relay (``giftrelay serve``, one worker, over a
private redis-server) and drives one live stream: 20 gifters sending ``--rate`` gifts
per second in total through the full money path, open loop; 50 measuring viewers
that decode every event, record gift->viewer latency and check that every
acknowledged gift arrived once and in order; the other viewers are sinks in a
process of their own (:mod:`loadtest.drivers.sinks`), which joined and then read
and discard (a Python client that decoded 5 M events/s would need more cores than
the machine has). The relay's pings are spaced out (60 s) as sinks never answer.

Server CPU is ``utime + stime`` of its process tree over the measured window (/proc).
giftrelay's events delivered come from its ``giftrelay_events_sent_total`` metric
(every kind: gifts, viewer counts, top lists, combo ends; ``gift_share`` says how
many of the measuring viewers' events were gifts). The baseline, in the same run, is
the same relay with ``GIFTRELAY_TICK_MS=0``: one frame per event per viewer.

``--peers giftrelay,socketio`` adds, for each viewer count, a run of the Socket.IO
peer (loadtest/peers/socketio/server.js: Node, Socket.IO 4 with the Redis adapter)
over the same redis-server, with the same kinds of clients speaking Socket.IO
(:class:`loadtest.drivers.sio.SioClient`; its sinks answer engine.io pings, as the
peer keeps Socket.IO's 25 s ping). The peer has no metrics and emits only gifts, one
frame per event per viewer, so its events delivered are those *received* in the
window. Socket.IO saturating below the offered rate shows as events/s below gifts x
viewers and as latency; the drain after the window is bounded (30 s for the answers,
then 30 s for the viewers), gifts still unanswered are reported on a line of their
own, and every server is stopped whatever happens (SIGTERM, SIGKILL after 30 s;
SIGTERM to this process cancels the run). ``x Socket.IO`` is a run's events per
CPU-second over Socket.IO's at the same viewer count.

``--idle N``: N idle connections (joined, no traffic); reports RSS per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import os
import re
import secrets
import shutil
import signal
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
from rich.console import Console
from rich.table import Table

from giftrelay import auth, logs
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect

from ..drivers.connection import Connection
from ..drivers.gifter import Book, GiftConnection, Gifter, pace
from ..drivers.sinks import Sinks
from ..drivers.sio import SioClient
from ..drivers.target import Target, peer_command, running, serve_command, serve_env
from ..drivers.viewer import Delivery, Expected, Meter, Viewer, drain, offset_of, summarise_latency

console = Console(width=200)
SECRET = secrets.token_urlsafe(32)
STREAM = "bench"
CREATOR = "bench_creator"
GIFTERS = 20
MEASURING = 50
PROFILE = os.environ.get("BENCH_RELAY_PROFILE", "")
"""A file for the relay's cProfile statistics (the relay runs under ``-m cProfile``)."""
RELAY_LOG_LEVEL = os.environ.get("BENCH_RELAY_LOG", "warning")
"""The relay's log level (``BENCH_RELAY_LOG=info`` to see what it does during a run)."""
PEERS = ("giftrelay", "socketio")
SOCKETIO = "Socket.IO (one frame per event)"
DRAIN = 30.0
"""Seconds to wait after the window, for the last answers and then for the viewers."""
RELAY_SETTINGS = {
    "GIFTRELAY_GIFT_RATE": "1000000",
    "GIFTRELAY_GIFT_BURST": "1000000",
    "GIFTRELAY_MESSAGE_RATE": "1000000",
    "GIFTRELAY_MESSAGE_BURST": "1000000",
    "GIFTRELAY_MAX_CONNECTIONS_PER_IP": "100000",
    "GIFTRELAY_PING_INTERVAL": "60",
    "GIFTRELAY_PING_TIMEOUT": "60",
}
COMPRESSION = {True: "", False: ", uncompressed"}


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
    target: str = "giftrelay"
    sinks_dropped: int = 0
    """Sinks whose connection the server closed before the end of the run."""
    gift_share: float = 0.0
    """Of the events the measuring viewers received in the window, the share of gifts
    (giftrelay also sends viewer counts, top lists, combo ends; the peer only gifts)."""


# -- the targets ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay(
    redis_url: str, tick_ms: int = 25, workers: int = 1, deflate: bool = True
) -> AsyncIterator[Target]:
    """``giftrelay serve`` on a free port over ``redis_url``, stopped at the end."""
    port = free_port()
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-relay-"))
    settings = RELAY_SETTINGS | {
        "GIFTRELAY_TICK_MS": str(tick_ms),
        "GIFTRELAY_COMPRESSION": str(deflate).lower(),
    }
    python = ["-m", "cProfile", "-o", PROFILE] if PROFILE else []
    argv = serve_command(port, redis_url=redis_url, ledger=False, workers=workers, python=python)
    env = serve_env(SECRET, settings, var=var, log_level=RELAY_LOG_LEVEL)
    try:
        async with running("giftrelay", argv, port=port, env=env) as target:
            yield target
    finally:
        shutil.rmtree(var, ignore_errors=True)


@contextlib.asynccontextmanager
async def socketio_peer(redis_url: str) -> AsyncIterator[Target]:
    """The Socket.IO peer on a free port, its stream opened and its gifters funded."""
    port = free_port()
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-sio-"))
    argv, env = await peer_command("socketio", port, redis_url, SECRET)
    try:
        async with running("socketio", argv, port=port, env=env, log=var / "node.log") as node:
            tag = secrets.token_hex(3)  # its grants are idempotent: new ones each run
            admin = SioClient(node.url, auth.mint(SECRET, "bench_admin", auth.Role.ADMIN))
            await admin.connect()
            try:
                await admin.stream_open(STREAM, "bench", creator=CREATOR)
                for g in range(GIFTERS):
                    await admin.topup(f"gifter{g}", 10**11, f"{tag}-grant-{g:04d}")
            finally:
                await admin.close()
            yield node
    except BaseException:
        log = var / "node.log"
        if log.exists():
            console.print(f"[red]{SOCKETIO}: node's log ends with:[/]")
            console.print(log.read_text(errors="replace")[-2000:], markup=False)
        raise
    finally:
        shutil.rmtree(var, ignore_errors=True)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# -- one run -------------------------------------------------------------------------------------


class Clients:
    """The measuring viewers' and the gifters' connections to one target."""

    def __init__(self, target: Target, socketio: bool, deflate: bool) -> None:
        self.url = target.url
        self.socketio = socketio
        self.deflate = deflate
        self.opened: list[Connection | SioClient] = []

    async def viewer(self, viewer: Viewer) -> None:
        conn: Connection | SioClient
        if self.socketio:
            conn = SioClient(self.url, on_events=viewer.on_events, on_joined=viewer.joined)
        else:  # browsers offer permessage-deflate
            compression: Literal["deflate"] | None = "deflate" if self.deflate else None
            conn = Connection(
                self.url, compression=compression, ping_interval=None,
                on_events=viewer.on_events, on_joined=viewer.joined,
            )  # fmt: skip
        self.opened.append(conn)
        await (conn.connect() if isinstance(conn, SioClient) else conn.open())
        await conn.join(STREAM)

    async def gifter(self, user: str) -> GiftConnection:
        token = auth.mint(SECRET, user, auth.Role.VIEWER, ttl=3600)
        if self.socketio:
            client = SioClient(self.url, token, request_timeout=4 * DRAIN)
            self.opened.append(client)
            await client.connect()
            return client
        conn = Connection(self.url, token, ping_interval=None, request_timeout=4 * DRAIN)
        self.opened.append(conn)
        await conn.open()
        return conn

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):  # the server may be gone: each close is quick
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.close() for c in self.opened), return_exceptions=True)


async def measure(
    target: Target, name: str, viewers: int, rate: float, seconds: float, *,
    socketio: bool = False, deflate: bool = True,
) -> Run:  # fmt: skip
    """Sinks, measuring viewers and gifters on one target; a warm-up, then the window."""
    sinks = Sinks(
        target.port, max(0, viewers - MEASURING), STREAM, socketio=socketio, deflate=deflate
    ).start()
    clients = Clients(target, socketio, deflate)
    meter, book = Meter(), Book()
    watchers = [Viewer(STREAM, meter, keep=True) for _ in range(min(MEASURING, viewers))]
    gifters: list[Gifter] = []
    try:
        for v in watchers:
            await clients.viewer(v)
        for g in range(GIFTERS):
            gifters.append(Gifter(await clients.gifter(f"gifter{g}"), f"gifter{g}", book))
        await sinks.ready(120)
        tag, ids, turn = f"r{secrets.token_hex(4)}", itertools.count(), 0

        def fire() -> None:  # round-robin over the gifters; gift ids unique per run
            nonlocal turn
            gifters[turn % GIFTERS].fire(STREAM, f"{tag}-{next(ids):08d}")
            turn += 1

        await pace(rate, fire, tick=0.01, duration=2.0)  # warm-up: not measured
        meter.take()
        cpu0, acked0 = target.usage().cpu_seconds, book.gifts
        events0 = sinks.events.value if socketio else metric(target.port, EVENTS)
        slow0 = 0.0 if socketio else metric(target.port, SLOW)
        t0 = time.perf_counter()
        await pace(rate, fire, tick=0.01, duration=seconds)
        window = time.perf_counter() - t0
        cpu = target.usage().cpu_seconds - cpu0
        seen = meter.take()
        if socketio:
            events = sinks.events.value - events0 + seen.events
            slow = 0.0
        else:
            events = metric(target.port, EVENTS) - events0
            slow = metric(target.port, SLOW) - slow0
        gifts = book.gifts - acked0
        rss = target.usage().rss_bytes
        delivery = await settle(name, watchers, gifters, book)
        sinks.stop()
        dropped = sinks.dropped()
        if dropped:
            console.print(f"[yellow]{name}: the server closed {dropped} sinks during the run[/]")
        lat = summarise_latency(seen.latency)
        share = seen.gift_events / seen.events if seen.events else 0.0
        return Run(
            name=name, viewers=viewers, gifts=gifts, gifts_per_s=gifts / window,
            events=int(events), events_per_s=events / window, cpu_s=cpu,
            events_per_cpu_s=events / cpu if cpu else 0.0,
            frames=seen.frames // max(1, len(watchers)), p50_ms=lat.p50, p99_ms=lat.p99,
            max_ms=lat.max, lost=delivery.lost, duplicates=delivery.duplicates,
            out_of_order=delivery.order_violations, rss_mib=rss / 2**20,
            slow_closes=int(slow), target="socketio" if socketio else "giftrelay",
            sinks_dropped=dropped, gift_share=share,
        )  # fmt: skip
    finally:
        for gifter in gifters:
            for task in list(gifter.pending):
                task.cancel()
        await sinks.join(30)
        await clients.close()


EVENTS = "giftrelay_events_sent_total"
SLOW = "giftrelay_slow_client_closes_total"


async def settle(
    name: str, watchers: Sequence[Viewer], gifters: Sequence[Gifter], book: Book
) -> Delivery:
    """Let the last answers and events arrive (bounded), then check every acknowledged gift
    reached each viewer once and in order."""
    pending = {task for g in gifters for task in g.pending}
    if pending:
        await asyncio.wait(pending, timeout=DRAIN)
    expected = Expected({STREAM: book.acked.get(STREAM, [])})
    await drain(watchers, expected, DRAIN)
    delivery = Delivery()
    for v in watchers:
        delivery.add(v.check(expected))
    if delivery.lost:
        acked = expected.keys.get(STREAM, [])
        gone = sorted(set().union(*(v.missing(expected) for v in watchers)))
        first, last = bisect.bisect_left(acked, gone[0]), bisect.bisect_left(acked, gone[-1])
        console.print(
            f"[red]lost: {len(gone)} of {len(acked)} acknowledged gifts, missed by "
            f"{delivery.viewers_with_loss} of {len(watchers)} viewers; offsets "
            f"{offset_of(gone[0])} .. {offset_of(gone[-1])}, acknowledged #{first}..#{last} "
            f"(the newest is #{len(acked) - 1})[/]"
        )
    errors = book.meter.errors
    unanswered = sum(len(g.pending) for g in gifters)
    if errors or unanswered:
        console.print(
            f"[yellow]{name}: gift errors {dict(errors)}, "
            f"{unanswered} gifts unanswered after the drain[/]"
        )
    return delivery


async def idle(count: int, redis_url: str, deflate: bool = True) -> tuple[float, float, float]:
    """RSS before and after ``count`` idle joined connections; bytes per connection."""
    async with relay(redis_url, deflate=deflate) as target:
        # One connection first, so the stream's room and its subscription exist.
        first = Sinks(target.port, 1, STREAM, deflate=deflate).start()
        halves = []
        try:
            await first.ready(60)
            before = target.usage().rss_bytes
            halves = [Sinks(target.port, count // 2, STREAM, deflate=deflate) for _ in range(2)]
            for half in halves:
                half.start()
            for half in halves:
                await half.ready(300)
            # Both halves connected: wait until the relay counts them all.
            async with asyncio.timeout(120):
                while metric(target.port, "giftrelay_open_connections") < count + 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.2)  # polling the relay process's metric
            after = target.usage().rss_bytes
        finally:
            for sinks in [first, *halves]:
                await sinks.join(30)
    return before / 2**20, after / 2**20, (after - before) / count


# -- the command ---------------------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "fanout", help="the servers' fan-out at thousands of viewers (sinks): events/CPU-s",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--viewers", type=_ints, default=[1000, 5000], help="[1000,5000]")
    p.add_argument("--rate", type=float, default=1000.0, help="gifts per second offered")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--idle", type=int, default=10_000, help="idle connections (0: skip)")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=_ints, default=[1],
                   help="relay worker processes (serve --workers); a list runs each")  # fmt: skip
    p.add_argument("--peers", type=_peers, default=["giftrelay"],
                   help=f"targets, of {','.join(PEERS)} [giftrelay]")  # fmt: skip
    p.add_argument("--compression", type=_compression, default=[True],
                   help="the relay's and viewers': deflate, off or both [deflate]")  # fmt: skip


def main(args: argparse.Namespace) -> int:
    asyncio.run(run(args))
    return 0


async def run(args: argparse.Namespace) -> None:
    logs.configure("console", "warning")
    # SIGTERM (``timeout``, a supervisor) cancels the run, so that the servers are stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    directory = Path(tempfile.mkdtemp(prefix="giftrelay-bench-redis-"))
    server = RedisServer(directory, appendonly=True, appendfsync="everysec")
    server.start()
    runs: list[Run] = []
    idle_result = None
    try:
        await open_stream(server.url)
        for viewers in args.viewers:
            for name, tick, workers, deflate in plans(args):
                console.print(f"[bold]{viewers} viewers, {args.rate:g} gifts/s: {name}[/]")
                async with relay(server.url, tick, workers, deflate) as target:
                    run = await measure(
                        target, name, viewers, args.rate, args.seconds, deflate=deflate
                    )
                runs.append(run)
                console.print(msgspec.json.encode(run).decode())
            if "socketio" in args.peers:
                console.print(f"[bold]{viewers} viewers, {args.rate:g} gifts/s: {SOCKETIO}[/]")
                async with socketio_peer(server.url) as node:
                    run = await measure(node, SOCKETIO, viewers, args.rate, args.seconds,
                                        socketio=True)  # fmt: skip
                runs.append(run)
                console.print(msgspec.json.encode(run).decode())
        if args.idle and "giftrelay" in args.peers:
            console.print(f"[bold]{args.idle} idle connections[/]")
            idle_result = await idle(args.idle, server.url, args.compression[0])
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    report(runs, idle_result, args)


async def open_stream(redis_url: str) -> None:
    """giftrelay's stream and gifters, once, in the shared Redis (through the money core)."""
    redis = redis_connect(redis_url)
    money = Money(redis, Settings.load({}), catalog.load())
    await money.start()
    await money.stream_open(STREAM, CREATOR, "bench")
    for g in range(GIFTERS):
        await money.topup(f"gifter{g}", 10**11, f"bench-grant-{g:04d}")
    await money.aclose()
    await redis.aclose()


def plans(args: argparse.Namespace) -> list[tuple[str, int, int, bool]]:
    """giftrelay's runs at one viewer count: (name, tick ms, workers, deflate)."""
    if "giftrelay" not in args.peers:
        return []
    out = [
        (f"tick 25 ms, adaptive, {w} worker{'s' if w > 1 else ''}{COMPRESSION[d]}", 25, w, d)
        for d in args.compression
        for w in args.workers
    ]
    if args.baseline:
        d = args.compression[0]
        out.insert(0, (f"baseline: tick 0 (a frame per event){COMPRESSION[d]}", 0, 1, d))
    return out


def report(runs: list[Run], idle_result: tuple[float, float, float] | None, args: Any) -> None:
    table = Table(title=f"relay fan-out, {args.rate:g} gifts/s offered, {args.seconds:g} s")
    sio = {r.viewers: r.events_per_cpu_s for r in runs if r.target == "socketio"}
    for col in ("viewers", "what", "gifts/s", "events/s", "server CPU s", "events/CPU-s",
                "x baseline", *(["x Socket.IO"] if sio else []), "frames/viewer", "p50 ms",
                "p99 ms", "max ms", "lost/dup/order", "closed slow", "RSS MiB"):  # fmt: skip
        table.add_column(col, justify="right", no_wrap=col != "what")
    base: dict[int, float] = {}
    for r in runs:
        if r.name.startswith("baseline"):
            base[r.viewers] = r.events_per_cpu_s
        ratio = r.events_per_cpu_s / base[r.viewers] if base.get(r.viewers) else float("nan")
        peer: list[str] = []  # the column only when Socket.IO ran; our figure over its
        if sio:
            theirs = sio.get(r.viewers)
            mine = r.events_per_cpu_s
            peer = ["-" if r.target == "socketio" or not theirs else f"{mine / theirs:.2f}"]
        slow = "-" if r.target == "socketio" else f"{r.slow_closes:,}"
        table.add_row(
            str(r.viewers), r.name, f"{r.gifts_per_s:,.0f}", f"{r.events_per_s:,.0f}",
            f"{r.cpu_s:.2f}", f"{r.events_per_cpu_s:,.0f}", f"{ratio:.2f}", *peer, f"{r.frames:,}",
            f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", f"{r.max_ms:.1f}",
            f"{r.lost}/{r.duplicates}/{r.out_of_order}", slow, f"{r.rss_mib:.0f}",
        )  # fmt: skip
    console.print(table)
    if idle_result:
        before, after, per = idle_result
        console.print(
            f"idle: RSS {before:.1f} MiB -> {after:.1f} MiB with {args.idle:,} connections: "
            f"{per / 1024:.1f} KiB per connection"
        )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _compression(text: str) -> list[bool]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - {"deflate", "off"}:
        raise argparse.ArgumentTypeError("give deflate, off or deflate,off")
    return [n == "deflate" for n in names]


def _peers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or set(names) - set(PEERS):
        raise argparse.ArgumentTypeError(f"give some of {','.join(PEERS)}")
    return names
