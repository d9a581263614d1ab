"""``giftrelay-loadtest bench``: giftrelay and its peers, the same scenario, in the same run.

    giftrelay-loadtest bench --viewers 5000 --gift-rate 1000 --duration 20
    giftrelay-loadtest bench --viewers 100 --gift-rate -1 --duration 10      # gifts/s ceiling
    giftrelay-loadtest bench --viewers 10000 --gift-rate 10 --peers giftrelay  # idle memory

One private ``redis-server`` (AOF on, fsync every second, as the embedded default);
for each target in turn: flush it, start the target as its own process, run the
harness against it (CPU and memory read from /proc for that process tree), stop it.
Targets: ``giftrelay`` (``giftrelay serve --no-ledger``, one worker), ``naive``
(:mod:`loadtest.peers.naive`) and ``socketio`` (Node, loadtest/peers/socketio, installed
with ``npm ci`` from its package-lock.json on first use). Figures are given as ratios of
giftrelay to each peer measured in the same run, since the absolute ones move with
whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from giftrelay.embedded import RedisServer, free_port
from giftrelay.redis_client import connect as redis_connect

from ..drivers.target import (
    PEERS,
    ROOT,
    Target,
    peer_command,
    running,
    serve_command,
    serve_env,
)
from .harness import Harness, Options, report
from .harness.result import Result

console = Console()


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "bench", help="giftrelay and its peers: the same scenario, in the same run",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--peers", default=",".join(PEERS), help="[%(default)s]")
    p.add_argument("--scenario", default="busy-stream", choices=["busy-stream", "many-streams"])
    p.add_argument("--viewers", type=int, default=1000, help="[%(default)s]")
    p.add_argument(
        "--gift-rate",
        type=float,
        default=200.0,
        help="gifts/s; -1: as fast as each target answers [%(default)s]",
    )
    p.add_argument("--inflight", type=int, default=4, help="with --gift-rate -1 [%(default)s]")
    p.add_argument("--gifters", type=int, default=0, help="[gift rate / 10; flood: 32]")
    p.add_argument("--duration", type=float, default=15.0, help="[%(default)s]")
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--processes", type=int, default=0, help="client processes [one per core]")
    p.add_argument("--tick-ms", type=int, default=None, help="giftrelay's GIFTRELAY_TICK_MS")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all targets [%(default)s]")
    p.add_argument("--out", default="loadtest-results", help="[%(default)s]")
    p.add_argument("--connect-rate", type=float, default=1000.0, help="[%(default)s]")
    p.add_argument("--profile", action="store_true", help="record giftrelay with py-spy into --out")


SECRET = "bench-secret-" + "b" * 40


RELAY_SETTINGS = {
    "GIFTRELAY_MAX_CONNECTIONS_PER_IP": "1000000",
    "GIFTRELAY_MAX_CONNECTIONS": "1000000",
    "GIFTRELAY_GIFT_RATE": "100000",
    "GIFTRELAY_GIFT_BURST": "100000",
    "GIFTRELAY_MESSAGE_RATE": "100000",  # a flood's gifters send hundreds a second
    "GIFTRELAY_MESSAGE_BURST": "100000",
}


@contextlib.asynccontextmanager
async def target(
    name: str, redis_url: str, args: argparse.Namespace, out: Path
) -> AsyncIterator[Target]:
    """Start one target on a free port, logging to ``out/NAME.log``; stop it at the end."""
    port = free_port()
    if name == "giftrelay":
        settings = dict(RELAY_SETTINGS, PYTHONUNBUFFERED="1")
        if args.tick_ms is not None:
            settings["GIFTRELAY_TICK_MS"] = str(args.tick_ms)
        wrapper: list[str] = []
        if args.profile and shutil.which("py-spy"):
            svg = out / f"profile-{int(time.time())}.svg"
            wrapper = ["py-spy", "record", "--idle", "-r", "50", "-o", str(svg), "--"]
        argv = serve_command(port, redis_url=redis_url, ledger=False, wrapper=wrapper)
        env = serve_env(SECRET, settings)
    elif name in PEERS:
        argv, env = await peer_command(name, port, redis_url, SECRET)
    else:
        raise SystemExit(f"unknown target {name!r}")
    stop = signal.SIGINT if args.profile else signal.SIGTERM  # py-spy writes on SIGINT
    async with running(
        name, argv, port=port, env=env, log=out / f"{name}.log", cwd=ROOT, stop_signal=stop
    ) as started:
        yield started


class BenchRun(msgspec.Struct):
    target: str
    round: int
    result: Result


def options(args: argparse.Namespace, url: str, pid: int, name: str, r: int) -> Options:
    flood = args.gift_rate < 0
    return Options(
        scenario=args.scenario, url=url, secret=SECRET,
        flavour="socketio" if name == "socketio" else "giftrelay",
        viewers=args.viewers, gift_rate=args.gift_rate, inflight=args.inflight,
        gifters=args.gifters or (32 if flood else 0), duration=args.duration,
        streams=args.streams, processes=args.processes, relay_pid=[pid],
        connect_rate=args.connect_rate, out=None, quiet=True, name=f"bench-{name}-{r}",
        drain_timeout=30.0,
    )  # fmt: skip


async def bench(args: argparse.Namespace) -> tuple[list[BenchRun], list[str]]:
    out = Path(args.out)
    runs: list[BenchRun] = []
    failures: list[str] = []
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    with tempfile.TemporaryDirectory(prefix="giftrelay-bench-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis", appendonly=True)
        redis_server.start()
        try:
            for r in range(1, args.repeat + 1):
                for name in names:
                    redis = redis_connect(redis_server.url)
                    await redis.flushall()
                    await redis.aclose()
                    console.log(f"round {r}: {name} ...")
                    try:
                        async with target(name, redis_server.url, args, out) as started:
                            harness = Harness(options(args, started.url, started.pid, name, r))
                            harness.progress = _progress(name)
                            result = await harness.run()
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        console.log(f"  {name}: the run could not be completed: {exc!r}")
                        failures.append(f"{name} round {r}: {exc!r}")
                        continue
                    runs.append(BenchRun(target=name, round=r, result=result))
                    report.write_html(result, out / f"{result.name}.html")
                    console.log(_one_line(name, result))
        finally:
            redis_server.stop()
    return runs, failures


def _progress(name: str) -> Any:
    def show(phase: str, tick: Any) -> None:
        if tick is None:
            console.log(f"  {name}: {phase}")

    return show


def _one_line(name: str, r: Result) -> str:
    return (
        f"  {name}: {r.gifts.per_second:,.0f} gifts/s, p99 {r.latency_ms.p99:,.1f} ms, "
        f"{r.events_per_s:,.0f} events/s, {r.relay.events_per_cpu_second:,.0f} events/CPU-s, "
        f"{'passed' if r.passed else 'FAILED'}"
    )


METRICS: list[tuple[str, str, bool]] = [
    # (label, path into the result, higher is better)
    ("gifts/s acknowledged", "gifts.per_second", True),
    ("gift ack p99 ms", "ack_latency_ms.p99", False),
    ("gift->viewer p50 ms", "latency_ms.p50", False),
    ("gift->viewer p99 ms", "latency_ms.p99", False),
    ("events/s delivered", "events_per_s", True),
    ("frames/s", "frames_per_s", True),
    ("relay CPU s", "relay.cpu_seconds", False),
    ("events per relay CPU-s", "relay.events_per_cpu_second", True),
    ("gifts per relay CPU-s", "relay.gifts_per_cpu_second", True),
    ("KiB RSS per idle connection", "relay.rss_per_idle_connection", False),
    ("lost events", "delivery.lost", False),
]


def _get(r: Result, path: str) -> float:
    value: Any = r
    for part in path.split("."):
        value = getattr(value, part)
    return float(value) / (1024 if "rss" in path else 1)


def summarise(runs: list[BenchRun]) -> tuple[Table, dict[str, dict[str, float]]]:
    """Per target, the median over rounds; ratios giftrelay / peer (x better when > 1)."""
    names = list(dict.fromkeys(run.target for run in runs))
    table = Table(title="bench: medians over rounds; ratio = how many times giftrelay is better")
    table.add_column("metric")
    for name in names:
        table.add_column(name, justify="right")
    peers = [n for n in names if n != "giftrelay"]
    for peer in peers:
        table.add_column(f"x {peer}", justify="right")
    medians: dict[str, dict[str, float]] = {}
    for name in names:
        results = [run.result for run in runs if run.target == name]
        medians[name] = {
            label: statistics.median(_get(r, path) for r in results) for label, path, _ in METRICS
        }
    ratios: dict[str, dict[str, float]] = {}
    for label, _, higher in METRICS:
        row = [label] + [f"{medians[n][label]:,.1f}" for n in names]
        for peer in peers:
            mine, theirs = medians.get("giftrelay", {}).get(label), medians[peer][label]
            if mine is None or not mine or not theirs:
                row.append("-")
                continue
            ratio = mine / theirs if higher else theirs / mine
            ratios.setdefault(peer, {})[label] = ratio
            row.append(f"{ratio:,.2f}")
        table.add_row(*row)
    passed = ["passed" if all(r.result.passed for r in runs if r.target == n) else "FAILED"
              for n in names]  # fmt: skip
    table.add_row("checks (loss, order, money)", *passed, *["" for _ in peers])
    return table, ratios


def main(args: argparse.Namespace) -> int:
    import uvloop

    Path(args.out).mkdir(parents=True, exist_ok=True)
    runs, failures = uvloop.run(bench(args))
    table, ratios = summarise(runs)
    console.print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.out) / f"bench-{stamp}.json"
    body = {"args": vars(args), "runs": runs, "ratios": ratios, "not_completed": failures}
    path.write_bytes(msgspec.json.format(msgspec.json.encode(body), indent=2))
    console.print(f"results: {path}")
    for failure in failures:
        console.print(f"[bold red]not completed:[/] {failure}")
    return 0 if all(run.result.passed for run in runs) and not failures else 1
