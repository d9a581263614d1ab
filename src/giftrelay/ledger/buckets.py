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
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay.ledger.postings import SINGLE
from giftrelay.money import keys
from giftrelay.wire.offsets import Offset, parse_offset


class Source(msgspec.Struct, frozen=True, gc=False):
    """One ledger stream: its key, its bucket (-1 on one Redis), its dead-letter stream."""

    key: str
    bucket: int
    dead: str


dead_letters = keys.ledger_dead


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


def _node_client(redis: RedisCluster, node: ClusterNode) -> Redis:
    options = {k: v for k, v in redis.nodes_manager.connection_kwargs.items() if k in _NODE_OPTIONS}
    return Redis(host=node.host, port=int(node.port), **options)


Call = tuple[str, Callable[[Any], Any]]
"""A command on one key: the key (it picks the node), and a function that issues the
command on a pipeline or a client, e.g. ``lambda r: r.xack(key, group, *ids)``."""


def command(key: str, name: str, *args: Any, **kwargs: Any) -> Call:
    """The call of the client method ``name`` with these arguments, on ``key``'s node."""
    return key, lambda client: getattr(client, name)(*args, **kwargs)


REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)
"""Replies of a node that did not run the command: the key is (or is being) served
elsewhere, or the cluster is not serving it right now."""


class Fanout:
    """Commands on many keys (the ledger's buckets) sent as one plain pipeline per primary,
    all at once. redis-py's cluster pipeline does the same but costs about four times as
    much per command here (a round of 64 reads: 10.5 ms against 2.7 ms), which a consumer
    pays on every round. Each command goes to the primary the slot map names; one the node
    turned away without running it (``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``) is
    sent again through the cluster client, which follows redirections, after the map is
    read again. On one Redis: one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.cluster = is_cluster(redis)
        self._clients: dict[str, Redis] = {}

    async def run(self, calls: Sequence[Call]) -> list[Any]:
        """Each call's reply, or its error as an exception object, in order. A node that
        does not answer raises (after which the slot map is read again)."""
        if not calls:
            return []
        if not self.cluster:
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, issue in calls:
                    issue(pipe)
                return list(await pipe.execute(raise_on_error=False))
        cluster = cast(RedisCluster, self.redis)
        await cluster.initialize()
        nodes: dict[str, ClusterNode] = {}
        groups: dict[str, list[int]] = {}
        for i, (key, _) in enumerate(calls):
            node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(key))
            nodes[node.name] = node
            groups.setdefault(node.name, []).append(i)
        replies: list[Any] = [None] * len(calls)

        async def send(name: str, indexes: list[int]) -> None:
            client = self._clients.get(name)
            if client is None:
                client = self._clients[name] = _node_client(cluster, nodes[name])
            async with client.pipeline(transaction=False) as pipe:
                for i in indexes:
                    calls[i][1](pipe)
                answered = await pipe.execute(raise_on_error=False)
            for i, reply in zip(indexes, answered, strict=True):
                replies[i] = reply

        try:
            await asyncio.gather(*(send(name, indexes) for name, indexes in groups.items()))
        except (RedisConnectionError, RedisTimeoutError, OSError):
            await self._reread_map()  # a node gone: the retry should find its successor
            raise
        redirected = [i for i, reply in enumerate(replies) if isinstance(reply, REDIRECTED)]
        if redirected:
            await self._reread_map()
            for i in redirected:
                try:
                    replies[i] = await calls[i][1](cluster)
                except ResponseError as exc:
                    replies[i] = exc
        return replies

    async def _reread_map(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await cast(RedisCluster, self.redis).nodes_manager.initialize()

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)


def raise_first(replies: Iterable[Any], tolerate: str = "") -> None:
    """Raise the first error among ``replies`` (but those whose text holds ``tolerate``)."""
    for reply in replies:
        if isinstance(reply, Exception) and not (tolerate and tolerate in str(reply)):
            raise reply


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
