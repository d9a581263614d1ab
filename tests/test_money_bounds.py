"""Amount bounds: every number a script writes to the ledger is an exact integer below 10^14.

Redis's cjson prints 14 significant digits, so 10^14 reaches the ledger as ``1e+14``,
which the ledger consumer cannot read as an integer: the entry is dead-lettered after
the wallet moved. These tests pin the encoder's limit on the real redis-server, then
prove the settings cannot reach it: the first rate that could is refused at load, and
the largest payout the bounds allow is written and decoded exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from fractions import Fraction
from importlib import resources
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from giftrelay.config import ConfigError, Settings
from giftrelay.ledger.consumer import decode
from giftrelay.ledger.entries import GiftEntry, PayoutEntry, ledger_decoder
from giftrelay.money import catalog, keys, rules
from giftrelay.money.api import Money
from giftrelay.money.scripts import SCRIPTS, Script
from giftrelay.wire.errors import Code, Refused

from .conftest import Clock, dump

TOP = 10**13
"""The largest ``max_balance`` and the most one gift can cost."""
LARGEST_CENT_RATE = f"{rules.EXACT_LIMIT - 1}/{TOP}"
"""The largest ``cents_per_diamond`` allowed with ``max_balance`` 10^13: 9.9999999999999."""

CATALOG = f"""
[[gift]]
id = "rose"
name = "Rose"
coins = 1
streakable = true
image = "r"

[[gift]]
id = "planet"
name = "Planet"
coins = {rules.MAX_PRICE}
streakable = false
image = "p"
"""


async def raw_ledger(redis: Redis) -> list[tuple[str, dict[str, str]]]:
    return [(entry_id, fields) for entry_id, fields in await redis.xrange(keys.LEDGER)]


# -- the encoder's limit, on the real redis-server -------------------------------------------


async def test_the_ledger_encoder_is_exact_below_10_14_and_not_at_it(redis: Redis) -> None:
    """The scripts' own ``ledger()`` helper: 10^14 - 1 decodes, 10^14 is the old failure."""
    snippet = """
        ledger(KEYS[1], {kind = 'payout', id = 'p', ts = 1, user = 'u', diamonds = 1,
                         cash_cents = tonumber(ARGV[1]), fee_cents = 0, diamonds_after = 0})
        return 1
    """
    prelude = resources.files("giftrelay.money").joinpath("lua", "_prelude.lua").read_text()
    source = prelude + snippet
    for cash in (rules.EXACT_LIMIT - 1, rules.EXACT_LIMIT):
        await redis.eval(source, 1, keys.LEDGER, cash)
    (_, exact), (_, rounded) = await raw_ledger(redis)
    entry = ledger_decoder.decode(exact["e"])
    assert isinstance(entry, PayoutEntry)
    assert entry.cash_cents == 99_999_999_999_999
    assert '"cash_cents":1e+14' in rounded["e"]
    with pytest.raises(msgspec.ValidationError):
        ledger_decoder.decode(rounded["e"])


# -- settings that could reach it are refused at load ----------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"GIFTRELAY_CENTS_PER_DIAMOND": "1000"},
            "GIFTRELAY_CENTS_PER_DIAMOND: '1000' is too large: with "
            "GIFTRELAY_MAX_BALANCE=1000000000000 it must be at least 0 and below 100,",
        ),
        (
            {"GIFTRELAY_CENTS_PER_DIAMOND": "10", "GIFTRELAY_MAX_BALANCE": str(TOP)},
            "GIFTRELAY_CENTS_PER_DIAMOND: '10' is too large: with "
            "GIFTRELAY_MAX_BALANCE=10000000000000 it must be at least 0 and below 10,",
        ),
        (
            {"GIFTRELAY_CENTS_PER_DIAMOND": "34", "GIFTRELAY_MAX_BALANCE": "3000000000000"},
            "below 100/3 (about 33.3333)",
        ),
        (
            {"GIFTRELAY_DIAMONDS_PER_COIN": "100"},
            "GIFTRELAY_DIAMONDS_PER_COIN: '100' is too large",
        ),
        (
            {"GIFTRELAY_PAYOUT_MIN_DIAMONDS": str(TOP + 1)},
            "GIFTRELAY_PAYOUT_MIN_DIAMONDS: Expected `int` <= 10000000000000",
        ),
        (
            {"GIFTRELAY_MAX_GIFT_COUNT": str(rules.MAX_GIFT_COUNT + 1)},
            "GIFTRELAY_MAX_GIFT_COUNT: Expected `int` <= 1000000",
        ),
        (
            {"GIFTRELAY_MAX_BALANCE": str(TOP + 1)},
            "GIFTRELAY_MAX_BALANCE: Expected `int` <= 10000000000000",
        ),
        (
            {"GIFTRELAY_IDEMPOTENCY_TTL": str(10**16)},
            "GIFTRELAY_IDEMPOTENCY_TTL: Expected `int` <= 315360000",
        ),
        (
            {"GIFTRELAY_RECEIPT_TTL": str(10**16)},
            "GIFTRELAY_RECEIPT_TTL: Expected `int` <= 315360000",
        ),
        (
            {"GIFTRELAY_COMBO_WINDOW_MS": str(10**14)},
            "GIFTRELAY_COMBO_WINDOW_MS: Expected `int` <= 3600000",
        ),
        (
            {"GIFTRELAY_HISTORY_LEN": str(10**19)},
            "GIFTRELAY_HISTORY_LEN: Expected `int` <= 1000000",
        ),
    ],
    ids=[
        "cents-default-balance",
        "cents-top-balance",
        "cents-fraction-limit",
        "diamonds-rate",
        "payout-minimum",
        "gift-count",
        "max-balance",
        "idempotency-ttl",
        "receipt-ttl",
        "combo-window",
        "history-len",
    ],
)
def test_a_setting_out_of_its_range_is_refused_naming_the_range(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load(env)
    assert message in str(error.value)


def test_the_largest_rates_allowed_load() -> None:
    top = Settings.load(
        {"GIFTRELAY_MAX_BALANCE": str(TOP), "GIFTRELAY_CENTS_PER_DIAMOND": LARGEST_CENT_RATE}
    )
    assert top.cent_rate == Fraction(rules.EXACT_LIMIT - 1, TOP)
    assert Settings.load({"GIFTRELAY_CENTS_PER_DIAMOND": "99.99"}).cent_rate == Fraction(9999, 100)


@hypothesis_settings(max_examples=500, deadline=None)
@given(
    max_balance=st.integers(min_value=1, max_value=TOP),
    rate=st.fractions(min_value=0, max_value=10**15, max_denominator=10**15),
)
def test_a_rate_loads_exactly_when_a_full_wallet_pays_out_below_10_14(
    max_balance: int, rate: Fraction
) -> None:
    env = {"GIFTRELAY_MAX_BALANCE": str(max_balance), "GIFTRELAY_CENTS_PER_DIAMOND": str(rate)}
    env["GIFTRELAY_PAYOUT_MIN_DIAMONDS"] = "1"
    try:
        loaded = Settings.load(env)
    except ConfigError:
        assert max_balance * rate >= rules.EXACT_LIMIT
        return
    quote = rules.payout_quote(max_balance, loaded.cent_rate, Fraction(99, 100))
    assert quote.cash_cents + quote.fee_cents < rules.EXACT_LIMIT


# -- the largest payout the bounds allow, through the real scripts ---------------------------


@pytest.fixture
async def top_money(redis: Redis, clock: Clock) -> AsyncIterator[Money]:
    """Every bound at its largest: balances, the gift count, the price and the cent rate."""
    settings = Settings.load(
        {
            "GIFTRELAY_MAX_BALANCE": str(TOP),
            "GIFTRELAY_MAX_GIFT_COUNT": str(rules.MAX_GIFT_COUNT),
            "GIFTRELAY_CENTS_PER_DIAMOND": LARGEST_CENT_RATE,
            "GIFTRELAY_PAYOUT_FEE_PERCENT": "2.5",
        }
    )
    core = Money(redis, settings, catalog.parse(CATALOG), clock=clock)
    await core.start()
    yield core
    await core.aclose()


async def test_the_largest_payout_writes_exact_integers_the_consumer_reads(
    top_money: Money, redis: Redis
) -> None:
    money = top_money
    await money.stream_open("s1", "cre", "the top of every bound")
    await money.topup("whale", TOP, "receipt-whale-0001")
    gift = await money.gift("whale", "s1", "planet", rules.MAX_GIFT_COUNT, "gift-whale-0001")
    assert (gift.coins, gift.balance, gift.diamonds) == (TOP, 0, TOP)

    payout = await money.payout("cre", TOP, "payout-cre-0001")
    # gross = floor(10^13 x 9.9999999999999) = 10^14 - 1; fee = ceil(2.5 % of it).
    assert (payout.cash_cents, payout.fee_cents) == (97_499_999_999_999, 2_500_000_000_000)
    assert payout.diamonds_left == 0

    entries = await raw_ledger(redis)
    decoded = [ledger_decoder.decode(fields["e"]) for _, fields in entries]
    assert [type(e) for e in decoded[-2:]] == [GiftEntry, PayoutEntry]
    gift_entry, payout_entry = decoded[-2:]
    assert isinstance(gift_entry, GiftEntry)
    assert isinstance(payout_entry, PayoutEntry)
    assert (gift_entry.coins, gift_entry.diamonds) == (TOP, TOP)
    assert (gift_entry.coins_after, gift_entry.diamonds_after) == (0, TOP)
    assert payout_entry.diamonds == TOP
    assert payout_entry.cash_cents == 97_499_999_999_999
    assert payout_entry.fee_cents == 2_500_000_000_000
    assert payout_entry.cash_cents + payout_entry.fee_cents == 99_999_999_999_999
    assert payout_entry.diamonds_after == 0
    for _, fields in entries:  # written as plain integers, never in exponent form
        assert "e+" not in fields["e"]
    batch = decode([(entry_id, dict(fields)) for entry_id, fields in entries])
    assert batch.poison == []
    assert len(batch.records) == len(entries)
    assert (await money.balance("cre")).diamonds == 0
    assert (await money.balance("whale")).coins == 0


async def test_the_payout_script_refuses_cash_the_ledger_cannot_hold(
    money: Money, redis: Redis
) -> None:
    """Called directly, past the Python bounds: refused before anything is written."""
    await redis.hset(keys.wallet("cre"), "diamonds", 5000)
    before = await dump(redis)
    args: list[Any] = ["payout-direct-1", "cre", 5000, rules.EXACT_LIMIT, 0, 2000, 1, 60_000]
    args += [0, "EUR", keys.LEDGER]  # not verified, the currency, the ledger (a shard key)
    reply = await redis.evalsha(
        SCRIPTS.sha[Script.PAYOUT], 2, keys.wallet("cre"), "idem:{cre}:p:x", *args
    )
    assert reply[:2] == ["err", "internal"]
    assert "out of range" in reply[2]
    assert await dump(redis) == before


async def test_a_test_alert_no_wallet_could_pay_is_refused(redis: Redis, clock: Clock) -> None:
    settings = Settings.load({"GIFTRELAY_MAX_GIFT_COUNT": str(rules.MAX_GIFT_COUNT)})
    core = Money(redis, settings, catalog.parse(CATALOG), clock=clock)
    await core.start()
    try:
        await core.stream_open("s1", "cre", "t")
        count = settings.max_balance // rules.MAX_PRICE
        assert await core.test_alert("s1", "cre", "planet", count)  # exactly max_balance
        before = await dump(redis)
        with pytest.raises(Refused) as refused:
            await core.test_alert("s1", "cre", "planet", count + 1)
        assert refused.value.code is Code.BAD_REQUEST
        assert await dump(redis) == before
    finally:
        await core.aclose()
