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
chargeback    coins                 ``user`` -c, ``system:chargebacks`` +c
cap           (none)                a setting, kept for audits
confirm       (none)                a viewer's confirmation threshold, kept for audits
cooldown      (none)                a viewer's cool-down, kept for audits
verification  (none)                a creator's verification, kept for audits
============  ====================  ==============================================

A user's coins and diamonds are the sums of their postings, which is what
``reconcile`` compares with the wallets in Redis. A user's cents are cash owed
to them, settled by the payment backend.

Every movement also has a **business key**, the id its request was idempotent by
(a top-up's receipt, a gift's sender and id, a payout's creator and id, a
chargeback's receipt), and a
**fingerprint** of what it moved. The store keeps one movement per business key:
the same key again with the same fingerprint is a replay (Redis ran the request a
second time after losing its idempotency record) and is not counted again; with
another fingerprint it is a conflict, kept aside for ``reconcile`` to report.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from giftrelay.ledger.entries import (
    AnyLedgerEntry,
    BattleEntry,
    CapEntry,
    ChargebackEntry,
    ConfirmEntry,
    CooldownEntry,
    GiftEntry,
    PayoutEntry,
    TopupEntry,
    VerificationEntry,
    ledger_decoder,
)
from giftrelay.wire.offsets import parse_offset


class Asset(enum.StrEnum):
    COINS = "coins"
    DIAMONDS = "diamonds"
    CENTS = "cents"


COINS_SOLD = "system:coins_sold"
GIFTS = "system:gifts"
DIAMONDS_ISSUED = "system:diamonds_issued"
PAYOUTS = "system:payouts"
FEES = "system:fees"
CHARGEBACKS = "system:chargebacks"


USER = "user:"
COINS, DIAMONDS, CENTS = Asset.COINS, Asset.DIAMONDS, Asset.CENTS


def user(user_id: str) -> str:
    return f"{USER}{user_id}"


class Posting(msgspec.Struct, array_like=True, frozen=True, gc=False):
    account: str
    asset: Asset
    amount: int


class Record(msgspec.Struct, frozen=True, gc=False):
    """One ledger event ready for a store: keyed by its stream entry id and its bucket
    (:data:`SINGLE` for the one ``ledger`` stream of a single Redis; on a Redis Cluster
    the bucket stream it was read from, whose ids may equal another bucket's).

    ``gc=False``: a consumer holds thousands at once and they hold no cycles; the
    garbage collector need not scan them.
    """

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
    key: str | None
    """The business key: one movement per key in the store (None: a setting, no key)."""
    fingerprint: str
    """What the movement moved, to tell a replay of the same key from a conflict."""
    bucket: int = -1
    """The ledger stream's bucket on a Redis Cluster (money/keys.py), or :data:`SINGLE`."""

    @property
    def ref(self) -> str:
        """The event's id as the store shows it (:func:`event_ref`)."""
        return event_ref(self.bucket, self.ms, self.seq)


SINGLE = -1
"""The bucket of the one ``ledger`` stream of a single Redis: its events keep their plain
stream entry ids, as before buckets existed."""


def event_ref(bucket: int, ms: int, seq: int) -> str:
    """An event's id in the store, exports and reports: the stream entry id
    (``1795392000000-0``), prefixed on a cluster by its bucket (``b07:1795392000000-0``),
    since two buckets' streams may hand out the same ids."""
    return f"{ms}-{seq}" if bucket < 0 else f"b{bucket:02d}:{ms}-{seq}"


EventKey = tuple[int, int, int]
"""An event's key in the store, in ledger order: (ms, seq, bucket)."""


def parse_event_ref(ref: str) -> EventKey:
    """The key of an :func:`event_ref`; ValueError if it is none."""
    bucket, colon, entry = ref.rpartition(":")
    if colon and not (bucket[:1] == "b" and bucket[1:].isdigit()):
        raise ValueError(f"not an event id: {ref!r}")
    ms, seq = parse_offset(entry)
    return ms, seq, int(bucket[1:]) if colon else SINGLE


EventRow = tuple[int, int, str, str | None, str, int, str, str | None, str, int]
"""An ``events`` row: ms, seq, kind, request_id, actor, ts, body, business_key,
fingerprint, bucket."""
PostingRow = tuple[int, int, int, str, str, int, int]
"""A ``postings`` row: ms, seq, n, account, asset, amount, bucket."""

_ASSET_TEXT = {asset: asset.value for asset in Asset}  # a lookup is cheaper than .value


def event_rows(records: Iterable[Record]) -> list[EventRow]:
    return [
        (r.ms, r.seq, r.kind, r.request_id, r.actor, r.ts, r.body, r.key, r.fingerprint, r.bucket)
        for r in records
    ]


def posting_rows(records: Iterable[Record]) -> list[PostingRow]:
    """Every record's postings, numbered ``n`` in their order within the event."""
    text = _ASSET_TEXT
    return [
        (r.ms, r.seq, n, p.account, text[p.asset], p.amount, r.bucket)
        for r in records
        for n, p in enumerate(r.postings)
    ]


class PoisonEntry(ValueError):
    """A ``ledger`` stream entry that cannot be read as a ledger event."""


Identity = tuple[str | None, str]
"""A movement's business key and fingerprint."""


def _topup_identity(e: TopupEntry) -> Identity:
    return f"topup:{e.id}", f"{e.user}|{e.coins}"


def _gift_identity(e: GiftEntry) -> Identity:
    return f"gift:{e.sender}:{e.id}", f"{e.stream}|{e.to}|{e.gift}|{e.count}|{e.coins}|{e.diamonds}"


def _payout_identity(e: PayoutEntry) -> Identity:
    return f"payout:{e.user}:{e.id}", f"{e.diamonds}|{e.cash_cents}|{e.fee_cents}"


def _cap_identity(e: CapEntry) -> Identity:
    return None, "" if e.daily_coins is None else str(e.daily_coins)


def _confirm_identity(e: ConfirmEntry) -> Identity:
    return None, "" if e.coins is None else str(e.coins)


def _cooldown_identity(e: CooldownEntry) -> Identity:
    return None, "" if e.coins is None else f"{e.coins}|{e.minutes}"


def _battle_identity(e: BattleEntry) -> Identity:
    return f"battle:{e.id}", "|".join(str(s) for s in e.scores)


def _chargeback_identity(e: ChargebackEntry) -> Identity:
    return f"chargeback:{e.id}", f"{e.user}|{e.coins}"


def _verification_identity(e: VerificationEntry) -> Identity:
    return None, str(int(e.verified))


def _topup(e: TopupEntry) -> tuple[Posting, ...]:
    c = e.coins
    return (Posting(USER + e.user, COINS, c), Posting(COINS_SOLD, COINS, -c)) if c else ()


def _gift(e: GiftEntry) -> tuple[Posting, ...]:
    c, d = e.coins, e.diamonds
    moves = (
        Posting(USER + e.sender, COINS, -c),
        Posting(GIFTS, COINS, c),
        Posting(USER + e.to, DIAMONDS, d),
        Posting(DIAMONDS_ISSUED, DIAMONDS, -d),
    )
    return moves if c and d else tuple(p for p in moves if p.amount)


def _payout(e: PayoutEntry) -> tuple[Posting, ...]:
    d, cash, fee, u = e.diamonds, e.cash_cents, e.fee_cents, USER + e.user
    moves = (
        Posting(u, DIAMONDS, -d),
        Posting(PAYOUTS, DIAMONDS, d),
        Posting(PAYOUTS, CENTS, -(cash + fee)),
        Posting(u, CENTS, cash),
        Posting(FEES, CENTS, fee),
    )
    return tuple(p for p in moves if p.amount)


def _setting(
    e: CapEntry | VerificationEntry | ConfirmEntry | CooldownEntry | BattleEntry,
) -> tuple[Posting, ...]:
    return ()  # a setting, or a battle's result: no money moves


def _chargeback(e: ChargebackEntry) -> tuple[Posting, ...]:
    c = e.coins
    return (Posting(USER + e.user, COINS, -c), Posting(CHARGEBACKS, COINS, c)) if c else ()


# Per event type: its kind, its postings and its identity. A table, not a match: this
# runs for every event the consumer writes, and a lookup is several times cheaper.
_KINDS: dict[
    type[Any], tuple[str, Callable[[Any], tuple[Posting, ...]], Callable[[Any], Identity]]
] = {
    TopupEntry: ("topup", _topup, _topup_identity),
    GiftEntry: ("gift", _gift, _gift_identity),
    PayoutEntry: ("payout", _payout, _payout_identity),
    CapEntry: ("cap", _setting, _cap_identity),
    ChargebackEntry: ("chargeback", _chargeback, _chargeback_identity),
    VerificationEntry: ("verification", _setting, _verification_identity),
    ConfirmEntry: ("confirm", _setting, _confirm_identity),
    CooldownEntry: ("cooldown", _setting, _cooldown_identity),
    BattleEntry: ("battle", _setting, _battle_identity),
}


def postings_of(entry: AnyLedgerEntry) -> tuple[Posting, ...]:
    """The event's postings (none of amount zero), as the table above says."""
    return _KINDS[type(entry)][1](entry)


def identity_of(entry: AnyLedgerEntry) -> Identity:
    """The event's business key (None for a setting) and fingerprint."""
    return _KINDS[type(entry)][2](entry)


def record(event_id: str, body: str | bytes, bucket: int = SINGLE) -> Record:
    """The record for one ledger stream entry (of ``bucket``'s stream on a cluster), or
    :class:`PoisonEntry`."""
    try:
        ms, seq = parse_offset(event_id)
    except ValueError:
        raise PoisonEntry(f"not a stream entry id: {event_id!r}") from None
    try:
        entry = ledger_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PoisonEntry(f"not a ledger event: {exc}") from None
    kind, postings, identity = _KINDS[type(entry)]
    key, fingerprint = identity(entry)
    return Record(
        event_id,
        ms,
        seq,
        kind,
        getattr(entry, "id", None),
        entry.sender if isinstance(entry, GiftEntry) else entry.user,
        entry.ts,
        body.decode() if isinstance(body, bytes) else body,
        postings(entry),
        key,
        fingerprint,
        bucket,
    )
