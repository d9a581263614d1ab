"""Soak: hours of moderate load against one relay; RSS, ledger lag and latency over time.

    python -m loadtest.soak [--minutes 60] [--viewers 200] [--rate 50] [--gifters 20]
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

Every ``--interval`` seconds it prints (and writes to ``--csv``) the relay's and
Redis's RSS, the ledger lag (entries the consumer group has not acknowledged),
gifts acknowledged, latency p50/p99/max of that interval and reconnects, and what
tells where a late event was held: this process's own longest event-loop stall and
garbage collection (a stall here delays the reading, not the relay), the events that
reached the relay's fan-out over 250 ms after their gift (its
``giftrelay_fanout_lag_seconds``: held before the relay wrote them), and Redis's AOF
rewrites, delayed fsyncs and latest fork time. At the end
it stops the load and checks the money: each gifter's balance = top-up - the coins
of its acknowledged gifts, the creator's diamonds = those coins x the rate, each
measuring viewer saw every acknowledged gift exactly once, and ``giftrelay
reconcile`` exits 0. Exit status 0 only when all of that holds.

Ctrl-C (or SIGTERM) ends the load early and still runs every check on what ran
(exit status 130 when they pass); a second Ctrl-C stops at once, relay and all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import gc
import secrets
import signal
import sys
import tempfile
import time
import urllib.request
from array import array
from pathlib import Path
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from giftrelay import auth, keys
from giftrelay.redis_client import connect as redis_connect
from loadtest.drivers import procstats
from loadtest.drivers.target import Target, TargetFailed, serve_command, serve_env, start

STREAM = "soak"
CREATOR = "soak-creator"
TOPUP = 10**10
PRICE = 1  # "rose"
_decode = msgspec.json.Decoder()


def rss_kb(pid: int) -> int:
    return procstats.rss_bytes(pid) // 1024


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(map(str, parts)) + "\n")
    sys.stdout.flush()


class Latencies:
    """Gift->viewer latency of the measuring viewers, per interval and for the whole run.

    Histograms, not lists: an hour of events kept as Python objects made this
    process's own garbage collections longer and longer, and a reading taken during
    one arrives late.
    """

    def __init__(self) -> None:
        self.interval = HdrHistogram(1, 3_600_000_000, 3)  # microseconds
        self.total = HdrHistogram(1, 3_600_000_000, 3)

    def record(self, ms: float) -> None:
        us = max(1, int(ms * 1000))
        self.interval.record_value(us)
        self.total.record_value(us)

    @staticmethod
    def ms(h: HdrHistogram, q: float | None) -> float:
        """Percentile ``q`` (None: the max) in ms; NaN when nothing was recorded."""
        if not h.get_total_count():
            return float("nan")
        return float(h.get_max_value() if q is None else h.get_value_at_percentile(q)) / 1000

    def take(self) -> tuple[float, float, float]:
        """This interval's p50, p99 and max, and a new interval."""
        h = self.interval
        taken = (self.ms(h, 50), self.ms(h, 99), self.ms(h, None))
        h.reset()
        return taken


LATENCY = Latencies()


def gift_code(gift_id: str) -> int:
    """A gifter's gift id (``gifter<g>-<n>``) as one integer, to keep in an array."""
    user, _, n = gift_id.rpartition("-")
    return int(user.removeprefix("gifter")) * 10**9 + int(n)


class Stalls:
    """This process's longest event-loop stall and garbage collection per interval."""

    def __init__(self) -> None:
        self.loop_ms = 0.0
        self.gc_ms = 0.0
        self._gc_start = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_ms = max(self.gc_ms, (time.perf_counter() - self._gc_start) * 1000)

    async def watch(self, stop: asyncio.Event) -> None:
        """Sleeps of 10 ms: how much later than that one ends is how long the loop stalled."""
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            self.loop_ms = max(self.loop_ms, (time.perf_counter() - t - 0.01) * 1000)

    def take(self) -> tuple[float, float]:
        taken = (self.loop_ms, self.gc_ms)
        self.loop_ms = self.gc_ms = 0.0
        return taken


LATE_BUCKET = 'giftrelay_fanout_lag_seconds_bucket{le="0.25"}'


def late_at_relay(http: str) -> int:
    """Events that reached the relay's fan-out over 250 ms after their gift, so far."""
    try:
        with urllib.request.urlopen(f"{http}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1
    count = within = 0.0
    for line in text.splitlines():
        if line.startswith("giftrelay_fanout_lag_seconds_count"):
            count += float(line.split()[-1])
        elif line.startswith(LATE_BUCKET):
            within += float(line.split()[-1])
    return int(count - within)


async def redis_persistence(redis: Any) -> tuple[int, int, float]:
    """Redis's AOF rewrites and delayed fsyncs so far, and its latest fork in ms."""
    try:
        info = {**await redis.info("persistence"), **await redis.info("stats")}
    except Exception:
        return -1, -1, float("nan")
    return (
        int(info.get("aof_rewrites", -1)),
        int(info.get("aof_delayed_fsync", -1)),
        int(info.get("latest_fork_usec", 0)) / 1000,
    )


class Viewer:
    """A viewer that keeps watching: reconnects with ``since`` whenever it is closed."""

    def __init__(self, url: str, measuring: bool) -> None:
        self.url = url
        self.measuring = measuring
        self.last: str | None = None
        self.received = array("q")
        """Every gift event's id (:func:`gift_code`), in the order it arrived."""
        self.reconnects = 0
        self.out_of_order = 0
        self.unrecovered = 0
        self.join_errors = 0
        self.joined = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with connect(self.url, max_size=None, open_timeout=30) as ws:
                    await ws.recv()  # hello
                    join: dict[str, Any] = {"type": "join", "stream": STREAM, "ref": "j"}
                    if self.last is not None and self.measuring:
                        join["since"] = self.last
                    await ws.send(msgspec.json.encode(join).decode())
                    await self._read(ws, stop)
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            if not stop.is_set():
                self.reconnects += 1
                await asyncio.sleep(0.2)  # a client's reconnect pause

    async def _read(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        stopper = asyncio.create_task(stop.wait())
        try:
            while True:
                getter = asyncio.create_task(ws.recv())
                done, _ = await asyncio.wait({getter, stopper}, return_when="FIRST_COMPLETED")
                if getter not in done:
                    getter.cancel()
                    return
                raw = getter.result()
                if not self.measuring and self.joined.is_set():
                    continue
                msg = _decode.decode(raw)
                if msg["type"] == "error" and msg.get("ref") == "j":
                    self.join_errors += 1  # e.g. unavailable: join again, as a client does
                    return
                if msg["type"] == "joined":
                    self.joined.set()
                    if self.measuring and self.last is not None and not msg["recovered"]:
                        self.unrecovered += 1
                    self._events(msg["missed"], time.time() * 1000)
                    if self.last is None:
                        self.last = msg["offset"]
                elif msg["type"] == "events":
                    self._events(msg["events"], time.time() * 1000)
        finally:
            stopper.cancel()

    def _events(self, events: list[dict[str, Any]], now_ms: float) -> None:
        for e in events:
            if e["kind"] == "gift":
                if self.last is not None and _key(e["offset"]) <= _key(self.last):
                    self.out_of_order += 1
                self.received.append(gift_code(e["id"]))
                if self.measuring:
                    LATENCY.record(now_ms - e["ts"])
                self.last = e["offset"]


def _key(offset: str) -> tuple[int, int]:
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


class Gifter:
    def __init__(self, url: str, user: str) -> None:
        self.url = url
        self.user = user
        self.acked = array("q")
        """Acknowledged gifts (:func:`gift_code`)."""
        self.spent = 0
        self.refused = 0
        self.unavailable = 0
        self.n = 0

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                async with connect(self.url, max_size=None, open_timeout=30) as ws:
                    await ws.recv()
                    while not stop.is_set():
                        next_at += interval
                        gift_id = f"{self.user}-{self.n:09d}"
                        await self._send(ws, gift_id)
                        self.n += 1
                        delay = next_at - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)  # pacing the load
                        else:
                            next_at = time.monotonic()
            except (ConnectionClosed, OSError, TimeoutError):
                await asyncio.sleep(0.2)

    async def _send(self, ws: ClientConnection, gift_id: str) -> None:
        message = {"type": "gift", "stream": STREAM, "gift": "rose", "id": gift_id, "ref": gift_id}
        while True:  # the same id until answered: idempotent
            await ws.send(msgspec.json.encode(message).decode())
            try:
                async with asyncio.timeout(10):
                    while True:
                        reply = _decode.decode(await ws.recv())
                        if reply.get("ref") == gift_id:
                            break
            except TimeoutError:
                self.unavailable += 1
                continue
            if reply["type"] == "gift_ok":
                self.acked.append(gift_code(gift_id))
                self.spent += reply["coins"]
                return
            if reply["code"] in ("unavailable", "rate_limited"):
                self.unavailable += 1
                await asyncio.sleep(0.1)
                continue
            self.refused += 1
            return


async def ledger_lag(redis: Any) -> int:
    try:
        for group in await redis.xinfo_groups(keys.LEDGER):
            if group["name"] == keys.LEDGER_GROUP:
                return int(group["pending"]) + int(group.get("lag") or 0)
    except Exception:
        return -1
    return -1


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


async def main_async(args: argparse.Namespace) -> int:
    home = Path(tempfile.mkdtemp(prefix="giftrelay-soak-"))
    secret = secrets.token_urlsafe(32)
    ledger = {"GIFTRELAY_LEDGER_URL": args.ledger_url} if args.ledger_url else None
    env = serve_env(secret, ledger, var=home / "var")
    relay = await start_serve(args, home, env)
    try:
        return await drive(args, relay, secret, env, home)
    finally:
        relay.kill()  # if it failed or was forced: leave no relay behind


async def drive(
    args: argparse.Namespace,
    relay: Target,
    secret: str,
    env: dict[str, str],
    home: Path,
) -> int:
    """Sets up the stream, runs the load for ``--minutes`` (or until a signal), checks it."""
    ws_url, redis_url = relay.banner["websocket"], relay.banner["redis"]
    redis = redis_connect(redis_url)
    say(f"soak: relay {ws_url} (pid {relay.pid}), redis {redis_url}, home {home}")

    def tok(sub: str, role: auth.Role) -> str:
        return auth.mint(secret, sub, role, ttl=86400 * 2)

    admin_url = f"{ws_url}?token={tok('admin', auth.Role.ADMIN)}"
    async with connect(admin_url) as ws:
        await ws.recv()
        setup: list[dict[str, Any]] = [
            {"type": "stream_open", "stream": STREAM, "title": "soak", "creator": CREATOR}
        ]
        setup += [
            {"type": "topup", "user": f"gifter{g}", "coins": TOPUP, "id": f"soak-topup-{g:04d}"}
            for g in range(args.gifters)
        ]
        for m in setup:
            await ws.send(msgspec.json.encode(m).decode())
            reply = _decode.decode(await ws.recv())
            assert reply["type"] in ("stream_ok", "topup_ok"), reply
    before = await redis.hgetall(keys.wallet(CREATOR))
    diamonds_before = int(before.get("diamonds", 0))

    stop_viewers = asyncio.Event()
    stop_gifts = asyncio.Event()
    measuring = max(10, args.viewers // 10)
    viewers = [Viewer(ws_url, i < measuring) for i in range(args.viewers)]
    tasks = [asyncio.create_task(v.run(stop_viewers)) for v in viewers]
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(v.joined.wait() for v in viewers))
    except TimeoutError:
        joined = sum(v.joined.is_set() for v in viewers)
        lost = [v.reconnects for v in viewers if not v.joined.is_set()][:5]
        raise SystemExit(f"only {joined}/{len(viewers)} viewers joined in 120 s ({lost})") from None
    start_refusals = sum(v.join_errors for v in viewers)
    for v in viewers:  # from here on, count reconnects of the steady state
        v.reconnects = v.join_errors = 0
    say(f"soak: {len(viewers)} viewers joined ({start_refusals} joins refused at start)")
    gifters = [
        Gifter(f"{ws_url}?token={tok(f'gifter{g}', auth.Role.VIEWER)}", f"gifter{g}")
        for g in range(args.gifters)
    ]
    interval = args.gifters / args.rate
    gift_tasks = [asyncio.create_task(g.run(stop_gifts, interval)) for g in gifters]

    out = open(args.csv, "w", newline="")  # noqa: SIM115, ASYNC230 - once, at start
    writer = csv.writer(out)
    columns = ["elapsed_s", "relay_rss_mb", "redis_rss_mb", "ledger_lag", "gifts_acked",
               "gifts_per_s", "lat_p50_ms", "lat_p99_ms", "lat_max_ms", "reconnects",
               "retries", "soak_loop_stall_ms", "soak_gc_max_ms", "late_at_relay",
               "aof_rewrites", "aof_delayed_fsync", "redis_fork_ms"]  # fmt: skip
    writer.writerow(columns)
    say(" ".join(f"{c:>12}" for c in columns))
    started = time.monotonic()
    end = started + args.minutes * 60
    last_acked = 0
    last_t = started
    peak_relay = 0.0
    peak_lag = 0
    http = ws_url.replace("ws://", "http://", 1).rsplit("/", 1)[0]
    late_before = await asyncio.to_thread(late_at_relay, http)
    stalls = Stalls()
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(stalls.watch(stop_watch))
    stalls.take()
    interrupted = asyncio.Event()

    def on_signal() -> None:
        if interrupted.is_set():
            raise SystemExit(130)  # a second signal: stop now (main_async kills the relay)
        say("\nsoak: stopping early; checking what ran (a second Ctrl-C stops at once)")
        interrupted.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    while time.monotonic() < end and not interrupted.is_set():
        with contextlib.suppress(TimeoutError):
            wait = min(args.interval, max(0.0, end - time.monotonic()))
            await asyncio.wait_for(interrupted.wait(), wait)
        now = time.monotonic()
        p50, p99, top = LATENCY.take()
        pids = procstats.tree([relay.pid])
        redis_kb = sum(rss_kb(p) for p in pids if procstats.comm(p).startswith("redis"))
        relay_kb = sum(rss_kb(p) for p in pids if not procstats.comm(p).startswith("redis"))
        acked = sum(len(g.acked) for g in gifters)
        lag = await ledger_lag(redis)
        loop_ms, gc_ms = stalls.take()
        late = await asyncio.to_thread(late_at_relay, http)
        rewrites, delayed, fork_ms = await redis_persistence(redis)
        peak_relay = max(peak_relay, relay_kb / 1024)
        peak_lag = max(peak_lag, lag)
        row = [
            round(now - started),
            round(relay_kb / 1024, 1),
            round(redis_kb / 1024, 1),
            lag,
            acked,
            round((acked - last_acked) / max(1e-9, now - last_t), 1),
            round(p50, 1),
            round(p99, 1),
            round(top, 1),
            sum(v.reconnects for v in viewers),
            sum(g.unavailable for g in gifters),
            round(loop_ms, 1),
            round(gc_ms, 1),
            late - late_before if late >= 0 and late_before >= 0 else -1,
            rewrites,
            delayed,
            round(fork_ms, 1),
        ]
        late_before = late
        writer.writerow(row)
        out.flush()
        say(" ".join(f"{c:>12}" for c in row))
        last_acked, last_t = acked, now

    # Stop the gifts, let the last events arrive, then check everything.
    stop_watch.set()
    await watcher
    stop_gifts.set()
    await asyncio.gather(*gift_tasks)
    acked_ids = {c for g in gifters for c in g.acked}
    problems: list[str] = []
    deadline = time.monotonic() + 30
    measured = [v for v in viewers if v.measuring]
    while time.monotonic() < deadline:  # polling viewers that are fed by their own tasks
        if all(acked_ids <= set(v.received) for v in measured):
            break
        await asyncio.sleep(0.2)
    stop_viewers.set()
    await asyncio.gather(*tasks)
    for i, v in enumerate(measured):
        ids = v.received
        if len(ids) != len(set(ids)):
            problems.append(f"viewer {i}: {len(ids) - len(set(ids))} duplicate gift events")
        if missing := acked_ids - set(ids):
            problems.append(f"viewer {i}: {len(missing)} acknowledged gifts never arrived")
        if v.out_of_order:
            problems.append(f"viewer {i}: {v.out_of_order} gift events out of order")
        if v.unrecovered:
            problems.append(f"viewer {i}: {v.unrecovered} rejoins could not recover")
    coins = 0
    for g in gifters:
        spent = g.spent
        coins += spent
        wallet = await redis.hgetall(keys.wallet(g.user))
        if int(wallet.get("coins", 0)) != TOPUP - spent:
            problems.append(f"{g.user}: coins {wallet.get('coins')!s} != {TOPUP} - {spent}")
    creator = await redis.hgetall(keys.wallet(CREATOR))
    if int(creator.get("diamonds", 0)) - diamonds_before != coins:  # diamonds_per_coin = 1
        problems.append(f"creator diamonds {creator.get('diamonds')!s} != {coins}")
    result = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "reconcile", "--wait", "120",
        env={**env, **({"GIFTRELAY_REDIS_URL": args.redis_url} if args.redis_url else {})},
        cwd=home, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    reconcile_out = (await result.communicate())[0].decode()
    if result.returncode != 0:
        problems.append("reconcile failed:\n" + reconcile_out)
    code = await relay.stop(within=60, force=False)
    if code != 0:
        problems.append(f"serve exited with {code}")
    await redis.aclose()
    out.close()
    minutes = (time.monotonic() - started) / 60
    total = LATENCY.total
    say(
        f"\nsoak: {minutes:.1f} min, {len(acked_ids)} gifts acknowledged "
        f"({sum(g.refused for g in gifters)} refused, "
        f"{sum(g.unavailable for g in gifters)} retries), {args.viewers} viewers, "
        f"{sum(v.reconnects for v in viewers)} reconnects "
        f"({sum(v.join_errors for v in viewers)} joins refused); "
        f"peak relay RSS {peak_relay:.1f} MB, "
        f"peak ledger lag {peak_lag}; latency p50 {LATENCY.ms(total, 50):.1f} ms "
        f"p99 {LATENCY.ms(total, 99):.1f} ms p99.9 {LATENCY.ms(total, 99.9):.1f} ms "
        f"max {LATENCY.ms(total, None):.1f} ms"
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--gifters", type=int, default=20)
    parser.add_argument("--rate", type=float, default=50, help="gifts per second in total")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--interval", type=float, default=30, help="seconds between samples")
    parser.add_argument("--csv", default="soak.csv")
    parser.add_argument("--redis-url", help="a Redis of your own (default: embedded)")
    parser.add_argument("--ledger-url", help="a ledger store (default: SQLite in the temp dir)")
    args = parser.parse_args()
    if args.port == 0:
        from giftrelay.embedded import free_port

        args.port = free_port()
    try:
        sys.exit(asyncio.run(main_async(args)))
    except KeyboardInterrupt:  # during setup, before the soak handles signals itself
        sys.exit(130)


if __name__ == "__main__":
    main()
