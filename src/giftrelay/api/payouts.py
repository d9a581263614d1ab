"""Scheduled payout runs: every verified creator above the minimum, paid once per period.

Each creator's payout of a period has the id ``run.<period>`` (``run.2026-11``; no
request id has a dot, so a creator's own payout can never take it), so
the payout script's idempotency makes a second run, or a run again after a crash
half-way, pay nobody twice: a creator already paid is found first in the ledger
store (which keeps the payout for ever) or in Redis (which keeps the run's ids for
``GIFTRELAY_RECEIPT_TTL``, longer than the store lags), and reported as
``already_paid``. Every run writes the period's whole batch file again (sorted by
creator, the same whichever run made each payout), so the file after the last run
lists every payout of the period, once.
"""

from __future__ import annotations

import asyncio
import csv
import os
from pathlib import Path

import msgspec
import structlog

from giftrelay.api.periods import iso, ms, period_bounds
from giftrelay.config import Settings
from giftrelay.ledger.entries import PayoutEntry, ledger_decoder
from giftrelay.ledger.store import Store
from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.money.platform import Platform
from giftrelay.money.receipts import PayoutReceipt
from giftrelay.wire.errors import Code, Refused

log = structlog.get_logger(__name__)

BATCH_COLUMNS = ("period", "creator", "payout_id", "diamonds", "gross_cents", "fee_cents",
                 "net_cents", "currency")  # fmt: skip
"""One row per payout of the period: the same file whichever run made each payout."""


class PayoutLine(msgspec.Struct, frozen=True):
    creator: str
    payout_id: str
    diamonds: int
    gross_cents: int
    fee_cents: int
    net_cents: int
    currency: str
    status: str
    """``paid`` by this run, or ``already_paid`` by an earlier run of the period."""


class Skipped(msgspec.Struct, frozen=True):
    creator: str
    reason: str
    """``below_minimum``, or ``not_verified`` when the verification was withdrawn."""
    diamonds: int = 0


class PayoutRun(msgspec.Struct, frozen=True):
    period: str
    start: str
    end: str
    batch_file: str
    paid: list[PayoutLine]
    skipped: list[Skipped]


def payout_id(period: str) -> str:
    """The id of every creator's payout of ``period`` (money.api.SCHEDULED_ID)."""
    return f"run.{period}"


class Runner:
    """Runs a period's payouts over the money core and the ledger store."""

    def __init__(self, money: Money, store: Store, settings: Settings) -> None:
        self.money = money
        self.platform = Platform(money)
        self.store = store
        self.settings = settings

    async def run(self, period: str) -> PayoutRun:
        start, end = period_bounds(period)
        if self.money.clock() < ms(end):
            raise Refused(
                Code.BAD_REQUEST, f"period {period} has not ended yet: run it after {iso(end)}"
            )
        pid = payout_id(period)
        paid: list[PayoutLine] = []
        skipped: list[Skipped] = []
        for creator in await self.platform.verified_creators():
            line = await self._earlier(creator, pid)
            if line is None:
                line, skip = await self._pay(creator, pid)
                if skip is not None:
                    skipped.append(skip)
                    continue
            assert line is not None
            paid.append(line)
        batch = self.settings.payout_batches / f"{period}.csv"
        await asyncio.to_thread(write_batch, batch, period, paid)  # fsync: not on the loop
        log.info("payout run", period=period, paid=sum(p.status == "paid" for p in paid),
                 already_paid=sum(p.status != "paid" for p in paid), skipped=len(skipped),
                 batch=str(batch))  # fmt: skip
        return PayoutRun(period, iso(start), iso(end), str(batch), paid, skipped)

    async def _earlier(self, creator: str, pid: str) -> PayoutLine | None:
        """The creator's payout of the period by an earlier run, if the store holds it."""
        row = await self.store.movement(f"payout:{creator}:{pid}")
        if row is None:
            return None
        entry = ledger_decoder.decode(row.body)
        assert isinstance(entry, PayoutEntry)
        currency = entry.currency or self.settings.payout_currency
        gross = entry.cash_cents + entry.fee_cents
        return PayoutLine(creator, pid, entry.diamonds, gross, entry.fee_cents, entry.cash_cents,
                          currency, "already_paid")  # fmt: skip

    async def _pay(self, creator: str, pid: str) -> tuple[PayoutLine | None, Skipped | None]:
        """Pay the creator's whole balance, or replay the payout Redis remembers."""
        diamonds = await self._remembered(creator, pid)
        if diamonds is None:
            diamonds = (await self.money.balance(creator)).diamonds
            if diamonds < self.settings.payout_min_diamonds:
                return None, Skipped(creator, Code.BELOW_MINIMUM.value, diamonds)
        try:
            done = await self._payout(creator, diamonds, pid)
        except Refused as refused:
            if refused.code in (Code.NOT_VERIFIED, Code.BELOW_MINIMUM):
                return None, Skipped(creator, refused.code.value, diamonds)
            if refused.code is not Code.IDEMPOTENCY_CONFLICT:
                raise
            remembered = await self._remembered(creator, pid)  # another run got there first
            if remembered is None:
                raise
            done = await self._payout(creator, remembered, pid)
        return PayoutLine(
            creator, pid, done.diamonds, done.cash_cents + done.fee_cents, done.fee_cents,
            done.cash_cents, self.settings.payout_currency,
            "already_paid" if done.replayed else "paid",
        ), None  # fmt: skip

    async def _payout(self, creator: str, diamonds: int, pid: str) -> PayoutReceipt:
        return await self.money.payout(creator, diamonds, pid, scheduled=True)

    async def _remembered(self, creator: str, pid: str) -> int | None:
        """The diamonds of the period's payout Redis remembers (``payout|<diamonds>``)."""
        raw = await self.money.redis.get(keys.payout_idem(creator, pid))
        if raw is None:
            return None
        head = str(raw).split("\n", 1)[0]
        return int(head.removeprefix("payout|"))


def write_batch(path: Path, period: str, lines: list[PayoutLine]) -> None:
    """The payment provider's batch file for the period, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".csv.partial")
    with open(partial, "w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(BATCH_COLUMNS)
        for p in lines:
            writer.writerow((period, p.creator, p.payout_id, p.diamonds, p.gross_cents,
                             p.fee_cents, p.net_cents, p.currency))  # fmt: skip
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)
