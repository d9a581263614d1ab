"""Money rules and identifier formats: pure functions, no I/O.

Amounts are integers. Rates are exact fractions, and every conversion rounds
down, so the house never pays out a fraction it did not receive.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated

import msgspec

DAY_MS = 86_400_000

IDENT_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
"""Users, streams and gifts (PROTOCOL.md: 1-64 of ``[A-Za-z0-9_.-]``)."""

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_\-]{8,64}$"
"""Idempotency keys (PROTOCOL.md: 8-64 of ``[A-Za-z0-9_-]``)."""

Ident = Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN)]
RequestId = Annotated[str, msgspec.Meta(pattern=REQUEST_ID_PATTERN)]

_ident = re.compile(IDENT_PATTERN)
_request_id = re.compile(REQUEST_ID_PATTERN)


def is_ident(text: str) -> bool:
    return _ident.match(text) is not None


def is_request_id(text: str) -> bool:
    return _request_id.match(text) is not None


def diamonds_for(coins: int, rate: Fraction) -> int:
    """Diamonds credited to the creator for ``coins`` spent, rounded down."""
    return int(coins * rate)


class PayoutQuote(msgspec.Struct, frozen=True):
    diamonds: int
    cash_cents: int
    fee_cents: int


def payout_quote(diamonds: int, cents_per_diamond: Fraction, fee_rate: Fraction) -> PayoutQuote:
    """Cash for ``diamonds``: the gross value rounded down, less the fee rounded up.

    The fee is rounded up so that gross = cash + fee holds in whole cents and the
    creator is never paid a fraction of a cent the fee should have kept.
    """
    gross = int(diamonds * cents_per_diamond)
    fee = math.ceil(gross * fee_rate)
    return PayoutQuote(diamonds=diamonds, cash_cents=gross - fee, fee_cents=fee)


def utc_day(ms: int) -> int:
    """The UTC day number of a timestamp in milliseconds: caps reset at 00:00 UTC."""
    return ms // DAY_MS
