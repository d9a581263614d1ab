"""Coin packages: what a viewer buys coins in, priced per region, with promotions.

Pure: the catalog's ``[[package]]`` entries and the offer each makes in a region at
a moment. A top-up that names its package is checked against its offer, and the
price it was sold at goes into the ledger entry (money/api.py ``PackagePrice``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from giftrelay.money.rules import MAX_BALANCE
from giftrelay.wire.ids import Ident

Region = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
"""An ISO 3166-1 alpha-2 country code, such as US."""
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
"""An ISO 4217 currency code, such as USD."""
Coins = Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE)]


class Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    region: Region
    currency: Currency
    amount: Annotated[int, msgspec.Meta(ge=1, le=10**12)]
    """In the currency's minor unit (cents for USD; yen for JPY)."""


class Promotion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """More coins, or a lower price, from ``starts`` (inclusive) to ``ends`` (exclusive)."""

    id: Ident
    starts: datetime
    ends: datetime
    bonus_coins: Coins = 0
    discount_percent: Annotated[int, msgspec.Meta(ge=0, le=90)] = 0
    regions: list[Region] = msgspec.field(default_factory=list)
    """Where it applies; empty: in every region the package is sold."""


class Package(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: Ident
    coins: Annotated[int, msgspec.Meta(ge=1, le=MAX_BALANCE)]
    bonus_coins: Coins = 0
    prices: Annotated[list[Price], msgspec.Meta(min_length=1, max_length=300)] = msgspec.field(
        default_factory=list
    )
    promotion: list[Promotion] = msgspec.field(default_factory=list)


class Offer(msgspec.Struct, frozen=True):
    """What a package gives and costs in one region at one moment."""

    id: str
    region: str
    currency: str
    price: int
    """In the currency's minor unit, after any discount (rounded down)."""
    coins: int
    bonus_coins: int
    """The package's bonus plus any promotion's."""
    total_coins: int
    """What a top-up naming this package must credit: coins + bonus_coins."""
    promotion: str | None = None
    promotion_ends: datetime | None = None


def check_package(package: Package) -> str:
    """What is wrong with a package that its types cannot say, or ''."""
    regions = [p.region for p in package.prices]
    if len(set(regions)) != len(regions):
        return "a region is priced twice"
    for promo in package.promotion:
        if promo.starts.tzinfo is None or promo.ends.tzinfo is None:
            return f"promotion {promo.id!r}: give starts and ends with a time zone (e.g. Z)"
        if promo.starts >= promo.ends:
            return f"promotion {promo.id!r}: starts must be before ends"
    if (
        package.coins
        + package.bonus_coins
        + max((p.bonus_coins for p in package.promotion), default=0)
        > MAX_BALANCE
    ):
        return f"coins with bonuses pass {MAX_BALANCE}"
    return ""


def offer(package: Package, region: str, at: datetime) -> Offer | None:
    """The package's offer in ``region`` at ``at`` (aware), or None where it is not sold.
    The first promotion running there and then applies."""
    price = next((p for p in package.prices if p.region == region), None)
    if price is None:
        return None
    promo = next(
        (
            p
            for p in package.promotion
            if p.starts <= at < p.ends and (not p.regions or region in p.regions)
        ),
        None,
    )
    bonus = package.bonus_coins + (promo.bonus_coins if promo else 0)
    discount = promo.discount_percent if promo else 0
    return Offer(
        id=package.id,
        region=region,
        currency=price.currency,
        price=price.amount * (100 - discount) // 100,
        coins=package.coins,
        bonus_coins=bonus,
        total_coins=package.coins + bonus,
        promotion=promo.id if promo else None,
        promotion_ends=promo.ends if promo else None,
    )


def offers(packages: tuple[Package, ...], region: str | None, at: datetime) -> list[Offer]:
    """Every package's offer in ``region`` (or in each region it is sold, when None)."""
    found = []
    for package in packages:
        regions = [region] if region else [p.region for p in package.prices]
        for r in regions:
            made = offer(package, r, at)
            if made is not None:
                found.append(made)
    return found
