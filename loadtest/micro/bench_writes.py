"""The floor under any fan-out on this machine: one frame written to N loopback sockets.

    python -m loadtest.micro.bench_writes [--connections 5000] [--sizes 200,5000,20000,50000]

No WebSocket, no Redis, no relay: a uvloop server writes the same pre-built bytes to
each of N accepted connections, as fast as it can, pausing ``--pause`` seconds
between passes, while a second process reads and discards them on the other end.
It reports how long one pass over the N sockets takes and what one write costs.
A relay's flush cannot be cheaper than this pass, so it bounds the latency any
relay in Python can reach here for a given room size and frame size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

console = Console(width=140)


class _Sink(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


def _sinks(port: int, count: int, seconds: float, ready: Any) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(count):
            await loop.create_connection(_Sink, "127.0.0.1", port)
        ready.set()
        await asyncio.sleep(seconds + 30)

    uvloop.run(run())


async def _one(count: int, size: int, pause: float, seconds: float) -> tuple[float, float, int]:
    """Median and max pass time, and passes, writing ``size`` bytes to ``count`` sockets."""
    transports: list[asyncio.Transport] = []
    all_in = asyncio.Event()

    class Accepted(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]
            if len(transports) == count:
                all_in.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Accepted, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    sink = ctx.Process(target=_sinks, args=(port, count, seconds, ready))
    sink.start()
    try:
        await all_in.wait()
        frame = os.urandom(size)
        passes: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            t = time.perf_counter()
            for transport in transports:
                transport.write(frame)
            passes.append(time.perf_counter() - t)
            await asyncio.sleep(max(pause, passes[-1]))  # let the reader drain
        passes.sort()
        return passes[len(passes) // 2], passes[-1], len(passes)
    finally:
        sink.kill()
        for transport in transports:
            transport.abort()
        server.close()


async def run(args: argparse.Namespace) -> None:
    table = Table(title=f"one frame to {args.connections:,} loopback sockets, {args.seconds:g} s")
    for col in ("frame bytes", "passes", "pass p50 ms", "pass max ms", "µs per write"):
        table.add_column(col, justify="right")
    for size in args.sizes:
        p50, top, n = await _one(args.connections, size, args.pause, args.seconds)
        per = p50 / args.connections * 1e6
        table.add_row(f"{size:,}", str(n), f"{p50 * 1e3:.1f}", f"{top * 1e3:.1f}", f"{per:.1f}")
    console.print(table)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--connections", type=int, default=5000)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x],
                   default=[200, 5000, 20000, 50000])  # fmt: skip
    p.add_argument("--pause", type=float, default=0.025, help="seconds between passes")
    p.add_argument("--seconds", type=float, default=6.0)
    uvloop.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
