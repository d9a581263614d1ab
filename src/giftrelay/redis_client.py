"""One way to open a Redis client, with the timeouts the money path relies on."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def connect(url: str, *, timeout: float = 2.0, name: str = "giftrelay") -> Redis:
    """A client that fails fast: no hidden retries, so an outage surfaces as
    ``unavailable`` within ``timeout`` and callers retry with the same id."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
        client_name=name,
    )
