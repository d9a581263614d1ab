"""Ledger entries as double-entry postings: pure functions, no I/O.

Each event moves amounts between accounts, per asset, so that the postings of
every asset sum to zero. User accounts are ``user:<id>``; the system accounts
say where coins come from and go to:

============  ====================  ==============================================
event         asset                 postings
============  ====================  ==============================================
topup         coins                 ``user`` +c, ``system:coins_sold`` -c
gift          coins                 ``from`` -c, ``system:gifts`` +c
gift          diamonds              ``to`` +d, ``system:diamonds_issued`` -d
payout        diamonds              ``user`` -D, ``system:payouts`` +D
payout        cents                 ``system:payouts`` -(cash+fee), ``user`` +cash,
                                    ``system:fees`` +fee
cap           (none)                a setting, kept for audits
============  ====================  ==============================================

A user's coins and diamonds are the sums of their postings, which is what
``reconcile`` compares with the wallets in Redis. A user's cents are cash owed
to them, settled by the payment backend.
"""

from __future__ import annotations

import enum

import msgspec

from giftrelay.events import (
    AnyLedgerEntry,
    CapEntry,
    GiftEntry,
    PayoutEntry,
    TopupEntry,
    ledger_decoder,
)


class Asset(enum.StrEnum):
    COINS = "coins"
    DIAMONDS = "diamonds"
    CENTS = "cents"


COINS_SOLD = "system:coins_sold"
GIFTS = "system:gifts"
DIAMONDS_ISSUED = "system:diamonds_issued"
PAYOUTS = "system:payouts"
FEES = "system:fees"


def user(user_id: str) -> str:
    return f"user:{user_id}"


class Posting(msgspec.Struct, array_like=True, frozen=True):
    account: str
    asset: Asset
    amount: int


class Record(msgspec.Struct, frozen=True):
    """One ledger event ready for a store: keyed by its ``ledger`` stream entry id."""

    event_id: str
    ms: int
    seq: int
    kind: str
    request_id: str | None
    actor: str
    ts: int
    body: str
    """The entry exactly as the money core wrote it (JSON)."""
    postings: tuple[Posting, ...]


class PoisonEntry(ValueError):
    """A ``ledger`` stream entry that cannot be read as a ledger event."""


def postings_of(entry: AnyLedgerEntry) -> tuple[Posting, ...]:
    match entry:
        case TopupEntry(user=u, coins=c):
            moves = [(user(u), Asset.COINS, c), (COINS_SOLD, Asset.COINS, -c)]
        case GiftEntry(sender=s, to=t, coins=c, diamonds=d):
            moves = [
                (user(s), Asset.COINS, -c),
                (GIFTS, Asset.COINS, c),
                (user(t), Asset.DIAMONDS, d),
                (DIAMONDS_ISSUED, Asset.DIAMONDS, -d),
            ]
        case PayoutEntry(user=u, diamonds=d, cash_cents=cash, fee_cents=fee):
            moves = [
                (user(u), Asset.DIAMONDS, -d),
                (PAYOUTS, Asset.DIAMONDS, d),
                (PAYOUTS, Asset.CENTS, -(cash + fee)),
                (user(u), Asset.CENTS, cash),
                (FEES, Asset.CENTS, fee),
            ]
        case CapEntry():
            moves = []
    return tuple(Posting(a, asset, amount) for a, asset, amount in moves if amount)


def _actor(entry: AnyLedgerEntry) -> str:
    return entry.sender if isinstance(entry, GiftEntry) else entry.user


def record(event_id: str, body: str | bytes) -> Record:
    """The record for one ``ledger`` stream entry, or :class:`PoisonEntry`."""
    try:
        ms_text, seq_text = event_id.split("-")
        ms, seq = int(ms_text), int(seq_text)
    except ValueError:
        raise PoisonEntry(f"not a stream entry id: {event_id!r}") from None
    try:
        entry = ledger_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PoisonEntry(f"not a ledger event: {exc}") from None
    text = body.decode() if isinstance(body, bytes) else body
    return Record(
        event_id=event_id,
        ms=ms,
        seq=seq,
        kind=str(type(entry).__struct_config__.tag),
        request_id=getattr(entry, "id", None),
        actor=_actor(entry),
        ts=entry.ts,
        body=text,
        postings=postings_of(entry),
    )
