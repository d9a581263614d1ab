"""A gift on a Redis Cluster: two exactly-once steps on two slots, collects, and the mover.

A Lua script may touch one slot's keys only, and a gift's keys belong to three owners:

1. on the **viewer's** slot, ``gift_debit.lua``: every check, the debit, the idempotency
   record, and a *transfer* in the outbox of a bucket on that node;
2. on the **stream's** slot, ``gift_apply.lua``: totals, top gifters, combo, history, the
   event (``SPUBLISH``), the creator's diamonds as *earnings* on the stream (field
   ``earnings`` of its hash) and the gift's ledger entry, once per gift (its record
   ``xf:{stream}:a:…``).

The relay runs both at once and answers ``gift_ok`` after the second, so the reply
carries the event's offset and combo as on one Redis. The transfer leaves the outbox
(``XDEL``) once both ran.

The creator's wallet is not touched by a gift: a *collect* moves a stream's earnings into
it, in two steps of the same kind (``collect.lua`` on the stream's slot takes them off for
a transfer in the outbox; ``collect_credit.lua`` credits the wallet, once per collect). A
payout collects first, a balance adds the earnings (``Money``). A third script per gift,
on the creator's slot, cost a third of the cluster's Redis CPU per gift.

A transfer left behind (the relay died between steps, a shard failed over) is applied by
the mover (:meth:`Steps.sweep`, which every relay worker runs: ``giftrelay.mover``): it
takes outbox entries older than :data:`GRACE_MS` and runs the step after again; its record
makes a second run a replay that moves nothing.
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
from giftrelay.money.common import MoneySettings, ok
from giftrelay.money.scripts import Script
from giftrelay.money.shards import ClusterRouter, Router
from giftrelay.wire.errors import Refused, Unavailable

log = structlog.get_logger(__name__)

GRACE_MS = 1000
"""A transfer this old is the mover's: the relay that wrote it finishes in milliseconds."""

BATCH = 256
"""Transfers the mover takes from one outbox per look."""


class Transfer(msgspec.Struct, frozen=True):
    """An outbox entry: a gift's (gift_debit.lua) or a collect's (collect.lua)."""

    id: str
    to: str
    stream: str
    diamonds: int
    ts: int
    kind: str = "gift"
    gift: str = ""
    name: str = ""
    count: int = 0
    coins: int = 0
    streakable: bool = False
    coins_after: int = 0
    confirmed: bool = False
    level: int = 0
    level_up: bool = False
    from_: str = msgspec.field(default="", name="from")


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
    """Runs a transfer's last step, collects earnings, and takes finished transfers out
    of the outboxes."""

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
        """Transfers whose last step this process ran (by the relay, a payout or the mover)."""
        self.replayed = 0
        """Transfers found applied already (a retried gift, a mover after the relay)."""
        self.observe: Callable[[bool], None] | None = None
        """Told of each transfer's last step, with whether it was a replay (the metrics)."""
        self._done: dict[str, list[str]] = {}
        self._cleaning: asyncio.Task[None] | None = None
        self._queued = 0
        """Finished transfers handed to :meth:`forget` so far."""
        self._cleared = 0
        """Of them, those whose XDEL round is over."""
        self._round: asyncio.Event | None = None
        """Set when an XDEL round ends (and replaced), for :meth:`settle`."""

    def after_debit(self, debit: asyncio.Future[Any], gift: Transfer) -> asyncio.Future[Any]:
        """The gift's second step once the first (``debit``, gift_debit.lua's reply) moved
        the coins: the future of a reply shaped as gift.lua's on one Redis, so that the
        callers read both alike. A refusal of step 1 is that reply. ``gift``: the transfer
        as the request made it; the debit's reply adds the rest (its time, the balance
        after, the level, the confirmation) and its amounts replace the request's."""
        result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def debited(step: asyncio.Future[Any]) -> None:
            if _failed(step, result):
                return
            reply = step.result()
            if reply[0] != "ok":
                result.set_result(reply)
                return
            _, outbox, entry, coins, balance, ts, level, level_up, confirmed, diamonds, replayed = (
                reply
            )
            t = msgspec.structs.replace(  # the amounts as debited (a retry was priced again)
                gift,
                coins=coins,
                diamonds=diamonds,
                ts=ts,
                coins_after=balance,
                level=level,
                level_up=bool(level_up),
                confirmed=bool(confirmed),
            )
            self.finish(t, outbox, entry).add_done_callback(
                _guard(lambda last: applied(last, t, coins, balance, replayed), result)
            )

        def applied(
            last: asyncio.Future[Any], t: Transfer, coins: int, balance: int, replayed: int
        ) -> None:
            if _failed(last, result):
                return
            reply = last.result()
            if reply[0] != "ok":  # the coins moved; the rest is stuck (the mover retries)
                result.set_result(reply)
                return
            _, offset, combo, combo_id, _ = reply
            result.set_result(["ok", offset, coins, balance, combo, combo_id, t.diamonds, replayed])

        debit.add_done_callback(_guard(debited, result))
        return result

    def finish(self, t: Transfer, outbox: str, entry: str) -> asyncio.Future[Any]:
        """The step after a transfer's first: a gift's ``gift_apply.lua``, a collect's
        ``collect_credit.lua``; the future of its reply. Once it is ``ok`` the transfer
        leaves its outbox."""
        settings = self.settings
        retention = settings.idempotency_ttl * 1000
        if t.kind == "collect":
            last = self.router.submit(
                Script.COLLECT_CREDIT,
                [keys.wallet(t.to), keys.collected(t.to, t.stream, int(t.id[1:]))],
                [t.diamonds, retention],
                idempotent=True,  # by the collect's record on the creator's slot
            )
        else:
            last = self.router.submit(
                Script.GIFT_APPLY,
                [
                    keys.stream(t.stream),
                    keys.top(t.stream),
                    keys.history(t.stream),
                    keys.combo(t.stream, t.from_, t.gift),
                    keys.channel(t.stream),
                    keys.applied(t.stream, t.from_, t.id),
                    keys.battle_top(t.stream),
                ],
                [
                    *gift_fields(t),
                    settings.combo_window_ms,
                    retention,
                    settings.history_len,
                    settings.max_balance,
                ],
                idempotent=True,  # by the gift's record on the stream's slot
                shard=(keys.ledger,),
            )

        def done(step: asyncio.Future[Any]) -> None:
            if step.cancelled() or step.exception() is not None:
                return
            reply = step.result()
            if reply[0] == "ok":
                self.forget(outbox, entry)
                replayed = bool(reply[-1])
                if replayed:
                    self.replayed += 1
                else:
                    self.applied += 1
                if self.observe is not None:
                    self.observe(replayed)

        last.add_done_callback(done)
        return last

    async def collect(self, stream: str, creator: str) -> int | None:
        """Move ``creator``'s earnings on ``stream`` into their wallet (both steps): the
        diamonds moved (0 when none were held, or the stream is another's), or None while
        a reconcile holds collects. Raises :class:`Refused` or :class:`Unavailable` as the
        money core's calls do."""
        reply = await self.router.call(
            Script.COLLECT,
            [keys.stream(stream)],
            [stream, int(self.clock() * 1000), creator],
            idempotent=False,  # a second run finds the earnings taken: nothing is held
            shard=(keys.outbox, keys.hold),
        )
        if reply[0] == "err" and reply[1] == "held":
            return None
        _, raw, outbox, entry = ok(reply, "collect")
        if not raw:
            return 0
        t = transfer_decoder.decode(raw)
        ok(await self.finish(t, outbox, entry), "collect_credit")
        return t.diamonds

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
        try:
            t = transfer_decoder.decode(str(raw))
        except (msgspec.DecodeError, msgspec.ValidationError):  # kept for a person to look at
            log.error("outbox entry without a transfer", outbox=outbox, entry=entry)
            return 0
        try:
            reply = await self.finish(t, outbox, entry)
        except (Refused, Unavailable) as exc:
            log.warning("transfer not applied yet", outbox=outbox, entry=entry, error=str(exc))
            return 0
        if reply[0] != "ok":
            log.error("transfer refused; left in the outbox", outbox=outbox, entry=entry,
                      reply=reply)  # fmt: skip
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


def gift_fields(t: Transfer) -> list[str | int]:
    """A gift's transfer as gift_apply.lua's ARGV[1..15]."""
    return [t.id, t.from_, t.to, t.stream, t.gift, t.name, t.count, t.coins, t.diamonds,
            int(t.streakable), t.ts, t.coins_after, int(t.confirmed), t.level,
            int(t.level_up)]  # fmt: skip


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
