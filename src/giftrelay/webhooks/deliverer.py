"""The deliverer: the ledger stream to the platform's backend, signed, at least once.

One deliverer sends at a time: the holder of the lease ``wh:lease`` (renewed every
third of its TTL). Several may run, as ``giftrelay serve`` tasks or ``giftrelay
webhooks run`` processes; the others wait and take over within the lease's TTL
when the holder stops or dies. One sender keeps the per-wallet order simple: the
plan (``ordering.py``) lives in its memory, loaded from the outbox when it takes
the lease.

The leader's loop:

1. reads new ledger entries through the ``webhooks`` group and queues them in the
   outbox, acknowledging them in the same script (``ingest.lua``); entries another
   deliverer read but never queued are claimed;
2. sends every event the plan allows (heading its wallets' lanes, due), up to
   ``concurrency`` at once;
3. settles each answer: delivered (out of the outbox), failed (retry time recorded),
   or dead (moved to ``wh:dead``), then lets the events behind it move up.

Whatever fails in Redis, the leader starts over from the outbox: an event is
deleted from it only after its 2xx, so at worst it is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import metrics
from giftrelay.webhooks.events import Pending
from giftrelay.webhooks.ordering import Plan
from giftrelay.webhooks.outbox import LeaseLost, Outbox, unread
from giftrelay.webhooks.retry import Schedule
from giftrelay.webhooks.sender import Sender, outcome_of

log = structlog.get_logger(__name__)

Observer = Callable[[str, Pending], None]
"""Called with ``delivered``, ``retry`` or ``dead`` and the event, once settled in Redis."""


class Deliverer:
    def __init__(
        self,
        redis: Redis,
        sender: Sender,
        schedule: Schedule,
        *,
        name: str | None = None,
        concurrency: int = 16,
        backlog: int = 100_000,
        batch: int = 500,
        block_ms: int = 500,
        lease_ttl_ms: int = 10_000,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.outbox = Outbox(redis, self.name)
        self.sender = sender
        self.clock = sender.clock
        self.schedule = schedule
        self.concurrency = concurrency
        self.backlog = backlog
        self.batch = batch
        self.block_ms = block_ms
        self.lease_ttl_ms = lease_ttl_ms
        self.rand = rand
        self.observers: list[Observer] = []
        self.leading = asyncio.Event()
        """Set while this deliverer holds the lease and sends."""
        self._wake = asyncio.Event()
        self.rounds = 0
        """Turns of the sending loop (each waits for something to happen): for tests."""

    def wake(self) -> None:
        """Look at the plan again now (after the clock was moved, in tests)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set, riding out Redis outages and waiting for the lease."""
        log.info("webhook deliverer started", deliverer=self.name, url=self.sender.url)
        delay = 0.0
        try:
            while not stop.is_set():
                try:
                    await self.outbox.ensure_group()
                    if await self.outbox.hold_lease(self.lease_ttl_ms):
                        delay = 0.0
                        await self._lead(stop)
                        continue
                    wait = self.lease_ttl_ms / 3000  # another deliverer sends
                except LeaseLost:
                    log.warning("webhook deliverer lost its lease to another", deliverer=self.name)
                    continue
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    if not delay:
                        log.warning("webhook deliverer waiting for Redis", reason=str(exc),
                                    deliverer=self.name)  # fmt: skip
                    delay = wait = min(max(delay * 2, 0.05), 2.0)
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):  # the stream was deleted: make the group again
                        raise
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                await self.outbox.release_lease()
            await self.sender.aclose()
            log.info("webhook deliverer stopped", deliverer=self.name)

    async def _lead(self, stop: asyncio.Event) -> None:
        """Send while holding the lease; returns when ``stop`` is set."""
        plan = Plan()
        for event in await self.outbox.load():
            plan.add(event)
        # We hold the lease: whatever the group gave out and nobody queued is orphaned.
        for event in await self.outbox.ingest(await self.outbox.claim(0, self.batch)):
            plan.add(event)
        log.info("webhook deliverer sending", deliverer=self.name, queued=len(plan))
        self.leading.set()
        in_flight: dict[asyncio.Task[str | None], Pending] = {}
        reader: asyncio.Task[list[Pending]] | None = None
        stopped = asyncio.create_task(stop.wait())
        woken = asyncio.create_task(self._wake.wait())
        renew_at = 0.0
        try:
            while not stop.is_set():
                self.rounds += 1
                if time.monotonic() >= renew_at:
                    renew_at = await self._renew(plan) + self.lease_ttl_ms / 3000
                room = self.concurrency - len(in_flight)
                for event in plan.take(self.clock(), room):
                    in_flight[asyncio.create_task(self.sender.send(event))] = event
                if reader is None and len(plan) < self.backlog:
                    reader = asyncio.create_task(self._read())
                timeout = max(renew_at - time.monotonic(), 0.0)
                due = plan.next_due() if len(in_flight) < self.concurrency else None
                if due is not None:  # (when all slots are taken, only an answer frees one)
                    timeout = min(timeout, max(due - self.clock(), 0) / 1000)
                waiting: set[asyncio.Future[Any]] = {stopped, woken, *in_flight}
                if reader is not None:
                    waiting.add(reader)
                done, _ = await asyncio.wait(
                    waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if woken in done:
                    self._wake.clear()
                    woken = asyncio.create_task(self._wake.wait())
                for task in [t for t in in_flight if t in done]:
                    await self._settle(plan, in_flight.pop(task), task.result())
                if reader is not None and reader in done:
                    for event in reader.result():
                        plan.add(event)
                    reader = None
                metrics.WEBHOOK_QUEUED.set(len(plan))
            await self._finish(plan, in_flight)
        finally:
            self.leading.clear()
            left: list[asyncio.Future[Any]] = [stopped, woken, *in_flight]
            if reader is not None:
                left.append(reader)  # entries it read stay pending: the next leader claims them
            for future in left:
                future.cancel()
            await asyncio.gather(*left, return_exceptions=True)

    async def _renew(self, plan: Plan) -> float:
        """Renew the lease (:class:`LeaseLost` if it expired meanwhile and another took it),
        claim entries a former holder read and never queued, refresh the gauges."""
        asked = time.monotonic()
        if not await self.outbox.hold_lease(self.lease_ttl_ms):
            raise LeaseLost("the lease expired before it was renewed, and another took it")
        claimed = await self.outbox.claim(self.lease_ttl_ms, self.batch)
        for event in await self.outbox.ingest(claimed):
            plan.add(event)
        metrics.WEBHOOK_QUEUED.set(len(plan))
        metrics.WEBHOOK_UNREAD.set(max(await unread(self.outbox.redis), 0))
        oldest = plan.oldest_ms()
        metrics.WEBHOOK_OLDEST.set(0 if oldest is None else max(self.clock() - oldest, 0) / 1000)
        return asked

    async def _read(self) -> list[Pending]:
        entries = await self.outbox.read(self.batch, self.block_ms)
        return await self.outbox.ingest(entries)

    async def _settle(self, plan: Plan, event: Pending, error: str | None) -> None:
        now = self.clock()
        metrics.WEBHOOK_ATTEMPTS.labels(outcome_of(error)).inc()
        if error is None:
            await self.outbox.delivered(event)
            plan.done(event.entry)
            metrics.WEBHOOK_LAG.observe(max(now - event.ms, 0) / 1000)
            self._tell("delivered", event)
            return
        updated, dead = self.schedule.after_failure(event, now, error, self.rand)
        if dead:
            await self.outbox.dead(updated, now)
            plan.done(event.entry)
            metrics.WEBHOOK_DEAD_LETTERS.inc()
            log.error("webhook dead-lettered: giftrelay webhooks replay sends it again",
                      event_id=event.id, type=event.type, attempts=updated.attempts,
                      reason=error)  # fmt: skip
            self._tell("dead", updated)
            return
        await self.outbox.failed(updated)
        plan.retry(updated)
        metrics.WEBHOOK_RETRIES.inc()
        log.warning("webhook failed; retrying", event_id=event.id, type=event.type,
                    attempts=updated.attempts, reason=error,
                    retry_in_s=round((updated.next_ms - now) / 1000, 3))  # fmt: skip
        self._tell("retry", updated)

    async def _finish(self, plan: Plan, in_flight: dict[asyncio.Task[str | None], Pending]) -> None:
        """On stop: let the attempts under way answer (each is bounded by its time-out) and
        record them; one that does not is sent again by the next deliverer."""
        if not in_flight:
            return
        done, _ = await asyncio.wait(in_flight, timeout=self.sender.timeout + 1)
        try:
            for task in done:
                await self._settle(plan, in_flight.pop(task), task.result())
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("webhook outcomes not recorded at stop; they will be sent again",
                        reason=str(exc))  # fmt: skip

    def _tell(self, outcome: str, event: Pending) -> None:
        for observer in self.observers:
            observer(outcome, event)
