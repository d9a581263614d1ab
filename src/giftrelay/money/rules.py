"""Money rules: pure functions, no I/O.

Amounts are integers. Rates are exact fractions, and every conversion rounds
down, so the house never pays out a fraction it did not receive.
"""

from __future__ import annotations

import math
from fractions import Fraction

import msgspec

DAY_MS = 86_400_000

# -- bounds that keep every amount exact ---------------------------------------------------
#
# Redis's Lua encodes JSON with cjson, which prints numbers with 14 significant digits:
# 99999999999999 is written as is, 10^14 as ``1e+14``, which the ledger consumer cannot
# read as an integer. So every number a script writes to the ledger (or a stream's
# history) must be an integer below EXACT_LIMIT. Each amount is bounded by a setting or
# by the catalog, and the settings are checked against each other at load time:
#
# - coins and diamonds in a wallet: at most ``max_balance`` <= MAX_BALANCE;
# - one gift: at most MAX_PRICE x MAX_GIFT_COUNT = MAX_BALANCE coins;
# - diamonds for a gift: coins x ``diamonds_per_coin`` < EXACT_LIMIT for a full wallet;
# - a payout's gross: ``max_balance`` x ``cents_per_diamond`` < EXACT_LIMIT.

EXACT_LIMIT = 10**14
"""Every integer a script writes as JSON is below this (cjson's 14 significant digits)."""
MAX_BALANCE = 10**13
"""The largest ``max_balance`` a deployment may set."""
MAX_PRICE = 10**7
"""The largest price of one gift in the catalog, in coins."""
MAX_GIFT_COUNT = 10**6
"""The largest ``max_gift_count`` a deployment may set."""
assert MAX_PRICE * MAX_GIFT_COUNT <= MAX_BALANCE < EXACT_LIMIT


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


# -- mindful spending: the cool-down log, as gift.lua keeps it -------------------------------
#
# gift.lua is the rule; these mirror it for the readers (``spending``) and for ``recover``,
# which rebuilds the log from the ledger. A test checks them against the script.

SPENDING_DAYS = 30
"""``spending`` covers today and the 29 days before; each day's hash lives 31 days."""

CoolLog = list[tuple[int, int]]
"""(ms, coins) of the gifts that count in the cool-down window, oldest first."""


def parse_cool_log(text: str | None) -> CoolLog:
    """The wallet's ``cool_log`` field, ``'<ms>:<coins>,'`` repeated."""
    return [
        (int(t), int(n))
        for t, n in (entry.split(":") for entry in (text or "").split(",") if entry)
    ]


def format_cool_log(log: CoolLog) -> str:
    return "".join(f"{t}:{n}," for t, n in log)


def cool_live(log: CoolLog, now: int, minutes: int) -> CoolLog:
    """The entries still counting at ``now``."""
    window = minutes * 60_000
    return [(t, n) for t, n in log if t + window > now]


def cool_resume(log: CoolLog, now: int, coins: int, minutes: int) -> int | None:
    """While cooling down (the window holds ``coins`` or more), when gifts may resume."""
    live = cool_live(log, now, minutes)
    left = sum(n for _, n in live)
    for t, n in live:
        if left < coins:
            break
        left -= n
        if left < coins:
            return t + minutes * 60_000
    return None


def cool_add(log: CoolLog, now: int, coins: int, minutes: int) -> CoolLog:
    """The log after a gift of ``coins`` at ``now``: gifts in the same 60th of the window
    share an entry (with the latest time), so the log stays short."""
    live = cool_live(log, now, minutes)
    slice_ms = minutes * 1000  # a 60th of the window
    if live and now // slice_ms <= live[-1][0] // slice_ms:
        t, n = live[-1]
        live[-1] = (max(t, now), min(n + coins, EXACT_LIMIT - 1))  # prints as an integer
    else:
        live.append((now, coins))
    return live


SPENDING_CREATORS = 100
"""``spending`` lists at most this many creators, highest first."""
MAX_COOLDOWN_MINUTES = 1440
"""A cool-down window is 1 minute to a day (the daily cap covers days)."""
