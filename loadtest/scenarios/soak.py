"""Soak: hours of moderate load against one relay; RSS, ledger lag and latency over time.

    giftrelay-loadtest soak [--minutes 60] [--viewers 200] [--rate 50] [--gifters 20]
                            [--workers 1] [--interval 30] [--csv soak.csv]
                            [--redis-url URL --ledger-url URL]

It starts ``giftrelay serve`` in a temporary directory (its embedded Redis with AOF
and its in-process ledger consumer on SQLite; or the given Redis and ledger, with
the consumer in-process), opens one live stream and drives it:

* ``--gifters`` WebSocket connections sending ``--rate`` gifts per second in total
  (the full money path), each reply awaited; an ``unavailable`` or a time-out is
  retried with the same id, so every gift ends acknowledged or refused;
* ``--viewers`` viewers joined to the stream; a tenth of them (at least 10) decode
  every frame, check each gift arrives once and in order and record gift->viewer
  latency (arrival time - the event's ``ts``); the rest read and discard frames.
  A viewer that is closed reconnects with ``since`` and counts a reconnect.

Every ``--interval`` seconds it prints (and writes to ``--csv``) a row of
:mod:`loadtest.scenarios.soak_rows`: RSS, ledger lag, gifts, latency, reconnects, and what
tells where a late event was held. At the end it stops the load and checks the
money: each gifter's balance = top-up - the coins of its acknowledged gifts, the
creator's diamonds = those coins x the rate, each measuring viewer saw every
acknowledged gift exactly once, and ``giftrelay reconcile`` exits 0. Exit status 0
only when all of that holds.

Ctrl-C (or SIGTERM) ends the load early and still runs every check on what ran
(exit status 130 when they pass); a second Ctrl-C stops at once, relay and all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from giftrelay import auth
from giftrelay.client import Client
from giftrelay.money import keys
from giftrelay.redis_client import connect as redis_connect

from ..drivers.connection import Connection
from ..drivers.gifter import Book, Gifter
from ..drivers.target import Target, TargetFailed, serve_command, serve_env, start
from ..drivers.viewer import Expected, Meter, Viewer, Watcher, drain
from .soak_rows import Samples, say

STREAM = "soak"
CREATOR = "soak-creator"
TOPUP = 10**10
Token = Callable[[str, auth.Role], str]


def add_parser(commands: Any) -> None:
    p = commands.add_parser(
        "soak", help="hours of moderate load: RSS, ledger lag and latency over time",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--viewers", type=int, default=200)
    p.add_argument("--gifters", type=int, default=20)
    p.add_argument("--rate", type=float, default=50, help="gifts per second in total")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--port", type=int, default=0, help="0: a free port")
    p.add_argument("--interval", type=float, default=30, help="seconds between samples")
    p.add_argument("--csv", default="soak.csv")
    p.add_argument("--redis-url", help="a Redis of your own (default: embedded)")
    p.add_argument("--ledger-url", help="a ledger store (default: SQLite in the temp dir)")


def main(args: argparse.Namespace) -> int:
    if args.port == 0:
        from giftrelay.embedded import free_port

        args.port = free_port()
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:  # during setup, before the soak handles signals itself
        return 130


async def run(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="giftrelay-soak-"))
    secret = secrets.token_urlsafe(32)
    ledger = {"GIFTRELAY_LEDGER_URL": args.ledger_url} if args.ledger_url else None
    env = serve_env(secret, ledger, var=home / "var")
    relay = await start_serve(args, home, env)
    try:
        return await soak(args, relay, secret, env, home)
    finally:
        relay.kill()  # if it failed or was forced: leave no relay behind


async def start_serve(args: argparse.Namespace, home: Path, env: dict[str, str]) -> Target:
    """``giftrelay serve`` in ``home``, in a session of its own: a terminal's Ctrl-C reaches
    the soak, which stops it in order."""
    argv = serve_command(
        args.port, workers=args.workers, redis_url=args.redis_url or None,
        ledger=True if args.redis_url else None,
    )  # fmt: skip
    try:
        return await start(
            "giftrelay", argv, port=args.port, env=env, log=home / "serve.log", cwd=home,
            new_session=True,
        )  # fmt: skip
    except TargetFailed as exc:
        raise SystemExit(str(exc)) from None


async def soak(
    args: argparse.Namespace, relay: Target, secret: str, env: dict[str, str], home: Path
) -> int:
    """Sets up the stream, runs the load for ``--minutes`` (or until a signal), checks it."""
    ws_url, redis_url = relay.banner["websocket"], relay.banner["redis"]
    redis = redis_connect(redis_url)
    say(f"soak: relay {ws_url} (pid {relay.pid}), redis {redis_url}, home {home}")

    def token(sub: str, role: auth.Role) -> str:
        return auth.mint(secret, sub, role, ttl=86400 * 2)

    await open_stream(ws_url, token, args.gifters)
    diamonds_before = await diamonds(redis, CREATOR)
    load = Load(ws_url, args, token)
    await load.join()
    load.start_gifts()
    samples = Samples(
        Path(args.csv), relay.pid, relay.http, redis, load.meter, load.book, load.watchers,
        load.gifters,
    )  # fmt: skip
    await samples.start()
    interrupted = stop_on_signals()
    end = samples.started + args.minutes * 60
    while time.monotonic() < end and not interrupted.is_set():
        with contextlib.suppress(TimeoutError):
            wait = min(args.interval, max(0.0, end - time.monotonic()))
            await asyncio.wait_for(interrupted.wait(), wait)
        await samples.row()
    await samples.stop()

    expected = await load.stop()
    problems = load.problems(expected)
    problems += await check_money(redis, load, diamonds_before)
    reconciled, reconcile_out = await reconcile(args, env, home)
    if not reconciled:
        problems.append("reconcile failed:\n" + reconcile_out)
    code = await relay.stop(within=60, force=False)
    if code != 0:
        problems.append(f"serve exited with {code}")
    await redis.aclose()
    minutes = (time.monotonic() - samples.started) / 60
    say(load.summary(minutes, samples))
    say(reconcile_out.strip())
    for p in problems:
        say("PROBLEM:", p)
    if problems:
        say(f"soak: FAILED ({len(problems)} problems)")
        return 1
    if interrupted.is_set():
        say(f"soak: OK for the {minutes:.1f} minutes it ran, stopped early")
        return 130
    say("soak: OK")
    return 0


def stop_on_signals() -> asyncio.Event:
    """Set by Ctrl-C or SIGTERM, which end the load early; a second one stops at once
    (:func:`run` kills the relay then)."""
    interrupted = asyncio.Event()

    def on_signal() -> None:
        if interrupted.is_set():
            raise SystemExit(130)
        say("\nsoak: stopping early; checking what ran (a second Ctrl-C stops at once)")
        interrupted.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    return interrupted


async def open_stream(url: str, token: Token, gifters: int) -> None:
    """The stream, and a top-up for each gifter, by an admin."""
    async with Client(url, token("admin", auth.Role.ADMIN), reconnect=False) as admin:
        await admin.stream_open(STREAM, "soak", creator=CREATOR)
        for g in range(gifters):
            await admin.topup(f"gifter{g}", TOPUP, f"soak-topup-{g:04d}")


async def diamonds(redis: Any, user: str) -> int:
    return int((await redis.hgetall(keys.wallet(user))).get("diamonds", 0))


class Load:
    """The soak's viewers (a tenth of them, at least 10, measuring; the others sinks)
    and its gifters, on one stream."""

    def __init__(self, url: str, args: argparse.Namespace, token: Token) -> None:
        self.meter = Meter()
        self.book = Book()
        measuring = max(10, args.viewers // 10)
        self.watchers = [
            Watcher(url, STREAM, Viewer(STREAM, self.meter) if i < measuring else None,
                    open_timeout=30, pause=0.2, rejoin_after=0.2)
            for i in range(args.viewers)
        ]  # fmt: skip
        self.viewers = [w.viewer for w in self.watchers if w.viewer is not None]
        users = [f"gifter{g}" for g in range(args.gifters)]
        self.gifters = [
            Gifter(Connection(url, token(user, auth.Role.VIEWER), open_timeout=30), user,
                   self.book, pause=(0.1, 0.1))
            for user in users
        ]  # fmt: skip
        self.interval = args.gifters / args.rate
        self.stopping = asyncio.Event()
        self.gifting: list[asyncio.Task[None]] = []

    async def join(self, within: float = 120.0) -> None:
        """Every viewer joined; their reconnects are counted from here on."""
        for w in self.watchers:
            w.start()
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*(w.joined.wait() for w in self.watchers))
        except TimeoutError:
            joined = sum(w.joined.is_set() for w in self.watchers)
            refused = sum((w.join_refusals for w in self.watchers), start=Counter[str]())
            message = f"only {joined}/{len(self.watchers)} viewers joined in {within:g} s"
            raise SystemExit(f"{message} (joins refused: {dict(refused)})") from None
        refusals = sum(sum(w.join_refusals.values()) for w in self.watchers)
        for w in self.watchers:
            w.reconnects = 0
            w.join_refusals.clear()
        say(f"soak: {len(self.watchers)} viewers joined ({refusals} joins refused at start)")

    def start_gifts(self) -> None:
        for g in self.gifters:

            def name(n: int, user: str = g.user) -> str:
                return f"{user}-{n:09d}"

            self.gifting.append(
                asyncio.create_task(g.paced(self.stopping, STREAM, self.interval, name))
            )

    async def stop(self) -> Expected:
        """Stop the gifts (each settled), let the last events arrive, stop the viewers."""
        self.stopping.set()
        await asyncio.gather(*self.gifting)
        expected = Expected({STREAM: self.book.acked.get(STREAM, array("q"))})
        await drain(self.viewers, expected, 30)
        await asyncio.gather(*(w.stop() for w in self.watchers))
        return expected

    def problems(self, expected: Expected) -> list[str]:
        """Each measuring viewer saw every acknowledged gift once, in order."""
        problems = []
        for i, viewer in enumerate(self.viewers):
            d = viewer.check(expected)
            if d.duplicates:
                problems.append(f"viewer {i}: {d.duplicates} duplicate gift events")
            if d.lost:
                problems.append(f"viewer {i}: {d.lost} acknowledged gifts never arrived")
            if d.order_violations:
                problems.append(f"viewer {i}: {d.order_violations} gift events out of order")
            if d.not_recovered:
                problems.append(f"viewer {i}: {d.not_recovered} rejoins could not recover")
        return problems

    def summary(self, minutes: float, samples: Samples) -> str:
        lat = samples.total()

        def ms(value: float) -> str:
            return f"{value if lat.count else float('nan'):.1f} ms"

        return (
            f"\nsoak: {minutes:.1f} min, {self.book.gifts} gifts acknowledged "
            f"({sum(sum(g.refused.values()) for g in self.gifters)} refused, "
            f"{sum(g.retries for g in self.gifters)} retries), {len(self.watchers)} viewers, "
            f"{sum(w.reconnects for w in self.watchers)} reconnects "
            f"({sum(sum(w.join_refusals.values()) for w in self.watchers)} joins refused); "
            f"peak relay RSS {samples.peak_relay_mb:.1f} MB, "
            f"peak ledger lag {samples.peak_lag}; latency p50 {ms(lat.p50)} "
            f"p99 {ms(lat.p99)} p99.9 {ms(lat.p999)} max {ms(lat.max)}"
        )


async def check_money(redis: Any, load: Load, diamonds_before: int) -> list[str]:
    """Each gifter's coins = top-up - its acknowledged gifts; the creator's diamonds grew
    by their coins (diamonds_per_coin = 1)."""
    problems = []
    for g in load.gifters:
        wallet = await redis.hgetall(keys.wallet(g.user))
        if int(wallet.get("coins", 0)) != TOPUP - g.spent:
            problems.append(f"{g.user}: coins {wallet.get('coins')!s} != {TOPUP} - {g.spent}")
    credited = await diamonds(redis, CREATOR) - diamonds_before
    if credited != load.book.coins:
        problems.append(f"creator diamonds grew by {credited} != {load.book.coins}")
    return problems


async def reconcile(args: argparse.Namespace, env: dict[str, str], home: Path) -> tuple[bool, str]:
    """``giftrelay reconcile``, with the relay's environment."""
    redis = {"GIFTRELAY_REDIS_URL": args.redis_url} if args.redis_url else {}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "reconcile", "--wait", "120", env=env | redis,
        cwd=home, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out = (await proc.communicate())[0].decode()
    return proc.returncode == 0, out
