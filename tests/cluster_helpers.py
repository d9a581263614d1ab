"""A local Redis Cluster (3 primaries, a replica each) for tests: one shared by the
session, and one of a test's own to kill nodes in or reshard. conftest re-exports the
fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from giftrelay.embedded import LocalCluster


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the session. Tests share it, so they leave its nodes and slots as
    they found them (own_cluster is for the others) and start with flush_cluster."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A fresh cluster of the test's own, which it may kill nodes in and reshard."""
    with LocalCluster(tmp_path / "cluster") as cluster:
        yield cluster


async def flush_cluster(cluster: LocalCluster, *, timeout_ms: int = 5000) -> None:
    """FLUSHALL on every primary, then WAIT until each one's replicas have it too: a
    test that reads a replica (or a replica promoted by a failover) sees no earlier
    test's keys."""
    primaries = await asyncio.to_thread(cluster.primary_ports)
    await asyncio.gather(*(_flush(port, timeout_ms) for port in primaries))


async def _flush(port: int, timeout_ms: int) -> None:
    async with Redis(host="127.0.0.1", port=port) as client:
        await client.flushall()
        replicas = (await client.info("replication"))["connected_slaves"]
        acked = await client.wait(replicas, timeout_ms)
        if acked < replicas:
            raise TimeoutError(f"127.0.0.1:{port}: {acked} of {replicas} replicas flushed")
