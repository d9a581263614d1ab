"""``redis+sentinel://`` URLs: a real primary, replica and Sentinel on this machine, and a
failover the money core and the relay's event channel ride through."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, find_redis_server, free_port
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import SentinelURL, connect

from .relay_helpers import Client, running_relay, token

SERVICE = "giftrelay-primary"


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.primary = RedisServer(tmp / "primary", appendonly=True)
        self.replica_port = free_port()
        self.sentinel_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"

    def start(self) -> None:
        self.primary.start()
        binary = find_redis_server()
        replica_dir = self.tmp / "replica"
        replica_dir.mkdir()
        self.procs.append(
            subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.replica_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(replica_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--replicaof",
                    "127.0.0.1",
                    str(self.primary.port),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        conf = self.tmp / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.tmp}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        self.procs.append(
            subprocess.Popen(
                [binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.primary.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    yield c
    c.stop()


async def until_replicated(redis: Redis, cluster: Cluster) -> None:
    """The replica has everything (WAIT), and Sentinel knows it (it can fail over to it)."""
    async with asyncio.timeout(20):
        while await redis.execute_command("WAIT", 1, 1000) < 1:
            pass
    sentinel = Redis(port=cluster.sentinel_port, decode_responses=True)
    try:
        async with asyncio.timeout(30):  # Sentinel asks the primary for its replicas every 10 s
            while True:
                replicas = await sentinel.execute_command("SENTINEL", "REPLICAS", SERVICE)
                if any(str(r["port"]) == str(cluster.replica_port) for r in replicas):
                    break
                await asyncio.sleep(0.2)  # polling Sentinel's view
    finally:
        await sentinel.aclose()


def test_sentinel_urls_parse() -> None:
    url = SentinelURL("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2/mymaster/2")
    assert url.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (url.service, url.db, url.password) == ("mymaster", 2, "s3cret")
    with pytest.raises(ValueError, match="service"):
        SentinelURL("redis+sentinel://10.0.0.1:26379")


async def test_money_and_fan_out_ride_through_a_failover(cluster: Cluster) -> None:
    settings = Settings.load({})
    redis = connect(cluster.url)
    async with asyncio.timeout(20):  # Sentinel learns the primary
        while True:
            try:
                await redis.ping()
                break
            except Exception:
                await asyncio.sleep(0.1)  # retry pause while Sentinel starts
    core = Money(redis, settings, catalog.load())
    await core.start()
    await core.stream_open("s1", "cre", "through a failover")
    await core.topup("alice", 100, "grant-alice-1")
    async with running_relay(cluster.url, gift_rate=1000.0, gift_burst=1000) as h:
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        alice = await Client.open(h.ws, token("alice"))
        first = await alice.request(type="gift", stream="s1", gift="rose", id="before-failover")
        assert first["type"] == "gift_ok"
        await until_replicated(redis, cluster)

        cluster.primary.kill()  # Sentinel promotes the replica after ~1 s down
        async with asyncio.timeout(30):
            while True:
                reply = await alice.request(type="gift", stream="s1", gift="rose", id="after-fail")
                if reply["type"] == "gift_ok":
                    break
                assert reply["code"] == "unavailable"
                await asyncio.sleep(0.2)  # a client's retry pause, not synchronisation
        # The same clients, the new primary: money and events carry on.
        await viewer.wait_for(lambda: len(viewer.gifts("s1")) == 2, within=30)
        assert [e["id"] for e in viewer.gifts("s1")] == ["before-failover", "after-fail"]
        balance = await core.balance("alice")
        assert balance.coins == 98
        primary = await redis.execute_command("INFO", "server")
        assert primary["tcp_port"] == cluster.replica_port
    await core.aclose()
    await redis.aclose()
