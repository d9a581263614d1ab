"""``giftrelay-loadtest`` (or ``python -m loadtest``): every load test, one subcommand each.

    giftrelay-loadtest busy-stream --url ws://127.0.0.1:8080/ws --secret "$GIFTRELAY_SECRET" \\
        --viewers 1000 --gift-rate 200 --duration 20
    giftrelay-loadtest battle --secret "$GIFTRELAY_SECRET" --viewers 2000 --gift-rate 30
    giftrelay-loadtest fanout --viewers 1000,5000 --rate 1000 --seconds 10
    giftrelay-loadtest bench --peers giftrelay,naive --viewers 100 --gift-rate -1
    giftrelay-loadtest gifts --duration 10 --repeat 3
    giftrelay-loadtest soak --minutes 60 --interval 60 --csv soak.csv

``COMMAND --help`` tells each one's options; docs/loadtest.md what they measure.
Exit status: 0 every check passed; 1 a check failed; 2 bad options, or a target that
is unreachable, refuses the --secret or lacks the --gift (one line, before the run);
3 the run itself crashed.

The micro-benchmarks run on their own: ``python -m loadtest.micro.bench_money`` etc.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from giftrelay import logs

from .scenarios import bench, fanout, gifts, soak
from .scenarios.harness import SCENARIOS
from .scenarios.harness import cli as harness

Main = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Main] = {
    **dict.fromkeys(SCENARIOS, harness.main),
    "fanout": fanout.main,
    "bench": bench.main,
    "gifts": gifts.main,
    "soak": soak.main,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="giftrelay-loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    harness.add_parser(commands)
    for module in (fanout, bench, gifts, soak):
        module.add_parser(commands)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logs.configure("console" if sys.stderr.isatty() else "json", "warning")
    sys.exit(COMMANDS[args.command](args))
