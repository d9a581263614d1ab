"""The whole product on a real Redis Cluster: `giftrelay serve` with a redis+cluster:// URL
(demo page, overlays, the ledger consumer, reconcile), and the load-test harness against a
relay on it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from pathlib import Path
from typing import Any

from redis.crc import key_slot

from giftrelay import runtime
from giftrelay.config import Settings
from giftrelay.embedded import LocalCluster, free_port
from giftrelay.ledger.reconcile import reconcile
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect
from loadtest.scenarios import harness
from loadtest.scenarios.harness import Options

from .cluster_helpers import flush_cluster
from .ledger_helpers import make_store
from .relay_helpers import SECRET, Client, running_relay, token

RELAY = {
    "gift_rate": 100_000.0,
    "gift_burst": 100_000,
    "message_rate": 100_000.0,
    "max_connections_per_ip": 100_000,
}


async def test_the_load_test_harness_passes_against_a_relay_on_a_cluster(
    redis_cluster: LocalCluster,
) -> None:
    await flush_cluster(redis_cluster)
    async with running_relay(redis_cluster.url, **RELAY) as h:
        options = Options(
            url=h.ws,
            secret=SECRET,
            viewers=20,
            gift_rate=40.0,
            duration=2.0,
            processes=2,
            out=None,
            quiet=True,
            drain_timeout=10.0,
        )
        result = await harness.run(options)
    d = result.delivery
    assert result.gifts.acked > 0
    assert result.gifts.unresolved == 0
    assert (d.received, d.lost, d.duplicates, d.order_violations) == (d.expected, 0, 0, 0)
    assert d.expected == result.gifts.acked * 20
    assert result.conservation.ok
    assert result.passed


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.status), reply.read().decode()


async def test_serve_runs_the_product_on_a_cluster_url(
    redis_cluster: LocalCluster, tmp_path: Path
) -> None:
    """The demo page and an overlay are served, viewers on streams of every shard get each
    gift once in order, the ledger consumer writes every gift, and reconcile agrees."""
    await flush_cluster(redis_cluster)
    redis = connect(redis_cluster.url)
    core = Money(redis, Settings.load({}), catalog.load())
    await core.start()
    streams = [f"live{i}" for i in range(3)]
    for i, stream in enumerate(streams):
        await core.stream_open(stream, f"host{i}", "on the cluster")
    await core.topup("fan", 10_000, "grant-fan-0001")
    port = free_port()
    env = {
        **os.environ,
        "GIFTRELAY_SECRET": SECRET,
        "GIFTRELAY_VAR_DIR": str(tmp_path / "var"),
        "GIFTRELAY_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "GIFTRELAY_GIFT_RATE": "100000",
        "GIFTRELAY_GIFT_BURST": "100000",
        "GIFTRELAY_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "serve", "--port", str(port),
        "--redis-url", redis_cluster.url, "--ledger",
        env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while "websocket:" not in (line := (await proc.stdout.readline()).decode()):
                assert line, "serve exited before listening"
        base = f"http://127.0.0.1:{port}"
        status, page = await asyncio.to_thread(fetch, base + "/")
        assert status == 200
        assert "giftrelay" in page.lower()
        overlay = token("host0", stream="live0")
        assert (await asyncio.to_thread(fetch, f"{base}/overlay/alerts?token={overlay}"))[0] == 200
        assert (await asyncio.to_thread(fetch, base + "/readyz"))[0] == 200

        url = f"ws://127.0.0.1:{port}/ws"
        viewers = [await Client.open(url) for _ in range(3)]
        for viewer, stream in zip(viewers, streams, strict=True):
            assert (await viewer.join(stream))["type"] == "joined"
        fan = await Client.open(url, token("fan"))
        replies = await asyncio.gather(
            *(
                fan.request(type="gift", stream=stream, gift="rose", id=f"cl-{stream}-{i:03d}")
                for stream in streams
                for i in range(20)
            )
        )
        assert {r["type"] for r in replies} == {"gift_ok"}
        for viewer, stream in zip(viewers, streams, strict=True):
            acked = [r["offset"] for r in replies if r["stream"] == stream]
            acked.sort(key=lambda o: tuple(map(int, o.split("-"))))
            await viewer.wait_for(lambda v=viewer, s=stream: len(v.gifts(s)) >= 20)
            assert [e["offset"] for e in viewer.gifts(stream)] == acked

        reconcile = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "giftrelay", "reconcile", "--wait", "20",
            env={**env, "GIFTRELAY_REDIS_URL": redis_cluster.url},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await reconcile.communicate()
        assert reconcile.returncode == 0, out.decode()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await core.aclose()
        await redis.aclose()


async def gift_until_acknowledged(client: Client, stream: str, request_id: str) -> dict[str, Any]:
    """A client's loop: the same id again while the relay answers ``unavailable``."""
    async with asyncio.timeout(40):
        while True:
            reply = await client.request(type="gift", stream=stream, gift="rose", id=request_id)
            if reply["type"] == "gift_ok":
                return reply
            assert reply["code"] == "unavailable", reply
            await asyncio.sleep(0.05)


async def test_a_primary_killed_under_load_loses_nothing_end_to_end(
    own_cluster: LocalCluster, tmp_path: Path
) -> None:
    """GIFTRELAY_ACK_REPLICAS=1, gifts through the relay to viewers of streams on every
    shard, kill -9 of a primary that holds a stream, gifters and a creator: afterwards
    every acknowledged gift is in the ledger store exactly once, every viewer received it
    once, and reconcile agrees."""
    url = own_cluster.url
    streams = [f"hot{i}" for i in range(4)]
    victim = own_cluster.owner_of_slot(key_slot(keys.stream(streams[0]).encode()))
    assert len({own_cluster.owner_of_slot(key_slot(keys.stream(s).encode())) for s in streams}) == 3
    stores = make_store("sqlite", tmp_path)
    store = await anext(stores)
    try:
        async with running_relay(url, ack_replicas=1, ack_timeout=1.0, **RELAY) as h:
            core = h.money
            for i, stream in enumerate(streams):
                await core.stream_open(stream, f"star{i % 3}", "failover")
            gifters = [f"fan{i}" for i in range(6)]
            for fan in gifters:
                await core.topup(fan, 10_000, f"grant-{fan}-01")
            stop = asyncio.Event()
            settings = Settings.load({}, redis_url=url)
            writer = runtime.consumer(settings, url, store)
            writing = asyncio.create_task(writer.run(stop))
            viewers = {s: [await Client.open(h.ws) for _ in range(2)] for s in streams}
            for stream, watching in viewers.items():
                for viewer in watching:
                    assert (await viewer.join(stream))["type"] == "joined"
            clients = [await Client.open(h.ws, token(fan)) for fan in gifters]
            replies: list[dict[str, Any]] = []
            sixty = asyncio.get_running_loop().create_future()

            async def gifter(n: int, client: Client) -> None:
                for i in range(40):
                    stream = streams[(n + i) % len(streams)]
                    reply = await gift_until_acknowledged(client, stream, f"fan{n}-{i:05d}")
                    replies.append(reply)
                    if len(replies) == 60:
                        sixty.set_result(None)
                    await asyncio.sleep(0.01)

            sending = asyncio.gather(*(gifter(n, c) for n, c in enumerate(clients)))
            await asyncio.wait([sixty, sending], return_when=asyncio.FIRST_COMPLETED)
            assert sixty.done(), sending.exception()
            own_cluster.kill(victim)
            await asyncio.to_thread(own_cluster.wait_failover, victim)
            await asyncio.to_thread(own_cluster.restart, victim)  # the promoted one's replica
            await sending
            await core.steps.sweep(grace_ms=0)  # type: ignore[union-attr]

            assert len(replies) == len(gifters) * 40
            for stream, watching in viewers.items():
                acked = sorted(r["id"] for r in replies if r["stream"] == stream)
                for viewer in watching:
                    wanted = len(acked)
                    await viewer.wait_for(lambda v=viewer, s=stream, n=wanted: len(v.gifts(s)) >= n)
                    got = [e["id"] for e in viewer.gifts(stream)]
                    assert sorted(got) == acked  # each once
                    offsets = [
                        tuple(map(int, e["offset"].split("-"))) for e in viewer.gifts(stream)
                    ]
                    assert offsets == sorted(offsets)  # in offset order

            redis = core.redis
            report = await reconcile(redis, store, wait=20)
            assert report.ok, report
            stop.set()
            await writing
            rows = [r async for r in store.export(None, None) if r.kind == "gift"]
            assert sorted(r.request_id or "" for r in rows) == sorted(r["id"] for r in replies)
    finally:
        await stores.aclose()
