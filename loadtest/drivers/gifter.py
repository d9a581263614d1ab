"""The gifter: each gift has an id of its own and is settled, sent again with the same id
until the relay answers it, so that the gifts acknowledged are exactly the gifts applied.

``unavailable``, a time-out or a lost connection leave a gift's outcome unknown (the
relay may have applied it); ``rate_limited`` moved nothing yet. Sent again with the
same id, a gift is applied once whatever happened to the first try, and the answer is
its one outcome. Gifts go out on any connection with giftrelay's ``gift`` call:
:class:`giftrelay.client.Client` (which itself retries ``unavailable`` and lost
connections for ``retry_for`` s), the Socket.IO client, or a
:class:`~loadtest.drivers.connection.Connection` (one try each, reopened as needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from giftrelay.client import GiftOk, RelayError

from .connection import ConnectFailed
from .viewer import key_int

UNKNOWN = frozenset({"unavailable", "timeout", "disconnected"})
"""Failures that leave a gift's outcome unknown: it may have been applied."""
AGAIN = UNKNOWN | {"rate_limited", "connect_failed"}
"""Failures after which the same id is sent again."""
AFTER_A_PAUSE = frozenset({"unavailable", "rate_limited", "connect_failed"})
"""...after a pause (growing to ``pause[1]``); a time-out or a dropped connection at once."""

Attempt = Callable[[str, str, float, float], None]
"""Told of every try: (gift id, ``gift_ok`` or the error code, loop time sent, seconds)."""


class GiftConnection(Protocol):
    async def gift(
        self, stream: str, gift: str, count: int = 1, *, id: str | None = None,
        retry_for: float = 30.0,
    ) -> GiftOk: ...  # fmt: skip


def error_code(exc: BaseException) -> str:
    """A failure as a code: the relay's error code, or what went wrong on the way."""
    if isinstance(exc, RelayError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectFailed):
        return "connect_failed"
    name = type(exc).__name__
    if name == "Disconnected":
        return "disconnected"
    if name == "InvalidStatus":
        return f"http_{getattr(getattr(exc, 'response', None), 'status_code', '?')}"
    if isinstance(exc, OSError):
        return "connect_failed"
    return name


async def resend(
    conn: GiftConnection,
    stream: str,
    gift: str,
    gift_id: str,
    *,
    within: float | None = None,
    pause: tuple[float, float] = (0.05, 1.0),
    on_attempt: Attempt | None = None,
) -> GiftOk | None:
    """A gift's outcome, by sending it with ``gift_id`` until the relay answers: its
    ``gift_ok`` (applied once, however many tries reached the relay), or None if it was
    refused for good or ``within`` s passed first (its outcome is then unknown).

    A relay that limits messages may refuse the resend right after a flood: ``rate_limited``
    moves nothing and says nothing of the first try, so it is sent again after a pause.
    """
    loop = asyncio.get_running_loop()
    deadline = math.inf if within is None else loop.time() + within
    delay = pause[0]
    while True:
        sent = loop.time()
        try:
            ok = await conn.gift(stream, gift, id=gift_id, retry_for=max(0.1, deadline - sent))
        except Exception as exc:
            code = error_code(exc)
            now = loop.time()
            if on_attempt is not None:
                on_attempt(gift_id, code, sent, now - sent)
            if code not in AGAIN or deadline - now < delay:
                return None
            if code in AFTER_A_PAUSE:
                await asyncio.sleep(delay)
                delay = min(2 * delay, pause[1])
            continue
        if on_attempt is not None:
            on_attempt(gift_id, "gift_ok", sent, loop.time() - sent)
        return ok


class GiftMeter:
    """Gifts since the meter was last taken: sent, acknowledged (their coins, and the
    time to the answer, retries included, as counts per 0.1 ms), errors by code."""

    __slots__ = ("ack_latency", "acked", "coins", "errors", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.coins = 0
        self.ack_latency: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    def take(self) -> GiftMeter:
        taken, fresh = GiftMeter(), GiftMeter()
        for name in GiftMeter.__slots__:
            setattr(taken, name, getattr(self, name))
            setattr(self, name, getattr(fresh, name))
        return taken


class Book:
    """Every gift acknowledged to a group of gifters: offsets per stream, coins, count;
    and a :class:`GiftMeter` of what happened since it was last taken."""

    def __init__(self) -> None:
        self.acked: dict[str, array[int]] = {}
        self.coins = 0
        self.gifts = 0
        self.meter = GiftMeter()

    def add(self, ok: GiftOk, seconds: float) -> None:
        meter = self.meter
        meter.acked += 1
        meter.coins += ok.coins
        meter.ack_latency[int(seconds * 10_000)] += 1
        self.acked.setdefault(ok.stream, array("q")).append(key_int(ok.offset))
        self.coins += ok.coins
        self.gifts += 1


class Gifter:
    """One user's gifts over one connection; its outcomes go to ``book`` (a group's, or
    its own). ``pause``: between tries of the same id; ``on_attempt``: told of each."""

    def __init__(
        self,
        conn: GiftConnection,
        user: str,
        book: Book | None = None,
        *,
        gift: str = "rose",
        pause: tuple[float, float] = (0.05, 1.0),
        on_attempt: Attempt | None = None,
    ) -> None:
        self.conn = conn
        self.user = user
        self.book = book or Book()
        self.gift = gift
        self.pause = pause
        self.on_attempt = on_attempt
        self.spent = 0
        """Coins of this gifter's acknowledged gifts."""
        self.refused: Counter[str] = Counter()
        """Gifts refused for good, by code (nothing moved)."""
        self.retries = 0
        """Tries that failed in a way that calls for the same id again."""
        self.unknown: list[tuple[str, str]] = []
        """Gifts whose outcome is unknown: (stream, id), for :meth:`settle_unknown`."""
        self.pending: set[asyncio.Task[GiftOk | None]] = set()

    def _acked(self, ok: GiftOk, started: float) -> None:
        self.spent += ok.coins
        self.book.add(ok, time.perf_counter() - started)

    async def send(self, stream: str, gift_id: str, *, retry_for: float = 10.0) -> GiftOk | None:
        """One try (giftrelay's client retries it for ``retry_for`` s): its ``gift_ok``, or
        None; a gift of unknown outcome is kept in ``unknown``."""
        meter = self.book.meter
        meter.sent += 1
        started = time.perf_counter()
        try:
            ok = await self.conn.gift(stream, self.gift, id=gift_id, retry_for=retry_for)
        except asyncio.CancelledError:
            self.unknown.append((stream, gift_id))
            raise
        except Exception as exc:
            code = error_code(exc)
            meter.errors[code] += 1
            if code in UNKNOWN:
                self.unknown.append((stream, gift_id))
            else:
                self.refused[code] += 1
            return None
        self._acked(ok, started)
        return ok

    def fire(self, stream: str, gift_id: str, *, retry_for: float = 0.0) -> None:
        """:meth:`send` without waiting for the answer (``pending`` until it comes)."""
        task = asyncio.create_task(self.send(stream, gift_id, retry_for=retry_for))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def settle(
        self, stream: str, gift_id: str, *, within: float | None = None
    ) -> GiftOk | None:
        """Send ``gift_id`` until its outcome is known (see :func:`resend`)."""
        started = time.perf_counter()
        last = ""

        def attempt(gid: str, code: str, sent: float, seconds: float) -> None:
            nonlocal last
            last = code
            self.retries += code in AGAIN
            if self.on_attempt is not None:
                self.on_attempt(gid, code, sent, seconds)

        ok = await resend(
            self.conn, stream, self.gift, gift_id, within=within, pause=self.pause,
            on_attempt=attempt,
        )  # fmt: skip
        if ok is not None:
            self._acked(ok, started)
        elif last not in AGAIN:
            self.refused[last] += 1
        return ok

    async def settle_unknown(self, within: float, slots: asyncio.Semaphore) -> int:
        """Settle every gift of unknown outcome, ``slots`` at a time: how many stay unknown."""
        unknown, self.unknown = self.unknown, []

        async def one(stream: str, gift_id: str) -> GiftOk | None:
            async with slots:
                return await self.settle(stream, gift_id, within=within)

        outcomes = await asyncio.gather(*(one(*gift) for gift in unknown))
        return sum(ok is None for ok in outcomes)

    async def paced(
        self,
        stop: asyncio.Event,
        stream: str,
        interval: float,
        name: Callable[[int], str],
        settled: Callable[[str, GiftOk | None], None] | None = None,
    ) -> None:
        """Gifts ``name(0)``, ``name(1)``... every ``interval`` s until ``stop``, one at a
        time, each settled before the next (``settled`` is told its outcome)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while not stop.is_set():
            gift_id = name(n)
            ok = await self.settle(stream, gift_id)
            if settled is not None:
                settled(gift_id, ok)
            n += 1
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)  # pacing
            else:
                next_at = loop.time()


async def pace(
    rate: float, send: Callable[[], None], *, tick: float, duration: float | None = None
) -> None:
    """Open loop: ``send()`` ``rate`` times a second whatever the answers do (as real viewers
    would), for ``duration`` s or until cancelled, catching up every ``tick`` s."""
    started = time.perf_counter()
    done = 0
    while True:
        elapsed = time.perf_counter() - started
        if duration is not None and elapsed >= duration:
            return
        for _ in range(int(rate * elapsed) - done):
            send()
            done += 1
        await asyncio.sleep(max(0.0, tick - (time.perf_counter() - started - elapsed)))
