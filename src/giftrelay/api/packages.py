"""Coin packages: the catalog's offers, per region, with the promotions running now."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from giftrelay.api.errors import RESPONSES
from giftrelay.api.services import Services
from giftrelay.money.packages import Offer, offers


class PackagesReply(msgspec.Struct, frozen=True):
    region: str | None
    packages: list[Offer]


@get("/coin-packages", responses=RESPONSES)
async def list_packages(
    api: NamedDependency[Services],
    region: Annotated[str | None, QueryParameter(pattern=r"^[A-Z]{2}$", required=False)] = None,
) -> PackagesReply:
    """The coin packages sold in ``region`` (ISO 3166 code), or in every region."""
    return PackagesReply(region, offers(api.money.catalog.packages, region, api.now()))


HANDLERS = [list_packages]
