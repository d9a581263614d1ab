"""The referee's loop: ``giftrelay serve`` ends battles when the server's clock says
(:meth:`giftrelay.money.battles.Battles.end_battles`). Any number of referees may run
(one per serve): a battle ended twice is recorded and announced once."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.exceptions import RedisClusterException, RedisError

from giftrelay.money.api import Money
from giftrelay.money.transfers import GRACE_MS
from giftrelay.wire.errors import Refused

log = structlog.get_logger(__name__)

EVERY = 0.25
"""Seconds between the referee's looks at the running battles."""


def grace_ms(core: Money) -> int:
    """How long past a battle's end its scores may still change: a relay's clock a little
    behind the others; on a cluster also a transfer the mover applies (after GRACE_MS)."""
    return 1000 + (GRACE_MS + 1500 if core.steps is not None else 0)


async def run(core: Money, stop: asyncio.Event, *, every: float = EVERY) -> None:
    """End due battles until ``stop`` is set."""
    grace = grace_ms(core)
    while not stop.is_set():
        try:
            await core.end_battles(grace_ms=grace)
        except (RedisError, RedisClusterException, OSError, Refused) as exc:
            log.info("referee waits", error=str(exc))
        except Exception:  # a bug must not end the referee: battles would never end
            log.exception("referee failed a look; trying again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
