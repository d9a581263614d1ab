"""What every part of the money API shares: its settings, its clock, the checks of
arguments before Redis sees them, and the reading of a script's reply."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from fractions import Fraction
from typing import Any, Protocol, TypeVar

import structlog
from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay.money.catalog import Catalog, Gift
from giftrelay.wire.errors import Code, Refused, Unavailable
from giftrelay.wire.ids import is_ident, is_request_id

log = structlog.get_logger(__name__)

T = TypeVar("T")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MoneySettings(Protocol):
    """What the money core reads of the configuration (``giftrelay.config.Settings``
    has it all); a protocol, so that the money core depends on no layer above it."""

    @property
    def max_balance(self) -> int: ...
    @property
    def max_gift_count(self) -> int: ...
    @property
    def payout_min_diamonds(self) -> int: ...
    @property
    def idempotency_ttl(self) -> int: ...
    @property
    def receipt_ttl(self) -> int: ...
    @property
    def combo_window_ms(self) -> int: ...
    @property
    def history_len(self) -> int: ...
    @property
    def diamond_rate(self) -> Fraction: ...
    @property
    def cent_rate(self) -> Fraction: ...
    @property
    def fee_rate(self) -> Fraction: ...
    @property
    def payout_requires_verification(self) -> bool: ...
    @property
    def payout_currency(self) -> str: ...
    @property
    def ack_replicas(self) -> int: ...
    @property
    def ack_timeout(self) -> float: ...


def ok(reply: list[Any], script: str) -> list[Any]:
    """The reply of a script that succeeded, or the refusal it carries, raised."""
    if reply[0] == "ok":
        return reply
    code, detail = reply[1], reply[2]
    if code == Code.INTERNAL:
        log.error("money script refused on bad data", script=script, detail=detail)
        raise Refused(Code.INTERNAL)
    if code == Code.COOLING_DOWN:
        resume_at = int(detail)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(-(-resume_at // 1000)))
        message = f"you are cooling down (your own setting): gifts resume at {when}"
        raise Refused(Code.COOLING_DOWN, message, resume_at=resume_at)
    if code == Code.CONFIRM_REQUIRED:
        message = (
            f"this gift is above your confirmation threshold of {detail} coins: "
            "send it again with confirm true and the same id"
        )
        raise Refused(Code.CONFIRM_REQUIRED, message)
    raise Refused(Code(code), detail or None)


REDIS_AWAY = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    # A Redis Cluster failing over, or a slot moving past the client's own retries.
    ClusterError,
    TryAgainError,
    MovedError,
    AskError,
    RedisClusterException,
)
"""What a read or write that did not reach a working Redis raises: ``unavailable``."""


async def guard(awaitable: Awaitable[T]) -> T:
    """Redis being down is ``unavailable``, never an exception of the client library."""
    try:
        return await awaitable
    except REDIS_AWAY as exc:
        raise Unavailable() from exc


def shared(
    running: dict[str, asyncio.Future[T]], key: str, start: Callable[[], Coroutine[Any, Any, T]]
) -> Awaitable[T]:
    """The call under way for ``key`` in ``running``, or ``start()`` as a new one:
    concurrent callers share one call (and its outcome), which leaves ``running`` when it
    ends. Shielded: a caller cancelled does not cancel the others' call."""
    future = running.get(key)
    if future is None:
        future = running[key] = asyncio.ensure_future(start())
        future.add_done_callback(lambda _: running.pop(key, None))
    return asyncio.shield(future)


def check_ident(what: str, value: str) -> None:
    if not is_ident(value):
        raise Refused(Code.BAD_REQUEST, f"{what} must be 1-64 characters of A-Z a-z 0-9 _ . -")


def check_request_id(value: str) -> None:
    if not is_request_id(value):
        raise Refused(Code.BAD_REQUEST, "id must be 8-64 characters of A-Z a-z 0-9 _ -")


def check_title(title: str) -> None:
    if not 0 < len(title) <= 200:
        raise Refused(Code.BAD_REQUEST, "title must be 1-200 characters")


def priced(catalog: Catalog, max_count: int, gift: str, count: int) -> tuple[Gift, int]:
    """The catalog gift and the coins that ``count`` of it cost (a gift and a test alert)."""
    if not 1 <= count <= max_count:
        raise Refused(Code.BAD_REQUEST, f"count must be 1 to {max_count}")
    item = catalog.get(gift)
    if item is None:
        raise Refused(Code.UNKNOWN_GIFT, f"there is no gift {gift!r} in the catalog")
    return item, item.coins * count
