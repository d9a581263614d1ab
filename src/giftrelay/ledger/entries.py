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
    """The creator's diamonds after the gift."""
    combo: int = 0
    """The combo's running count after the gift (0 in entries written before it was kept)."""
    combo_id: str = ""


class TopupEntry(LedgerEntry, tag="topup", frozen=True):
    id: str
    """The payment receipt."""
    user: str
    coins: int
    coins_after: int


class PayoutEntry(LedgerEntry, tag="payout", frozen=True):
    id: str
    user: str
    diamonds: int
    cash_cents: int
    fee_cents: int
    diamonds_after: int


class CapEntry(LedgerEntry, tag="cap", frozen=True):
    user: str
    daily_coins: int | None


AnyLedgerEntry = GiftEntry | TopupEntry | PayoutEntry | CapEntry

ledger_decoder = msgspec.json.Decoder(AnyLedgerEntry)
