"""Combos: same viewer, same streakable gift, within the window; otherwise a new combo."""

from __future__ import annotations

import pytest

from giftrelay.money.api import Money

from .conftest import Clock

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster


@pytest.fixture
async def live(money: Money) -> Money:
    await money.stream_open("s1", "bob", "Bob live")
    for viewer in ("alice", "dave"):
        await money.topup(viewer, 100_000, f"receipt-{viewer}-1")
    return money


async def test_combo_counts_up_within_the_window_and_restarts_after(
    live: Money, clock: Clock, settings: object
) -> None:
    a = await live.gift("alice", "s1", "rose", 1, "gift-combo-01")
    clock.advance(2999)
    b = await live.gift("alice", "s1", "rose", 2, "gift-combo-02")
    clock.advance(3000)  # exactly the window: still the same combo
    c = await live.gift("alice", "s1", "rose", 1, "gift-combo-03")
    assert (a.combo, b.combo, c.combo) == (1, 3, 4)
    assert a.combo_id == b.combo_id == c.combo_id

    clock.advance(3001)  # the window has passed
    d = await live.gift("alice", "s1", "rose", 1, "gift-combo-04")
    assert d.combo == 1
    assert d.combo_id != a.combo_id


async def test_combos_are_per_viewer_and_per_gift(live: Money, clock: Clock) -> None:
    a1 = await live.gift("alice", "s1", "rose", 1, "gift-combo-01")
    h1 = await live.gift("alice", "s1", "heart", 1, "gift-combo-02")
    d1 = await live.gift("dave", "s1", "rose", 1, "gift-combo-03")
    a2 = await live.gift("alice", "s1", "rose", 1, "gift-combo-04")
    assert len({a1.combo_id, h1.combo_id, d1.combo_id}) == 3
    assert (a2.combo_id, a2.combo) == (a1.combo_id, 2)
    assert (h1.combo, d1.combo) == (1, 1)


async def test_gifts_that_do_not_streak_never_join_a_combo(live: Money) -> None:
    first = await live.gift("alice", "s1", "crown", 2, "gift-crown-01")
    second = await live.gift("alice", "s1", "crown", 1, "gift-crown-02")
    assert (first.combo, second.combo) == (2, 1)
    assert first.combo_id != second.combo_id


async def test_a_refused_gift_does_not_extend_a_combo(live: Money, clock: Clock) -> None:
    await live.topup("poor", 1, "receipt-poor-1")
    first = await live.gift("poor", "s1", "rose", 1, "gift-poor-01")
    with pytest.raises(Exception, match="insufficient_coins"):
        await live.gift("poor", "s1", "rose", 1, "gift-poor-02")
    await live.topup("poor", 1, "receipt-poor-2")
    third = await live.gift("poor", "s1", "rose", 1, "gift-poor-03")
    assert (third.combo_id, third.combo) == (first.combo_id, 2)
