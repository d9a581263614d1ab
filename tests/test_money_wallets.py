"""Top-ups, payouts and daily spending caps across the UTC day boundary."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.wire.errors import Code, Refused

from .conftest import START_MS, Clock, dump, ledger_entries

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster


@pytest.fixture
async def live(money: Money) -> Money:
    await money.stream_open("s1", "bob", "Bob live")
    await money.topup("alice", 100_000, "receipt-alice-1")
    return money


async def test_cap_refuses_then_resets_at_utc_midnight(live: Money, clock: Clock) -> None:
    clock.ms = START_MS + 86_400_000 - 2000  # 23:59:58 UTC
    await live.set_cap("alice", 10)
    await live.gift("alice", "s1", "heart", 1, "gift-cap-0001")  # 5
    await live.gift("alice", "s1", "rose", 4, "gift-cap-0002")  # 4, total 9
    with pytest.raises(Refused) as refused:
        await live.gift("alice", "s1", "rose", 2, "gift-cap-0003")  # would be 11
    assert refused.value.code == Code.SPEND_LIMIT
    await live.gift("alice", "s1", "rose", 1, "gift-cap-0004")  # exactly 10 is allowed
    assert (await live.balance("alice")).spent_today == 10

    clock.advance(2000)  # 00:00:00 UTC, the next day
    assert (await live.balance("alice")).spent_today == 0
    await live.gift("alice", "s1", "rose", 2, "gift-cap-0003")
    balance = await live.balance("alice")
    assert (balance.spent_today, balance.daily_cap, balance.coins) == (2, 10, 100_000 - 12)


async def test_a_worker_clock_behind_at_midnight_cannot_reset_the_cap(
    live: Money, redis: Redis
) -> None:
    ahead = Money(redis, live.settings, live.catalog, clock=lambda: START_MS + 86_400_500)
    behind = Money(redis, live.settings, live.catalog, clock=lambda: START_MS + 86_399_500)
    await live.set_cap("alice", 10)
    refusals = []
    for i in range(40):  # alternate workers one second apart across midnight
        core = ahead if i % 2 == 0 else behind
        try:
            await core.gift("alice", "s1", "rose", 1, f"gift-skew-{i:04d}")
        except Refused as exc:
            refusals.append(exc.code)
    assert refusals == [Code.SPEND_LIMIT] * 30  # the cap held: 10 coins, not 10 per clock
    assert (await ahead.balance("alice")).spent_today == 10


async def test_cap_zero_blocks_and_none_removes(live: Money) -> None:
    await live.set_cap("alice", 0)
    with pytest.raises(Refused) as refused:
        await live.gift("alice", "s1", "rose", 1, "gift-zero-001")
    assert refused.value.code == Code.SPEND_LIMIT
    assert await live.set_cap("alice", None) is None
    assert (await live.balance("alice")).daily_cap is None
    await live.gift("alice", "s1", "galaxy", 2, "gift-big-0001")
    assert (await live.balance("alice")).coins == 100_000 - 69_998


async def test_cap_changes_are_in_the_ledger(live: Money, redis: Redis) -> None:
    await live.set_cap("alice", 50)
    await live.set_cap("alice", None)
    caps = await ledger_entries(redis, "cap")
    assert [(c["user"], c["daily_coins"]) for c in caps] == [("alice", 50), ("alice", None)]


async def test_payout_pays_cash_and_debits_diamonds(live: Money, redis: Redis) -> None:
    await live.gift("alice", "s1", "castle", 1, "gift-castle-1")  # 20,000 diamonds to bob
    receipt = await live.payout("bob", 5001, "payout-0000001")
    assert (receipt.diamonds, receipt.cash_cents, receipt.fee_cents) == (5001, 2500, 0)
    assert receipt.diamonds_left == 14_999
    assert (await live.balance("bob")).diamonds == 14_999
    [entry] = await ledger_entries(redis, "payout")
    assert (entry["user"], entry["diamonds"], entry["cash_cents"]) == ("bob", 5001, 2500)
    assert entry["diamonds_after"] == 14_999


async def test_payout_fee_is_rounded_up_and_cash_plus_fee_is_gross(
    redis: Redis, clock: Clock
) -> None:
    settings = Settings.load({"GIFTRELAY_PAYOUT_FEE_PERCENT": "3"})
    core = Money(redis, settings, catalog.load(), clock=clock)
    await core.start()
    await core.stream_open("s1", "bob", "t")
    await core.topup("alice", 20_000, "receipt-alice-1")
    await core.gift("alice", "s1", "castle", 1, "gift-castle-1")
    receipt = await core.payout("bob", 2011, "payout-0000001")  # gross 1005 cents, fee 30.15
    assert (receipt.cash_cents, receipt.fee_cents) == (1005 - 31, 31)
    await core.aclose()


@pytest.mark.parametrize(
    ("diamonds", "code"),
    [(1999, Code.BELOW_MINIMUM), (20_001, Code.INSUFFICIENT_DIAMONDS), (0, Code.BAD_REQUEST)],
)
async def test_payout_refusals_move_nothing(
    live: Money, redis: Redis, diamonds: int, code: Code
) -> None:
    await live.gift("alice", "s1", "castle", 1, "gift-castle-1")
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await live.payout("bob", diamonds, "payout-0000001")
    assert refused.value.code == code
    assert await dump(redis) == before


async def test_topup_beyond_the_largest_balance_is_refused(live: Money, redis: Redis) -> None:
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await live.topup("alice", 10**12, "receipt-alice-2")
    assert refused.value.code == Code.BAD_REQUEST
    assert await dump(redis) == before


async def test_balance_of_a_new_user_is_zero(live: Money) -> None:
    balance = await live.balance("nobody")
    assert (balance.coins, balance.diamonds, balance.spent_today, balance.daily_cap) == (
        0, 0, 0, None,
    )  # fmt: skip
