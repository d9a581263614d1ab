"""``giftrelay serve`` as a process: several workers on one port, and orderly shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from giftrelay.auth import Role
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog
from giftrelay.money.api import Money

from .relay_helpers import SECRET, Client, token


async def start_serve(
    redis_server: RedisServer, tmp_path: Path, *args: str
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {
        **os.environ,
        "GIFTRELAY_SECRET": SECRET,
        "GIFTRELAY_VAR_DIR": str(tmp_path / "var"),
        "GIFTRELAY_GIFT_RATE": "100000",
        "GIFTRELAY_GIFT_BURST": "100000",
        "GIFTRELAY_MESSAGE_RATE": "100000",
        "GIFTRELAY_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "serve", "--port", str(port),
        "--redis-url", redis_server.url, "--no-ledger", *args,
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while True:  # serve prints its URLs once every worker listens
            line = (await proc.stdout.readline()).decode()
            assert line, "serve exited before listening"
            if "websocket:" in line:
                break
    return proc, port


async def money_over(redis: Redis) -> Money:
    core = Money(redis, Settings.load({}), catalog.load())
    await core.start()
    return core


async def test_two_workers_fan_out_to_every_viewer(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    core = await money_over(redis)
    await core.stream_open("s1", "cre", "two workers")
    await core.topup("alice", 1000, "grant-alice-1")
    proc, port = await start_serve(redis_server, tmp_path, "--workers", "2")
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        viewers = [await Client.open(url) for _ in range(24)]
        for v in viewers:
            assert (await v.join("s1"))["type"] == "joined"
        # A join is answered once its worker is subscribed; the kernel spread the viewers
        # over both workers, so the channel has exactly 2 subscribers, one per worker.
        assert (await redis.pubsub_shardnumsub("ev:{s1}"))[0][1] == 2
        alice = await Client.open(url, token("alice"))
        replies = await asyncio.gather(
            *(
                alice.request(type="gift", stream="s1", gift="rose", id=f"two-workers-{i:03d}")
                for i in range(80)
            )
        )
        acked = sorted((r["offset"] for r in replies), key=lambda o: tuple(map(int, o.split("-"))))
        for v in viewers:
            await v.wait_for(lambda v=v: len(v.gifts("s1")) >= 80)
            assert [e["offset"] for e in v.gifts("s1")] == acked
        # A worker's viewers count is summed over both workers.
        await viewers[0].wait_for(
            lambda: any(
                e["kind"] == "viewers" and e["count"] == 24 for e in viewers[0].events["s1"]
            )
        )
        proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(v.closed() for v in viewers))
        assert set(codes) == {1001}
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await core.aclose()


async def test_sigterm_answers_gifts_in_flight(
    redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    core = await money_over(redis)
    await core.stream_open("s1", "cre", "shutdown")
    await core.topup("alice", 100_000, "grant-alice-2")
    proc, port = await start_serve(redis_server, tmp_path)
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        alice = await Client.open(url, token("alice"))
        viewer = await Client.open(url, token("vic", Role.VIEWER))
        await viewer.join("s1")
        futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        for i in range(300):
            ref = f"inflight-{i}"
            futures[ref] = alice.waiting[ref] = asyncio.get_running_loop().create_future()
            await alice.ws.send(
                json.dumps(
                    {
                        "type": "gift",
                        "stream": "s1",
                        "gift": "rose",
                        "id": f"sd-{i:05d}",
                        "ref": ref,
                    }
                )
            )
        proc.send_signal(signal.SIGTERM)
        assert await viewer.closed() == 1001
        assert await alice.closed() == 1001
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        answered = [f.result() for f in futures.values() if f.done()]
        acked = [r for r in answered if r["type"] == "gift_ok"]
        # Every gift that moved money was answered before the connection closed.
        spent = 100_000 - (await core.balance("alice")).coins
        assert spent == len(acked)
        assert len(acked) > 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await core.aclose()


async def test_ctrl_c_on_the_embedded_default_stops_everything_in_order(tmp_path: Path) -> None:
    """A terminal's Ctrl+C reaches the whole process group; the embedded Redis must
    still outlive the relay and the ledger consumer, which need it to finish."""
    env = {
        **os.environ,
        "GIFTRELAY_VAR_DIR": str(tmp_path / "var"),
        "GIFTRELAY_LOG_FORMAT": "json",
    }
    env.pop("GIFTRELAY_REDIS_URL", None)
    env.pop("GIFTRELAY_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "serve", "--port", str(free_port()),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    async with asyncio.timeout(60):
        while b"websocket:" not in await proc.stdout.readline():
            assert proc.returncode is None
    os.killpg(proc.pid, signal.SIGINT)
    async with asyncio.timeout(30):
        stderr = (await proc.stderr.read()).decode()
        assert await proc.wait() == 0
    events = [json.loads(line)["event"] for line in stderr.splitlines() if line.startswith("{")]
    assert "ledger consumer waiting" not in events, stderr  # Redis was there to the end
    order = [e for e in events if e in ("relay stopped", "ledger consumer stopped")]
    assert order == ["relay stopped", "ledger consumer stopped"]
    # Redis was stopped by giftrelay, last (SIGTERM), not by the terminal's SIGINT.
    redis_log = (tmp_path / "var" / "redis" / "redis.log").read_text()
    assert "Received SIGINT" not in redis_log
    assert "Received SIGTERM" in redis_log
