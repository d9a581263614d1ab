"""``giftrelay-loadtest gifts``: the gift path's cost, against its floors, in the same run.

    giftrelay-loadtest gifts --duration 10 --repeat 3                # closed loop
    giftrelay-loadtest gifts --targets giftrelay --rate 5000         # ack p99 at 5,000/s
    giftrelay-loadtest gifts --targets giftrelay,naive --workers 2   # what Redis takes

One private ``redis-server`` (AOF on, fsync every second), flushed before each target.
Each target runs as its own process: ``echo`` (a bare websockets echo server, the floor
of any Python request/reply), ``giftrelay`` (``serve --no-ledger``) and ``naive``
(websockets + redis-py). The firehose (loadtest/drivers/firehose.py) sends them all the
same gift frames from ``--processes`` client processes. Over a ``--duration`` window
after a ``--warmup``: gifts acknowledged/s, the ack latency, the target's CPU (its
process tree, /proc) and Redis's (``INFO cpu`` and ``INFO commandstats``) per gift.
Then, as the reference for Redis, ``redis-benchmark`` runs the same gift script by
EVALSHA, every gift applied. The figures that issue 21 sets goals for are ratios
within one run, since the machine's speed moves between runs.

The relay's per-user gift limit (20/s, burst 40) stays on unless ``--relax-limits``:
more users are used instead, and in a closed loop each connection keeps under it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from rich.console import Console
from websockets.asyncio.client import connect

from giftrelay import auth
from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect

from ..drivers import firehose, procstats
from ..drivers.target import ROOT, Target, peer_command, running, serve_command, serve_env
from ..micro import bench_money
from .bench import RELAY_SETTINGS, SECRET
from .gift_figures import (
    GOAL_GIFTS_PER_CPU_S,
    CommandStat,
    Outcome,
    RedisCost,
    Reference,
    TargetRun,
    medians,
    ratios,
    tables,
)

console = Console()
TARGETS = ("echo", "giftrelay", "naive")
STREAM, CREATOR, GIFT = "gifts", "gifts_creator", "rose"
FUNDS = 10**11
USER_SHARE = 0.95
"""Of the relay's per-user gift rate that a closed-loop connection uses at most."""


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "gifts", help="the gift path: per relay CPU-second, against echo, naive and Redis",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--targets", default=",".join(TARGETS), help="[%(default)s]")
    p.add_argument("--processes", type=int, default=2, help="client processes [%(default)s]")
    p.add_argument(
        "--connections", type=int, default=700, help="per process, one user each [%(default)s]"
    )
    p.add_argument(
        "--inflight", type=int, default=2, help="gifts pipelined per connection [%(default)s]"
    )
    p.add_argument(
        "--rate", type=float, default=0.0, help="open loop: gifts/s in all; 0: closed loop"
    )
    p.add_argument("--duration", type=float, default=10.0, help="counted s [%(default)s]")
    p.add_argument("--warmup", type=float, default=3.0, help="s before counting [%(default)s]")
    p.add_argument("--workers", type=int, default=1, help="giftrelay's --workers [%(default)s]")
    p.add_argument(
        "--relax-limits", action="store_true", help="lift giftrelay's per-user gift limit too"
    )
    p.add_argument(
        "--reference-gifts", type=int, default=50_000,
        help="redis-benchmark's gifts (0: no reference) [%(default)s]",
    )  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, help="rounds over all targets [%(default)s]")
    p.add_argument("--out", default="loadtest-results", help="[%(default)s]")
    p.add_argument("--profile", action="store_true", help="record giftrelay with py-spy into --out")
    p.add_argument(
        "--cprofile", metavar="FILE", default="",
        help="run giftrelay under cProfile, its statistics written to FILE (pstats)",
    )  # fmt: skip


# -- Redis's own figures ----------------------------------------------------------------------


class _RedisSample(msgspec.Struct):
    cpu: float
    commands: dict[str, CommandStat]


async def _redis_sample(redis: Redis) -> _RedisSample:
    cpu = await redis.info("cpu")
    stats = await redis.info("commandstats")
    commands = {
        name.removeprefix("cmdstat_"): CommandStat(int(v["calls"]), int(v["usec"]))
        for name, v in stats.items()
    }
    return _RedisSample(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), commands)


def _redis_cost(before: _RedisSample, after: _RedisSample) -> RedisCost:
    commands = {}
    for name, stat in after.commands.items():
        was = before.commands.get(name, CommandStat(0, 0))
        if name != "info" and stat.calls > was.calls:
            commands[name] = CommandStat(stat.calls - was.calls, stat.usec - was.usec)
    return RedisCost(cpu_seconds=after.cpu - before.cpu, commands=commands)


# -- targets ----------------------------------------------------------------------------------


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextlib.asynccontextmanager
async def target(
    name: str, redis_url: str, args: argparse.Namespace, out: Path
) -> AsyncIterator[Target]:
    """One target on a free port, logging to ``out/gifts-NAME.log``; stopped at the end."""
    port = free_port()
    profiling = False
    if name == "giftrelay":
        settings = dict(RELAY_SETTINGS, PYTHONUNBUFFERED="1")
        if not args.relax_limits:
            del settings["GIFTRELAY_GIFT_RATE"], settings["GIFTRELAY_GIFT_BURST"]
        wrapper: list[str] = []
        spy = _py_spy() if args.profile else None
        if spy is not None:
            svg = out / f"gifts-profile-{int(time.time())}.svg"
            wrapper = [spy, "record", "--idle", "-r", "100", "-o", str(svg), "--"]
            profiling = True
        python = ["-m", "cProfile", "-o", args.cprofile] if args.cprofile else []
        argv = serve_command(
            port, redis_url=redis_url, ledger=False, workers=args.workers, wrapper=wrapper,
            python=python,
        )  # fmt: skip
        env = serve_env(SECRET, settings)
    elif name in TARGETS:
        argv, env = await peer_command(name, port, redis_url, SECRET)
    else:
        raise SystemExit(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    stop = signal.SIGINT if profiling else signal.SIGTERM  # py-spy writes on SIGINT
    async with running(
        name, argv, port=port, env=env, log=out / f"gifts-{name}.log", cwd=ROOT,
        stop_signal=stop,
    ) as started:  # fmt: skip
        yield started


def _measured(started: Target) -> list[int]:
    """The processes whose CPU is the target's: under py-spy, the relay below it."""
    if b"py-spy" not in procstats.cmdline(started.pid):
        return [started.pid]
    return [p for p in procstats.descendants(started.pid) if b"giftrelay" in procstats.cmdline(p)][
        :1
    ]


async def setup(name: str, started: Target, redis: Redis, users: list[str]) -> None:
    """The stream opened and every user funded: giftrelay's through its money core, the
    naive peer's through its admin protocol; the echo server needs nothing."""
    if name == "giftrelay":
        money = Money(redis, Settings.load({}), catalog.load())
        await money.start()
        try:
            await money.stream_open(STREAM, CREATOR, "gift firehose")
            for i in range(0, len(users), 500):
                chunk = users[i : i + 500]
                await asyncio.gather(*(money.topup(u, FUNDS, f"fund-{u}") for u in chunk))
        finally:
            await money.aclose()
    elif name == "naive":
        token = auth.mint(SECRET, "gifts_admin", auth.Role.ADMIN, ttl=3600)
        async with connect(f"{started.url}?token={token}", compression=None) as ws:
            await ws.recv()  # hello
            opened = {"type": "stream_open", "ref": "s", "stream": STREAM, "title": "gifts",
                      "creator": CREATOR}  # fmt: skip
            frames = [opened] + [
                {"type": "topup", "ref": u, "user": u, "coins": FUNDS, "id": f"fund-{u}"}
                for u in users
            ]
            for frame in frames:
                await ws.send(msgspec.json.encode(frame).decode())
            for _ in frames:
                reply = msgspec.json.decode(await ws.recv())
                if reply.get("type") not in ("stream_ok", "topup_ok"):
                    raise RuntimeError(f"naive refused the set-up: {reply}")


# -- one target, one round --------------------------------------------------------------------


def user_limit(args: argparse.Namespace) -> tuple[float, int]:
    """The client's per-connection gift rate and burst: under giftrelay's per-user limit,
    or none (0) with --relax-limits."""
    if args.relax_limits:
        return 0.0, 0
    s = Settings.load()
    return s.gift_rate * USER_SHARE, max(1, min(s.gift_burst // 2, s.gift_burst - 2))


async def measure(
    name: str, started: Target, redis: Redis, args: argparse.Namespace, r: int
) -> TargetRun:
    rate, burst = user_limit(args)
    plan = firehose.Plan(
        url=started.url, secret=SECRET, stream=STREAM, gift=GIFT,
        connections=args.connections, inflight=args.inflight,
        rate=args.rate / args.processes, user_rate=0.0 if args.rate else rate,
        user_burst=max(burst, args.inflight), hello=name != "echo",
        ok_type="gift" if name == "echo" else "gift_ok", tag=f"r{r}{name[:2]}{int(time.time())}",
    )  # fmt: skip
    pids = _measured(started)
    marks: dict[str, tuple[float, _RedisSample]] = {}

    async def mark(at: str) -> None:
        sample = procstats.sample(pids)
        marks[at] = (sample.cpu_seconds if sample else 0.0, await _redis_sample(redis))

    totals = await firehose.run(
        plan, args.processes, args.warmup, args.duration, lambda: mark("start"),
        lambda: mark("end"),
    )  # fmt: skip
    (cpu0, redis0), (cpu1, redis1) = marks["start"], marks["end"]
    cost = _redis_cost(redis0, redis1)
    acked = totals.acked
    relay_cpu = cpu1 - cpu0
    return TargetRun(
        target=name, round=r, seconds=totals.seconds, connected=totals.connected,
        sent=totals.sent, acked=acked, gifts_per_s=acked / args.duration,
        errors={**totals.errors, **totals.closed,
                **{f"connect:{k}": v for k, v in totals.connect_failures.items()}},
        unanswered=totals.unanswered,
        ack_latency_ms=totals.latency(),
        relay_cpu_seconds=relay_cpu, relay_cpu_us_per_gift=_per(relay_cpu * 1e6, acked),
        gifts_per_relay_cpu_second=_per(acked, relay_cpu),
        client_cpu_seconds=totals.client_cpu, redis=cost,
        redis_cpu_us_per_gift=_per(cost.cpu_seconds * 1e6, acked),
        redis_calls_per_gift=_per(sum(c.calls for c in cost.commands.values()), acked),
        evalsha_us_per_call=cost.per_call_us("evalsha"),
    )  # fmt: skip


def _per(amount: float, count: float) -> float:
    return amount / count if count else 0.0


async def reference(redis: Redis, port: int, gifts: int, r: int) -> Reference | None:
    """The gift script under redis-benchmark (as bench_money runs it), every gift applied."""
    settings = Settings.load({})
    money = Money(redis, settings, catalog.load())
    await money.start()
    try:
        await money.stream_open(bench_money.STREAM, bench_money.CREATOR, "benchmark")
        await money.topup(bench_money.RB_VIEWER, FUNDS, "fund-redis-benchmark")
    finally:
        await money.aclose()
    ledger = await redis.xlen(keys.LEDGER)
    before = await _redis_sample(redis)
    result = bench_money.redis_benchmark(port, gifts, 50, max_balance=settings.max_balance)
    after = await _redis_sample(redis)
    if result is None:
        return None
    applied = await redis.xlen(keys.LEDGER) - ledger
    cost = _redis_cost(before, after)
    return Reference(
        round=r, gifts=gifts, applied=applied, gifts_per_s=result.rate, redis=cost,
        redis_cpu_us_per_gift=_per(cost.cpu_seconds * 1e6, applied),
        evalsha_us_per_call=cost.per_call_us("evalsha"),
    )  # fmt: skip


# -- the run ----------------------------------------------------------------------------------


def users_needed(args: argparse.Namespace) -> None:
    """Say how many users the offered load needs under the per-user limit; warn if short."""
    rate, _ = user_limit(args)
    have = args.processes * args.connections
    if not rate:
        console.log(f"{have:,} users; per-user gift limit lifted (--relax-limits)")
        return
    if args.rate:
        need = math.ceil(args.rate / rate)
        what = f"{args.rate:,.0f} gifts/s offered"
    else:
        need = math.ceil(GOAL_GIFTS_PER_CPU_S * args.workers / rate)
        what = f"{GOAL_GIFTS_PER_CPU_S * args.workers:,} gifts/s (issue 21's goal per worker)"
    console.log(
        f"{have:,} users at most {rate:g} gifts/s each: up to {have * rate:,.0f} gifts/s; "
        f"{what} needs {need:,} users"
    )
    if have < need:
        console.log(
            f"[yellow]warning: {have:,} users are too few for {what}: raise --connections "
            f"to {math.ceil(need / args.processes):,} (or --relax-limits)[/]"
        )


async def gifts(args: argparse.Namespace) -> Outcome:
    out = Path(args.out)
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    users = firehose.all_users(args.processes, args.connections)
    outcome = Outcome([], [], [])
    if args.profile and _py_spy() is None:
        console.log("[yellow]--profile: py-spy is not installed; giftrelay runs unprofiled[/]")
    users_needed(args)
    with tempfile.TemporaryDirectory(prefix="giftrelay-gifts-") as tmp:
        redis_server = RedisServer(Path(tmp) / "redis", appendonly=True)
        redis_server.start()
        redis = redis_connect(redis_server.url)
        try:
            for r in range(1, args.repeat + 1):
                for name in names:
                    await redis.flushall()
                    await redis.config_resetstat()
                    console.log(f"round {r}: {name} ...")
                    try:
                        async with target(name, redis_server.url, args, out) as started:
                            await setup(name, started, redis, users)
                            run = await measure(name, started, redis, args, r)
                    except (RuntimeError, TimeoutError, OSError) as exc:
                        console.log(f"  {name}: the run could not be completed: {exc!r}")
                        outcome.not_completed.append(f"{name} round {r}: {exc!r}")
                        continue
                    outcome.runs.append(run)
                    console.log(_one_line(run))
                if args.reference_gifts:
                    await redis.flushall()
                    ref = await reference(redis, redis_server.port, args.reference_gifts, r)
                    if ref is not None:
                        outcome.references.append(ref)
                        console.log(
                            f"  redis-benchmark: {ref.gifts_per_s:,.0f} gifts/s, "
                            f"{ref.redis_cpu_us_per_gift:.1f} µs of Redis CPU per gift"
                        )
        finally:
            await redis.aclose()
            redis_server.stop()
    return outcome


def _one_line(run: TargetRun) -> str:
    errors = sum(run.errors.values())
    return (
        f"  {run.target}: {run.gifts_per_s:,.0f} gifts/s, {run.relay_cpu_us_per_gift:.1f} µs "
        f"of its CPU per gift, Redis {run.redis_cpu_us_per_gift:.1f} µs, ack p99 "
        f"{run.ack_latency_ms.p99:.1f} ms, {errors:,} errors"
    )


def main(args: argparse.Namespace) -> int:
    import uvloop

    if args.processes < 1 or args.connections < 1 or not 1 <= args.inflight <= 64:
        console.print("--processes and --connections >= 1; --inflight 1-64 (the relay's cap)")
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    outcome = uvloop.run(gifts(args))
    figures, goals = tables(outcome, args)
    console.print(figures)
    console.print(goals)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(args.out) / f"gifts-{stamp}.json"
    body = {
        "args": vars(args),
        "runs": outcome.runs,
        "references": outcome.references,
        "medians": medians(outcome),
        "ratios": ratios(medians(outcome), args),
        "not_completed": outcome.not_completed,
    }
    path.write_bytes(msgspec.json.format(msgspec.json.encode(body), indent=2))
    console.print(f"results: {path}")
    for failure in outcome.not_completed:
        console.print(f"[bold red]not completed:[/] {failure}")
    return 1 if outcome.not_completed else 0
