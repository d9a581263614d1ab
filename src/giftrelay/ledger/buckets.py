"""Where ledger entries wait in Redis: the one ``ledger`` stream, or on a Redis Cluster one
stream per bucket (``money/keys.py``), and how to reach every node of a cluster.

On a cluster every money script appends to the bucket stream its own node holds
(``ledger:{b07.fyv}``…), so the ledger is 64 streams, each with its own consumer group
``ledger-writers`` and, beside it in the same slot, its own dead-letter stream: an entry
moves there and is acknowledged in one transaction, as on one Redis. Their entry ids are
each stream's own, so two buckets may hand out the same id: the store keys an event by
(bucket, id), and a single Redis's events are bucket ``-1`` (``postings.SINGLE``).

A cluster's nodes are read one by one where a command has no key to route it (SCAN,
CLIENT LIST) or must see one node's keys at one instant (a script over them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ResponseError

from giftrelay.ledger.postings import SINGLE
from giftrelay.money import keys
from giftrelay.wire.offsets import Offset, parse_offset


class Source(msgspec.Struct, frozen=True, gc=False):
    """One ledger stream: its key, its bucket (-1 on one Redis), its dead-letter stream."""

    key: str
    bucket: int
    dead: str


def dead_letters(bucket: int) -> str:
    """A bucket's dead-letter stream: the bucket stream's slot, so moving an entry there and
    acknowledging it is one transaction."""
    return f"{keys.LEDGER_DEAD}:{{{keys.BUCKET_TAGS[bucket]}}}"


ONE = Source(keys.LEDGER, SINGLE, keys.LEDGER_DEAD)
"""The one ``ledger`` stream of a single Redis."""

BUCKETS = tuple(Source(keys.ledger(b), b, dead_letters(b)) for b in range(keys.BUCKETS))
"""Every bucket's ledger stream, on a cluster."""


def is_cluster(redis: Redis) -> bool:
    """Whether ``redis`` is a Redis Cluster client (``redis_client.connect`` casts it)."""
    return isinstance(redis, RedisCluster)


def sources(redis: Redis) -> tuple[Source, ...]:
    """The ledger streams of this Redis: one, or every bucket's on a cluster."""
    return BUCKETS if is_cluster(redis) else (ONE,)


def bucket_slot(bucket: int) -> int:
    """The slot of bucket ``bucket``'s keys (its tag was chosen to hash there)."""
    return bucket * keys.BUCKET_SLOT_SPAN


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def last_ids(redis: Redis, streams: Sequence[str]) -> list[Offset]:
    """Each stream's last generated id; (0, 0) for a stream that does not exist."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in streams:
            pipe.xinfo_stream(key)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    out = []
    for reply in replies:
        if isinstance(reply, ResponseError):  # no such key
            out.append((0, 0))
        elif isinstance(reply, Exception):
            raise reply
        else:
            out.append(parse_offset(text(reply["last-generated-id"])))
    return out


async def lengths(redis: Redis, streams: Iterable[str]) -> int:
    """Entries in ``streams`` together (XLEN each, one pipeline; a missing stream is 0)."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in streams:
            pipe.xlen(key)
        return sum(int(n) for n in await pipe.execute())


async def backlog(redis: Redis) -> int:
    """Entries waiting in the ledger stream(s): written or not, until trimmed."""
    return await lengths(redis, (s.key for s in sources(redis)))


async def dead_count(redis: Redis) -> int:
    """Entries in the dead-letter stream(s) (on a cluster, the buckets' and ``ledger:dead``)."""
    return await lengths(redis, {ONE.dead, *(s.dead for s in sources(redis))})


async def group_info(redis: Redis, key: str = keys.LEDGER) -> dict[str, Any] | None:
    """The ``ledger-writers`` group's XINFO on ``key``, or None when it (or the stream) does
    not exist."""
    try:
        groups = await redis.xinfo_groups(key)
    except ResponseError:
        return None
    for group in groups:
        if text(group["name"]) == keys.LEDGER_GROUP:
            return dict(group)
    return None


async def active_consumers(redis: Redis, within_ms: int) -> list[tuple[str, str, int]]:
    """Members of the group on any ledger stream that asked for entries in the last
    ``within_ms``: (stream, name, ms since)."""
    streams = [s.key for s in sources(redis)]
    async with redis.pipeline(transaction=False) as pipe:
        for key in streams:
            pipe.xinfo_consumers(key, keys.LEDGER_GROUP)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    active = []
    for key, members in zip(streams, replies, strict=True):
        if isinstance(members, ResponseError):  # no stream or no group: nobody reads it
            continue
        if isinstance(members, Exception):
            raise members
        for member in members:
            idle = int(member.get("inactive", member.get("idle", within_ms)))
            if 0 <= idle < within_ms:
                active.append((key, text(member["name"]), idle))
    return active


async def consuming(redis: Redis, within_ms: int = 10_000) -> bool:
    """Whether a ledger consumer asked for entries in the last ``within_ms``."""
    return bool(await active_consumers(redis, within_ms))


# -- a cluster's nodes ---------------------------------------------------------------------

_NODE_OPTIONS = frozenset(
    {"username", "password", "socket_timeout", "socket_connect_timeout", "decode_responses",
     "client_name", "health_check_interval"}
)  # fmt: skip


@contextlib.asynccontextmanager
async def node_clients(
    redis: Redis, *, replicas: bool = False
) -> AsyncIterator[dict[str, tuple[ClusterNode, Redis]]]:
    """A client of each primary (and replica, with ``replicas``) of the cluster, by node
    name, with the cluster client's credentials and time-outs; closed on exit. On one
    Redis: that Redis itself, under the name ``""``."""
    if not isinstance(redis, RedisCluster):
        yield {"": (cast(ClusterNode, None), redis)}
        return
    await redis.initialize()
    options = {k: v for k, v in redis.nodes_manager.connection_kwargs.items() if k in _NODE_OPTIONS}
    nodes = redis.get_nodes() if replicas else redis.get_primaries()
    clients = {n.name: (n, Redis(host=n.host, port=int(n.port), **options)) for n in nodes}
    try:
        yield clients
    finally:
        await asyncio.gather(*(client.aclose() for _, client in clients.values()))


def owner(redis: Redis, slot: int) -> str:
    """The name of the primary serving ``slot``, as the cluster client last learned it."""
    cluster = cast(RedisCluster, redis)
    return str(cluster.nodes_manager.get_node_from_slot(slot).name)


def key_owner(redis: Redis, key: str) -> str:
    return owner(redis, cast(RedisCluster, redis).keyslot(key))


async def scan(client: Redis, match: str, count: int = 1000) -> AsyncIterator[str]:
    """Every key matching ``match`` on one node (or one Redis)."""
    async for key in client.scan_iter(match=match, count=count):
        yield text(key)


async def scan_all(redis: Redis, match: str, count: int = 1000) -> AsyncIterator[str]:
    """Every key matching ``match``: on one Redis, or on every primary of a cluster."""
    async with node_clients(redis) as nodes:
        for _, client in nodes.values():
            async for key in scan(client, match, count):
                yield key
