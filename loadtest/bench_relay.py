"""Benchmark: the relay's fan-out. Events per server CPU-second, gift->viewer latency, RSS.

    python -m loadtest.bench_relay [--viewers 1000,5000] [--rate 1000] [--seconds 10]
                                   [--idle 10000] [--baseline/--no-baseline]
                                   [--workers 1] [--peers giftrelay,socketio]

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
and events delivered come from its ``giftrelay_events_sent_total`` metric (every
kind: gifts, and the viewer counts, top lists and combo ends the relay adds; the
run's ``gift_share`` says how many of the measuring viewers' events were gifts).
The baseline, in the same run, is the same relay with ``GIFTRELAY_TICK_MS=0``:
every event flushed at once, one frame per event per viewer. Gifts/s counts the
acknowledgements and frames/viewer the frames that arrived within the window.

``--peers giftrelay,socketio`` adds, for each viewer count, a run of the Socket.IO
peer, "Socket.IO (one frame per event)": loadtest/peers/socketio/server.js (Node,
Socket.IO 4 with the Redis adapter), installed and started by
:func:`loadtest.bench.target`, over the same redis-server (its keys are its own;
gift ids carry a per-run tag and, its idempotency keys being global, the gifter).
Same load, same kinds of clients: gifters and measuring viewers speak Socket.IO
through :class:`loadtest.drivers.sio.SioClient` (gifts are events with acknowledgements;
the same once-and-in-order check), and the sinks do the engine.io v4 WebSocket
handshake, the Socket.IO connect (``40``) and a join with an acknowledgement, then
read and discard, answering engine.io pings (``2`` -> ``3``): Socket.IO keeps its
default 25 s ping interval, as deployed. Server CPU is ``utime + stime`` of the
node process tree (/proc). The peer has no metrics and emits only gifts, one
WebSocket frame per event per viewer (``42["events",{...}]``), so its events
delivered are those *received* in the window: sinks count occurrences of
``42["events"`` in the bytes they read (``bytes.count``, no decoding; the pattern
cannot occur inside an event's JSON), measuring viewers count what they decode.
Socket.IO saturating below the offered rate is expected: it shows as events/s
below gifts offered x viewers and as latency; the drain after the window is
bounded (30 s for the acknowledgements, then 30 s for the viewers), gifts still
unanswered are reported on a line of their own, and the node process is stopped
whatever happens (SIGTERM, SIGKILL after 30 s; SIGTERM to this process cancels
the run so that its servers stop). ``x Socket.IO`` is a run's events per
CPU-second over Socket.IO's at the same viewer count.

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
import signal
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import ClientConnection, connect

from giftrelay import auth, catalog, logs
from giftrelay.client import Disconnected, Event, GiftEvent, RelayError
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import Money
from giftrelay.redis_client import connect as redis_connect
from loadtest import bench
from loadtest.drivers import procstats
from loadtest.drivers.procstats import Sample
from loadtest.drivers.sio import SioClient
from loadtest.drivers.target import Target, serve_command, serve_env, start

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
"""Seconds to wait after the window, for the last acks and then for the viewers."""


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
    target: str = "giftrelay"
    sinks_dropped: int = 0
    """Sinks whose connection the server closed before the end of the run."""
    gift_share: float = 0.0
    """Of the events the measuring viewers received in the window, the share of gifts
    (giftrelay also sends viewer counts, top lists, combo ends; the peer only gifts)."""


# -- the relay process -------------------------------------------------------------------------


RELAY_SETTINGS = {
    "GIFTRELAY_GIFT_RATE": "1000000",
    "GIFTRELAY_GIFT_BURST": "1000000",
    "GIFTRELAY_MESSAGE_RATE": "1000000",
    "GIFTRELAY_MESSAGE_BURST": "1000000",
    "GIFTRELAY_MAX_CONNECTIONS_PER_IP": "100000",
    "GIFTRELAY_PING_INTERVAL": "60",
    "GIFTRELAY_PING_TIMEOUT": "60",
}


async def start_relay(redis_url: str, port: int, var: Path, workers: int = 1, **env: str) -> Target:
    python = ["-m", "cProfile", "-o", PROFILE] if PROFILE else []
    argv = serve_command(port, redis_url=redis_url, ledger=False, workers=workers, python=python)
    settings = serve_env(SECRET, RELAY_SETTINGS | env, var=var, log_level=RELAY_LOG_LEVEL)
    return await start("giftrelay", argv, port=port, env=settings)


async def stop_relay(relay: Target) -> None:
    await relay.stop()


def _usage(pid: int) -> Sample:
    usage = procstats.sample([pid])
    if usage is None:
        raise RuntimeError(f"the relay (pid {pid}) is gone")
    return usage


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


DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
"""What a browser offers."""


class _Sink(asyncio.Protocol):
    path = "/ws"
    deflate = False
    """Offer permessage-deflate (as browsers do); what arrives is discarded unread anyway."""
    received = 0
    dropped = 0
    stopping = False

    def __init__(self, port: int, join: bool, opened: asyncio.Future[None]) -> None:
        self.port = port
        self.join = join
        self.opened = opened
        self.header = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = DEFLATE_OFFER if self.deflate else ""
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{offer}\r\n"
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
        elif not _Sink.stopping:
            _Sink.dropped += 1


SIO_EVENT = b'42["events"'
"""How each event frame of the Socket.IO peer starts (one event per frame)."""
SIO_PING = b"\x81\x012"
"""An engine.io ping: a server text frame (unmasked) of one byte, ``2``. Only a ping
matches: JSON never holds a raw 0x01, and event frames are far too short for the
bytes of an extended length to read 0x81 0x01."""
SIO_PONG = _masked_text(b"3")


class _SioSink(_Sink):
    """A Socket.IO viewer that joined, then reads and discards, answering pings.

    Until it has joined it parses the server's frames (the engine.io open packet,
    the Socket.IO connect, the join's acknowledgement ``430[...]``); after that it
    only counts ``SIO_EVENT`` and ``SIO_PING`` in what it reads (``bytes.count``, with
    the last bytes of the previous read so that a match split across reads counts
    once) and answers each ping with a pong.
    """

    path = "/socket.io/?EIO=4&transport=websocket"
    events: Any = None
    """A shared counter (``multiprocessing`` RawValue) of the events the sinks received."""

    def __init__(self, port: int, join: bool, opened: asyncio.Future[None]) -> None:
        super().__init__(port, join, opened)
        self.upgraded = False
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        _Sink.received += len(data)
        if self.opened.done():
            self._count(data)
            return
        self.header += data
        if not self.upgraded:
            head, found, rest = self.header.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(RuntimeError(head[:100].decode()))
                return
            self.upgraded, self.header = True, rest
        while (payload := self._frame()) is not None:
            if payload == b"2":
                self.transport.write(SIO_PONG)
            elif payload.startswith(b"0"):  # engine.io open: connect to the main namespace
                self.transport.write(_masked_text(b"40"))
            elif payload.startswith(b"40"):
                if not self.join:
                    self._opened()
                    return
                message = msgspec.json.encode(["join", {"stream": STREAM}])
                self.transport.write(_masked_text(b"420" + message))
            elif payload.startswith(b"430"):
                self._opened()
                return
            elif payload.startswith(SIO_EVENT):  # an event before the join's ack
                _SioSink.events.value += 1
            elif payload.startswith((b"44", b"1")):  # connect_error, engine.io close
                self.opened.set_exception(RuntimeError(payload[:100].decode()))
                return

    def _opened(self) -> None:
        self.opened.set_result(None)
        rest, self.header = self.header, b""
        self._count(rest)

    def _frame(self) -> bytes | None:
        """The payload of the next complete (unmasked, unfragmented) server frame."""
        buf = self.header
        if len(buf) < 2:
            return None
        size, at = buf[1] & 0x7F, 2
        if size == 126:
            size, at = int.from_bytes(buf[2:4]), 4
        elif size == 127:
            size, at = int.from_bytes(buf[2:10]), 10
        if len(buf) < at + size:
            return None
        self.header = buf[at + size :]
        return buf[at : at + size]

    def _count(self, data: bytes) -> None:
        tail = self.tail
        n = len(SIO_EVENT) - 1
        events = data.count(SIO_EVENT) + (tail[-n:] + data[:n]).count(SIO_EVENT)
        if events:
            _SioSink.events.value += events
        pings = data.count(SIO_PING) + (tail[-2:] + data[:2]).count(SIO_PING)
        if pings:
            self.transport.write(SIO_PONG * pings)
        self.tail = data[-n:] if len(data) >= n else (tail + data)[-n:]


def sink_main(
    port: int,
    count: int,
    join: bool,
    ready: Any,
    stop: Any,
    out: Any,
    events: Any = None,
    deflate: bool = False,
) -> None:
    """``count`` sinks; Socket.IO ones when given ``events``, a shared counter of events;
    offering permessage-deflate when ``deflate``.

    Only ``stop`` ends them: a signal to the process group (Ctrl-C, ``timeout``) that
    killed this process in ``stop.wait`` would leave the benchmark's ``stop.set()``
    waiting for it forever. They leave by themselves if the benchmark is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = os.getppid()
    protocol: type[_Sink] = _Sink
    _Sink.deflate = deflate
    if events is not None:
        protocol, _SioSink.events = _SioSink, events

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
                            functools.partial(protocol, port, join, opened), "127.0.0.1", port
                        )
                        await opened
                        transports.append(transport)
                        return
                    except OSError:
                        await asyncio.sleep(0.05 * (attempt + 1))
                raise RuntimeError("could not connect a sink")

        await asyncio.gather(*(one() for _ in range(count)))
        ready.set()
        while not await loop.run_in_executor(None, stop.wait, 1.0):
            if os.getppid() != parent:
                break
        _Sink.stopping = True
        out.put((_Sink.received, _Sink.dropped))
        for t in transports:
            t.close()

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(run())


# -- measuring viewers and gifters ---------------------------------------------------------------


PROGRESS = asyncio.Event()
"""Set whenever a measuring viewer or a gifter receives something."""


async def until(check: Any, within: float = DRAIN) -> None:
    """Wait until ``check()`` holds (or give up after ``within`` s: loss is reported)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not check():
                PROGRESS.clear()
                await PROGRESS.wait()


def _offset(o: str) -> tuple[int, ...]:
    return tuple(map(int, o.split("-")))


class Viewer:
    def __init__(self, ws: ClientConnection | None, hist: HdrHistogram) -> None:
        self.ws = ws
        self.hist = hist
        self.offsets: list[str] = []
        self.missing: set[str] = set()
        """Set by :func:`settle`: acknowledged gifts this viewer has not seen yet."""
        self.frames = 0
        self.events = 0
        self.measuring = False

    async def read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(Exception):
            async for raw in self.ws:
                frame = _frame.decode(raw)
                PROGRESS.set()
                if frame.type != "events":
                    continue
                self.frames += 1
                self.events += len(frame.events)
                now = time.time() * 1000
                for e in frame.events:
                    if e.kind == "gift":
                        self.offsets.append(e.offset)
                        self.missing.discard(e.offset)
                        if self.measuring:
                            self.hist.record_value(max(1, int((now - e.ts) * 1000)))

    def on_events(self, stream: str, events: list[Event]) -> None:
        """The same, for :class:`SioClient` (which decoded the frame: one per event)."""
        PROGRESS.set()
        self.frames += 1
        self.events += len(events)
        now = time.time() * 1000
        for e in events:
            if isinstance(e, GiftEvent):
                self.offsets.append(e.offset)
                self.missing.discard(e.offset)
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


class SioGifter:
    """A :class:`Gifter` over Socket.IO: each gift is an event with an acknowledgement.

    ``gift`` only starts the request (a task), so a saturated server slows no pacing.
    """

    def __init__(self, client: SioClient, user: str) -> None:
        self.client = client
        self.user = user
        self.sent = 0
        self.acked: list[str] = []
        self.errors: dict[str, int] = {}
        self.pending: set[asyncio.Task[None]] = set()

    async def gift(self, tag: str) -> None:
        self.sent += 1
        # The peer's idempotency keys are global (giftrelay's are per viewer): name the user.
        task = asyncio.create_task(self._gift(f"{tag}-{self.user}-{self.sent:08d}"))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _gift(self, id: str) -> None:
        try:
            ok = await self.client.gift(STREAM, "rose", id=id)
            self.acked.append(ok.offset)
        except RelayError as exc:
            self.errors[exc.code] = self.errors.get(exc.code, 0) + 1
        except (Disconnected, TimeoutError) as exc:
            code = type(exc).__name__
            self.errors[code] = self.errors.get(code, 0) + 1
        finally:
            PROGRESS.set()


async def pace(
    gifters: Sequence[Gifter | SioGifter], rate: float, duration: float, tag: str
) -> None:
    """``rate`` gifts per second for ``duration`` seconds, round-robin over the gifters."""
    step = 0.01
    started = time.perf_counter()
    i = 0
    while (elapsed := time.perf_counter() - started) < duration:
        for _ in range(int(rate * elapsed - i)):
            await gifters[i % len(gifters)].gift(tag)
            i += 1
        await asyncio.sleep(max(0.0, step - (time.perf_counter() - started - elapsed)))


async def settle(
    watchers: Sequence[Viewer], gifters: Sequence[Gifter | SioGifter]
) -> tuple[int, int, int]:
    """Let the last acks and events arrive (bounded), then check every acknowledged gift
    reached each viewer once and in order: (lost, duplicates, viewers out of order)."""
    await until(lambda: _unanswered(gifters) <= 0)
    acked = sorted((o for g in gifters for o in g.acked), key=_offset)
    # Each acknowledged gift by offset, not a count: a gift answered `unavailable` may
    # still have run (the protocol's retry settles it), and its event is no substitute.
    every = set(acked)
    for v in watchers:
        v.missing = every - set(v.offsets)
    await until(lambda: not any(v.missing for v in watchers))
    lost = dup = disorder = 0
    for v in watchers:
        got = v.offsets
        lost += len(v.missing)
        dup += len(got) - len(set(got))
        disorder += got != sorted(got, key=_offset)
    if lost:
        gone = sorted(set().union(*(v.missing for v in watchers)), key=_offset)
        rank = {o: i for i, o in enumerate(acked)}
        console.print(
            f"[red]lost: {len(gone)} of {len(acked)} acknowledged gifts, missed by "
            f"{sum(bool(v.missing) for v in watchers)} of {len(watchers)} viewers; offsets "
            f"{gone[0]} .. {gone[-1]}, acknowledged #{rank[gone[0]]}..#{rank[gone[-1]]} "
            f"(the newest is #{len(acked) - 1})[/]"
        )
    return lost, dup, disorder


def _unanswered(gifters: Sequence[Gifter | SioGifter]) -> int:
    return sum(g.sent - len(g.acked) - sum(g.errors.values()) for g in gifters)


def _report_gifts(name: str, gifters: Sequence[Gifter | SioGifter]) -> None:
    """Gift errors by code, summed over the gifters, and gifts the drain left unanswered."""
    errors = Counter[str]()
    for g in gifters:
        errors.update(g.errors)
    unanswered = _unanswered(gifters)
    if errors or unanswered:
        console.print(
            f"[yellow]{name}: gift errors {dict(errors)}, "
            f"{unanswered} gifts unanswered after the drain[/]"
        )


def _seen(watchers: Sequence[Viewer]) -> tuple[int, int]:
    """Events and gift events the measuring viewers received so far."""
    return sum(v.events for v in watchers), sum(len(v.offsets) for v in watchers)


def _share(before: tuple[int, int], after: tuple[int, int]) -> float:
    events, gifts = after[0] - before[0], after[1] - before[1]
    return gifts / events if events else 0.0


def _measured(
    name: str,
    viewers: int,
    gifts: int,
    events: float,
    cpu: float,
    window: float,
    frames: int,
    watchers: Sequence[Any],
    hist: HdrHistogram,
    checked: tuple[int, int, int],
    rss: int,
    **extra: Any,
) -> Run:
    """A run's figures from what it counted over its window."""
    lost, dup, disorder = checked
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
        **extra,
    )


def _sinks_done(name: str, out: Any) -> int:
    """The sinks' report once stopped: how many the server dropped during the run."""
    _, dropped = out.get(timeout=30)
    if dropped:
        console.print(f"[yellow]{name}: the server closed {dropped} sinks during the run[/]")
    return int(dropped)


async def drive(
    port: int,
    viewers: int,
    rate: float,
    seconds: float,
    name: str,
    tick_ms: int,
    redis_url: str,
    workers: int = 1,
    deflate: bool = True,
) -> Run:
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-relay-"))
    relay = await start_relay(
        redis_url, port, var, workers,
        GIFTRELAY_TICK_MS=str(tick_ms), GIFTRELAY_COMPRESSION=str(deflate).lower(),
    )  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    sinks = max(0, viewers - MEASURING)
    sink = ctx.Process(target=sink_main, args=(port, sinks, True, ready, stop, out, None, deflate))
    sink.start()
    url = f"ws://127.0.0.1:{port}/ws"
    hist = HdrHistogram(1, 60_000_000, 3)
    watchers: list[Viewer] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for _ in range(min(MEASURING, viewers)):
            ws = await connect(
                url, max_size=None, ping_interval=None, compression="deflate" if deflate else None
            )
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

        # Gift ids unique per run.
        tag = f"t{tick_ms}v{viewers}w{workers}d{deflate:d}-{secrets.token_hex(3)}"
        await pace(gifters, rate, 2.0, f"{tag}-warm")  # warm-up: not measured
        cpu0, events0 = cpu_seconds(relay.pid), metric(port, "giftrelay_events_sent_total")
        slow0 = metric(port, "giftrelay_slow_client_closes_total")
        frames0, seen0 = sum(v.frames for v in watchers), _seen(watchers)
        acked0 = sum(len(g.acked) for g in gifters)
        for v in watchers:
            v.measuring = True
        t0 = time.perf_counter()
        await pace(gifters, rate, seconds, f"{tag}-run")
        window = time.perf_counter() - t0
        cpu = cpu_seconds(relay.pid) - cpu0
        events = metric(port, "giftrelay_events_sent_total") - events0
        slow = metric(port, "giftrelay_slow_client_closes_total") - slow0
        gifts = sum(len(g.acked) for g in gifters) - acked0
        frames = sum(v.frames for v in watchers) - frames0
        share = _share(seen0, _seen(watchers))
        for v in watchers:
            v.measuring = False
        rss = rss_bytes(relay.pid)
        checked = await settle(watchers, gifters)
        _report_gifts(name, gifters)
        stop.set()
        dropped = _sinks_done(name, out)
        return _measured(
            name, viewers, gifts, events, cpu, window, frames, watchers, hist, checked, rss,
            slow_closes=int(slow), sinks_dropped=dropped, gift_share=share,
        )  # fmt: skip
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        sink.join(timeout=30)
        if sink.is_alive():
            sink.kill()
        await stop_relay(relay)
        shutil.rmtree(var, ignore_errors=True)


async def drive_socketio(viewers: int, rate: float, seconds: float, redis_url: str) -> Run:
    """The same load on the Socket.IO peer (see the module's docstring)."""
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-sio-"))
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    received = ctx.RawValue("q", 0)  # events the sinks received
    sinks = max(0, viewers - MEASURING)
    hist = HdrHistogram(1, 60_000_000, 3)
    watchers: list[Viewer] = []
    gifters: list[SioGifter] = []
    clients: list[SioClient] = []
    sink: Any = None
    # bench.target reads only ``profile`` for a Socket.IO target; the node log goes to var.
    options = argparse.Namespace(profile=False, tick_ms=None)
    try:
        async with bench.target("socketio", redis_url, options, var) as node:
            url, pid, port = node.url, node.pid, node.port
            try:
                sink = ctx.Process(
                    target=sink_main, args=(port, sinks, True, ready, stop, out, received)
                )
                sink.start()
                tag = f"sio-v{viewers}-{secrets.token_hex(3)}"  # ids unique per run
                admin = SioClient(url, auth.mint(bench.SECRET, "bench_admin", auth.Role.ADMIN))
                clients.append(admin)
                await admin.connect()
                await admin.stream_open(STREAM, "bench", creator=CREATOR)
                for g in range(GIFTERS):
                    await admin.topup(f"gifter{g}", 10**11, f"{tag}-grant-{g:04d}")
                for _ in range(min(MEASURING, viewers)):
                    v = Viewer(None, hist)
                    client = SioClient(url, on_events=v.on_events)
                    clients.append(client)
                    await client.connect()
                    await client.join(STREAM)
                    watchers.append(v)
                for g in range(GIFTERS):
                    tok = auth.mint(bench.SECRET, f"gifter{g}", auth.Role.VIEWER, ttl=3600)
                    client = SioClient(url, tok, request_timeout=4 * DRAIN)
                    clients.append(client)
                    await client.connect()
                    gifters.append(SioGifter(client, f"gifter{g}"))
                await asyncio.get_running_loop().run_in_executor(None, ready.wait, 120)

                await pace(gifters, rate, 2.0, f"{tag}-warm")  # warm-up: not measured
                cpu0 = cpu_seconds(pid)
                events0 = received.value + sum(v.events for v in watchers)
                frames0, seen0 = sum(v.frames for v in watchers), _seen(watchers)
                acked0 = sum(len(g.acked) for g in gifters)
                for v in watchers:
                    v.measuring = True
                t0 = time.perf_counter()
                await pace(gifters, rate, seconds, f"{tag}-run")
                window = time.perf_counter() - t0
                cpu = cpu_seconds(pid) - cpu0
                events = received.value + sum(v.events for v in watchers) - events0
                gifts = sum(len(g.acked) for g in gifters) - acked0
                frames = sum(v.frames for v in watchers) - frames0
                share = _share(seen0, _seen(watchers))
                for v in watchers:
                    v.measuring = False
                rss = rss_bytes(pid)
                checked = await settle(watchers, gifters)
                _report_gifts(SOCKETIO, gifters)
                stop.set()
                dropped = _sinks_done(SOCKETIO, out)
                return _measured(
                    SOCKETIO, viewers, gifts, events, cpu, window, frames, watchers, hist,
                    checked, rss, target="socketio", sinks_dropped=dropped, gift_share=share,
                )  # fmt: skip
            finally:
                stop.set()
                for gifter in gifters:
                    for t in list(gifter.pending):
                        t.cancel()
                if sink is not None:
                    await asyncio.get_running_loop().run_in_executor(None, sink.join, 30)
                    if sink.is_alive():
                        sink.kill()
            # leaving the block stops node (SIGTERM, then SIGKILL after 30 s)
    except BaseException:
        log = var / "socketio.log"
        if log.exists():
            console.print(f"[red]{SOCKETIO}: node's log ends with:[/]")
            console.print(log.read_text(errors="replace")[-2000:], markup=False)
        raise
    finally:
        shutil.rmtree(var, ignore_errors=True)
        with contextlib.suppress(TimeoutError):  # node is gone: each close is quick
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def idle(
    port: int, count: int, redis_url: str, deflate: bool = True
) -> tuple[float, float, float]:
    """RSS before and after ``count`` idle joined connections; bytes per connection."""
    var = Path(tempfile.mkdtemp(prefix="giftrelay-bench-idle-"))
    relay = await start_relay(redis_url, port, var, GIFTRELAY_COMPRESSION=str(deflate).lower())
    ctx = multiprocessing.get_context("spawn")
    ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    try:
        # One connection first, so the stream's room and its subscription exist.
        sink = ctx.Process(target=sink_main, args=(port, 1, True, ready, stop, out, None, deflate))
        sink.start()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 60)
        before = rss_bytes(relay.pid)
        ready2, stop2 = ctx.Event(), ctx.Event()
        procs = [
            ctx.Process(
                target=sink_main, args=(port, count // 2, True, ready2, stop2, out, None, deflate)
            )
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
    # SIGTERM (``timeout``, a supervisor) cancels the run, so that the servers are stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
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
                (
                    f"tick 25 ms, adaptive, {w} worker{'s' if w > 1 else ''}{COMPRESSION[d]}",
                    25,
                    w,
                    d,
                )
                for d in args.compression
                for w in args.workers
            ]
            if args.baseline:
                d = args.compression[0]
                plans.insert(0, (f"baseline: tick 0 (a frame per event){COMPRESSION[d]}", 0, 1, d))
            if "giftrelay" not in args.peers:
                plans = []
            for name, tick, workers, deflate in plans:
                console.print(f"[bold]{viewers} viewers, {args.rate:g} gifts/s: {name}[/]")
                run = await drive(
                    free_port(), viewers, args.rate, args.seconds, name, tick, server.url, workers,
                    deflate,
                )  # fmt: skip
                runs.append(run)
                console.print(msgspec.json.encode(run).decode())
            if "socketio" in args.peers:
                console.print(f"[bold]{viewers} viewers, {args.rate:g} gifts/s: {SOCKETIO}[/]")
                run = await drive_socketio(viewers, args.rate, args.seconds, server.url)
                runs.append(run)
                console.print(msgspec.json.encode(run).decode())
        idle_result = None
        if args.idle and "giftrelay" in args.peers:
            console.print(f"[bold]{args.idle} idle connections[/]")
            idle_result = await idle(free_port(), args.idle, server.url, args.compression[0])
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    report(runs, idle_result, args)


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
    p.add_argument("--peers", type=_peers, default=["giftrelay"],
                   help=f"targets, of {','.join(PEERS)} [giftrelay]")  # fmt: skip
    p.add_argument("--compression", type=_compression, default=[True],
                   help="the relay's and viewers': deflate, off or both [deflate]")  # fmt: skip
    return p.parse_args()


COMPRESSION = {True: "", False: ", uncompressed"}


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


if __name__ == "__main__":
    asyncio.run(main(parse()))
