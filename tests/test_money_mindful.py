"""Mindful spending: a viewer's confirmation threshold, cool-down and spending figures,
all checked in the gift script; real Redis, and real SQLite and PostgreSQL stores."""

from __future__ import annotations

import time

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.recover import recover
from giftrelay.ledger.store import Store
from giftrelay.money import catalog, keys, rules
from giftrelay.money.api import Money
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.protocol import CooldownState, CreatorSpending

from .conftest import Clock, dump, ledger_entries
from .ledger_helpers import drain, quick_consumer

MINUTE = 60_000
DAY = rules.DAY_MS


@pytest.fixture
async def live(money: Money) -> Money:
    await money.stream_open("s1", "bob", "Bob live")
    await money.topup("alice", 10_000, "receipt-alice-1")
    return money


async def refused(call: object) -> Refused:
    with pytest.raises(Refused) as caught:
        await call  # type: ignore[misc]
    return caught.value


# -- the confirmation threshold ---------------------------------------------------------------


async def test_a_gift_above_the_threshold_needs_confirming_and_then_goes_through_once(
    live: Money, redis: Redis
) -> None:
    assert await live.set_confirm("alice", 50) == 50
    at_threshold = await live.gift("alice", "s1", "rose", 50, "gift-00000001")
    assert at_threshold.balance == 9_950  # not above it: no confirmation

    before = await dump(redis)
    refusal = await refused(live.gift("alice", "s1", "rose", 51, "gift-00000002"))
    assert refusal.code is Code.CONFIRM_REQUIRED
    assert "50 coins" in refusal.message
    assert await dump(redis) == before  # nothing moved, no idempotency record

    confirmed = await live.gift("alice", "s1", "rose", 51, "gift-00000002", confirm=True)
    assert (confirmed.coins, confirmed.balance, confirmed.replayed) == (51, 9_899, False)
    again = await live.gift("alice", "s1", "rose", 51, "gift-00000002", confirm=True)
    unconfirmed_retry = await live.gift("alice", "s1", "rose", 51, "gift-00000002")
    assert (again.replayed, unconfirmed_retry.replayed) == (True, True)
    assert again.balance == unconfirmed_retry.balance == 9_899
    assert (await live.balance("alice")).coins == 9_899
    assert (await live.balance("bob")).diamonds == 101
    gifts = await ledger_entries(redis, "gift")
    assert [(g["coins"], g.get("confirmed", False)) for g in gifts] == [(50, False), (51, True)]


async def test_threshold_zero_asks_for_every_gift_and_null_removes_it(
    live: Money, redis: Redis
) -> None:
    await live.set_confirm("alice", 0)
    assert (await refused(live.gift("alice", "s1", "rose", 1, "gift-00000001"))).code is (
        Code.CONFIRM_REQUIRED
    )
    assert await live.set_confirm("alice", None) is None
    assert (await live.gift("alice", "s1", "rose", 1, "gift-00000001")).balance == 9_999
    assert [(e["user"], e["coins"]) for e in await ledger_entries(redis, "confirm")] == [
        ("alice", 0),
        ("alice", None),
    ]
    with pytest.raises(Refused) as bad:
        await live.set_confirm("alice", -1)
    assert bad.value.code is Code.BAD_REQUEST


async def test_other_refusals_come_before_asking_to_confirm(live: Money) -> None:
    await live.set_confirm("alice", 10)
    await live.set_cap("alice", 100)
    refusal = await refused(live.gift("alice", "s1", "rose", 101, "gift-00000001"))
    assert refusal.code is Code.SPEND_LIMIT  # confirming would not help: say so first
    refusal = await refused(live.gift("alice", "s1", "galaxy", 1, "gift-00000002"))
    assert refusal.code is Code.INSUFFICIENT_COINS


# -- the cool-down ----------------------------------------------------------------------------


async def test_cool_down_after_n_coins_within_m_minutes_until_the_window_allows(
    live: Money, redis: Redis, clock: Clock
) -> None:
    assert await live.set_cooldown("alice", 100, 10) == (100, 10)
    start = clock.ms
    await live.gift("alice", "s1", "rose", 60, "gift-00000001")
    clock.advance(MINUTE)
    await live.gift("alice", "s1", "rose", 50, "gift-00000002")  # reaches 100: goes through
    clock.advance(MINUTE)

    before = await dump(redis)
    refusal = await refused(live.gift("alice", "s1", "rose", 1, "gift-00000003"))
    assert refusal.code is Code.COOLING_DOWN
    # The first gift leaves the window 10 minutes after it: 50 coins then count, below 100.
    assert refusal.resume_at == start + 10 * MINUTE
    assert "gifts resume at" in refusal.message
    assert await dump(redis) == before

    spending = await live.spending("alice")
    assert spending.cooldown == CooldownState(
        coins=100, minutes=10, spent=110, resume_at=start + 10 * MINUTE
    )
    clock.ms = start + 10 * MINUTE - 1
    assert (await refused(live.gift("alice", "s1", "rose", 1, "gift-00000003"))).code is (
        Code.COOLING_DOWN
    )
    clock.ms = start + 10 * MINUTE
    assert (await live.gift("alice", "s1", "rose", 1, "gift-00000003")).balance == 10_000 - 111
    assert (await live.spending("alice")).cooldown == CooldownState(
        coins=100, minutes=10, spent=51, resume_at=None
    )


async def test_the_cool_down_counts_from_when_it_is_set_and_removing_it_frees_gifts(
    live: Money, redis: Redis, clock: Clock
) -> None:
    await live.gift("alice", "s1", "rose", 500, "gift-00000001")  # before: does not count
    await live.set_cooldown("alice", 10, 1)
    await live.gift("alice", "s1", "rose", 10, "gift-00000002")
    clock.advance(1)
    assert (await refused(live.gift("alice", "s1", "rose", 1, "gift-00000003"))).code is (
        Code.COOLING_DOWN
    )
    assert await live.set_cooldown("alice", None, None) == (None, None)
    assert (await live.gift("alice", "s1", "rose", 1, "gift-00000003")).balance == 10_000 - 511
    assert "cool_log" not in await redis.hgetall(keys.wallet("alice"))
    entries = await ledger_entries(redis, "cooldown")
    assert [(e["coins"], e["minutes"]) for e in entries] == [(10, 1), (None, None)]
    for coins, minutes in ((0, 5), (5, None), (5, 0), (5, rules.MAX_COOLDOWN_MINUTES + 1)):
        with pytest.raises(Refused) as bad:
            await live.set_cooldown("alice", coins, minutes)
        assert bad.value.code is Code.BAD_REQUEST


async def test_the_cool_down_log_stays_short_and_the_python_mirror_agrees(
    live: Money, redis: Redis, clock: Clock
) -> None:
    """Gifts in the same 60th of the window share an entry; rules.py computes the same log."""
    await live.set_cooldown("alice", 1_000_000, 60)  # never reached: only the log is watched
    mirror: rules.CoolLog = []
    for i in range(300):  # a gift every 20 s for 100 minutes: entries a minute apart
        await live.gift("alice", "s1", "rose", 1 + i % 3, f"gift-{i:08d}")
        mirror = rules.cool_add(mirror, clock.ms, 1 + i % 3, 60)
        clock.advance(20_000)
    stored = await redis.hget(keys.wallet("alice"), "cool_log")
    assert stored == rules.format_cool_log(mirror)
    assert len(rules.parse_cool_log(stored)) <= 61
    counted = sum(n for _, n in rules.cool_live(mirror, clock.ms, 60))
    spending = await live.spending("alice")
    assert spending.cooldown is not None
    assert spending.cooldown.spent == counted


async def test_a_malformed_cool_down_log_is_refused_before_anything_moves(
    live: Money, redis: Redis
) -> None:
    await live.set_cooldown("alice", 10, 5)
    await redis.hset(keys.wallet("alice"), "cool_log", "12:x,")
    before = await dump(redis)
    assert (await refused(live.gift("alice", "s1", "rose", 1, "gift-00000001"))).code is (
        Code.INTERNAL
    )
    assert await dump(redis) == before


# -- spending figures -------------------------------------------------------------------------


async def test_spending_today_7_and_30_days_per_creator(
    money: Money, redis: Redis, clock: Clock
) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.stream_open("s2", "carol", "t")
    await money.topup("alice", 100_000, "receipt-alice-1")
    clock.ms = int(time.time() * 1000)  # Redis expires the day hashes by its own clock
    today = clock.ms // DAY
    gifts = [  # (days ago, stream, coins); sent oldest first
        (40, "s1", 1000),  # older than 30 days: in nothing
        (30, "s1", 500),  # 30 days ago is the 31st day: out
        (29, "s2", 300),  # the 30th day: in the 30 days
        (7, "s1", 70),  # out of the 7 days (today and the 6 before)
        (6, "s2", 60),
        (0, "s1", 5),
        (0, "s2", 2),
    ]
    noon = clock.ms
    for n, (ago, stream, coins) in enumerate(gifts):
        clock.ms = noon - ago * DAY
        await money.gift("alice", stream, "rose", coins, f"gift-{n:08d}")
    clock.ms = noon
    spending = await money.spending("alice")
    assert (spending.today, spending.last_7_days, spending.last_30_days) == (7, 67, 437)
    assert spending.per_creator == [CreatorSpending("carol", 362), CreatorSpending("bob", 75)]
    assert (spending.confirm_coins, spending.cooldown) == (None, None)
    assert await redis.hgetall(keys.spending("alice", today)) == {"bob": "5", "carol": "2"}
    # Each day's hash expires 31 days after the day began (the 30 days, and a day's slack).
    expires = await redis.execute_command("PEXPIRETIME", keys.spending("alice", today))
    assert expires == (today + 31) * DAY
    assert (await money.spending("nobody")).last_30_days == 0


async def test_spending_days_are_utc_days_by_the_gifts_time(money: Money, clock: Clock) -> None:
    await money.stream_open("s1", "bob", "t")
    await money.topup("alice", 100, "receipt-alice-1")
    midnight = (int(time.time() * 1000) // DAY + 1) * DAY
    clock.ms = midnight - 1
    await money.gift("alice", "s1", "rose", 3, "gift-00000001")
    clock.ms = midnight
    await money.gift("alice", "s1", "rose", 4, "gift-00000002")
    spending = await money.spending("alice")
    assert (spending.today, spending.last_7_days) == (4, 7)
    assert (await money.balance("alice")).spent_today == 4


# -- the ledger, recover and reconcile --------------------------------------------------------


async def test_settings_are_in_the_ledger_and_recover_restores_them_and_the_spending(
    redis: Redis, store: Store, clock: Clock
) -> None:
    clock.ms = int(time.time() * 1000)  # recover keeps records by the real clock
    money = Money(redis, Settings.load({}), catalog.load(), clock=clock)
    await money.start()
    await money.stream_open("s1", "bob", "t")
    await money.stream_open("s2", "carol", "t")
    await money.topup("alice", 10_000, "receipt-alice-1")
    await money.topup("dave", 10_000, "receipt-dave-1")
    await money.set_confirm("alice", 100)
    await money.set_cooldown("alice", 500, 30)
    await money.set_cooldown("dave", 5, 5)
    await money.set_cooldown("dave", None, None)
    await money.gift("alice", "s1", "rose", 200, "gift-00000001", confirm=True)
    clock.advance(MINUTE)
    await money.gift("alice", "s2", "rose", 90, "gift-00000002")
    await money.gift("dave", "s2", "heart", 3, "gift-00000003")
    await drain(quick_consumer(redis, store))
    kinds = [row.kind async for row in store.export(None, None)]
    assert (kinds.count("confirm"), kinds.count("cooldown")) == (1, 3)
    assert (await reconcile(redis, store, wait=5)).lines() == []
    expected = await dump(redis)
    spending = await money.spending("alice")

    await redis.flushall()  # Redis lost everything; the store holds it all
    await recover(redis, store, retention_ms=3_600_000)
    restored = await dump(redis)
    fields = ("coins", "spent", "confirm", "cool_coins", "cool_minutes", "cool_log")
    for user in ("alice", "dave"):
        was, now = expected[keys.wallet(user)][1], restored[keys.wallet(user)][1]
        assert {f: now.get(f) for f in fields} == {f: was.get(f) for f in fields}
    assert "cool_coins" in restored[keys.wallet("alice")][1]
    assert "cool_coins" not in restored[keys.wallet("dave")][1]
    day = clock.ms // DAY
    for user in ("alice", "dave"):
        key = keys.spending(user, day)
        assert restored[key] == expected[key]
        assert await redis.execute_command("PEXPIRETIME", key) == (day + 31) * DAY
    assert await money.spending("alice") == spending
    assert (await reconcile(redis, store, wait=5)).lines() == []
    # The settings hold after recover: the threshold asks, the cool-down counts.
    await money.stream_open("s1", "bob", "t")  # streams are no money: opened again
    with pytest.raises(Refused) as asked:
        await money.gift("alice", "s1", "rose", 101, "gift-00000004")
    assert asked.value.code is Code.CONFIRM_REQUIRED
    for n in range(3):  # 290 restored + 300: cooling only if the restored gifts count
        await money.gift("alice", "s1", "rose", 100, f"gift-0000001{n}")
    with pytest.raises(Refused) as cooling:
        await money.gift("alice", "s1", "rose", 1, "gift-00000006")
    assert cooling.value.code is Code.COOLING_DOWN
    await money.aclose()


def test_setting_entries_decode_and_post_nothing() -> None:
    from giftrelay.ledger.postings import record

    confirm = record("5-0", b'{"kind":"confirm","v":1,"ts":5,"user":"alice","coins":null}')
    cooldown = record(
        "6-0", b'{"kind":"cooldown","v":1,"ts":6,"user":"alice","coins":9,"minutes":3}'
    )
    assert (confirm.kind, confirm.postings, confirm.key, confirm.actor) == (
        "confirm",
        (),
        None,
        "alice",
    )
    assert (cooldown.kind, cooldown.postings, cooldown.fingerprint) == ("cooldown", (), "9|3")
    assert msgspec.json.decode(cooldown.body)["minutes"] == 3
