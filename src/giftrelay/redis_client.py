"""One way to open a Redis client, with the timeouts the money path relies on.

``GIFTRELAY_REDIS_URL`` is ``redis://[:password@]host:port/db``, or, through Sentinel,
``redis+sentinel://[:password@]host:26379,host2:26379/service/db``: the client asks
the Sentinels for the service's primary and asks again after a failover. On a Redis
Cluster it is ``redis+cluster://[:password@]host:port[,host:port...]`` (any nodes: the
client learns the rest and follows slots as they move).
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import SplitResult, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
MAX_CONNECTIONS = 256
"""Connections one client keeps to Redis at most (gifts share a few; reads take one each)."""


def _hosts(
    url: str, scheme: str, default_port: int, what: str
) -> tuple[SplitResult, str | None, list[tuple[str, int]]]:
    """A ``scheme://[:password@]host:port[,host:port...]/path`` URL's parts, password and
    (host, port) list; ``what`` names an address in the error for one without a host."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ValueError(f"not a {scheme}:// URL: {url!r}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    addresses: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise ValueError(f"{what} needs a host: {item!r} in {url!r}")
        addresses.append((host, int(port or default_port)))
    return parts, unquote(userinfo.partition(":")[2]) or None, addresses


class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    def __init__(self, url: str) -> None:
        parts, self.password, self.sentinels = _hosts(
            url, SENTINEL_SCHEME, 26379, "a Sentinel address"
        )
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise ValueError(f"name the Sentinel service: {SENTINEL_SCHEME}://host:26379/mymaster")
        self.service = path[0]
        self.db = int(path[1]) if len(path) > 1 else 0


class ClusterURL:
    """A parsed ``redis+cluster://`` URL: the nodes to start from, and a password."""

    def __init__(self, url: str) -> None:
        parts, self.password, self.nodes = _hosts(url, CLUSTER_SCHEME, 6379, "a cluster node")
        if parts.path not in ("", "/", "/0"):
            raise ValueError(f"a cluster has database 0 only: {url!r}")


def is_cluster(redis: Redis) -> bool:
    """Whether ``redis`` is a Redis Cluster client (see :func:`connect`)."""
    return isinstance(redis, RedisCluster)


def connect(
    url: str,
    *,
    timeout: float | None = 2.0,
    name: str = "giftrelay",
    decode: bool = True,
    retries: int = 1,
) -> Redis:
    """A client that fails fast, so an outage answers ``unavailable`` within ``timeout``.

    A broken connection is retried ``retries`` times (once by default), at once, on a
    fresh connection: after Redis restarts, every pooled connection is dead and the
    first use of each would fail although Redis is back. This retry covers plain
    commands (reads, heartbeats); money scripts go through the AutoPipeline, which
    resends only the idempotent ones. Timeouts are never retried, which keeps the
    bound. ``timeout=None`` is for a connection that blocks on purpose (pub/sub).
    """
    options: dict[str, Any] = {
        "decode_responses": decode,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout or 2.0,
        "retry": Retry(NoBackoff(), retries, supported_errors=(RedisConnectionError,)),
        "client_name": name,
    }
    if timeout is not None:
        options["health_check_interval"] = 30
    if url.startswith(CLUSTER_SCHEME + "://"):
        nodes = ClusterURL(url)
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes.nodes],
            password=nodes.password,
            # Per node; the cluster client fails a command past it rather than waiting.
            max_connections=4 * MAX_CONNECTIONS,
            **options,
        )
        # The commands giftrelay sends take the same arguments on both clients; where
        # a cluster needs another way (scripts, pub/sub, scans), the caller asks
        # is_cluster() and goes per node.
        return cast(Redis, cluster)
    if url.startswith(SENTINEL_SCHEME + "://"):
        options["max_connections"] = MAX_CONNECTIONS
        target = SentinelURL(url)
        sentinel = Sentinel(
            target.sentinels,
            sentinel_kwargs={"socket_timeout": timeout or 2.0, "socket_connect_timeout": 2.0},
        )
        primary: Redis = sentinel.master_for(
            target.service, redis_class=Redis, db=target.db, password=target.password, **options
        )
        return primary
    # A burst (a reconnect storm's joins) waits for a free connection, up to the
    # timeout, rather than failing at once when all of them are in use.
    pool = BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=timeout, **options
    )
    return Redis(connection_pool=pool)
