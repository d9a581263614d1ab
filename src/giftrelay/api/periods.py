"""Periods and times as the API takes them: pure.

A payout period is a month (``2026-11``) or a quarter (``2026-Q4``), in UTC; times
are ISO 8601 (UTC unless an offset is given) or milliseconds.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from giftrelay.ledger import export
from giftrelay.wire.errors import Code, Refused

PERIOD = re.compile(r"^(\d{4})-(?:(0[1-9]|1[0-2])|Q([1-4]))$")


def period_bounds(period: str) -> tuple[datetime, datetime]:
    """The period's start (inclusive) and end (exclusive), or ``bad_request``."""
    found = PERIOD.match(period)
    if found is None:
        raise Refused(
            Code.BAD_REQUEST,
            f"period {period!r} is neither a month (2026-11) nor a quarter (2026-Q4)",
        )
    year, month, quarter = found.groups()
    first = int(month) if month else 3 * int(quarter) - 2
    months = 1 if month else 3
    start = datetime(int(year), first, 1, tzinfo=UTC)
    end_month = first + months
    end = datetime(int(year) + (end_month > 12), (end_month - 1) % 12 + 1, 1, tzinfo=UTC)
    return start, end


def parse_time(name: str, text: str) -> datetime:
    """An ISO 8601 date or time (UTC when it has no offset) or milliseconds, as ``giftrelay
    ledger export`` reads them; or ``bad_request``."""
    try:
        value = export.parse_time(text)
    except ValueError as exc:
        raise Refused(Code.BAD_REQUEST, f"{name}: {exc}, such as 2026-11-01T00:00:00Z") from None
    return datetime.fromtimestamp(value / 1000, UTC)


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def from_ms(value: int) -> str:
    return iso(datetime.fromtimestamp(value / 1000, UTC))
