"""Resource bounds: idle connections, a slow reader on a busy stream, connect/disconnect cycles.

CI sizes are named below; the big runs (10,000 idle connections, 10,000 cycles) use the
same tests with the environment variables, and their figures are in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

from giftrelay.embedded import RedisServer
from giftrelay.money import keys

from .fault_helpers import FAST, serve, wait_until
from .relay_helpers import Client, running_relay, token
from .test_faults import money_over, slow_reader


def report(text: str) -> None:
    """Figures for docs/reliability.md (seen with ``pytest -s``)."""
    sys.stdout.write(text + "\n")


IDLE_CONNECTIONS = int(os.environ.get("RELIABILITY_IDLE_CONNECTIONS", "1000"))
CYCLES = int(os.environ.get("RELIABILITY_CYCLES", "1000"))
IDLE_KB_PER_CONNECTION = 40
"""The bound asserted per idle, joined connection (docs/benchmarks.md measures ~20 kB)."""


async def test_idle_connections_cost_bounded_memory(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    core = await money_over(redis_server.url)
    await core.stream_open("idle", "cre", "idle")
    async with serve(
        tmp_path, redis_server.url, GIFTRELAY_MAX_CONNECTIONS_PER_IP="100000"
    ) as relay:
        warm = [await Client.open(relay.ws) for _ in range(20)]
        for c in warm:
            await c.join("idle")
        before = relay.rss_kb()
        gate = asyncio.Semaphore(50)  # connections opened at once

        async def one() -> Client:
            async with gate:
                c = await Client.open(relay.ws, open_timeout=30)
                assert (await c.request(within=30, type="join", stream="idle"))["type"] == "joined"
                return c

        clients = await asyncio.gather(*(one() for _ in range(IDLE_CONNECTIONS)))
        after = relay.rss_kb()
        per = (after - before) / IDLE_CONNECTIONS
        report(f"idle: {IDLE_CONNECTIONS} connections, relay RSS {before} -> {after} kB")
        report(f"idle: {per:.1f} kB per connection")
        assert per < IDLE_KB_PER_CONNECTION
        for c in [*clients, *warm]:
            await c.ws.close()
    await core.aclose()
    await core.redis.aclose()


async def test_a_slow_reader_on_a_busy_stream_costs_bounded_memory(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    core = await money_over(redis_server.url)
    await core.stream_open("live", "cre", "busy")
    await core.topup("burster", 10**9, "grant-burster-1")
    async with serve(tmp_path, redis_server.url, GIFTRELAY_WRITE_BUFFER_BYTES="262144") as relay:
        before = relay.rss_kb()
        ws, _ = await slow_reader(relay.port, relay.ws)
        sent = 0
        peak = before
        async with asyncio.timeout(120):
            while ws.close_code is None and sent < 200_000:  # until the relay drops it
                await asyncio.gather(
                    *(
                        core.gift("burster", "live", "gg", 1, f"busy-{sent + i:07d}")
                        for i in range(500)
                    )
                )
                sent += 500
                peak = max(peak, relay.rss_kb())
                if await _closed_by_relay(relay.port, ws):
                    break
        report(f"slow reader: closed after {sent} gifts; relay RSS {before} -> peak {peak} kB")
        # The backlog is bounded by write_buffer_bytes (256 KiB) plus a frame, not by the stream.
        assert peak - before < 16 * 1024
        await ws.close()
    await core.aclose()
    await core.redis.aclose()


async def _closed_by_relay(port: int, ws: object) -> bool:
    """The relay's own count of viewers it closed with 1013 (its /metrics)."""
    import urllib.request

    del ws

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    text = await asyncio.get_running_loop().run_in_executor(None, get)
    for line in text.splitlines():
        if line.startswith("giftrelay_slow_client_closes_total "):
            return float(line.split()[1]) >= 1
    return False


async def test_no_leak_after_many_connect_disconnect_cycles(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await h.money.stream_open("cyc", "cre", "cycles")
        await h.money.topup("alice", 10**6, "grant-alice-cyc1")
        fanout = h.relay.fanout

        async def counts() -> dict[str, int]:
            numsub = (await redis.pubsub_shardnumsub(keys.channel("cyc")))[0][1]
            return {
                "tasks": len(asyncio.all_tasks()),
                "sessions": len(h.relay.sessions),
                "rooms": len(fanout.rooms),
                "room_viewers": sum(len(r.viewers) for r in fanout.rooms.values()),
                "numsub": int(numsub),
                "per_ip": sum(h.relay.per_ip.values()),
            }

        # One cycle first, so that the room and its subscription exist before counting.
        first = await Client.open(h.ws)
        await first.join("cyc")
        await first.close()
        await wait_until(lambda: not h.relay.sessions, 10, "the first session to end")
        before = await counts()
        gate = asyncio.Semaphore(25)

        async def cycle(i: int) -> None:
            async with gate:
                c = await Client.open(h.ws, token("alice") if i % 4 == 0 else None)
                await c.join("cyc")
                if i % 4 == 0:
                    reply = await c.request(
                        type="gift", stream="cyc", gift="rose", id=f"cyc-{i:06d}"
                    )
                    assert reply["type"] == "gift_ok"
                if i % 3 == 0:
                    await c.request(type="leave", stream="cyc")
                if i % 5 == 0:
                    c.ws.transport.abort()  # a dropped connection, no close handshake
                    assert c.reader is not None
                    await c.reader
                else:
                    await c.close()

        started = time.monotonic()
        await asyncio.gather(*(cycle(i) for i in range(CYCLES)))
        await wait_until(lambda: not h.relay.sessions, 20, "every session to end")
        await wait_until(lambda: sum(len(r.viewers) for r in fanout.rooms.values()) == 0, 20)
        after = await counts()
        report(
            f"cycles: {CYCLES} in {time.monotonic() - started:.1f} s; before {before} after {after}"
        )
        assert after == before
