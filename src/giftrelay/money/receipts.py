"""What the money core's calls return: receipts of movements, and a stream's state.

A receipt says more than its client is told (``replayed``, the combo's id, the
diamonds credited); :meth:`reply` is what goes on the wire, the same on a replay.
"""

from __future__ import annotations

import msgspec

from giftrelay.wire import protocol


class GiftReceipt(msgspec.Struct, frozen=True):
    """A gift that was applied (or, with ``replayed``, had been applied before).

    More than the viewer is told (:meth:`reply`): the combo and the diamonds credited
    are for the money core's callers and tests; the viewer sees them in the event.
    """

    id: str
    stream: str
    offset: str
    coins: int
    balance: int
    combo: int
    combo_id: str
    diamonds: int
    replayed: bool = False

    def reply(self, ref: str | None) -> protocol.GiftOk:
        """What the viewer is told, the same on a replay (so a retry cannot tell)."""
        return protocol.GiftOk(
            ref=ref,
            id=self.id,
            stream=self.stream,
            offset=self.offset,
            coins=self.coins,
            balance=self.balance,
            combo=self.combo,
        )


class TopupReceipt(msgspec.Struct, frozen=True):
    user: str
    coins: int
    """The new balance."""
    replayed: bool = False

    def reply(self, ref: str | None) -> protocol.TopupOk:
        return protocol.TopupOk(ref=ref, user=self.user, coins=self.coins)


class PackagePrice(msgspec.Struct, frozen=True):
    """What a top-up naming a coin package was sold for (recorded in its ledger entry)."""

    package: str
    region: str
    currency: str
    price_minor: int
    """In the currency's minor unit (cents for USD)."""


class PayoutReceipt(msgspec.Struct, frozen=True):
    id: str
    diamonds: int
    cash_cents: int
    fee_cents: int
    diamonds_left: int
    replayed: bool = False

    def reply(self, ref: str | None) -> protocol.PayoutOk:
        return protocol.PayoutOk(
            ref=ref,
            id=self.id,
            diamonds=self.diamonds,
            cash_cents=self.cash_cents,
            fee_cents=self.fee_cents,
            diamonds_left=self.diamonds_left,
        )


class StreamInfo(msgspec.Struct, frozen=True):
    stream: str
    creator: str
    title: str
    live: bool
    diamonds: int
    coins: int
    gifts: int
    goal: protocol.GoalState | None
    battle: str | None = None
    """The battle the stream is in (or was in, until the referee ends it)."""
