"""What an operator runs: the dead letters sent again (replay), and the state (status)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from giftrelay import metrics
from giftrelay.webhooks import keys
from giftrelay.webhooks.events import Pending, pending_decoder
from giftrelay.webhooks.outbox import unread
from giftrelay.webhooks.sender import Sender

PAGE = 500


class DeadLetter(msgspec.Struct, frozen=True):
    dead_id: str
    """Its entry id in ``wh:dead``."""
    event: Pending


class Replayed(msgspec.Struct):
    total: int = 0
    delivered: int = 0
    failed: list[tuple[str, str]] = msgspec.field(default_factory=list)
    """(event id, why) of each dead letter that failed again: still a dead letter."""


async def dead_letters(redis: Redis, only: frozenset[str] = frozenset()) -> list[DeadLetter]:
    """Every dead letter, oldest first; with ``only``, those whose event id is in it."""
    out: list[DeadLetter] = []
    start = "-"
    while True:
        page: Any = await redis.xrange(keys.DEAD, min=start, max="+", count=PAGE)
        for dead_id, fields in page:
            event = pending_decoder.decode(fields["event"])
            if not only or event.id in only:
                out.append(DeadLetter(str(dead_id), event))
        if len(page) < PAGE:
            return out
        start = f"({page[-1][0]!s}"


async def replay(
    redis: Redis,
    sender: Sender,
    letters: list[DeadLetter],
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Replayed:
    """Send each dead letter again, once, in order; a 2xx removes it from ``wh:dead``,
    a failure leaves it there for a later replay."""
    result = Replayed(total=len(letters))
    for n, letter in enumerate(letters, 1):
        error = await sender.send(letter.event)
        if error is None:
            await redis.xdel(keys.DEAD, letter.dead_id)
            result.delivered += 1
            metrics.WEBHOOK_REPLAYED.labels("delivered").inc()
        else:
            result.failed.append((letter.event.id, error))
            metrics.WEBHOOK_REPLAYED.labels("failed").inc()
        progress(n, len(letters))
    return result


class Status(msgspec.Struct):
    deliverer: str | None
    """The lease holder: the deliverer sending now (None: none runs)."""
    queued: int
    """Events in the outbox, waiting for delivery or a retry."""
    retrying: int
    """Of those, events that failed at least once."""
    unread: int | None
    """Ledger entries the webhooks group has not read (None: webhooks never ran)."""
    dead_letters: int
    oldest_queued_ms: int | None


async def status(redis: Redis) -> Status:
    queued = retrying = 0
    oldest: int | None = None
    async for _, value in redis.hscan_iter(keys.OUTBOX, count=1000):
        event = pending_decoder.decode(value)
        queued += 1
        retrying += event.attempts > 0
        oldest = event.ms if oldest is None else min(oldest, event.ms)
    lag = await unread(redis)
    try:
        dead = int(await redis.xlen(keys.DEAD))
    except ResponseError:  # pragma: no cover - another type under the key
        dead = -1
    holder = await redis.get(keys.LEASE)
    return Status(
        deliverer=str(holder) if holder is not None else None,
        queued=queued,
        retrying=retrying,
        unread=None if lag < 0 else lag,
        dead_letters=dead,
        oldest_queued_ms=oldest,
    )
