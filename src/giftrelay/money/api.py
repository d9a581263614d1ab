"""The money core's typed async API over the Lua scripts.

Every call checks its arguments before Redis sees them, runs one atomic script,
and either returns a receipt or raises :class:`~giftrelay.wire.errors.Refused` having
moved nothing, or :class:`~giftrelay.wire.errors.Unavailable` when Redis did not answer
(then the call may or may not have taken effect: retry with the same id). Gifts,
top-ups and payouts are idempotent by the caller's id; each call tells the pipeline
whether it is (see :meth:`AutoPipeline.call`), and only those are sent again when a
connection breaks before the reply.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from giftrelay.money import keys, rules
from giftrelay.money.autopipe import AutoPipeline
from giftrelay.money.battles import Battles
from giftrelay.money.catalog import Catalog
from giftrelay.money.common import (
    MoneySettings,
    check_ident,
    check_request_id,
    guard,
    now_ms,
    ok,
    priced,
    shared,
)
from giftrelay.money.receipts import (
    GiftReceipt,
    PackagePrice,
    PayoutReceipt,
    TopupReceipt,
)
from giftrelay.money.scripts import Script
from giftrelay.money.shards import ClusterRouter, Router
from giftrelay.money.streams import Streams
from giftrelay.money.transfers import Steps, Transfer
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

SCHEDULED_ID = re.compile(r"^run\.[0-9]{4}-(0[1-9]|1[0-2]|Q[1-4])$")
"""The id of a payout run's payout: ``run.2026-11``, ``run.2026-Q4``."""


class Money(Streams, Battles):
    """Wallets, streams and gifts. One per process; safe for any number of tasks."""

    def __init__(
        self,
        redis: Redis,
        settings: MoneySettings,
        catalog: Catalog,
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        replicas, timeout_ms = settings.ack_replicas, round(settings.ack_timeout * 1000)
        self.steps: Steps | None = None
        """On a Redis Cluster, the gift's second step and collects (see money.transfers)."""
        if isinstance(redis, RedisCluster):
            self.pipe: Router = ClusterRouter(
                redis, ack_replicas=replicas, ack_timeout_ms=timeout_ms
            )
            self.steps = Steps(self.pipe, redis, settings)
        else:
            self.pipe = Router(
                AutoPipeline(redis, ack_replicas=replicas, ack_timeout_ms=timeout_ms)
            )
        self._state_reads: dict[str, asyncio.Future[tuple[str, str]]] = {}
        self._collects: dict[str, asyncio.Future[bool]] = {}
        self._live_until: dict[str, float] = {}
        """On a cluster, streams found live, until when (monotonic): the viewer's step of
        a gift cannot see the stream's slot, so the caller looks first (at most each second)."""
        self.diamond_rate = settings.diamond_rate  # parsed once, not on every gift
        self.level_thresholds = catalog.levels.argument
        self._creators: dict[str, str] = {}
        self._diamonds: dict[int, int] = {}
        """Diamonds per coins spent: the rate is a Fraction, slow to multiply per gift."""

    async def start(self) -> None:
        """Load the scripts into Redis (they are loaded again by themselves if Redis forgets)."""
        await guard(self.pipe.start())

    async def aclose(self) -> None:
        if self.steps is not None:  # first: its gifts in flight still use the pipelines
            await self.steps.aclose()
        await self.pipe.aclose()

    # -- gifts -----------------------------------------------------------------------------

    async def gift(
        self,
        viewer: str,
        stream: str,
        gift: str,
        count: int,
        request_id: str,
        *,
        confirm: bool = False,
    ) -> GiftReceipt:
        """Send a gift; ``confirm``: the viewer confirms a gift above their threshold."""
        check_ident("viewer", viewer)
        check_ident("stream", stream)
        check_request_id(request_id)
        if self.steps is not None:
            creator, state = self._creators.get(stream, ""), ""
            if not creator or self._live_until.get(stream, 0.0) < time.monotonic():
                creator, state = await self._stream_state(stream)
            reply = await self._cluster_gift(
                viewer, stream, gift, count, request_id, creator, confirm, state
            )
            receipt = self.gift_receipt(reply, stream, request_id)
            assert receipt is not None  # the cluster's steps never ask to re-read the creator
            return receipt  # whole: its transfer leaves the outbox with others, soon
        for attempt in range(2):
            creator = await self._creator(stream, refresh=attempt > 0)
            reply = await self._gift_call(viewer, stream, gift, count, request_id, creator, confirm)
            receipt = self.gift_receipt(reply, stream, request_id)
            if receipt is not None:
                return receipt
        raise Refused(Code.INTERNAL, "the stream's creator keeps changing")

    def gift_soon(
        self,
        viewer: str,
        stream: str,
        gift: str,
        count: int,
        request_id: str,
        confirm: bool = False,
    ) -> asyncio.Future[Any] | None:
        """The relay's fast path: :meth:`gift`'s script call, made at once, for arguments
        the wire already validated (``wire.protocol.Gift``); the future of the script's
        reply, for :meth:`gift_receipt`. None while the stream's creator is not known to
        this process yet: then use :meth:`gift`. Raises :class:`Refused` for a gift or
        count that no script would take."""
        creator = self._creators.get(stream)
        if creator is None:
            return None
        if self.steps is not None:
            if self._live_until.get(stream, 0.0) < time.monotonic():
                return None
            return self._cluster_gift(viewer, stream, gift, count, request_id, creator, confirm)
        return self._gift_call(viewer, stream, gift, count, request_id, creator, confirm)

    def _gift_call(
        self,
        viewer: str,
        stream: str,
        gift: str,
        count: int,
        request_id: str,
        creator: str,
        confirm: bool,
    ) -> asyncio.Future[Any]:
        settings = self.settings
        now = self.clock()
        gift_args = self._gift_args(viewer, stream, gift, count, request_id, creator, now)
        return self.pipe.submit(
            Script.GIFT,
            [
                keys.wallet(viewer),
                keys.wallet(creator),
                keys.gift_idem(viewer, request_id),
                keys.stream(stream),
                keys.top(stream),
                keys.history(stream),
                keys.combo(stream, viewer, gift),
                keys.LEDGER,
                keys.channel(stream),
                keys.spending(viewer, now // rules.DAY_MS),
                keys.battle_top(stream),
            ],
            [
                *gift_args,
                settings.combo_window_ms,
                settings.idempotency_ttl * 1000,
                settings.history_len,
                settings.max_balance,
                int(confirm),
                self.level_thresholds,
            ],
            idempotent=True,  # by the viewer's request id
        )

    def _cluster_gift(
        self,
        viewer: str,
        stream: str,
        gift: str,
        count: int,
        request_id: str,
        creator: str,
        confirm: bool,
        state: str = "",
    ) -> asyncio.Future[Any]:
        """On a cluster, the gift's two steps (money.transfers); the future of a reply
        shaped as gift.lua's. ``state``: '' for a live stream, else the refusal a gift
        that is no retry gets ('stream_not_live', 'unknown_stream')."""
        assert self.steps is not None
        now = self.clock()
        gift_args = self._gift_args(viewer, stream, gift, count, request_id, creator, now)
        debit = self.pipe.submit(
            Script.GIFT_DEBIT,
            [
                keys.wallet(viewer),
                keys.gift_idem(viewer, request_id),
                keys.spending(viewer, now // rules.DAY_MS),
            ],
            [
                *gift_args,
                self.settings.idempotency_ttl * 1000,
                int(confirm),
                state,
                self.level_thresholds,
            ],
            idempotent=True,  # by the viewer's request id
            shard=(keys.outbox,),
        )
        request = Transfer(
            id=request_id,
            to=creator,
            stream=stream,
            diamonds=int(gift_args[8]),
            ts=now,
            gift=gift,
            name=str(gift_args[5]),
            count=count,
            coins=int(gift_args[7]),
            streakable=bool(gift_args[9]),
            from_=viewer,
        )
        return self.steps.after_debit(debit, request)

    def _gift_args(
        self,
        viewer: str,
        stream: str,
        gift: str,
        count: int,
        request_id: str,
        creator: str,
        now: int,
    ) -> list[str | int]:
        """The gift priced, as ARGV[1..11] of gift.lua and gift_debit.lua alike: id,
        viewer, creator, stream, gift id, name, count, coins, diamonds, streakable, now.
        Raises :class:`Refused` for a gift or count that no script would take."""
        item, coins = priced(self.catalog, self.settings.max_gift_count, gift, count)
        diamonds = self._diamonds.get(coins)
        if diamonds is None:
            diamonds = self._diamonds[coins] = rules.diamonds_for(coins, self.diamond_rate)
            if len(self._diamonds) > 4096:  # counts are few in practice; bound it anyway
                self._diamonds.clear()
        return [
            request_id,
            viewer,
            creator,
            stream,
            gift,
            item.name,
            count,
            coins,
            diamonds,
            int(item.streakable),
            now,
        ]

    async def _stream_state(self, stream: str) -> tuple[str, str]:
        """On a cluster: the stream's creator ('' if none), and '' if it is live, else the
        refusal a new gift gets. A live stream is remembered for a second; the gifts that
        find it unknown meanwhile share one read (a burst would take a connection each)."""
        return await shared(self._state_reads, stream, lambda: self._read_state(stream))

    async def _read_state(self, stream: str) -> tuple[str, str]:
        creator, status = await guard(self.redis.hmget(keys.stream(stream), ["creator", "status"]))
        if creator is None:
            return "", Code.UNKNOWN_STREAM
        self._creators[stream] = str(creator)
        if status != "live":
            self._live_until.pop(stream, None)
            return str(creator), Code.STREAM_NOT_LIVE
        self._live_until[stream] = time.monotonic() + 1.0
        return str(creator), ""

    def gift_receipt(self, reply: list[Any], stream: str, request_id: str) -> GiftReceipt | None:
        """The gift script's reply as a receipt; None when the stream's creator changed
        under the cache (:meth:`gift` reads it again and retries); raises its refusal."""
        if reply[0] == "err" and reply[1] == "stale_creator":
            self._creators.pop(stream, None)
            return None
        _, offset, spent, balance, combo, combo_id, credited, replayed = ok(reply, "gift")
        return GiftReceipt(
            id=request_id,
            stream=stream,
            offset=offset,
            coins=spent,
            balance=balance,
            combo=combo,
            combo_id=combo_id,
            diamonds=credited,
            replayed=bool(replayed),
        )

    async def _creator(self, stream: str, *, refresh: bool) -> str:
        """Streams never change creator, so the gift path reads it once per process."""
        creator = None if refresh else self._creators.get(stream)
        if creator is None:
            found = await guard(self.redis.hget(keys.stream(stream), "creator"))
            if found is None:
                raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
            creator = self._creators[stream] = str(found)
        return creator

    # -- wallets ---------------------------------------------------------------------------

    async def topup(
        self, user: str, coins: int, receipt: str, *, package: PackagePrice | None = None
    ) -> TopupReceipt:
        check_ident("user", user)
        check_request_id(receipt)
        if not 1 <= coins <= self.settings.max_balance:
            raise Refused(Code.BAD_REQUEST, f"coins must be 1 to {self.settings.max_balance}")
        record = keys.topup_idem(receipt)
        claim: list[str | int] = [
            user,
            coins,
            "" if package is None else package.package,
            "" if package is None else package.region,
            self.settings.receipt_ttl * 1000,
        ]
        if self.pipe.cluster:  # the receipt's slot is another: claim it there first
            # A claim stays (a claim released after a refusal could free a receipt that a
            # concurrent retry credited), so a new receipt that will surely be refused is
            # refused before it is claimed; a retry goes on to its first reply.
            claimed_before = await guard(self.redis.exists(record))
            held = await guard(self.redis.hget(keys.wallet(user), "coins"))
            if not claimed_before and int(held or 0) + coins > self.settings.max_balance:
                raise Refused(
                    Code.BAD_REQUEST, f"the balance would exceed {self.settings.max_balance} coins"
                )
            claimed = await self.pipe.call(
                Script.TOPUP_CLAIM,
                [record],
                claim,
                idempotent=True,  # claims the receipt for this top-up, or finds it claimed
            )
            ok(claimed, "topup")
            record = keys.topup_credit(user, receipt)
        reply = await self.pipe.call(
            Script.TOPUP,
            [keys.wallet(user), record],
            [
                receipt,
                user,
                coins,
                self.clock(),
                self.settings.receipt_ttl * 1000,
                self.settings.max_balance,
                *(
                    ("", "", "", 0)
                    if package is None
                    else (package.package, package.region, package.currency, package.price_minor)
                ),
            ],
            idempotent=True,  # by the payment receipt
            shard=(keys.ledger,),
        )
        _, balance, replayed = ok(reply, "topup")
        return TopupReceipt(user=user, coins=balance, replayed=bool(replayed))

    async def payout(
        self,
        creator: str,
        diamonds: int,
        request_id: str,
        *,
        scheduled: bool = False,
    ) -> PayoutReceipt:
        """Cash out ``diamonds``. The creator's own request (the socket's ``payout``) needs
        the creator's verification when the setting ``payout_requires_verification`` says
        so. A ``scheduled`` payout (a payout run) always needs it; its id, ``run.<period>``,
        can be no request id (they have no dot), and is kept ``receipt_ttl``, not an hour."""
        check_ident("creator", creator)
        if scheduled:
            if not SCHEDULED_ID.match(request_id):
                raise Refused(Code.BAD_REQUEST, "a scheduled payout's id is run.<period>")
        else:
            check_request_id(request_id)
        if not 1 <= diamonds <= self.settings.max_balance:
            raise Refused(Code.BAD_REQUEST, f"diamonds must be 1 to {self.settings.max_balance}")
        quote = rules.payout_quote(diamonds, self.settings.cent_rate, self.settings.fee_rate)
        verify = scheduled or self.settings.payout_requires_verification
        collected = self.steps is not None and await self._will_pay(
            creator, diamonds, request_id, verify
        )
        if collected:
            await self.collect(creator)
        reply = await self.pipe.call(
            Script.PAYOUT,
            [keys.wallet(creator), keys.payout_idem(creator, request_id)],
            [
                request_id,
                creator,
                diamonds,
                quote.cash_cents,
                quote.fee_cents,
                self.settings.payout_min_diamonds,
                self.clock(),
                (self.settings.receipt_ttl if scheduled else self.settings.idempotency_ttl) * 1000,
                int(verify),
                self.settings.payout_currency,
            ],
            idempotent=True,  # by the creator's request id
            shard=(keys.ledger,),
        )
        if collected and reply[0] == "err" and reply[1] == Code.INSUFFICIENT_DIAMONDS:
            # The diamonds were there, wallet and earnings: some are still on their way to
            # the wallet (a reconcile holds collects, another process's collect is half
            # done), or a concurrent payout took them. The retry tells which.
            raise Unavailable("the creator's diamonds are moving: retry with the same id")
        _, paid, cash, fee, left, replayed = ok(reply, "payout")
        return PayoutReceipt(
            id=request_id,
            diamonds=paid,
            cash_cents=cash,
            fee_cents=fee,
            diamonds_left=left,
            replayed=bool(replayed),
        )

    async def _will_pay(self, creator: str, diamonds: int, request_id: str, verify: bool) -> bool:
        """On a cluster, whether payout.lua will pay a new payout if the creator's earnings
        are collected first: a refusal, or a retry, then moves nothing."""
        if diamonds < self.settings.payout_min_diamonds:
            return False
        async with self.redis.pipeline(transaction=False) as pipe:  # the creator's slot
            pipe.exists(keys.payout_idem(creator, request_id))
            pipe.hmget(keys.wallet(creator), ["diamonds", "verified"])
            done, (held, verified) = await guard(pipe.execute())
        if done or (verify and verified is None):
            return False
        return int(held or 0) + await self._earnings(creator) >= diamonds

    async def collect(self, creator: str) -> bool:
        """On a cluster, move the creator's earnings on each of their streams into the wallet
        (money.transfers); True if some could not move yet (a reconcile holds collects).
        Concurrent calls for one creator share one collect: a payout does not find the
        earnings gone while another's collect is still crediting them."""
        return await shared(self._collects, creator, lambda: self._collect(creator))

    async def _collect(self, creator: str) -> bool:
        assert self.steps is not None
        streams = await guard(self.redis.smembers(keys.creator_streams(creator)))
        moved = await asyncio.gather(
            *(self.steps.collect(str(s), creator) for s in sorted(streams))
        )
        return None in moved

    async def set_cap(self, user: str, daily_coins: int | None) -> int | None:
        """Set (or with None remove) the user's daily coin limit, in UTC days."""
        check_ident("user", user)
        if daily_coins is not None and not 0 <= daily_coins <= self.settings.max_balance:
            raise Refused(Code.BAD_REQUEST, f"daily_coins must be 0 to {self.settings.max_balance}")
        cap = "" if daily_coins is None else daily_coins
        reply = await self.pipe.call(
            Script.SET_CAP,
            [keys.wallet(user)],
            [user, cap, self.clock()],
            idempotent=False,  # no id: each run appends a cap entry to the ledger
            shard=(keys.ledger,),
        )
        ok(reply, "set_cap")
        return daily_coins

    async def set_confirm(self, user: str, coins: int | None) -> int | None:
        """Set (or with None remove) the user's confirmation threshold: a gift of more
        coins needs ``confirm``."""
        check_ident("user", user)
        if coins is not None and not 0 <= coins <= self.settings.max_balance:
            raise Refused(Code.BAD_REQUEST, f"coins must be 0 to {self.settings.max_balance}")
        reply = await self.pipe.call(
            Script.SET_CONFIRM,
            [keys.wallet(user)],
            [user, "" if coins is None else coins, self.clock()],
            idempotent=False,  # no id: each run appends a confirm entry to the ledger
            shard=(keys.ledger,),
        )
        ok(reply, "set_confirm")
        return coins

    async def set_cooldown(
        self, user: str, coins: int | None, minutes: int | None
    ) -> tuple[int | None, int | None]:
        """Set (or with None coins remove) the user's cool-down: once ``coins`` are spent
        within ``minutes``, gifts wait until the window allows."""
        check_ident("user", user)
        if coins is None:
            minutes = None
        elif not 1 <= coins <= self.settings.max_balance:
            raise Refused(Code.BAD_REQUEST, f"coins must be 1 to {self.settings.max_balance}")
        elif minutes is None or not 1 <= minutes <= rules.MAX_COOLDOWN_MINUTES:
            raise Refused(Code.BAD_REQUEST, f"minutes must be 1 to {rules.MAX_COOLDOWN_MINUTES}")
        reply = await self.pipe.call(
            Script.SET_COOLDOWN,
            [keys.wallet(user)],
            [user, "" if coins is None else coins, minutes or "", self.clock()],
            idempotent=False,  # no id: each run appends a cooldown entry to the ledger
            shard=(keys.ledger,),
        )
        ok(reply, "set_cooldown")
        return coins, minutes

    async def spending(self, user: str) -> protocol.Spending:
        """Coins spent today, over 7 and 30 UTC days and per creator, with the settings
        (the wire's reply itself, ``ref`` unset). One round trip, all on the user's slot."""
        check_ident("user", user)
        now = self.clock()
        today = now // rules.DAY_MS
        days = range(today, today - rules.SPENDING_DAYS, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.wallet(user), ["confirm", "cool_coins", "cool_minutes", "cool_log"])
            for day in days:
                pipe.hgetall(keys.spending(user, day))
            replies = await guard(pipe.execute())
        confirm, cool_coins, cool_minutes, cool_log = replies[0]
        totals: list[int] = []
        per_creator: dict[str, int] = {}
        for raw in replies[1:]:
            day_total = 0
            for creator, coins in cast(dict[str, str], raw).items():
                day_total += int(coins)
                per_creator[creator] = per_creator.get(creator, 0) + int(coins)
            totals.append(day_total)
        cooldown = None
        if cool_coins is not None and cool_minutes is not None:
            limit, minutes = int(cool_coins), int(cool_minutes)
            log = rules.cool_live(rules.parse_cool_log(cool_log), now, minutes)
            cooldown = protocol.CooldownState(
                coins=limit,
                minutes=minutes,
                spent=sum(n for _, n in log),
                resume_at=rules.cool_resume(log, now, limit, minutes),
            )
        top = sorted(per_creator.items(), key=lambda item: (-item[1], item[0]))
        return protocol.Spending(
            today=totals[0],
            last_7_days=sum(totals[:7]),
            last_30_days=sum(totals),
            per_creator=[
                protocol.CreatorSpending(creator, coins)
                for creator, coins in top[: rules.SPENDING_CREATORS]
            ],
            confirm_coins=None if confirm is None else int(confirm),
            cooldown=cooldown,
        )

    async def balance(self, user: str) -> protocol.Balance:
        """The wallet as its owner sees it: the wire's reply itself (``ref`` unset)."""
        check_ident("user", user)
        raw = await guard(
            self.redis.hmget(keys.wallet(user), ["coins", "diamonds", "spent_day", "spent", "cap"])
        )
        coins, diamonds, spent_day, spent, cap = raw
        earnings = await self._earnings(user) if self.steps is not None else 0
        today = rules.utc_day(self.clock())
        return protocol.Balance(
            coins=int(coins or 0),
            diamonds=int(diamonds or 0) + earnings,
            spent_today=int(spent or 0) if int(spent_day or -1) >= today else 0,
            daily_cap=None if cap is None else int(cap),
        )

    async def _earnings(self, creator: str) -> int:
        """On a cluster, the creator's diamonds held on their streams (read after the wallet:
        a collect meanwhile makes the sum short for that moment, never twice counted)."""
        streams = sorted(await guard(self.redis.smembers(keys.creator_streams(creator))))
        held = await guard(
            asyncio.gather(
                *(self.redis.hmget(keys.stream(str(s)), ["creator", "earnings"]) for s in streams)
            )
        )
        return sum(int(e or 0) for owner, e in held if owner == creator)  # theirs only
