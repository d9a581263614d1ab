"""Where a money script runs.

On one Redis: its one :class:`AutoPipeline`. On a Redis Cluster: the pipeline of the
primary that holds the script's slot (one pipeline and connection pool per primary), with
the *shard keys* (the ledger stream, the outbox) of a bucket that primary holds
(:data:`giftrelay.money.keys.BUCKETS`). A call the cluster turns away before it ran
(``MOVED``, ``ASK``, ``TRYAGAIN``, ``CLUSTERDOWN``, a bucket in migration) is sent again
where it now belongs; a node that does not answer makes the call ``unavailable`` and the
slot map is read again, so that the client's retry finds the promoted replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, RedisClusterException, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from giftrelay.money import keys
from giftrelay.money.autopipe import AutoPipeline, Misrouted
from giftrelay.money.scripts import SCRIPTS, Script
from giftrelay.wire.errors import Unavailable

log = structlog.get_logger(__name__)

ShardKey = Callable[[int | None], str]
"""A shard key's name for a bucket (None: one Redis), e.g. :func:`keys.ledger`."""

MAX_REDIRECTS = 8
"""Times one call is sent again after the cluster turned it away, before ``unavailable``."""

AVOID_SECONDS = 10.0
"""How long a bucket a script found no longer on its node is left aside."""


class Router:
    """Runs money scripts on one Redis (:class:`AutoPipeline`), or on a cluster."""

    def __init__(self, pipe: AutoPipeline) -> None:
        self.pipe = pipe

    cluster = False

    async def start(self) -> None:
        await SCRIPTS.load(self.pipe.redis)

    def submit(
        self,
        script: Script,
        keys_: list[str],
        args: list[str | int],
        *,
        idempotent: bool,
        shard: Sequence[ShardKey] = (),
    ) -> asyncio.Future[Any]:
        """The future of the script's reply; ``shard``'s keys follow ``args``."""
        full = [*args, *(name(None) for name in shard)] if shard else args
        return self.pipe.submit(script, keys_, full, idempotent=idempotent)

    async def call(
        self,
        script: Script,
        keys_: list[str],
        args: list[str | int],
        *,
        idempotent: bool,
        shard: Sequence[ShardKey] = (),
    ) -> Any:
        """Run one script; see :meth:`AutoPipeline.call`."""
        return await self.submit(script, keys_, args, idempotent=idempotent, shard=shard)

    async def aclose(self) -> None:
        await self.pipe.aclose()


class ClusterRouter(Router):
    """Runs each script on the primary holding its slot, one pipeline per primary."""

    cluster = True

    def __init__(self, redis: RedisCluster, *, ack_replicas: int, ack_timeout_ms: int) -> None:
        self.redis = redis
        self.ack_replicas = ack_replicas
        self.ack_timeout_ms = ack_timeout_ms
        self._pipes: dict[str, AutoPipeline] = {}
        self._buckets: dict[str, list[int]] = {}
        self._slots_seen: object = None
        self._avoid: dict[tuple[str, int], float] = {}
        self._refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.redis.initialize()
        for node in self.redis.get_primaries():
            await SCRIPTS.load(self._pipe(node).redis)

    def submit(
        self,
        script: Script,
        keys_: list[str],
        args: list[str | int],
        *,
        idempotent: bool,
        shard: Sequence[ShardKey] = (),
    ) -> asyncio.Future[Any]:
        outer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        _Attempt(self, outer, script, keys_, args, idempotent, shard).send(None)
        return outer

    def primary(self, slot: int) -> ClusterNode:
        """The primary holding ``slot``, as the client last learned it."""
        return self.redis.nodes_manager.get_node_from_slot(slot)

    def bucket(self, node: ClusterNode, slot: int) -> int:
        """A bucket ``node`` holds, for a script on ``slot``: the slot's own 256 when the
        node holds their bucket, else one of the node's, spread by slot."""
        owned = self.buckets(node)
        own = slot // keys.BUCKET_SLOT_SPAN
        if not self._avoid and own in owned:  # the common case, on every gift
            return own
        now = time.monotonic()
        self._avoid = {k: until for k, until in self._avoid.items() if until > now}
        usable = [b for b in owned if (node.name, b) not in self._avoid]
        if own in usable:
            return own
        if not usable:
            raise NoBucket(
                f"Redis Cluster node {node.name} holds none of giftrelay's {keys.BUCKETS} bucket"
                f" slots (multiples of {keys.BUCKET_SLOT_SPAN}); give it one of them"
            )
        return usable[slot % len(usable)]

    def buckets(self, node: ClusterNode) -> list[int]:
        slots = self.redis.nodes_manager.slots_cache
        if slots is not self._slots_seen:  # the map was read again: so are the buckets
            self._buckets = {}
            for bucket in range(keys.BUCKETS):
                owner = slots.get(bucket * keys.BUCKET_SLOT_SPAN)
                if owner:
                    self._buckets.setdefault(owner[0].name, []).append(bucket)
            self._slots_seen = slots
        return self._buckets.get(node.name, [])

    def client_for(self, key: str) -> Redis:
        """The plain client of the primary holding ``key`` (cheaper per command than the
        cluster client; a command it sends to a node that lost the slot fails)."""
        return self._pipe(self.primary(key_slot(key.encode()))).redis

    def avoid(self, node: ClusterNode, bucket: int) -> None:
        self._avoid[(node.name, bucket)] = time.monotonic() + AVOID_SECONDS

    def _pipe(self, node: ClusterNode) -> AutoPipeline:
        pipe = self._pipes.get(node.name)
        if pipe is None:
            options = {
                k: v
                for k, v in self.redis.nodes_manager.connection_kwargs.items()
                if k in _NODE_OPTIONS
            }
            # As giftrelay's other clients: a broken connection retried once, at once (a
            # backoff here would hold a gift for seconds while its node is gone).
            retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            client = Redis(host=node.host, port=int(node.port), retry=retry, **options)
            pipe = self._pipes[node.name] = AutoPipeline(
                client, ack_replicas=self.ack_replicas, ack_timeout_ms=self.ack_timeout_ms
            )
        return pipe

    def refresh(self) -> asyncio.Task[None]:
        """Read the slot map again (one read at a time, whoever asks)."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._read_map())
        return self._refresh

    async def _read_map(self) -> None:
        try:
            await self.redis.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            log.warning("could not read the cluster's slot map", error=str(exc))
        self._slots_seen = None  # the buckets follow the map

    async def aclose(self) -> None:
        for pipe in list(self._pipes.values()):
            await pipe.aclose()
            await pipe.redis.aclose()
        if self._refresh is not None:
            await asyncio.gather(self._refresh, return_exceptions=True)


_NODE_OPTIONS = frozenset(
    {
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "decode_responses",
        "client_name",
        "health_check_interval",
    }
)


class NoBucket(Unavailable):
    """The node holds none of the bucket slots, as far as the slot map says: read the
    map again (after a failover or a MOVED it may be stale); if it stays so, this is the
    answer: the operator gives the node a bucket slot."""


class _Attempt:
    """One call through a :class:`ClusterRouter`, sent again while the cluster turns it
    away; its reply, refusal or ``unavailable`` goes to ``outer``."""

    __slots__ = ("args", "idempotent", "keys", "outer", "router", "script", "shard", "tries")

    def __init__(
        self,
        router: ClusterRouter,
        outer: asyncio.Future[Any],
        script: Script,
        keys_: list[str],
        args: list[str | int],
        idempotent: bool,
        shard: Sequence[ShardKey],
    ) -> None:
        self.router = router
        self.outer = outer
        self.script = script
        self.keys = keys_
        self.args = args
        self.idempotent = idempotent
        self.shard = shard
        self.tries = 0

    def send(self, asking: AskError | None) -> None:
        router = self.router
        slot = key_slot(self.keys[0].encode())
        try:
            node = (
                router.redis.get_node(host=asking.host, port=asking.port)
                or ClusterNode(asking.host, asking.port)
                if asking is not None
                else router.primary(slot)
            )
            bucket = router.bucket(node, slot) if self.shard else None
        except NoBucket as exc:
            self._later(exc)
            return
        except (RedisError, RedisClusterException, OSError) as exc:  # no slot map, no owner
            router.refresh()
            self.outer.set_exception(Unavailable(f"Redis Cluster: {exc}"))
            return
        args = [*self.args, *(name(bucket) for name in self.shard)] if self.shard else self.args
        inner = router._pipe(node).submit(
            self.script, self.keys, args, idempotent=self.idempotent, asking=asking is not None
        )
        inner.add_done_callback(lambda done: self._answered(done, node, bucket))

    def _answered(self, inner: asyncio.Future[Any], node: ClusterNode, bucket: int | None) -> None:
        try:
            self._answer(inner, node, bucket)
        except Exception as exc:  # in a callback: the caller must hear of it, not wait
            if not self.outer.done():
                self.outer.set_exception(exc)

    def _answer(self, inner: asyncio.Future[Any], node: ClusterNode, bucket: int | None) -> None:
        outer = self.outer
        if outer.done():
            return
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        if exc is None:
            outer.set_result(inner.result())
            return
        if not isinstance(exc, Misrouted):
            if isinstance(exc, Unavailable):
                self.router.refresh()  # a node gone: the retry should find its successor
            outer.set_exception(exc)
            return
        cause = exc.cause
        if isinstance(cause, AskError) and self.tries < MAX_REDIRECTS:
            self.tries += 1
            self.send(cause)  # the slot is moving: this key is already on the importing node
            return
        if "non local key" in str(cause) and bucket is not None:
            self.router.avoid(node, bucket)
        self._later(exc)  # MOVED (a failover moves a shard's every slot), TRYAGAIN, ...

    def _later(self, exc: Exception) -> None:
        """Read the slot map again, then send again; ``unavailable`` after too many."""
        self.tries += 1
        if self.tries > MAX_REDIRECTS:
            log.warning("cluster turned a call away", script=self.script.value, error=str(exc))
            cause = exc.cause if isinstance(exc, Misrouted) else exc
            self.outer.set_exception(Unavailable(f"Redis Cluster: {cause}"))
            return
        task = self.router.refresh()
        loop = asyncio.get_running_loop()
        task.add_done_callback(lambda _: loop.call_later(0.02 * self.tries, self._again))

    def _again(self) -> None:
        if self.outer.done():
            return
        try:
            self.send(None)
        except Exception as exc:  # in a callback: the caller must hear of it, not wait
            self.outer.set_exception(exc)
