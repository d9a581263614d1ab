"""A gift on a Redis Cluster: three exactly-once steps on three slots, and the mover.

A Lua script may touch one slot's keys only, and a gift's keys belong to three owners:

1. on the **viewer's** slot, ``gift_debit.lua``: every check, the debit, the idempotency
   record, and a *transfer* in the outbox of a bucket on that node;
2. on the **stream's** slot, ``gift_apply.lua``: totals, top gifters, combo, history and
   the event (``SPUBLISH``), once per gift (its record ``xf:{stream}:a:…``);
3. on the **creator's** slot, ``gift_credit.lua``: the diamonds and the gift's ledger
   entry, once per gift (its record ``xf:{creator}:c:…``).

The relay runs the three at once and answers ``gift_ok`` after the third, so the reply
carries the event's offset and combo as on one Redis. The transfer leaves the outbox
(``XDEL``) only once all three ran. A transfer left behind (the relay died between
steps, a shard failed over) is applied by the mover (:meth:`Steps.sweep`, which every
relay worker runs: ``giftrelay.relay.mover``): it takes outbox entries older than
:data:`GRACE_MS` and runs steps 2 and 3 again; their records make a second run a replay
that moves nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis

from giftrelay.money import keys
from giftrelay.money.common import MoneySettings
from giftrelay.money.scripts import Script
from giftrelay.money.shards import ClusterRouter, Router
from giftrelay.wire.errors import Refused, Unavailable

log = structlog.get_logger(__name__)

GRACE_MS = 1000
"""A transfer this old is the mover's: the relay that wrote it finishes in milliseconds."""

BATCH = 256
"""Transfers the mover takes from one outbox per look."""


class Transfer(msgspec.Struct, frozen=True):
    """The part of a transfer the steps' keys are made of (the rest goes to Lua as is)."""

    id: str
    to: str
    stream: str
    gift: str
    coins: int
    diamonds: int
    from_: str = msgspec.field(name="from")


transfer_decoder = msgspec.json.Decoder(Transfer)


@dataclass
class Sweep:
    """What one look at the outboxes found and did."""

    moved: int = 0
    """Transfers applied (or found applied) and taken out."""
    waiting: dict[str, int] = field(default_factory=dict)
    """Per outbox, the transfers past the grace period when looked at."""
    oldest_ms: int = 0
    """Age of the oldest of them: how far behind the mover is."""


class Steps:
    """Runs steps 2 and 3 of a transfer, and takes finished ones out of the outboxes."""

    def __init__(
        self,
        router: Router,
        redis: Redis,
        settings: MoneySettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self.redis = redis
        self.settings = settings
        self.clock = clock
        self.applied = 0
        """Transfers whose credit this process made (steps 2 and 3, by the relay or mover)."""
        self.replayed = 0
        """Transfers found credited already (a retried gift, a mover after the relay)."""
        self.observe: Callable[[bool], None] | None = None
        """Told of each credit, with whether it was a replay (the process's metrics)."""
        self._done: dict[str, list[str]] = {}
        self._cleaning: asyncio.Task[None] | None = None
        self._queued = 0
        """Finished transfers handed to :meth:`forget` so far."""
        self._cleared = 0
        """Of them, those whose XDEL round is over."""
        self._round: asyncio.Event | None = None
        """Set when an XDEL round ends (and replaced), for :meth:`settle`."""

    def after_debit(self, debit: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """The gift's steps 2 and 3 once step 1 (``debit``, gift_debit.lua's reply) moved
        the coins: the future of a reply shaped as gift.lua's on one Redis, so that the
        callers read both alike. A refusal of step 1 is that reply."""
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def debited(step: asyncio.Future[Any]) -> None:
            if _failed(step, result):
                return
            reply = step.result()
            if reply[0] != "ok":
                result.set_result(reply)
                return
            _, raw, outbox, entry, coins, balance, replayed = reply
            self.finish(raw, outbox, entry).add_done_callback(
                _guard(lambda steps: finished(steps, raw, coins, balance, replayed), result)
            )

        def finished(
            steps: asyncio.Future[tuple[Any, Any]],
            raw: str,
            coins: int,
            balance: int,
            replayed: int,
        ) -> None:
            if _failed(steps, result):
                return
            applied, credited = steps.result()
            if credited is None or credited[0] != "ok":  # the coins moved; the rest is stuck
                result.set_result(applied if credited is None else credited)
                return
            _, offset, combo, combo_id, _ = applied
            diamonds = transfer_decoder.decode(raw).diamonds
            result.set_result(["ok", offset, coins, balance, combo, combo_id, diamonds, replayed])

        debit.add_done_callback(_guard(debited, result))
        return result

    def finish(self, raw: str, outbox: str, entry: str) -> asyncio.Future[tuple[Any, Any]]:
        """Steps 2 and 3 of the transfer ``raw`` (JSON): the future of both replies
        (apply's, credit's). Afterwards the transfer leaves its outbox."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        t = transfer_decoder.decode(raw)
        settings = self.settings
        applied = self.router.submit(
            Script.GIFT_APPLY,
            [
                keys.stream(t.stream),
                keys.top(t.stream),
                keys.history(t.stream),
                keys.combo(t.stream, t.from_, t.gift),
                keys.channel(t.stream),
                keys.applied(t.stream, t.from_, t.id),
            ],
            [raw, settings.combo_window_ms, settings.idempotency_ttl * 1000, settings.history_len],
            idempotent=True,  # by the gift's record on the stream's slot
        )

        def credit(step: asyncio.Future[Any]) -> None:
            if _failed(step, result):
                return
            reply = step.result()
            if reply[0] != "ok":
                result.set_result((reply, None))
                return
            _, offset, combo, combo_id, _ = reply
            credited = self.router.submit(
                Script.GIFT_CREDIT,
                [keys.wallet(t.to), keys.credited(t.to, t.from_, t.id)],
                [
                    raw,
                    offset,
                    combo,
                    combo_id,
                    settings.idempotency_ttl * 1000,
                    settings.max_balance,
                ],
                idempotent=True,  # by the gift's record on the creator's slot
                shard=(keys.ledger,),
            )
            credited.add_done_callback(_guard(lambda last: done(reply, last), result))

        def done(apply_reply: Any, last: asyncio.Future[Any]) -> None:
            if _failed(last, result):
                return
            reply = last.result()
            if reply[0] == "ok":
                self.forget(outbox, entry)
                if reply[2]:
                    self.replayed += 1
                else:
                    self.applied += 1
                if self.observe is not None:
                    self.observe(bool(reply[2]))
            result.set_result((apply_reply, reply))

        applied.add_done_callback(_guard(credit, result))
        return result

    def forget(self, outbox: str, entry: str) -> None:
        """Take a finished transfer out of its outbox, with others, in one XDEL soon."""
        self._done.setdefault(outbox, []).append(entry)
        self._queued += 1
        if self._cleaning is None or self._cleaning.done():
            self._cleaning = asyncio.create_task(self._clean())

    async def _clean(self) -> None:
        await asyncio.sleep(0)  # gather the entries of the gifts finishing in this turn
        while self._done:
            done, self._done = self._done, {}
            for outbox, entries in done.items():
                try:
                    client = (
                        self.router.client_for(outbox)
                        if isinstance(self.router, ClusterRouter)
                        else self.redis
                    )
                    await client.xdel(outbox, *entries)
                except Exception as exc:  # whatever it is, the next rounds go on
                    # Left in the outbox: the mover finds them finished (a replay).
                    log.info("could not clear finished transfers", error=str(exc))
            self._cleared += sum(len(entries) for entries in done.values())
            if self._round is not None:
                self._round.set()
                self._round = None

    async def sweep(self, *, grace_ms: int = GRACE_MS) -> Sweep:
        """The mover's one look: every transfer older than ``grace_ms`` applied."""
        now = int(self.clock() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for outbox in keys.OUTBOXES:
                pipe.xrange(outbox, min="-", max=f"{now - grace_ms}", count=BATCH)
            found = await pipe.execute()
        result = Sweep()
        retained_ms = self.settings.idempotency_ttl * 1000
        for outbox, entries in zip(keys.OUTBOXES, found, strict=True):
            result.waiting[outbox] = len(entries)
            for entry, fields in entries:
                age = now - int(str(entry).partition("-")[0])
                result.oldest_ms = max(result.oldest_ms, age)
                if age > retained_ms - grace_ms:
                    # Its steps' records may be gone (they live as long as the requests'):
                    # applying it again could credit it twice. A person looks.
                    log.error("transfer older than the idempotency retention: not applied",
                              outbox=outbox, entry=str(entry))  # fmt: skip
                    continue
                result.moved += await self._move(outbox, str(entry), fields)
        await self.settle()  # out of the outboxes before the next look
        return result

    async def _move(self, outbox: str, entry: str, fields: dict[str, Any]) -> int:
        raw = fields.get("t")
        if raw is None:  # not a transfer: kept for a person to look at
            log.error("outbox entry without a transfer", outbox=outbox, entry=entry)
            return 0
        try:
            apply_reply, credit_reply = await self.finish(str(raw), outbox, entry)
        except (Refused, Unavailable) as exc:
            log.warning("transfer not applied yet", outbox=outbox, entry=entry, error=str(exc))
            return 0
        if credit_reply is None or credit_reply[0] != "ok":
            log.error(
                "transfer refused; left in the outbox",
                outbox=outbox,
                entry=entry,
                reply=credit_reply or apply_reply,
            )
            return 0
        return 1

    async def settle(self) -> None:
        """Wait until the transfers finished so far are out of their outboxes (not those
        finishing meanwhile: under load the XDEL rounds never stop)."""
        target = self._queued
        while self._cleared < target and self._cleaning is not None and not self._cleaning.done():
            if self._round is None:
                self._round = asyncio.Event()
            await self._round.wait()

    async def aclose(self) -> None:
        await self.settle()


def _guard(
    callback: Callable[[asyncio.Future[Any]], None], result: asyncio.Future[Any]
) -> Callable[[asyncio.Future[Any]], None]:
    """``callback``, whose exception goes to ``result``: raised in a done-callback it
    would reach only the loop's handler, and the gift's caller would wait for ever."""

    def guarded(step: asyncio.Future[Any]) -> None:
        try:
            callback(step)
        except Exception as exc:
            if not result.done():
                result.set_exception(exc)

    return guarded


def _failed(step: asyncio.Future[Any], result: asyncio.Future[Any]) -> bool:
    """Pass a step's failure on to ``result``; True if it failed."""
    if result.done():
        return True
    if step.cancelled():
        result.cancel()
        return True
    exc = step.exception()
    if exc is not None:
        result.set_exception(exc)
        return True
    return False
