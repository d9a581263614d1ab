"""The ``giftrelay`` command: serve, mint tokens, and operate wallets and streams.

Each group of commands lives in its own module; this one holds the group and adds
them to it, so a new command group is one more line in ``COMMANDS``.
"""

from __future__ import annotations

import click

from giftrelay import __version__
from giftrelay.cli import ledger, money_ops, payouts, serve, tokens, webhooks
from giftrelay.cli.errors import EXIT_CODES


@click.group(epilog=EXIT_CODES)
@click.option("--debug", is_flag=True, help="Show the traceback of a failure.")
@click.version_option(__version__, prog_name="giftrelay")
def main(debug: bool) -> None:
    """giftrelay: a real-time gift relay for live streams."""


COMMANDS = (
    serve.serve,
    serve.worker,
    tokens.token,
    money_ops.wallet,
    money_ops.stream_group,
    ledger.ledger,
    ledger.reconcile,
    ledger.recover,
    webhooks.webhooks_group,
    payouts.payouts,
)
for command in COMMANDS:
    main.add_command(command)
