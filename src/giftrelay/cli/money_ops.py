"""``wallet`` and ``stream``: one money-core operation each, its result printed as JSON."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

import click
import msgspec

from giftrelay.cli.errors import USAGE, Failure, friendly
from giftrelay.cli.running import echo_json, load_settings, run
from giftrelay.money.api import Money
from giftrelay.runtime import money, redis_url
from giftrelay.wire.ids import REQUEST_ID_PATTERN


def _with_money(operation: Callable[[Money], Awaitable[object]], *, writes: bool) -> None:
    """Run one money operation against the configured Redis and print its result as JSON;
    only one that ``writes`` may start the embedded Redis where no giftrelay runs."""
    settings = load_settings()

    async def go() -> None:
        async with redis_url(settings, start=writes) as url, money(settings, url) as core:
            echo_json(await operation(core))

    run(go())


@click.group()
def wallet() -> None:
    """Top up and inspect wallets."""


@wallet.command("topup")
@click.argument("user")
@click.argument("coins", type=int)
@click.option(
    "--receipt",
    help="The payment's receipt id, the idempotency key: 8-64 characters of A-Z a-z 0-9 _ - "
    "(such as store-order-20240611-0042); default: a new one.",
)
@friendly
def wallet_topup(user: str, coins: int, receipt: str | None) -> None:
    """Credit COINS to USER."""
    receipt = receipt or f"cli-{uuid.uuid4().hex}"
    if not re.fullmatch(REQUEST_ID_PATTERN, receipt):
        raise Failure(
            f"--receipt {receipt!r}: a receipt id is 8-64 characters of A-Z a-z 0-9 _ - "
            "(such as store-order-20240611-0042)",
            USAGE,
        )

    async def topup(core: Money) -> object:
        result = await core.topup(user, coins, receipt)
        return {"receipt": receipt, **msgspec.structs.asdict(result)}

    _with_money(topup, writes=True)


@wallet.command("show")
@click.argument("user")
@friendly
def wallet_show(user: str) -> None:
    """Show USER's coins, diamonds, spending today and daily cap."""

    async def show(core: Money) -> object:
        b = await core.balance(user)
        return {
            "user": user,
            "coins": b.coins,
            "diamonds": b.diamonds,
            "spent_today": b.spent_today,
            "daily_cap": b.daily_cap,
        }

    _with_money(show, writes=False)


# -- stream --------------------------------------------------------------------------------


@click.group("stream")
def stream_group() -> None:
    """Open, close and inspect streams."""


@stream_group.command("open")
@click.argument("stream")
@click.option("--creator", required=True, help="The creator who owns the stream.")
@click.option("--title", default="Live", show_default=True)
@friendly
def stream_open(stream: str, creator: str, title: str) -> None:
    """Open (or reopen) STREAM for gifts."""
    _with_money(lambda core: core.stream_open(stream, creator, title), writes=True)


@stream_group.command("close")
@click.argument("stream")
@friendly
def stream_close(stream: str) -> None:
    """End STREAM: no more gifts; viewers are told."""
    _with_money(lambda core: core.stream_close(stream), writes=True)


@stream_group.command("show")
@click.argument("stream")
@friendly
def stream_show(stream: str) -> None:
    """Show STREAM's creator, status, totals and goal."""
    _with_money(lambda core: core.stream_info(stream), writes=False)
