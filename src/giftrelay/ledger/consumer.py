"""The ledger consumer: the ledger stream(s) into the ledger store, exactly once.

A Redis Streams consumer group reads entries in batches; each batch is written
to the store in one transaction keyed by event id and acknowledged only after
the commit. A consumer that dies leaves its entries pending; any consumer claims
them after ``claim_idle_ms`` (XAUTOCLAIM) and writes them again, which the store
turns into a no-op for what was already committed. An entry that cannot be
written after ``max_deliveries`` goes to the dead letters and stops blocking
nobody: the others flow around it. A stream is trimmed only below the oldest
entry a group (this one, or another such as the webhooks') has not acknowledged.

Fresh entries are read and decoded ahead: the next batches are read (and so
pending, ours) while the current ones are written, which overlaps Redis and
Python work with the store's. A store that gains from it (PostgreSQL) writes
``writers`` batches at once, each in its own transaction. At most ``2 x writers``
batches are pending for one consumer on one Redis; each batch is acknowledged only
after its own commit.

On a Redis Cluster the ledger is one stream per bucket (:mod:`giftrelay.ledger.buckets`),
each with its own group, all read by every consumer: each round is one pipeline of
XREADGROUPs per node (the cluster client sends each node its buckets' commands), without
BLOCK, and a round that found nothing waits a little longer each time, up to
``block_ms``. Entries of several buckets share a batch and its transaction; each is
acknowledged on its own stream. Everything above holds per bucket stream.
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
from giftrelay.ledger.buckets import ONE, Source, group_info, is_cluster, sources, text
from giftrelay.ledger.buckets import consuming as consuming
from giftrelay.ledger.postings import PoisonEntry, Record, record
from giftrelay.ledger.store import Store, StoreDataError, StoreUnavailable, WriteResult
from giftrelay.money import keys
from giftrelay.wire.offsets import format_offset, parse_offset

log = structlog.get_logger(__name__)

__all__ = ["Batch", "LedgerConsumer", "consuming", "decode", "group_info"]

Entry = tuple[str, dict[str, str] | None]


Poison = tuple[Source, str, dict[str, str], str]
"""An entry that cannot be written: its stream, its id, its fields, and why."""


class Batch(msgspec.Struct):
    """Entries read together, decoded: what to write, what is poison, what is gone."""

    records: list[Record]
    poison: list[Poison]
    gone: list[tuple[Source, str]]
    """Entries deleted from their stream while pending: nothing to write, only to acknowledge."""
    size: int


def decode(entries: list[Entry], source: Source = ONE) -> Batch:
    """``source``'s entries as records (of its bucket), poison and gone ones."""
    records: list[Record] = []
    poison: list[Poison] = []
    gone: list[tuple[Source, str]] = []
    bucket = source.bucket
    for entry_id, fields in entries:
        if fields is None:
            gone.append((source, entry_id))
            continue
        try:
            records.append(record(entry_id, fields.get("e", ""), bucket))
        except PoisonEntry as exc:
            poison.append((source, entry_id, fields, str(exc)))
    return Batch(records, poison, gone, len(entries))


DEAD_LETTER = """
-- KEYS[1] a ledger stream, KEYS[2] its dead letters (on a cluster, the same slot)
-- ARGV[1] group, ARGV[2] entry id, then the dead letter's fields and values.
-- Acknowledges the entry and, only if it was still pending, records it: once, however
-- many consumers had claimed it.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return 1
"""

Found = list[tuple[Source, list[Entry]]]
"""Entries read, per stream."""


class Stats(msgspec.Struct):
    written: int = 0
    duplicates: int = 0
    replays: int = 0
    conflicts: int = 0
    dead_letters: int = 0
    batches: int = 0


class LedgerConsumer:
    """One member of the ``ledger-writers`` group(s). Run several for throughput or failover."""

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
        self.cluster = is_cluster(redis)
        self.sources = sources(redis)
        """The streams read: ``ledger``, or on a Redis Cluster every bucket's."""
        self._by_bucket = {s.bucket: s for s in self.sources}
        self.stats = Stats()
        self.failures = 0
        """Rounds that failed because Redis or the store was unavailable."""
        self.after_commit: Callable[[Sequence[str]], Awaitable[None]] | None = None
        """Test hook: awaited between a batch's commit and its acknowledgement."""
        self._claim_cursors = {s.key: "0-0" for s in self.sources}
        self._next_claim = 0.0
        self._next_trim = 0.0
        self._idle = 0.0
        """On a cluster, how long an empty round waits before the next (grows while idle)."""
        self._reread_own = True  # at start, and after a failure: our own pending entries first
        self._ahead: list[Batch] = []
        """Fresh entries read (so pending, ours) and decoded while the last ones were written."""

    async def ensure_group(self) -> None:
        """Create the group (and the stream) on every ledger stream where it does not exist;
        any other error is raised."""
        if not self.cluster:
            await _create_group(self.redis, keys.LEDGER)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in self.sources:
                pipe.xgroup_create(source.key, keys.LEDGER_GROUP, id="0", mkstream=True)
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, riding out Redis and store outages."""
        log.info("ledger consumer started", consumer=self.name, store=_redact(self.store.url),
                 streams=len(self.sources))  # fmt: skip
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
                if "NOGROUP" not in str(exc):  # a stream was deleted: make its group again
                    raise
                self._ahead = []
                self._reread_own = True
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
            own, full = await self._read("0")
            handled += await self._handle_all(own)
            self._reread_own = full
        if now >= self._next_claim:
            claimed, full = await self._claim()
            handled += await self._handle_all(claimed)
            self._next_claim = now + (0 if full else self.claim_every)
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
        """Up to ``writers`` batches of new entries, decoded; waits ``block`` ms for the first
        (on a cluster: one round over every bucket, then a pause if it found nothing)."""
        if self.cluster:
            found, _ = await self._read(">")
            if any(entries for _, entries in found):
                self._idle = 0.0
            elif block is not None:
                self._idle = min(max(self._idle * 2, 0.005), block / 1000)
                await asyncio.sleep(self._idle)
            return self._batches(found)
        batches: list[Batch] = []
        while len(batches) < self.writers:
            entries = await self._read_one(">", block=None if batches else block)
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

    async def _read_one(self, start: str, block: int | None = None) -> list[Entry]:
        reply: Any = await self.redis.xreadgroup(
            keys.LEDGER_GROUP, self.name, {keys.LEDGER: start}, count=self.batch, block=block
        )
        return list(reply[0][1]) if reply else []

    async def _read(self, start: str) -> tuple[Found, bool]:
        """Entries from ``start`` ('0': our own pending, '>': new) of every stream, without
        waiting; and whether a stream had as many as asked (more may wait there)."""
        if not self.cluster:
            entries = await self._read_one(start)
            return [(ONE, entries)], len(entries) == self.batch
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in self.sources:
                pipe.xreadgroup(keys.LEDGER_GROUP, self.name, {source.key: start}, count=self.batch)
            replies: list[Any] = await pipe.execute()
        found: Found = []
        for source, reply in zip(self.sources, replies, strict=True):
            entries = _entries(reply)
            if entries:
                found.append((source, entries))
        return found, any(len(entries) == self.batch for _, entries in found)

    def _batches(self, found: Found) -> list[Batch]:
        """Entries of several streams decoded into batches of at most ``batch`` entries."""
        batches: list[Batch] = []
        current = Batch([], [], [], 0)
        for source, entries in found:
            for start in range(0, len(entries), self.batch):
                part = entries[start : start + self.batch]
                if current.size + len(part) > self.batch:
                    batches.append(current)
                    current = Batch([], [], [], 0)
                more = decode(part, source)
                current.records += more.records
                current.poison += more.poison
                current.gone += more.gone
                current.size += more.size
        if current.size:
            batches.append(current)
        return batches

    async def _handle_all(self, found: Found) -> int:
        handled = 0
        for batch in self._batches(found):
            handled += await self._handle(batch)
        return handled

    async def _claim(self) -> tuple[Found, bool]:
        """Entries idle for ``claim_idle_ms`` in any member's pending list, now ours."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in self.sources:
                pipe.xautoclaim(
                    source.key,
                    keys.LEDGER_GROUP,
                    self.name,
                    self.claim_idle_ms,
                    start_id=self._claim_cursors[source.key],
                    count=self.batch,
                )
            replies: list[Any] = await pipe.execute()
        found: Found = []
        deleted: dict[Source, list[str]] = {}
        for source, reply in zip(self.sources, replies, strict=True):
            self._claim_cursors[source.key] = text(reply[0])
            if len(reply) > 2 and reply[2]:  # trimmed or deleted while pending
                deleted[source] = [text(e) for e in reply[2]]
            if reply[1]:
                found.append((source, list(reply[1])))
        if deleted:  # nothing left to write
            await self._ack(deleted)
        if found:
            log.info("claimed pending ledger entries", consumer=self.name,
                     count=sum(len(entries) for _, entries in found))  # fmt: skip
        return found, any(len(entries) == self.batch for _, entries in found)

    async def _handle(self, batch: Batch) -> int:
        if not batch.size:
            return 0
        started = time.perf_counter()
        poison = list(batch.poison)
        written = await self._write(batch.records, poison)
        metrics.LEDGER_STORE_UP.set(1)
        if self.after_commit is not None:
            await self.after_commit([r.event_id for r in written])
        done: dict[Source, list[str]] = {}
        if self.cluster:
            for r in written:
                done.setdefault(self._by_bucket[r.bucket], []).append(r.event_id)
        elif written:
            done[ONE] = [r.event_id for r in written]
        for source, entry_id in batch.gone:
            done.setdefault(source, []).append(entry_id)
        if done:
            await self._ack(done)
        for source, entry_id, fields, reason in poison:
            await self._poisoned(source, entry_id, fields, reason)
        metrics.LEDGER_BATCH_SECONDS.observe(time.perf_counter() - started)
        self.stats.batches += 1
        return batch.size

    async def _ack(self, done: dict[Source, list[str]]) -> None:
        if len(done) == 1:
            [(source, ids)] = done.items()
            await self.redis.xack(source.key, keys.LEDGER_GROUP, *ids)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for source, ids in done.items():
                pipe.xack(source.key, keys.LEDGER_GROUP, *ids)
            await pipe.execute()

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
                source = self._by_bucket[r.bucket]
                poison.append((source, r.event_id, {"e": r.body}, f"the store refused it: {exc}"))
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

    async def _poisoned(
        self, source: Source, entry_id: str, fields: dict[str, str], reason: str
    ) -> None:
        pending = await self.redis.xpending_range(
            source.key, keys.LEDGER_GROUP, min=entry_id, max=entry_id, count=1
        )
        deliveries = int(pending[0]["times_delivered"]) if pending else self.max_deliveries
        if deliveries < self.max_deliveries:
            log.warning("ledger entry failed; it will be retried", entry=entry_id, reason=reason,
                        deliveries=deliveries, stream=source.key)  # fmt: skip
            return
        dead = {**fields, "entry": entry_id, "reason": reason, "consumer": self.name,
                "deliveries": str(deliveries)}  # fmt: skip
        moved = await self.redis.eval(
            DEAD_LETTER, 2, source.key, source.dead, keys.LEDGER_GROUP, entry_id,
            *(part for item in dead.items() for part in item),
        )  # fmt: skip
        if not moved:  # another consumer, which had claimed it too, moved it first
            return
        self.stats.dead_letters += 1
        metrics.LEDGER_EVENTS.labels("dead_letter").inc()
        log.error("ledger entry moved to the dead-letter stream", entry=entry_id, reason=reason,
                  stream=source.dead, deliveries=deliveries)  # fmt: skip

    async def trim(self) -> dict[str, str]:
        """Trim each ledger stream below the oldest entry any group on it has not
        acknowledged (never one on which our group does not exist); returns, per stream
        trimmed, the first id kept."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for source in self.sources:
                pipe.xinfo_groups(source.key)
            infos: list[Any] = await pipe.execute(raise_on_error=False)
        lag = 0
        groups: dict[Source, list[dict[str, Any]]] = {}
        for source, info in zip(self.sources, infos, strict=True):
            if isinstance(info, ResponseError):  # no such stream
                continue
            if isinstance(info, Exception):
                raise info
            ours = [g for g in info if text(g["name"]) == keys.LEDGER_GROUP]
            if not ours:
                continue
            behind = ours[0].get("lag")
            lag += int(ours[0]["pending"]) + int(behind if behind is not None else 0)
            groups[source] = info
        metrics.LEDGER_LAG.set(lag)
        # Everything up to last-delivered-id was delivered; of that, the oldest pending
        # entry (if any) is the first one not yet acknowledged. Entries delivered after
        # this read are newer than last-delivered-id, so they are safe too.
        # Every group on the stream counts, not only ours: the webhooks read it too.
        asked = [(s, g) for s, info in groups.items() for g in info if int(g["pending"])]
        async with self.redis.pipeline(transaction=False) as pipe:
            for source, group in asked:
                pipe.xpending(source.key, group["name"])
            summaries: list[Any] = await pipe.execute() if asked else []
        oldest = {(s.key, text(g["name"])): summary["min"]
                  for (s, g), summary in zip(asked, summaries, strict=True)}  # fmt: skip
        trimmed: dict[str, str] = {}
        for source, info in groups.items():
            bounds = []
            for group in info:
                bound = oldest.get((source.key, text(group["name"])))
                # None: none left pending by the time we asked
                bounds.append(parse_offset(text(bound or group["last-delivered-id"])))
            min_id = format_offset(min(bounds))
            if min_id != "0-0":
                trimmed[source.key] = min_id
        if trimmed:
            # MINID keeps min_id itself and everything after it. Exact, not '~': it runs
            # once per trim interval, and an exact bound is one a test can check.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, min_id in trimmed.items():
                    pipe.xtrim(key, minid=min_id, approximate=False)
                await pipe.execute()
        return trimmed


async def _create_group(redis: Redis, key: str) -> None:
    try:
        await redis.xgroup_create(key, keys.LEDGER_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _entries(reply: Any) -> list[Entry]:
    """The entries of one stream's XREADGROUP reply."""
    return list(reply[0][1]) if reply else []


def _redact(url: str) -> str:
    """A URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        return f"{scheme}{sep}{credentials.split(':')[0]}:***@{host}"
    return url
