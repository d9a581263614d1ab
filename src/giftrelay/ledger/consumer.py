"""The ledger consumer: the ``ledger`` stream into the ledger store, exactly once.

A Redis Streams consumer group reads entries in batches; each batch is written
to the store in one transaction keyed by event id and acknowledged only after
the commit. A consumer that dies leaves its entries pending; any consumer claims
them after ``claim_idle_ms`` (XAUTOCLAIM) and writes them again, which the store
turns into a no-op for what was already committed. An entry that cannot be
written after ``max_deliveries`` goes to ``ledger:dead`` and stops blocking
nobody: the others flow around it. The stream is trimmed only below the oldest
entry a group (this one, or another such as the webhooks') has not acknowledged.

Fresh entries are read and decoded ahead: the next batches are read (and so
pending, ours) while the current ones are written, which overlaps Redis and
Python work with the store's. A store that gains from it (PostgreSQL) writes
``writers`` batches at once, each in its own transaction. At most ``2 x writers``
batches are pending for one consumer; each batch is acknowledged only after its
own commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import metrics
from giftrelay.ledger.postings import PoisonEntry, Record, record
from giftrelay.ledger.store import Store, StoreDataError, StoreUnavailable, WriteResult
from giftrelay.money import keys
from giftrelay.wire.offsets import format_offset, parse_offset

log = structlog.get_logger(__name__)

Entry = tuple[str, dict[str, str] | None]


Poison = tuple[str, dict[str, str], str]
"""An entry that cannot be written: its id, its fields, and why."""


class Batch(msgspec.Struct):
    """Entries read together, decoded: what to write, what is poison, what is gone."""

    records: list[Record]
    poison: list[Poison]
    gone: list[str]
    """Entries deleted from the stream while pending: nothing to write, only to acknowledge."""
    size: int


def decode(entries: list[Entry]) -> Batch:
    records: list[Record] = []
    poison: list[Poison] = []
    gone: list[str] = []
    for entry_id, fields in entries:
        if fields is None:
            gone.append(entry_id)
            continue
        try:
            records.append(record(entry_id, fields.get("e", "")))
        except PoisonEntry as exc:
            poison.append((entry_id, fields, str(exc)))
    return Batch(records, poison, gone, len(entries))


class Stats(msgspec.Struct):
    written: int = 0
    duplicates: int = 0
    replays: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    batches: int = 0


class LedgerConsumer:
    """One member of the ``ledger-writers`` group. Run several for throughput or failover."""

    def __init__(
        self,
        redis: Redis,
        store: Store,
        *,
        name: str | None = None,
        batch: int = 1000,
        block_ms: int = 500,
        claim_idle_ms: int = 30_000,
        claim_every_ms: int = 5_000,
        max_deliveries: int = 5,
        trim_every_ms: int = 10_000,
        writers: int | None = None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.batch = batch
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.claim_every = claim_every_ms / 1000
        self.max_deliveries = max_deliveries
        self.trim_every = trim_every_ms / 1000
        self.writers = max(1, writers if writers is not None else store.parallel_writes)
        """Batches written at once, each in its own transaction (default: the store's say)."""
        self.stats = Stats()
        self.failures = 0
        """Rounds that failed because Redis or the store was unavailable."""
        self.after_commit: Callable[[Sequence[str]], Awaitable[None]] | None = None
        """Test hook: awaited between a batch's commit and its acknowledgement."""
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._reread_own = True  # at start, and after a failure: our own pending entries first
        self._ahead: list[Batch] = []
        """Fresh entries read (so pending, ours) and decoded while the last ones were written."""

    async def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists; any other error is raised."""
        try:
            await self.redis.xgroup_create(keys.LEDGER, keys.LEDGER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, riding out Redis and store outages."""
        log.info("ledger consumer started", consumer=self.name, store=_redact(self.store.url))
        delay = 0.0
        while not stop.is_set():
            try:
                await self.ensure_group()
                while not stop.is_set():
                    await self.step()
                    if delay:
                        log.info("ledger consumer recovered", consumer=self.name)
                        delay = 0.0
            except (StoreUnavailable, RedisConnectionError, RedisTimeoutError, OSError) as exc:
                metrics.LEDGER_STORE_UP.set(0 if isinstance(exc, StoreUnavailable) else 1)
                self.failures += 1
                if not delay:
                    log.warning("ledger consumer waiting", reason=str(exc), consumer=self.name)
                delay = min(max(delay * 2, 0.05), 2.0)
                self._reread_own = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):  # the stream was deleted: make the group again
                    raise
        await self._finish()
        log.info(
            "ledger consumer stopped", consumer=self.name, **msgspec.structs.asdict(self.stats)
        )

    async def step(self) -> int:
        """One round: own pending, claimed and new entries written and acknowledged.

        The new entries are the batches read ahead in the last round, if any; while
        they are written, the next ones are read and decoded, for the next round.
        """
        handled = 0
        now = time.monotonic()
        if self._reread_own:
            self._ahead = []  # their entries are in our pending list: read again below
            own = await self._read("0")
            handled += await self._handle(decode(own))
            self._reread_own = len(own) == self.batch
        if now >= self._next_claim:
            claimed = await self._claim()
            handled += await self._handle(decode(claimed))
            self._next_claim = now + (0 if len(claimed) == self.batch else self.claim_every)
        fresh, self._ahead = self._ahead, []
        if not fresh:
            fresh = await self._read_fresh(block=None if handled else self.block_ms)
        if fresh:
            ahead = asyncio.create_task(self._read_fresh())
            try:
                done = await asyncio.gather(*map(self._handle, fresh), return_exceptions=True)
                for result in done:
                    if isinstance(result, BaseException):
                        raise result
                    handled += result
            except BaseException:
                # Whatever it read stays pending, ours: read again after a failure
                # (own pending first), or claimed by another consumer if we are gone.
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
                raise
            self._ahead = await ahead
        if now >= self._next_trim:
            await self.trim()
            self._next_trim = now + self.trim_every
        return handled

    async def _read_fresh(self, block: int | None = None) -> list[Batch]:
        """Up to ``writers`` batches of new entries, decoded; waits ``block`` ms for the first."""
        batches: list[Batch] = []
        while len(batches) < self.writers:
            entries = await self._read(">", block=None if batches else block)
            if entries:
                batches.append(decode(entries))
            if len(entries) < self.batch:
                break
        return batches

    async def _finish(self) -> None:
        """On stop, write the batches read ahead, so a clean stop leaves nothing of ours pending."""
        ahead, self._ahead = self._ahead, []
        try:
            for batch in ahead:
                await self._handle(batch)
        except (StoreUnavailable, RedisConnectionError, RedisTimeoutError, OSError,
                ResponseError) as exc:  # fmt: skip
            log.warning("ledger entries left pending at stop; any consumer will claim them",
                        reason=str(exc), consumer=self.name)  # fmt: skip

    async def _read(self, start: str, block: int | None = None) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(
            keys.LEDGER_GROUP, self.name, {keys.LEDGER: start}, count=self.batch, block=block
        )
        return list(reply[0][1]) if reply else []

    async def _claim(self) -> list[Entry]:
        reply: list[Any] = await self.redis.xautoclaim(
            keys.LEDGER,
            keys.LEDGER_GROUP,
            self.name,
            self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=self.batch,
        )
        self._claim_cursor = reply[0]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:  # trimmed or deleted while pending: nothing left to write
            await self.redis.xack(keys.LEDGER, keys.LEDGER_GROUP, *deleted)
        claimed: list[Entry] = reply[1]
        if claimed:
            log.info("claimed pending ledger entries", count=len(claimed), consumer=self.name)
        return claimed

    async def _handle(self, batch: Batch) -> int:
        if not batch.size:
            return 0
        started = time.perf_counter()
        poison = list(batch.poison)
        written = await self._write(batch.records, poison)
        metrics.LEDGER_STORE_UP.set(1)
        if self.after_commit is not None:
            await self.after_commit([r.event_id for r in written])
        done = [r.event_id for r in written] + batch.gone
        if done:
            await self.redis.xack(keys.LEDGER, keys.LEDGER_GROUP, *done)
        for entry_id, fields, reason in poison:
            await self._poisoned(entry_id, fields, reason)
        metrics.LEDGER_BATCH_SECONDS.observe(time.perf_counter() - started)
        self.stats.batches += 1
        return batch.size

    async def _write(self, records: list[Record], poison: list[Poison]) -> list[Record]:
        """Write in one transaction; if the store rejects the data, find the culprits."""
        try:
            result = await self.store.write(records)
            self._count(result)
            return records
        except StoreDataError:
            pass
        written = []
        for r in records:
            try:
                result = await self.store.write([r])
            except StoreDataError as exc:
                poison.append((r.event_id, {"e": r.body}, f"the store refused it: {exc}"))
                continue
            self._count(result)
            written.append(r)
        return written

    def _count(self, result: WriteResult) -> None:
        self.stats.written += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.replays += result.replays
        self.stats.conflicts += result.conflicts
        metrics.LEDGER_EVENTS.labels("written").inc(result.inserted)
        if result.duplicates:
            metrics.LEDGER_EVENTS.labels("duplicate").inc(result.duplicates)
            log.info("ledger entries already stored (redelivered)", count=result.duplicates)
        if result.replays:
            # Redis ran a request whose movement the store already holds: it lost the
            # request's idempotency record (a restore, a failover). Counted once.
            metrics.LEDGER_EVENTS.labels("replay").inc(result.replays)
            log.warning("movements replayed by Redis, counted once", count=result.replays)
        if result.conflicts:
            metrics.LEDGER_EVENTS.labels("conflict").inc(result.conflicts)
            log.error("movements conflict with stored ones under the same id; kept aside,"
                      " see giftrelay reconcile", count=result.conflicts)  # fmt: skip

    async def _poisoned(self, entry_id: str, fields: dict[str, str], reason: str) -> None:
        pending = await self.redis.xpending_range(
            keys.LEDGER, keys.LEDGER_GROUP, min=entry_id, max=entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else self.max_deliveries
        if deliveries < self.max_deliveries:
            log.warning("ledger entry failed; it will be retried", entry=entry_id, reason=reason,
                        deliveries=deliveries)  # fmt: skip
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            dead: dict[Any, Any] = {**fields, "entry": entry_id, "reason": reason}
            pipe.xadd(keys.LEDGER_DEAD, {**dead, "consumer": self.name, "deliveries": deliveries})
            pipe.xack(keys.LEDGER, keys.LEDGER_GROUP, entry_id)
            await pipe.execute()
        self.stats.dead_letters += 1
        metrics.LEDGER_EVENTS.labels("dead_letter").inc()
        log.error("ledger entry moved to the dead-letter stream", entry=entry_id, reason=reason,
                  stream=keys.LEDGER_DEAD, deliveries=deliveries)  # fmt: skip

    async def trim(self) -> str | None:
        """Trim ``ledger`` below the oldest entry any group on it has not acknowledged."""
        group = await group_info(self.redis)
        if group is None:
            return None
        lag = group.get("lag")
        metrics.LEDGER_LAG.set(int(group["pending"]) + int(lag if lag is not None else 0))
        # Everything up to last-delivered-id was delivered; of that, the oldest pending
        # entry (if any) is the first one not yet acknowledged. Entries delivered after
        # this read are newer than last-delivered-id, so they are safe too.
        # Every group on the stream counts, not only ours: the webhooks read it too.
        bounds = []
        for other in await self.redis.xinfo_groups(keys.LEDGER):
            bound = str(other["last-delivered-id"])
            if int(other["pending"]):
                summary = await self.redis.xpending(keys.LEDGER, other["name"])
                if summary["min"] is not None:  # none left pending by the time we asked
                    bound = str(summary["min"])
            bounds.append(parse_offset(bound))
        min_id = format_offset(min(bounds))
        if min_id == "0-0":
            return None
        # MINID keeps min_id itself and everything after it. Exact, not '~': it runs
        # once per trim interval, and an exact bound is one a test can check.
        await self.redis.xtrim(keys.LEDGER, minid=min_id, approximate=False)
        return min_id


async def group_info(redis: Redis) -> dict[str, Any] | None:
    """The ``ledger-writers`` group's XINFO, or None when it (or the stream) does not exist."""
    try:
        groups = await redis.xinfo_groups(keys.LEDGER)
    except ResponseError:
        return None
    for group in groups:
        if group["name"] == keys.LEDGER_GROUP:
            return dict(group)
    return None


async def consuming(redis: Redis, within_ms: int = 10_000) -> bool:
    """Whether a member of the group asked for entries in the last ``within_ms``."""
    if await group_info(redis) is None:
        return False
    try:
        members = await redis.xinfo_consumers(keys.LEDGER, keys.LEDGER_GROUP)
    except ResponseError:
        return False
    return any(int(m.get("inactive", m.get("idle", within_ms))) < within_ms for m in members)


def _redact(url: str) -> str:
    """A URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}"
    return url
