"""Fixtures: a real redis-server on a free port in a temp dir, and the money core over it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer
from giftrelay.ledger.store import Store
from giftrelay.money import catalog as catalog_module
from giftrelay.money.api import Money
from giftrelay.redis_client import connect

from .cluster_helpers import (  # noqa: F401 - fixtures for every test
    flush_cluster,
    own_cluster,
    redis_cluster,
)

# Every `giftrelay serve` a test starts would otherwise open the HTTP API on 8081, where
# another test's (or another checkout's) serve may listen; the API's tests ask for a port.
os.environ.setdefault("GIFTRELAY_API_PORT", "0")

START_MS = 1_795_392_000_000  # 2026-11-23 00:00:00 UTC
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """An injected clock: tests move time instead of waiting for it."""

    def __init__(self, ms: int = START_MS + 12 * 3_600_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One server for the session; each test starts from an empty database."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of the test's own, with AOF on, that the test may kill and restart."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_redis: run the test on one Redis and again on a Redis Cluster"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_redis`` runs twice: its ``redis`` (and the money core over
    it) on one redis-server, then on the session's Redis Cluster."""
    if "redis_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_redis"
    ):
        metafunc.parametrize("redis_kind", ["single", "cluster"])


@pytest.fixture
def redis_kind() -> str:
    return "single"


@pytest.fixture
def redis_url(redis_kind: str, request: pytest.FixtureRequest) -> str:
    """The URL of the Redis the test's ``redis`` client talks to (one, or the cluster)."""
    name = "redis_cluster" if redis_kind == "cluster" else "redis_server"
    return str(request.getfixturevalue(name).url)


@pytest.fixture
async def redis(redis_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    if redis_kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        await flush_cluster(cluster)
        client = connect(cluster.url)
    else:
        client = connect(request.getfixturevalue("redis_server").url)
        await client.flushall()
    yield client
    await client.aclose()


Loadtest = Callable[..., Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
def loadtest() -> Loadtest:
    """``giftrelay-loadtest ARGS`` as an operator runs it (``python -m loadtest``), in a
    process of its own from the checkout, its output (stdout and stderr) to read;
    keywords are set in its environment."""

    async def start(*args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest", *args,
            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip

    return start


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A ledger store of the test's own, once on SQLite and once on PostgreSQL."""
    from .ledger_helpers import make_store

    async for opened in make_store(request.param, tmp_path):
        yield opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings() -> Settings:
    return Settings.load({})


@pytest.fixture
async def money(redis: Redis, settings: Settings, clock: Clock) -> AsyncIterator[Money]:
    core = Money(redis, settings, catalog_module.load(), clock=clock)
    await core.start()
    yield core
    await core.aclose()


async def dump(redis: Redis) -> dict[str, Any]:
    """Every key with its type and full value: to prove a refusal wrote nothing."""
    out: dict[str, Any] = {}
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = await redis.xrange(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = sorted(await redis.smembers(key))
        else:  # pragma: no cover
            raise AssertionError(f"unexpected type {kind} at {key}")
        out[key] = (kind, value)
    return out


async def ledger_raw(redis: Redis) -> list[str]:
    """The ledger stream's entries as written; on a cluster every bucket's, by time."""
    import msgspec

    from giftrelay.money import keys
    from giftrelay.redis_client import is_cluster

    streams = keys.LEDGERS if is_cluster(redis) else (keys.LEDGER,)
    raw = [str(f["e"]) for s in streams for _, f in await redis.xrange(s)]
    raw.sort(key=lambda e: int(msgspec.json.decode(e).get("ts", 0)))  # stable, per bucket
    return raw


async def ledger_entries(redis: Redis, kind: str | None = None) -> list[dict[str, Any]]:
    """The ledger's entries (of ``kind``), decoded."""
    import msgspec

    entries = [msgspec.json.decode(e) for e in await ledger_raw(redis)]
    return [e for e in entries if kind is None or e["kind"] == kind]


async def event_pubsub(redis: Redis, channel: str) -> Any:
    """A confirmed sharded subscription to ``channel``; on a cluster, on the node that
    publishes it (a stream's events go out on the shard holding its slot)."""
    from giftrelay.redis_client import is_cluster

    client = redis
    if is_cluster(redis):
        await redis.initialize()  # type: ignore[attr-defined]  # the slot map, if not read yet
        node = redis.get_node_from_key(channel)  # type: ignore[attr-defined]
        client = Redis(host=node.host, port=node.port, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.ssubscribe(channel)
    assert (await pubsub.get_message(timeout=2))["type"] == "ssubscribe"
    return pubsub
