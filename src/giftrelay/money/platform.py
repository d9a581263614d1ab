"""The money movements the platform's backend asks for: chargebacks and verifications.

Beside :class:`~giftrelay.money.api.Money` (the relay's hot path) so that each stays
small; both share its pipeline, clock and settings. Every call checks its arguments,
runs one atomic script, and returns a receipt or raises
:class:`~giftrelay.wire.errors.Refused` having moved nothing.
"""

from __future__ import annotations

import msgspec

from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.money.common import check_ident, check_request_id, guard, ok
from giftrelay.money.scripts import Script
from giftrelay.wire.errors import Code, Refused

MAX_REASON = 200
"""Longest chargeback reason or verification reference kept in the ledger."""


class ChargebackReceipt(msgspec.Struct, frozen=True):
    user: str
    receipt: str
    coins_clawed_back: int
    coins: int
    """The wallet's balance after it, below zero when the coins were already spent."""
    replayed: bool = False


class Platform:
    """Chargebacks and creator verification over the money core's scripts."""

    def __init__(self, money: Money) -> None:
        self.money = money

    async def receipt_holder(self, receipt: str) -> str | None:
        """The user a receipt credited, while Redis remembers it (``receipt_ttl`` after the
        top-up or its chargeback); None when it does not, and the ledger store must say."""
        check_request_id(receipt)
        redis = self.money.redis
        charged, topped = await guard(
            redis.mget([keys.chargeback_idem(receipt), keys.topup_idem(receipt)])
        )
        if charged:
            reply = msgspec.json.decode(str(charged).partition("\n")[2])
            return str(reply[1])
        if topped:
            parts = str(topped).split("\n", 1)[0].split("|")
            return parts[1] if len(parts) > 2 and parts[0] == "topup" else None
        return None

    async def topup_remembered(self, receipt: str) -> bool:
        """True while Redis holds the receipt's top-up record (its script dedupes alone)."""
        check_request_id(receipt)
        return bool(await guard(self.money.redis.exists(keys.topup_idem(receipt))))

    async def chargeback(
        self, receipt: str, reason: str, user: str, ledger_coins: int | None = None
    ) -> ChargebackReceipt:
        """Take back what ``receipt`` credited to ``user``, even into debt; once per receipt.

        ``ledger_coins``: what the ledger store says the receipt credited, for a receipt
        Redis no longer remembers (None: Redis must know it, or ``unknown_receipt``).
        """
        check_request_id(receipt)
        check_ident("user", user)
        if len(reason) > MAX_REASON:
            raise Refused(Code.BAD_REQUEST, f"reason must be at most {MAX_REASON} characters")
        settings = self.money.settings
        records = (
            # On a cluster, the records on the user's slot (the top-up's credit, and the
            # chargeback's own): a receipt credits one user only (its claim says which).
            (keys.topup_credit(user, receipt), keys.chargeback_record(user, receipt))
            if self.money.pipe.cluster
            else (keys.topup_idem(receipt), keys.chargeback_idem(receipt))
        )
        reply = await self.money.pipe.call(
            Script.CHARGEBACK,
            [keys.wallet(user), *records],
            [
                receipt,
                user,
                "" if ledger_coins is None else ledger_coins,
                reason,
                self.money.clock(),
                settings.receipt_ttl * 1000,
            ],
            idempotent=True,  # by the receipt
            shard=(keys.ledger,),
        )
        if reply[0] == "err" and reply[1] == "stale_user":
            raise Refused(Code.INTERNAL, f"receipt {receipt} credited {reply[2]}, not {user}")
        _, holder, coins, balance, replayed = ok(reply, "chargeback")
        return ChargebackReceipt(
            user=holder,
            receipt=receipt,
            coins_clawed_back=coins,
            coins=balance,
            replayed=bool(replayed),
        )

    async def verify(self, creator: str, verified: bool, reference: str) -> int:
        """Record (or withdraw) a creator's verification; returns since when (ms), or 0."""
        check_ident("creator", creator)
        if len(reference) > MAX_REASON:
            raise Refused(Code.BAD_REQUEST, f"reference must be at most {MAX_REASON} characters")
        cluster = self.money.pipe.cluster
        reply = await self.money.pipe.call(
            Script.VERIFY,
            # On a cluster the set is on another slot: updated after (an index of the
            # wallets' field, which is the record).
            [keys.wallet(creator)] if cluster else [keys.wallet(creator), keys.VERIFIED],
            [creator, int(verified), reference, self.money.clock()],
            idempotent=False,  # no id: each run records a change in the ledger
            shard=(keys.ledger,),
        )
        since = int(ok(reply, "verify")[1])
        if cluster:
            redis = self.money.redis
            await guard(
                redis.sadd(keys.VERIFIED, creator)
                if verified
                else redis.srem(keys.VERIFIED, creator)
            )
        return since

    async def verified_since(self, creator: str) -> int | None:
        """When the creator's verification was recorded (ms), or None."""
        check_ident("creator", creator)
        raw = await guard(self.money.redis.hget(keys.wallet(creator), "verified"))
        return None if raw is None else int(raw)

    async def verified_creators(self) -> list[str]:
        """Every creator whose verification is on record, sorted."""
        members = await guard(self.money.redis.smembers(keys.VERIFIED))
        return sorted(str(m) for m in members)

    async def known_user(self, user: str) -> bool:
        """True when the user has a wallet (anyone ever topped up, gifted or paid)."""
        check_ident("user", user)
        return bool(await guard(self.money.redis.exists(keys.wallet(user))))
