"""Wallets: what a user holds now, read from Redis (the live state)."""

from __future__ import annotations

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from giftrelay.api.errors import RESPONSES
from giftrelay.api.services import Services


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


HANDLERS = [show_wallet]
