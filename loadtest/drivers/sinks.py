"""Sink viewers: real connections that did the WebSocket handshake and joined, then read
and discard, by the thousand in a process of their own (:class:`Sinks`).

A Python client that decoded every event of a fan-out to 5,000 viewers would need more
cores than the relay it measures; a sink costs a ``data_received`` call per read. For
Socket.IO a sink does the engine.io v4 handshake, the Socket.IO connect (``40``) and a
join with an acknowledgement, then counts the events it reads without decoding them
and answers the engine.io pings (``2`` -> ``3``), as Socket.IO keeps its 25 s ping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import multiprocessing
import os
import signal
from typing import Any, cast

import msgspec


def masked_text(payload: bytes) -> bytes:
    """One client text frame (clients must mask; a zero mask keeps the payload as is)."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
"""What a browser offers."""


class Sink(asyncio.Protocol):
    """A giftrelay viewer that joined ``stream`` (without waiting for the answer), then
    reads and discards."""

    path = "/ws"
    stream = "bench"
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
        Sink.received += len(data)
        if self.opened.done():
            return
        self.header += data
        if b"\r\n\r\n" in self.header:
            if not self.header.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(RuntimeError(self.header[:100].decode()))
                return
            if self.join:
                message = msgspec.json.encode({"type": "join", "stream": self.stream})
                self.transport.write(masked_text(message))
            self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or RuntimeError("closed"))
        elif not Sink.stopping:
            Sink.dropped += 1


SIO_EVENT = b'42["events"'
"""How each event frame of the Socket.IO peer starts (one event per frame)."""
SIO_PING = b"\x81\x012"
"""An engine.io ping: a server text frame (unmasked) of one byte, ``2``. Only a ping
matches: JSON never holds a raw 0x01, and event frames are far too short for the
bytes of an extended length to read 0x81 0x01."""
SIO_PONG = masked_text(b"3")


class SioSink(Sink):
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
        Sink.received += len(data)
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
                self.transport.write(masked_text(b"40"))
            elif payload.startswith(b"40"):
                if not self.join:
                    self._opened()
                    return
                message = msgspec.json.encode(["join", {"stream": self.stream}])
                self.transport.write(masked_text(b"420" + message))
            elif payload.startswith(b"430"):
                self._opened()
                return
            elif payload.startswith(SIO_EVENT):  # an event before the join's ack
                SioSink.events.value += 1
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
            SioSink.events.value += events
        pings = data.count(SIO_PING) + (tail[-2:] + data[:2]).count(SIO_PING)
        if pings:
            self.transport.write(SIO_PONG * pings)
        self.tail = data[-n:] if len(data) >= n else (tail + data)[-n:]


def sink_main(
    port: int,
    count: int,
    stream: str,
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
    protocol: type[Sink] = Sink
    Sink.stream, Sink.deflate = stream, deflate
    if events is not None:
        protocol, SioSink.events = SioSink, events

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
        Sink.stopping = True
        out.put((Sink.received, Sink.dropped))
        for t in transports:
            t.close()

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(run())


class Sinks:
    """``count`` sinks joined to ``stream`` at ``port`` in a process of their own (spawned);
    Socket.IO ones with ``socketio`` (their events counted in ``events``), offering
    permessage-deflate with ``deflate``."""

    def __init__(
        self,
        port: int,
        count: int,
        stream: str,
        *,
        socketio: bool = False,
        deflate: bool = False,
        join: bool = True,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.count = count
        self._ready, self._stop, self._out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.events: Any = ctx.RawValue("q", 0) if socketio else None
        """Socket.IO only: events the sinks received (a shared counter)."""
        self.process = ctx.Process(
            target=sink_main,
            args=(port, count, stream, join, self._ready, self._stop, self._out, self.events,
                  deflate),
        )  # fmt: skip

    def start(self) -> Sinks:
        self.process.start()
        return self

    async def ready(self, within: float) -> None:
        """Until every sink has joined (they start within ``within`` s, or TimeoutError)."""
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, self._ready.wait, within):
            raise TimeoutError(f"{self.count} sinks did not connect within {within:g} s")

    def stop(self) -> None:
        self._stop.set()

    def dropped(self, within: float = 30.0) -> int:
        """Once stopped: how many sinks the server closed during the run."""
        _, dropped = self._out.get(timeout=within)
        return int(dropped)

    async def join(self, within: float = 30.0) -> None:
        """Stop them and wait for their process (SIGKILL after ``within`` s)."""
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self.process.join, within)
        if self.process.is_alive():
            self.process.kill()
