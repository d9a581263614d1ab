"""One way to open a Redis client, with the timeouts the money path relies on."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


def connect(url: str, *, timeout: float = 2.0, name: str = "giftrelay") -> Redis:
    """A client that fails fast, so an outage answers ``unavailable`` within ``timeout``.

    A broken connection is retried once, at once, on a fresh connection: after Redis
    restarts, every pooled connection is dead and the first use of each would fail
    although Redis is back. That retry is safe because every money script is
    idempotent. Timeouts are never retried, which keeps the bound.
    """
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
        client_name=name,
    )
