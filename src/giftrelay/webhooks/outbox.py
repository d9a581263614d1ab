"""The webhooks' durable state in Redis: the group, the lease, the outbox, the dead letters.

An entry read from the ``ledger`` stream is queued in the outbox and acknowledged in
one script, only by the lease holder: the outbox then holds it until it is delivered
(deleted) or dead-lettered (moved to ``wh:dead`` in one transaction). A deliverer
that dies loses nothing: the next one loads the outbox, and claims what the group
read but never queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from giftrelay.money import keys as money_keys
from giftrelay.webhooks import keys
from giftrelay.webhooks.events import (
    NotAnEvent,
    Pending,
    from_entry,
    pending_decoder,
    pending_encoder,
)

log = structlog.get_logger(__name__)

Entry = tuple[str, dict[str, str] | None]


def _script(name: str) -> str:
    return resources.files("giftrelay.webhooks").joinpath(f"{name}.lua").read_text("utf-8")


class LeaseLost(RuntimeError):
    """Another deliverer holds the lease: this one stops sending."""


class Outbox:
    def __init__(self, redis: Redis, name: str) -> None:
        self.redis = redis
        self.name = name
        self._lease = redis.register_script(_script("lease"))
        self._ingest = redis.register_script(_script("ingest"))

    async def ensure_group(self) -> None:
        """The webhooks group, created at the stream's end: webhooks carry the movements
        made from the moment they are first turned on."""
        try:
            await self.redis.xgroup_create(money_keys.LEDGER, keys.GROUP, id="$", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def hold_lease(self, ttl_ms: int) -> bool:
        """Take or renew the lease for ``ttl_ms``; False while another deliverer holds it."""
        return bool(await self._lease(keys=[keys.LEASE], args=[self.name, ttl_ms]))

    async def release_lease(self) -> None:
        await self._lease(keys=[keys.LEASE], args=[self.name, 0])

    async def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries of the ledger stream, for this deliverer (pending until queued)."""
        reply: Any = await self.redis.xreadgroup(
            keys.GROUP, self.name, {money_keys.LEDGER: ">"}, count=count, block=block_ms
        )
        return list(reply[0][1]) if reply else []

    async def claim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries the group gave a deliverer that never queued them (it died, or lost
        the lease), idle at least ``min_idle_ms``; all of them, oldest first."""
        out: list[Entry] = []
        cursor = "0-0"
        while True:
            reply: list[Any] = await self.redis.xautoclaim(
                money_keys.LEDGER, keys.GROUP, self.name, min_idle_ms,
                start_id=cursor, count=count,
            )  # fmt: skip
            cursor = str(reply[0])
            out.extend(reply[1])
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed while pending: cannot happen while trimming respects us
                log.error("ledger entries gone before their webhook was queued",
                          entries=list(deleted))  # fmt: skip
                await self.redis.xack(money_keys.LEDGER, keys.GROUP, *deleted)
            if cursor == "0-0":
                break
        out.sort(key=lambda e: tuple(map(int, e[0].split("-"))))
        return out

    async def ingest(self, entries: Sequence[Entry]) -> list[Pending]:
        """Queue ``entries`` and acknowledge them; raises :class:`LeaseLost` (nothing
        written) when this deliverer no longer holds the lease."""
        events: list[Pending] = []
        args: list[str] = [self.name, keys.GROUP]
        for entry_id, fields in entries:
            encoded = ""
            if fields is not None:
                try:
                    event = from_entry(entry_id, fields)
                except NotAnEvent as exc:
                    log.error("ledger entry is no ledger event: no webhook for it",
                              entry=entry_id, reason=str(exc))  # fmt: skip
                else:
                    events.append(event)
                    encoded = pending_encoder.encode(event).decode()
            args += [entry_id, encoded]
        if not entries:
            return []
        keys_ = [keys.LEASE, keys.OUTBOX, money_keys.LEDGER]
        if int(await self._ingest(keys=keys_, args=args)) < 0:
            raise LeaseLost("another deliverer took the lease")
        return events

    async def load(self) -> list[Pending]:
        """Everything queued, in ledger order."""
        events = [
            pending_decoder.decode(value)
            async for _, value in self.redis.hscan_iter(keys.OUTBOX, count=1000)
        ]
        return sorted(events, key=lambda e: e.order)

    async def delivered(self, event: Pending) -> None:
        await self.redis.hdel(keys.OUTBOX, event.entry)

    async def failed(self, event: Pending) -> None:
        """Record the retry state (attempts, first failure, next time)."""
        await self.redis.hset(keys.OUTBOX, event.entry, pending_encoder.encode(event))

    async def dead(self, event: Pending, now_ms: int) -> str:
        """Move ``event`` to the dead letters, in one transaction; returns its id there."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.DEAD, dead_fields(event, now_ms))
            pipe.hdel(keys.OUTBOX, event.entry)
            dead_id, _ = await pipe.execute()
        return str(dead_id)

    async def backlog(self) -> tuple[int, int]:
        """(events queued in the outbox, ledger entries the group has not read yet)."""
        queued = int(await self.redis.hlen(keys.OUTBOX))
        return queued, await unread(self.redis)


def dead_fields(event: Pending, now_ms: int) -> dict[Any, Any]:
    return {
        "event": pending_encoder.encode(event).decode(),
        "id": event.id,
        "type": event.type,
        "reason": event.error,
        "attempts": event.attempts,
        "dead_ms": now_ms,
    }


async def unread(redis: Redis) -> int:
    """Ledger entries the webhooks group has not read yet (or -1: no such group)."""
    try:
        groups = await redis.xinfo_groups(money_keys.LEDGER)
    except ResponseError:
        return -1
    for group in groups:
        if group["name"] == keys.GROUP:
            lag = group.get("lag")
            return int(lag) if lag is not None else 0
    return -1
