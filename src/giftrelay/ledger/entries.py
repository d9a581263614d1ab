"""The ledger entries the money core writes, as typed messages.

Ledger entries (field ``e`` of each entry of the private ``ledger`` stream, JSON,
written by the Lua scripts) carry enough to rebuild every wallet: who, what,
amounts, balances after, the request id and the time. The ledger consumer reads
them; nothing else does.
"""

from __future__ import annotations

import msgspec


class LedgerEntry(msgspec.Struct, tag_field="kind", frozen=True, kw_only=True):
    v: int
    ts: int
    """Milliseconds since the epoch, from the relay's clock."""


class GiftEntry(LedgerEntry, tag="gift", frozen=True):
    id: str
    stream: str
    offset: str
    sender: str = msgspec.field(name="from")
    to: str
    gift: str
    count: int
    coins: int
    diamonds: int
    coins_after: int
    """The sender's coins after the gift."""
    diamonds_after: int
    """The creator's diamonds after the gift, where ``held`` says they went."""
    held: str = "wallet"
    """Where the diamonds went: ``wallet``, or on a Redis Cluster ``stream``, the creator's
    earnings on the stream (then ``diamonds_after`` is those earnings), collected into the
    wallet later without an entry of its own: they are the creator's either way."""
    combo: int = 0
    """The combo's running count after the gift (0 in entries written before it was kept)."""
    combo_id: str = ""
    confirmed: bool = False
    """The gift was above the sender's confirmation threshold and they confirmed it."""


class TopupEntry(LedgerEntry, tag="topup", frozen=True):
    id: str
    """The payment receipt."""
    user: str
    coins: int
    coins_after: int
    package: str = ""
    """The coin package sold, when the top-up named one (then region, currency, price)."""
    region: str = ""
    currency: str = ""
    price_minor: int = 0


class ChargebackEntry(LedgerEntry, tag="chargeback", frozen=True):
    """The payment behind a top-up was reversed: its coins were taken back."""

    id: str
    """The top-up's payment receipt."""
    user: str
    coins: int
    coins_after: int
    """May be below zero: a debt that blocks gifts until top-ups cover it."""
    reason: str = ""


class VerificationEntry(LedgerEntry, tag="verification", frozen=True):
    """A creator's verification recorded (or withdrawn): payout runs need it."""

    user: str
    verified: bool
    reference: str = ""


class PayoutEntry(LedgerEntry, tag="payout", frozen=True):
    id: str
    user: str
    diamonds: int
    cash_cents: int
    fee_cents: int
    diamonds_after: int
    currency: str = ""
    """The currency of the cents ("" in entries written before it was kept)."""


class CapEntry(LedgerEntry, tag="cap", frozen=True):
    user: str
    daily_coins: int | None


class ConfirmEntry(LedgerEntry, tag="confirm", frozen=True):
    """A viewer's confirmation threshold set (or removed, null): a setting, no money."""

    user: str
    coins: int | None


class CooldownEntry(LedgerEntry, tag="cooldown", frozen=True):
    """A viewer's cool-down set (or removed, both null): a setting, no money."""

    user: str
    coins: int | None
    minutes: int | None


class Contribution(msgspec.Struct, frozen=True):
    user: str
    points: int
    level: int = 0


class BattleEntry(LedgerEntry, tag="battle", frozen=True):
    """A battle's result (no money moves): its two streams and creators, in the order of
    the invitation, their scores, the winner's stream (None for a draw) and each side's
    top contributors."""

    id: str
    user: str
    """The inviting creator."""
    streams: list[str]
    creators: list[str]
    scores: list[int]
    winner: str | None
    top: list[list[Contribution]]
    starts_at: int
    ends_at: int


AnyLedgerEntry = (
    GiftEntry
    | TopupEntry
    | PayoutEntry
    | CapEntry
    | ChargebackEntry
    | VerificationEntry
    | ConfirmEntry
    | CooldownEntry
    | BattleEntry
)

ledger_decoder = msgspec.json.Decoder(AnyLedgerEntry)
