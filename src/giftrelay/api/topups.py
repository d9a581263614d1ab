"""Top-ups by payment receipt, and chargebacks of them.

The receipt is the idempotency key. Redis remembers it for ``GIFTRELAY_RECEIPT_TTL``;
past that the ledger store still does (every movement is kept there by business key,
``topup:<receipt>`` and ``chargeback:<receipt>``), so a receipt is never credited
twice and can be charged back at any age the store holds.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from giftrelay.api.bodies import strict
from giftrelay.api.errors import RESPONSES
from giftrelay.api.services import Services
from giftrelay.ledger.entries import ChargebackEntry, TopupEntry, ledger_decoder
from giftrelay.money.packages import offer
from giftrelay.money.platform import MAX_REASON, ChargebackReceipt
from giftrelay.money.receipts import PackagePrice
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.ids import Ident, RequestId


class TopupRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    user: Ident
    coins: Annotated[int, msgspec.Meta(ge=1)]
    receipt: RequestId
    """The payment provider's receipt (8-64 characters of A-Z a-z 0-9 _ -)."""
    package: Ident | None = None
    """The coin package bought (GET /api/v1/coin-packages): ``coins`` must be its
    ``total_coins`` in ``region`` now, and its price is recorded in the ledger."""
    region: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")] | None = None


class TopupReply(msgspec.Struct, frozen=True):
    user: str
    coins: int
    """The wallet's new balance."""
    receipt: str
    replayed: bool


class ChargebackRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    receipt: RequestId
    reason: Annotated[str, msgspec.Meta(max_length=MAX_REASON)]


@post("/topups", status_code=200, responses=RESPONSES)
async def create_topup(
    request: Request[Any, Any, Any], data: JSONBody[TopupRequest], api: NamedDependency[Services]
) -> TopupReply:
    """Credit coins for a payment receipt. The same receipt and content again returns the
    first reply with ``replayed: true``; other content is 409 ``idempotency_conflict``."""
    data = await strict(request, data)
    price = _priced(api, data)
    if not await api.platform.topup_remembered(data.receipt):
        first = await _stored_topup(api, data)
        if first is not None:
            return first
    done = await api.money.topup(data.user, data.coins, data.receipt, package=price)
    return TopupReply(data.user, done.coins, data.receipt, done.replayed)


def _priced(api: Services, data: TopupRequest) -> PackagePrice | None:
    """The package's price where the top-up names one, checked against the catalog."""
    if data.package is None:
        if data.region is not None:
            raise Refused(Code.BAD_REQUEST, "region is given with a package only")
        return None
    package = api.money.catalog.package(data.package)
    if package is None:
        raise Refused(Code.BAD_REQUEST, f"there is no coin package {data.package!r}")
    if data.region is None:
        raise Refused(Code.BAD_REQUEST, "a top-up naming a package gives its region too")
    made = offer(package, data.region, api.now())
    if made is None:
        raise Refused(Code.BAD_REQUEST, f"package {package.id!r} is not sold in {data.region}")
    if data.coins != made.total_coins:
        raise Refused(
            Code.BAD_REQUEST,
            f"package {package.id!r} gives {made.total_coins} coins in {data.region} now, "
            f"not {data.coins}",
        )
    return PackagePrice(package.id, made.region, made.currency, made.price)


async def _stored_topup(api: Services, data: TopupRequest) -> TopupReply | None:
    """The first reply for a receipt Redis forgot but the ledger store holds."""
    row = await (await api.store.get()).movement(f"topup:{data.receipt}")
    if row is None:
        return None
    entry = ledger_decoder.decode(row.body)
    assert isinstance(entry, TopupEntry)
    stored = (entry.user, entry.coins, entry.package or None, entry.region or None)
    if stored != (data.user, data.coins, data.package, data.region):
        raise Refused(Code.IDEMPOTENCY_CONFLICT)
    return TopupReply(entry.user, entry.coins_after, entry.id, replayed=True)


@post("/chargebacks", status_code=200, responses=RESPONSES)
async def create_chargeback(
    request: Request[Any, Any, Any],
    data: JSONBody[ChargebackRequest],
    api: NamedDependency[Services],
) -> ChargebackReceipt:
    """The payment behind a top-up was reversed: take its coins back, even into debt.
    Idempotent by receipt; 404 ``unknown_receipt`` for a receipt never topped up."""
    data = await strict(request, data)
    holder = await api.platform.receipt_holder(data.receipt)
    if holder is not None:
        try:
            return await api.platform.chargeback(data.receipt, data.reason, holder)
        except Refused as refused:  # its record expired in between: the store knows it
            if refused.code is not Code.UNKNOWN_RECEIPT:
                raise
    store = await api.store.get()
    done = await store.movement(f"chargeback:{data.receipt}")
    if done is not None:
        charged = ledger_decoder.decode(done.body)
        assert isinstance(charged, ChargebackEntry)
        return ChargebackReceipt(
            charged.user, charged.id, charged.coins, charged.coins_after, replayed=True
        )
    row = await store.movement(f"topup:{data.receipt}")
    if row is None:
        raise Refused(Code.UNKNOWN_RECEIPT)
    entry = ledger_decoder.decode(row.body)
    assert isinstance(entry, TopupEntry)
    return await api.platform.chargeback(data.receipt, data.reason, entry.user, entry.coins)


HANDLERS = [create_topup, create_chargeback]
