"""The mover's loop: on a Redis Cluster, ``giftrelay serve`` applies the transfers (gifts'
and collects') that relays and payouts left behind (:mod:`giftrelay.money.transfers`),
and reports how far behind it is. Any number of movers may run (one per serve): a
transfer applied twice is a replay that moves nothing."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.exceptions import RedisClusterException, RedisError

from giftrelay import metrics
from giftrelay.money.transfers import Steps
from giftrelay.wire.errors import Unavailable

log = structlog.get_logger(__name__)

EVERY = 0.1
"""Seconds between the mover's looks at the outboxes."""


def count_transfer(replayed: bool) -> None:
    """:attr:`Steps.observe` for the process's metrics."""
    metrics.TRANSFERS.labels("replayed" if replayed else "applied").inc()


async def run(steps: Steps, stop: asyncio.Event, *, every: float = EVERY) -> None:
    """Sweep the outboxes until ``stop`` is set."""
    log.info("mover started", outboxes="all buckets", every_s=every)
    while not stop.is_set():
        try:
            sweep = await steps.sweep()
        except (RedisError, RedisClusterException, OSError, Unavailable) as exc:
            log.info("mover waits for Redis", error=str(exc))
        except Exception:  # a bug must not end the mover: transfers would wait for a restart
            log.exception("mover failed a look; trying again")
        else:
            for outbox, waiting in sweep.waiting.items():
                metrics.OUTBOX_LENGTH.labels(outbox).set(waiting)
            metrics.MOVER_LAG.set(sweep.oldest_ms / 1000)
            if sweep.moved:
                metrics.TRANSFERS_MOVED.inc(sweep.moved)
                log.info("mover applied transfers left behind", transfers=sweep.moved)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
