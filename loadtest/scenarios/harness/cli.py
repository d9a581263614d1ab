"""The harness's subcommands: ``busy-stream``, ``many-streams``, ``reconnect-storm``,
``slow-readers``, ``ramp``, ``battle`` (docs/loadtest.md).

    giftrelay-loadtest busy-stream --url ws://127.0.0.1:8080/ws --secret "$GIFTRELAY_SECRET" \\
        --viewers 1000 --gift-rate 200 --duration 20

Exit status: 0 when every check passed, 1 when one failed (loss, duplicates, order,
conservation, reconcile, ``--max-p99``), 2 for bad options or a target that is
unreachable, refuses the ``--secret`` or has no ``--gift`` (checked before the run,
one line), 3 when the run itself could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column

from . import report, wire
from .coordinator import Harness
from .options import SCENARIOS, Options, UsageError
from .result import Result

EXIT_STATUS = (
    "exit status: 0 every check passed; 1 a check failed; 2 bad options, or a target "
    "that is unreachable, refuses the --secret or lacks the --gift; 3 the run crashed"
)
HELP = {
    "busy-stream": "one stream, V viewers, G gifts/s",
    "many-streams": "S streams; viewers and gifts spread over them",
    "reconnect-storm": "every viewer drops and rejoins with since within --storm-window s",
    "slow-readers": "a share of viewers read slowly (--slow-share, --slow-delay)",
    "ramp": "viewers and gift rate grow step by step until p99 or delivery fails: the knee",
    "battle": "two streams in a battle started over the protocol; its scores checked",
}


def add_run_options(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument("--url", default=d.url, help="the relay's WebSocket URL [%(default)s]")
    p.add_argument(
        "--secret",
        default=os.environ.get("GIFTRELAY_SECRET"),
        help="the relay's token secret, to mint tokens [env GIFTRELAY_SECRET]",
    )
    p.add_argument("--admin-token", help="an admin token (instead of --secret)")
    p.add_argument(
        "--gifter-tokens",
        type=Path,
        help="a file of viewer tokens, one a line (with --admin-token)",
    )
    p.add_argument("--allow-host", help="allow this non-loopback host as a target")
    p.add_argument("--viewers", type=int, default=d.viewers, help="[%(default)s]")
    p.add_argument(
        "--gift-rate",
        type=float,
        default=d.gift_rate,
        help="gifts/s in all; -1: as fast as answers come [%(default)s]",
    )
    p.add_argument(
        "--inflight",
        type=int,
        default=d.inflight,
        help="gifts in flight per gifter with --gift-rate -1 [%(default)s]",
    )
    p.add_argument("--duration", type=float, default=d.duration, help="seconds [%(default)s]")
    p.add_argument("--streams", type=int, default=None, help="[1; many-streams: 10]")
    p.add_argument("--processes", type=int, default=0, help="client processes [one per core]")
    p.add_argument("--gifters", type=int, default=0, help="gifting users [gift rate / 10]")
    p.add_argument(
        "--gifts-per-user",
        type=float,
        default=d.gifts_per_user,
        help="stay below the relay's per-user gift rate [%(default)s]",
    )
    p.add_argument("--gift", default=d.gift, help="catalog id of the gift sent [%(default)s]")
    p.add_argument(
        "--diamonds-per-coin",
        default=d.diamonds_per_coin,
        help="the relay's setting, for the conservation check [%(default)s]",
    )
    p.add_argument("--slow-share", type=float, default=None, help="[slow-readers: 0.1]")
    p.add_argument(
        "--slow-delay",
        type=float,
        default=d.slow_delay,
        help="seconds a slow viewer spends on each frame [%(default)s]",
    )
    p.add_argument("--storm-window", type=float, default=d.storm_window, help="[%(default)s]")
    p.add_argument("--step-seconds", type=float, default=d.step_seconds, help="[%(default)s]")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="[%(default)s]")
    p.add_argument(
        "--limit-p99",
        type=float,
        default=d.limit_p99,
        help="ramp: p99 ms a step may reach [%(default)s]",
    )
    p.add_argument("--max-p99", type=float, help="fail the run when p99 (ms) passes this")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout, help="[%(default)s]")
    p.add_argument(
        "--connect-rate",
        type=float,
        default=d.connect_rate,
        help="new connections/s per process [%(default)s]",
    )
    p.add_argument(
        "--relay-pid",
        type=int,
        action="append",
        help="measure this process (and its children) from /proc",
    )
    p.add_argument("--metrics-url", help="the relay's /metrics [derived from --url]")
    p.add_argument(
        "--reconcile",
        action="store_true",
        help="run `giftrelay reconcile` afterwards (same GIFTRELAY_* environment)",
    )
    p.add_argument(
        "--flavour",
        choices=["giftrelay", "socketio"],
        default="giftrelay",
        help="protocol: giftrelay (also the naive peer) or socketio (peer)",
    )
    p.add_argument("--out", default=d.out, help="directory for the JSON and HTML [%(default)s]")
    p.add_argument("--name", help="a name for this run (file names, report title)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")  # fmt: skip


def add_battle_options(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument(
        "--battle-seconds",
        type=int,
        default=d.battle_seconds,
        help="the battle's duration_s: within the relay catalog's [battle] min_s..max_s "
        "[%(default)s, the default catalog's shortest]",
    )
    p.add_argument(
        "--end-timeout",
        type=float,
        default=d.end_timeout,
        help="seconds past the battle's end to wait for every viewer's battle_end [%(default)s]",
    )


def options_from(args: argparse.Namespace) -> Options:
    tokens = None
    if args.gifter_tokens is not None:
        tokens = [t.strip() for t in args.gifter_tokens.read_text().splitlines() if t.strip()]
    scenario = args.command
    streams = args.streams or {"many-streams": 10, "battle": 2}.get(scenario, 1)
    slow = args.slow_share if args.slow_share is not None else 0.1
    duration, battle = args.duration, {}
    if scenario == "battle":  # the run lasts the battle, not --duration
        duration = float(args.battle_seconds)
        battle = {"battle_seconds": args.battle_seconds, "end_timeout": args.end_timeout}
    return Options(
        scenario=scenario, url=args.url, flavour=args.flavour, secret=args.secret,
        admin_token=args.admin_token, gifter_tokens=tokens, allow_host=args.allow_host,
        viewers=args.viewers, gift_rate=args.gift_rate, inflight=args.inflight,
        duration=duration, streams=streams, processes=args.processes,
        gifts_per_user=args.gifts_per_user, gifters=args.gifters, gift=args.gift,
        diamonds_per_coin=args.diamonds_per_coin,
        slow_share=slow if scenario == "slow-readers" else 0.0, slow_delay=args.slow_delay,
        storm_window=args.storm_window, step_seconds=args.step_seconds,
        max_steps=args.max_steps, limit_p99=args.limit_p99, max_p99=args.max_p99,
        drain_timeout=args.drain_timeout, connect_rate=args.connect_rate,
        relay_pid=args.relay_pid, metrics_url=args.metrics_url, reconcile=args.reconcile,
        out=args.out, name=args.name, quiet=args.quiet, **battle,
    )  # fmt: skip


def output_paths(result: Result, out: str) -> tuple[Path, Path]:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(result.started_at))
    base = Path(out) / f"{result.name}-{result.flavour}-{stamp}"
    return base.with_suffix(".json"), base.with_suffix(".html")


async def run_with_progress(options: Options, console: Console) -> Result:
    """One run with a live progress bar and rates (unless quiet)."""
    harness = Harness(options)
    if options.quiet or not console.is_terminal:
        if not options.quiet:
            harness.progress = lambda phase, tick: (
                console.log(f"{phase}: {rates(tick, 200) if tick else ''}")
                if tick is None or tick.second % 5 == 0 else None
            )  # fmt: skip
        return await harness.run()
    total = {
        "ramp": options.step_seconds * options.max_steps,
        "battle": options.battle_lead + options.battle_seconds + 1.5,  # to its battle_end
    }.get(options.scenario, options.duration)
    with progress_bar(console) as progress:
        task = progress.add_task(options.scenario, total=total, rates="setting up")
        started: list[float] = []

        def update(phase: str, tick: wire.Tick | None) -> None:
            if phase == "run" and not started:
                started.append(time.monotonic())
            elapsed = time.monotonic() - started[0] if started else 0.0
            text = rates(tick, rates_width(console)) if tick is not None else phase
            progress.update(task, completed=min(total, elapsed), rates=text)

        harness.progress = update
        return await harness.run()


BAR_WIDTH = 10


def progress_bar(console: Console) -> Progress:
    """The live line: a bar, the time elapsed and the rates, on one line of the terminal.

    The rates are cut to fit (``rates_width``); ellipsis, never a wrap, if they still don't.
    """
    return Progress(
        BarColumn(bar_width=BAR_WIDTH), TimeElapsedColumn(),
        TextColumn("{task.fields[rates]}",
                   table_column=Column(no_wrap=True, overflow="ellipsis")),
        console=console, transient=False,
    )  # fmt: skip


def rates_width(console: Console) -> int:
    """Columns left for the rates: the bar, the elapsed time (0:00:00) and two gaps."""
    return max(20, console.width - BAR_WIDTH - 7 - 2)


def si(n: float) -> str:
    """At most five characters: 9,999, 12.3k, 123k, 1.23M, 12.3M, 123M."""
    a = abs(n)
    if a < 10_000:
        return f"{n:,.0f}"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            v = n / div
            return f"{v:.2f}{suffix}" if abs(v) < 10 else (
                f"{v:.1f}{suffix}" if abs(v) < 100 else f"{v:.0f}{suffix}"
            )  # fmt: skip
    return f"{n:,.0f}"  # pragma: no cover


def rates(tick: wire.Tick, width: int) -> str:
    """The second's rates in at most ``width`` columns: the most that fits, frames/s first to go."""
    errors = sum(tick.errors.values())
    rejoins = [f"{si(tick.reconnects)} rejoins"] if tick.reconnects else []
    full = [f"{si(tick.viewers)} viewers", f"{si(tick.gifts_acked)} gifts/s",
            f"{si(tick.events)} events/s"]  # fmt: skip
    forms = [
        "  ".join([*full, f"{si(tick.frames)} frames/s", *rejoins, f"{si(errors)} errors"]),
        "  ".join([*full, *rejoins, f"{si(errors)} errors"]),
        " ".join([*full[:2], f"{si(tick.events)} ev/s", *rejoins, f"{si(errors)} err"]),
    ]
    return next((f for f in forms if len(f) <= width), forms[-1])


def add_parser(commands: Any) -> None:
    """The harness's scenarios' subcommands."""
    for scenario in SCENARIOS:
        p = commands.add_parser(scenario, help=HELP[scenario], epilog=EXIT_STATUS)
        add_run_options(p)
        if scenario == "battle":
            add_battle_options(p)


def main(args: argparse.Namespace) -> int:
    """One scenario: its summary, JSON and HTML; the exit status (module docstring)."""
    console = Console()
    try:
        options = options_from(args)
        result = _run(run_with_progress(options, Console(stderr=True)))
    except UsageError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except Exception as exc:  # status 1 means "a check failed": a crash must not say so
        console.print_exception()
        console.print(f"[bold red]the run failed:[/] {exc!r}")
        return 3
    report.print_summary(result, console)
    if options.out:
        json_path, html_path = output_paths(result, options.out)
        report.write_json(result, json_path)
        report.write_html(result, html_path)
        console.print(f"results: {json_path}  report: {html_path}")
    return 0 if result.passed else 1


def _run(coro: Coroutine[Any, Any, Result]) -> Result:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
