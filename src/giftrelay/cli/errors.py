"""Exit statuses, and known failures as one line each instead of a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay import auth
from giftrelay.config import ConfigError
from giftrelay.embedded import EmbeddedRedisError
from giftrelay.ledger.recover import RecoverRefused
from giftrelay.ledger.store import StoreUnavailable
from giftrelay.money.catalog import CatalogError
from giftrelay.runtime import AlreadyRunning, Unreachable
from giftrelay.wire.errors import Refused

P = ParamSpec("P")
R = TypeVar("R")


EXIT_CODES = """\b
Exit status:
  0  done
  1  failure or refusal: the command ran and said no (reconcile found a
     difference, a refused operation, another serve already runs here)
  2  usage or configuration error: a bad flag, setting or catalog, a busy
     port, a bad URL or credentials; the message names the setting to fix
  3  unreachable: Redis or the ledger store does not answer, or no giftrelay
     runs here; start it (or fix its URL) and retry
"""
USAGE, CONFIG, UNREACHABLE = 2, 2, 3


class Failure(click.ClickException):
    """A one-line error with its exit status (see EXIT_CODES)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def translate(exc: BaseException) -> Failure | None:
    """The one line and exit status for a known failure; None for anything else."""
    if isinstance(exc, (ConfigError, CatalogError)):
        return Failure(str(exc), CONFIG)
    if isinstance(exc, auth.TokenError):  # the token command's arguments
        return Failure(str(exc), USAGE)
    if isinstance(exc, Unreachable):
        return Failure(str(exc), UNREACHABLE)
    if isinstance(exc, (EmbeddedRedisError, AlreadyRunning)):
        return Failure(str(exc))
    if isinstance(exc, Refused):
        return Failure(f"{exc.code}: {exc.message}")
    if isinstance(exc, StoreUnavailable):
        return Failure(f"the ledger store is unavailable: {exc}", UNREACHABLE)
    if isinstance(exc, RecoverRefused):
        return Failure(f"recover refused: {exc}")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        return Failure(
            f"Redis stopped answering ({exc}): check it and GIFTRELAY_REDIS_URL, then retry",
            UNREACHABLE,
        )
    return None


def friendly(fn: Callable[P, R]) -> Callable[P, R]:
    """Known failures become one line and an exit status (EXIT_CODES), not a traceback;
    ``giftrelay --debug`` shows the traceback instead."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            failure = translate(exc)
            if failure is None or _debug():
                raise
            raise failure from None

    return wrapper
