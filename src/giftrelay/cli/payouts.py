"""``payouts run``: the scheduled creator payouts of a period (docs/api.md)."""

from __future__ import annotations

import click

from giftrelay.api.payouts import Runner
from giftrelay.api.periods import period_bounds
from giftrelay.cli.errors import friendly
from giftrelay.cli.running import echo_json, load_settings, run
from giftrelay.runtime import ledger_store, money, redis_url
from giftrelay.wire.errors import Refused


@click.group()
def payouts() -> None:
    """Scheduled creator payouts (docs/api.md)."""


def _period(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        period_bounds(value)
    except Refused as exc:
        raise click.BadParameter(exc.message) from None
    return value


@payouts.command("run")
@click.option(
    "--period",
    required=True,
    callback=_period,
    help="A month (2026-11) or quarter (2026-Q4), in UTC, that has ended.",
)
@friendly
def payouts_run(period: str) -> None:
    """Pay every verified creator above the minimum for PERIOD, once per period even if run
    again, and write the period's batch file (GIFTRELAY_PAYOUT_BATCH_DIR); prints the run."""
    settings = load_settings()

    async def go() -> object:
        async with (
            redis_url(settings) as url,
            money(settings, url) as core,
            ledger_store(settings) as store,
        ):
            return await Runner(core, store, settings).run(period)

    echo_json(run(go()))
