"""Wallets: what a user holds now, read from Redis (the live state)."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from giftrelay.api.errors import RESPONSES
from giftrelay.api.services import Services
from giftrelay.wire.protocol import CooldownState, CreatorSpending


class WalletReply(msgspec.Struct, frozen=True):
    user: str
    coins: int
    """Below zero after a chargeback of coins already spent (a debt)."""
    diamonds: int
    spent_today: int
    daily_cap: int | None


@get("/wallets/{user:str}", responses=RESPONSES)
async def show_wallet(user: FromPath[str], api: NamedDependency[Services]) -> WalletReply:
    """A user's wallet; a wallet never used reads as zeros."""
    b = await api.money.balance(user)
    return WalletReply(user, b.coins, b.diamonds, b.spent_today, b.daily_cap)


class SpendingReply(msgspec.Struct, frozen=True):
    user: str
    today: int
    """Coins spent on gifts this UTC day."""
    last_7_days: int
    """Today and the 6 UTC days before."""
    last_30_days: int
    """Today and the 29 UTC days before."""
    per_creator: list[CreatorSpending]
    """Over the 30 days, highest first, at most 100."""
    confirm_coins: int | None
    """The viewer's confirmation threshold: larger gifts need confirming."""
    cooldown: CooldownState | None
    """The viewer's cool-down, with what counts in its window now."""


@get("/wallets/{user:str}/spending", responses=RESPONSES)
async def show_spending(user: FromPath[str], api: NamedDependency[Services]) -> SpendingReply:
    """What a viewer spent, for support and for mindful-spending prompts (as the socket's
    ``spending``); a wallet never used reads as zeros."""
    s = await api.money.spending(user)
    return SpendingReply(
        user,
        s.today,
        s.last_7_days,
        s.last_30_days,
        s.per_creator,
        s.confirm_coins,
        s.cooldown,
    )


HANDLERS = [show_wallet, show_spending]
