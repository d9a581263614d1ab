"""GIFTRELAY_ACK_REPLICAS: a money reply only once that many replicas hold the movement.

A real primary and a real replica (redis-server --replicaof) on free ports. With the
replica up, a gift is acknowledged and the replica already has it; with the replica
stopped (SIGSTOP), the gift is answered ``unavailable`` within the ack time-out, and
its retry with the same id, once the replica is back, is the one outcome.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from giftrelay.config import ConfigError, Settings
from giftrelay.embedded import RedisServer
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Unavailable
from loadtest.micro.bench_money import start_replica, synced


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "primary", appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replica(primary: RedisServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A replica of ``primary`` (the benchmark's own, so both measure the same setup)."""
    proc = start_replica(primary, tmp_path / "replica")
    yield proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def money(primary: RedisServer) -> AsyncIterator[Money]:
    settings = Settings.load(
        {"GIFTRELAY_ACK_REPLICAS": "1", "GIFTRELAY_ACK_TIMEOUT": "0.3"}, redis_url=primary.url
    )
    redis = connect(primary.url)
    core = Money(redis, settings, catalog.load())
    await core.start()
    yield core
    await core.aclose()
    await redis.aclose()


async def test_a_gift_is_acknowledged_once_the_replica_holds_it(
    money: Money, replica: subprocess.Popen[bytes]
) -> None:
    await synced(money.redis)
    await money.stream_open("s1", "cre", "t")
    await money.topup("alice", 100, "grant-alice-1")
    receipt = await money.gift("alice", "s1", "rose", 1, "gift-000001")
    assert receipt.balance == 99
    copy = Redis(port=replica_port(replica), decode_responses=True)
    try:
        # Acknowledged means held: the replica has it already, no waiting here.
        assert await copy.hget(keys.wallet("alice"), "coins") == "99"
    finally:
        await copy.aclose()
    stats = await money.redis.info("commandstats")
    assert stats["cmdstat_wait"]["calls"] >= 2  # the top-up's pipeline and the gift's


async def test_a_gift_no_replica_confirms_is_unavailable_and_its_retry_is_the_one_outcome(
    money: Money, replica: subprocess.Popen[bytes]
) -> None:
    await synced(money.redis)
    await money.stream_open("s1", "cre", "t")
    await money.topup("alice", 100, "grant-alice-1")
    os.kill(replica.pid, signal.SIGSTOP)  # the replica stops acknowledging
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Unavailable, match="replicas"):
            await money.gift("alice", "s1", "rose", 1, "gift-000002")
        assert loop.time() - started < 1.0  # within the ack time-out (0.3 s), not a hang
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    await synced(money.redis)
    retried = await money.gift("alice", "s1", "rose", 1, "gift-000002")
    assert (retried.replayed, retried.balance) == (True, 99)  # it ran once, the first time
    assert (await money.balance("alice")).coins == 99


async def test_without_the_setting_no_wait_is_sent(primary: RedisServer) -> None:
    settings = Settings.load({}, redis_url=primary.url)
    redis = connect(primary.url)
    core = Money(redis, settings, catalog.load())
    await core.start()
    try:
        await core.topup("bob", 5, "grant-bob-01")  # no replica at all: answered at once
        stats = await redis.info("commandstats")
        assert "cmdstat_wait" not in stats
    finally:
        await core.aclose()
        await redis.aclose()


def test_an_ack_timeout_past_the_request_timeout_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"GIFTRELAY_ACK_TIMEOUT.*GIFTRELAY_REQUEST_TIMEOUT"):
        Settings.load({"GIFTRELAY_ACK_REPLICAS": "1", "GIFTRELAY_ACK_TIMEOUT": "2"})


def replica_port(proc: subprocess.Popen[bytes]) -> int:
    argv = [str(a) for a in proc.args]  # type: ignore[union-attr]
    return int(argv[argv.index("--port") + 1])
