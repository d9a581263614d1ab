"""Creator statements: what a creator earned and was paid over a period, from the ledger
store (the system of record), in JSON or as CSV, with the figures a tax form needs."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Any, cast

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from giftrelay.api.errors import RESPONSES
from giftrelay.api.periods import from_ms, iso, ms, parse_time, period_bounds
from giftrelay.api.services import Services
from giftrelay.ledger.entries import GiftEntry, PayoutEntry, ledger_decoder
from giftrelay.ledger.postings import user as account
from giftrelay.ledger.store import ExportRow
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.ids import is_ident


class StatementPayout(msgspec.Struct, frozen=True):
    id: str
    at: str
    diamonds: int
    cash_cents: int
    """Paid to the creator (net of the fee)."""
    fee_cents: int
    currency: str


class CurrencyTotals(msgspec.Struct, frozen=True):
    """Per currency, what a tax form asks for."""

    currency: str
    payouts: int
    gross_cents: int
    fee_cents: int
    net_cents: int


class Statement(msgspec.Struct, frozen=True):
    creator: str
    from_: str = msgspec.field(name="from")
    to: str = ""
    gifts: int = 0
    """Gifts received (each gift's count)."""
    diamonds_earned: int = 0
    payouts: list[StatementPayout] = msgspec.field(default_factory=list)
    cash_cents: int = 0
    fee_cents: int = 0
    gross_cents: int = 0
    """cash_cents + fee_cents."""
    currencies: list[CurrencyTotals] = msgspec.field(default_factory=list)


CSV_COLUMNS = ("at", "kind", "id", "from", "gift", "count", "diamonds", "cash_cents",
               "fee_cents", "currency")  # fmt: skip


def statement(
    creator: str, start: datetime, end: datetime, rows: Iterable[ExportRow], currency: str
) -> tuple[Statement, list[dict[str, Any]]]:
    """The statement of ``rows`` (the creator's movements in the period) and its CSV rows.
    ``currency``: for payouts recorded before the ledger kept theirs."""
    gifts = diamonds = 0
    payouts: list[StatementPayout] = []
    lines: list[dict[str, Any]] = []
    for row in rows:
        entry = ledger_decoder.decode(row.body)
        if isinstance(entry, GiftEntry) and entry.to == creator:
            gifts += entry.count
            diamonds += entry.diamonds
            lines.append({"at": from_ms(entry.ts), "kind": "gift", "id": entry.id,
                          "from": entry.sender, "gift": entry.gift, "count": entry.count,
                          "diamonds": entry.diamonds})  # fmt: skip
        elif isinstance(entry, PayoutEntry) and entry.user == creator:
            paid = StatementPayout(entry.id, from_ms(entry.ts), entry.diamonds, entry.cash_cents,
                                   entry.fee_cents, entry.currency or currency)  # fmt: skip
            payouts.append(paid)
            lines.append({"at": paid.at, "kind": "payout", "id": paid.id,
                          "diamonds": -paid.diamonds, "cash_cents": paid.cash_cents,
                          "fee_cents": paid.fee_cents, "currency": paid.currency})  # fmt: skip
    totals: dict[str, list[int]] = {}
    for p in payouts:
        t = totals.setdefault(p.currency, [0, 0, 0])
        t[0] += 1
        t[1] += p.cash_cents
        t[2] += p.fee_cents
    cash = sum(p.cash_cents for p in payouts)
    fee = sum(p.fee_cents for p in payouts)
    return Statement(
        creator=creator,
        from_=iso(start),
        to=iso(end),
        gifts=gifts,
        diamonds_earned=diamonds,
        payouts=payouts,
        cash_cents=cash,
        fee_cents=fee,
        gross_cents=cash + fee,
        currencies=[
            CurrencyTotals(c, n, net + f, f, net) for c, (n, net, f) in sorted(totals.items())
        ],
    ), lines


def to_csv(lines: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return out.getvalue()


@get("/creators/{creator:str}/statement", media_type="application/json", responses=RESPONSES)
async def show_statement(
    request: Request[Any, Any, Any],
    creator: FromPath[str],
    api: NamedDependency[Services],
    since: Annotated[str | None, QueryParameter(name="from", required=False)] = None,
    until: Annotated[str | None, QueryParameter(name="to", required=False)] = None,
    period: Annotated[str | None, QueryParameter(required=False)] = None,
) -> Response[Statement]:
    """A creator's statement over ``from``..``to`` (ISO 8601, ``to`` exclusive) or over a
    payout ``period`` (2026-11, 2026-Q4), from the ledger store. ``Accept: text/csv``:
    one row per movement."""
    if not is_ident(creator):
        raise Refused(Code.BAD_REQUEST, "creator must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if period is not None:
        if since is not None or until is not None:
            raise Refused(Code.BAD_REQUEST, "give either period or from and to, not both")
        start, end = period_bounds(period)
    elif since is None or until is None:
        raise Refused(Code.BAD_REQUEST, "give from and to (ISO 8601), or a period such as 2026-11")
    else:
        start, end = parse_time("from", since), parse_time("to", until)
    if start >= end:
        raise Refused(Code.BAD_REQUEST, "from must be before to")
    if not await api.platform.known_user(creator):
        raise Refused(Code.UNKNOWN_USER, f"there is no user {creator!r}")
    store = await api.store.get()
    rows = [r async for r in store.export(ms(start), ms(end), account=account(creator))]
    made, lines = statement(creator, start, end, rows, api.settings.payout_currency)
    if "text/csv" in request.headers.get("accept", ""):
        csv_reply = Response(to_csv(lines), media_type="text/csv; charset=utf-8")
        return cast(Response[Statement], csv_reply)
    return Response(made)


HANDLERS = [show_statement]
