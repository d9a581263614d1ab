"""The retry schedule, pure: capped exponential backoff with full jitter, then a dead letter.

After the n-th failed attempt of an event the next one waits a random time between 0
and ``min(cap, base x 2^(n-1))`` ("full jitter": receivers coming back from an outage
are not hit by every sender at once). With the defaults (base 5 s, cap 1 h) the first
retry comes within 5 s, the second within 10 s, and from the 11th on each within an
hour. An event still failing ``dead_after`` after its first failure becomes a dead
letter at its next failure.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from giftrelay.webhooks.events import Pending


class Schedule(msgspec.Struct, frozen=True):
    base_ms: int
    """The longest wait before the first retry."""
    cap_ms: int
    """The longest wait between two attempts."""
    dead_after_ms: int
    """From the first failure; an event failing after that is a dead letter."""

    def ceiling(self, failures: int) -> int:
        """The longest wait after ``failures`` failed attempts (at least 1)."""
        doubling = min(max(failures - 1, 0), 62)  # 2^62 x base is beyond any cap
        return min(self.cap_ms, self.base_ms << doubling)

    def delay(self, failures: int, rand: Callable[[], float]) -> int:
        """A wait drawn uniformly from ``[0, ceiling]`` by ``rand`` (in ``[0, 1)``)."""
        return int(rand() * self.ceiling(failures))

    def after_failure(
        self, event: Pending, now_ms: int, error: str, rand: Callable[[], float]
    ) -> tuple[Pending, bool]:
        """The event with this failure recorded, and whether it is now a dead letter."""
        first = event.first_failure_ms if event.first_failure_ms is not None else now_ms
        failures = event.attempts + 1
        dead = now_ms - first >= self.dead_after_ms
        next_ms = now_ms if dead else now_ms + self.delay(failures, rand)
        updated = msgspec.structs.replace(
            event, attempts=failures, first_failure_ms=first, next_ms=next_ms, error=error
        )
        return updated, dead
