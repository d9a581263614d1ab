"""The fan-out's adaptive tick (pure: giftrelay.relay.flush.next_tick)."""

from __future__ import annotations

import pytest

from giftrelay.relay.flush import FLUSH_SHARE, next_tick

TICK, MAX = 0.025, 0.25


def test_a_cheap_flush_keeps_the_configured_tick() -> None:
    assert next_tick(TICK, MAX, 0.0) == TICK
    assert next_tick(TICK, MAX, 4 * TICK) == TICK


def test_an_expensive_flush_is_followed_by_a_quarter_of_its_cost() -> None:
    assert next_tick(TICK, MAX, 0.2) == pytest.approx(0.05)
    spent = 0.6
    wait = next_tick(TICK, MAX, spent)
    assert spent / (spent + wait) == pytest.approx(FLUSH_SHARE)


def test_the_wait_never_passes_max_tick() -> None:
    assert next_tick(TICK, MAX, 10.0) == MAX
