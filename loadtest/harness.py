"""The coordinator: sets a relay up over its own protocol, drives worker processes, verifies.

One run: open streams and fund gifters through an admin connection, start one
worker process per core, connect the viewers (measuring the relay's memory per
idle connection), send gifts on the scenario's schedule, stop, settle every gift's
outcome, let each viewer catch up and check what it received against what was
acknowledged, then prove conservation: coins spent = diamonds credited.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
import msgspec

from giftrelay import auth
from giftrelay.client import Client

from . import wire
from .drivers.viewer import LATENCY_UNIT_MS, percentile, summarise_latency
from .relaystats import RelaySampler, Sample
from .result import (
    Checks,
    Conservation,
    Delivery,
    GiftTotals,
    Reconcile,
    RelayUsage,
    Result,
    Step,
    TimePoint,
)

SCENARIOS = ("busy-stream", "many-streams", "reconnect-storm", "slow-readers", "ramp")
ROOT = str(Path(__file__).resolve().parent.parent)
"""Workers run ``-m loadtest.worker`` from here, installed or not."""
FUNDS = 10**9
"""Coins per gifter: never the limit, and well inside the relay's ``max_balance``."""


PASSING_ERRORS = frozenset({"rate_limited", "unavailable"})
"""Refusals a busy or recovering relay may give without the run failing (they are retried)."""


class Options(msgspec.Struct, kw_only=True):
    scenario: str = "busy-stream"
    url: str = "ws://127.0.0.1:8080/ws"
    flavour: str = "giftrelay"
    secret: str | None = None
    admin_token: str | None = None
    gifter_tokens: list[str] | None = None
    allow_host: str | None = None
    viewers: int = 100
    gift_rate: float = 100.0
    """Gifts per second for the whole run; a negative value: as fast as answers come."""
    inflight: int = 4
    duration: float = 10.0
    streams: int = 1
    processes: int = 0
    """0: one per core."""
    gifts_per_user: float = 10.0
    gifters: int = 0
    """0: enough for ``gift_rate`` at ``gifts_per_user`` (the relay limits gifts per user)."""
    gift: str = "rose"
    diamonds_per_coin: str = "1"
    slow_share: float = 0.0
    slow_delay: float = 0.05
    storm_at: float = 0.3
    """Share of the duration after which the storm starts."""
    storm_window: float = 2.0
    step_seconds: float = 5.0
    max_steps: int = 10
    limit_p99: float = 150.0
    """Ramp: a step whose p99 (ms) passes this is past the knee."""
    min_delivery: float = 0.95
    max_p99: float | None = None
    drain_timeout: float = 15.0
    connect_rate: float = 500.0
    retry_for: float = 10.0
    relay_pid: list[int] | None = None
    metrics_url: str | None = None
    reconcile: bool = False
    out: str | None = "loadtest-results"
    name: str | None = None
    quiet: bool = False

    def limits(self) -> None:
        """Bounded counts and durations: a typo must not open a million sockets."""
        checks = [
            (1 <= self.viewers <= 200_000, "--viewers must be 1..200000"),
            (1 <= self.streams <= 10_000, "--streams must be 1..10000"),
            (0 < self.duration <= 3600, "--duration must be in (0, 3600] seconds"),
            (abs(self.gift_rate) <= 100_000, "--gift-rate must be within 100000/s"),
            (0 <= self.processes <= 64, "--processes must be 0..64"),
            (0 <= self.slow_share <= 1, "--slow-share must be 0..1"),
            (1 <= self.max_steps <= 100, "--max-steps must be 1..100"),
            (self.gift_rate != 0 or self.scenario == "ramp", "--gift-rate must not be 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


class UsageError(Exception):
    """Bad options or an unsafe target: exit status 2."""


LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def check_target(url: str, allow_host: str | None) -> None:
    """Refuse anything but loopback unless the operator named the host with ``--allow-host``."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise UsageError(f"the target must be a ws:// or wss:// URL, not {url!r}")
    host = parts.hostname or ""
    if host in LOOPBACK_NAMES:
        return
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            return
    if allow_host is not None and allow_host == host:
        return
    raise UsageError(
        f"{host!r} is not a loopback address: a load test can hurt a real service. "
        f"Name it explicitly with --allow-host {host} if you mean it."
    )


def metrics_url_for(url: str) -> str:
    parts = urlsplit(url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/metrics"


# -- workers ---------------------------------------------------------------------------------


class WorkerProc:
    """One worker process and the reports it sends."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process, on_tick: Callable[..., None]):
        self.index = index
        self.proc = proc
        self.replies: asyncio.Queue[wire.Report] = asyncio.Queue()
        self.on_tick = on_tick
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            report = wire.report_decoder.decode(line)
            if isinstance(report, wire.Tick):
                self.on_tick(report)
            else:
                self.replies.put_nowait(report)
        self.replies.put_nowait(wire.Failed(worker=self.index, error="worker exited"))

    def send(self, command: wire.Command) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(wire.encoder.encode(command) + b"\n")

    async def reply(self, kind: type[wire.Report], within: float) -> Any:
        async with asyncio.timeout(within):
            report = await self.replies.get()
        if isinstance(report, wire.Failed):
            raise RuntimeError(f"worker {self.index}: {report.error}")
        if not isinstance(report, kind):
            raise RuntimeError(f"worker {self.index}: expected {kind.__name__}, got {report!r}")
        return report


async def start_worker(plan: wire.WorkerPlan, on_tick: Callable[..., None]) -> WorkerProc:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
        limit=1 << 30,
    )
    assert proc.stdin is not None
    proc.stdin.write(wire.encoder.encode(plan) + b"\n")
    return WorkerProc(plan.index, proc, on_tick)


# -- aggregation -----------------------------------------------------------------------------


class Timeline:
    """Ticks from every worker, added up per second since the run's start."""

    def __init__(self) -> None:
        self.seconds: dict[int, wire.Tick] = {}
        self.latency: Counter[int] = Counter()
        self.slow_latency: Counter[int] = Counter()
        self.ack_latency: Counter[int] = Counter()
        self.per_second_latency: dict[int, Counter[int]] = {}
        self.errors: Counter[str] = Counter()
        self.viewers: dict[tuple[int, int], int] = {}
        self.changed = asyncio.Event()

    def add(self, tick: wire.Tick) -> None:
        total = self.seconds.setdefault(tick.second, wire.Tick(worker=-1, second=tick.second))
        for name in ("gifts_sent", "gifts_acked", "coins_acked", "events", "gift_events"):
            setattr(total, name, getattr(total, name) + getattr(tick, name))
        total.frames += tick.frames
        total.reconnects += tick.reconnects
        self.viewers[(tick.second, tick.worker)] = tick.viewers
        total.viewers = sum(v for (s, _), v in self.viewers.items() if s == tick.second)
        for code, n in tick.errors.items():
            total.errors[code] = total.errors.get(code, 0) + n
        self.errors.update(tick.errors)
        self.latency.update(tick.latency)
        self.slow_latency.update(tick.slow_latency)
        self.ack_latency.update(tick.ack_latency)
        self.per_second_latency.setdefault(tick.second, Counter()).update(tick.latency)
        self.changed.set()

    async def reported(self, second: int, workers: int, within: float = 3.0) -> None:
        """Until every worker's tick for ``second`` is in (they come just after it ends)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while sum(1 for s, _ in self.viewers if s == second) < workers:
                    self.changed.clear()
                    await self.changed.wait()

    def window(self, first: int, last: int) -> list[wire.Tick]:
        return [t for s, t in sorted(self.seconds.items()) if first <= s <= last]

    def latency_in(self, first: int, last: int) -> Counter[int]:
        merged: Counter[int] = Counter()
        for second in range(first, last + 1):
            merged.update(self.per_second_latency.get(second, {}))
        return merged


# -- the run ---------------------------------------------------------------------------------


class Harness:
    def __init__(self, options: Options) -> None:
        options.limits()
        check_target(options.url, options.allow_host)
        self.o = options
        self.run_id = secrets.token_hex(4)
        self.timeline = Timeline()
        self.workers: list[WorkerProc] = []
        self.samples: list[tuple[float, Sample]] = []
        metrics = options.metrics_url
        if metrics is None and options.flavour == "giftrelay" and not options.relay_pid:
            metrics = metrics_url_for(options.url)
        self.sampler = RelaySampler(metrics, options.relay_pid)
        self.t0 = time.time()
        self.progress: Callable[[str, wire.Tick | None], None] | None = None

    def _client(self, token: str | None) -> Any:
        if self.o.flavour == "socketio":
            from .drivers.sio import SioClient

            return SioClient(self.o.url, token)
        return Client(self.o.url, token, reconnect=False)

    async def _sample(self) -> Sample | None:
        sample = await self.sampler.sample()
        if sample is not None:
            self.samples.append((time.time() - self.t0, sample))
        return sample

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._sample()

    # -- set-up over the protocol ----------------------------------------------------------

    def _mint(self, sub: str, role: auth.Role) -> str:
        assert self.o.secret is not None
        return auth.mint(self.o.secret, sub, role, ttl=int(self.o.duration * 4) + 3600)

    async def setup(self) -> tuple[list[str], list[str], dict[str, str], Any]:
        """Streams opened and gifters funded through an admin connection."""
        o = self.o
        if o.admin_token is None and o.secret is None:
            raise UsageError("give --secret (to mint tokens) or --admin-token")
        admin_token = o.admin_token or self._mint(f"lt{self.run_id}admin", auth.Role.ADMIN)
        admin = self._client(admin_token)
        hello = await admin.connect()
        admin_user = getattr(hello, "user", None) or f"lt{self.run_id}admin"
        streams = [f"lt{self.run_id}s{i}" for i in range(o.streams)]
        creators: dict[str, str] = {}
        for i, stream in enumerate(streams):
            creator = f"lt{self.run_id}c{i}" if o.secret else admin_user
            await admin.stream_open(stream, f"load test {self.run_id}", creator=creator)
            creators[stream] = creator
        if o.gifter_tokens:
            tokens = list(o.gifter_tokens)
            users = [_subject(t) for t in tokens]
        else:
            if o.secret is None:
                raise UsageError("gifters need tokens: give --secret or --gifter-tokens FILE")
            count = o.gifters or max(1, math.ceil(abs(o.gift_rate) / o.gifts_per_user))
            if o.scenario == "ramp":
                count = max(count, math.ceil(abs(o.gift_rate) * o.max_steps / o.gifts_per_user))
            count = max(count, self.processes)
            users = [f"lt{self.run_id}g{i}" for i in range(count)]
            tokens = [self._mint(u, auth.Role.VIEWER) for u in users]
        await asyncio.gather(*(admin.topup(u, FUNDS, f"lt{self.run_id}-fund-{u}") for u in users))
        return streams, tokens, creators, admin

    @property
    def processes(self) -> int:
        return self.o.processes or os.cpu_count() or 1

    async def balances(self, creators: dict[str, str], admin: Any) -> dict[str, int]:
        """Each creator's diamonds, read with the protocol's ``balance``."""
        out: dict[str, int] = {}
        for creator in sorted(set(creators.values())):
            if self.o.secret is None:
                out[creator] = (await admin.balance()).diamonds  # the admin is the creator
                continue
            client = self._client(self._mint(creator, auth.Role.CREATOR))
            await client.connect()
            try:
                out[creator] = (await client.balance()).diamonds
            finally:
                await client.close()
        return out

    async def wallet_coins(self, tokens: list[str]) -> int:
        total = 0
        for token in tokens:
            client = self._client(token)
            await client.connect()
            try:
                total += (await client.balance()).coins
            finally:
                await client.close()
        return total

    # -- driving ---------------------------------------------------------------------------

    def broadcast(self, make: Callable[[int], wire.Command]) -> None:
        for w in self.workers:
            w.send(make(w.index))

    async def gather(self, kind: type[wire.Report], within: float) -> list[Any]:
        return list(await asyncio.gather(*(w.reply(kind, within) for w in self.workers)))

    def split(self, total: float) -> float:
        """A worker's share of a gift rate (a negative rate, "as fast as possible", is kept)."""
        return total if total < 0 else total / len(self.workers)

    def split_int(self, total: int, index: int) -> int:
        n = len(self.workers)
        return total // n + (1 if index < total % n else 0)

    async def set_viewers(self, total: int) -> list[wire.ViewersReady]:
        self.broadcast(lambda i: wire.SetViewers(count=self.split_int(total, i)))
        within = 30 + total / max(1.0, self.o.connect_rate * len(self.workers)) * 3
        return await self.gather(wire.ViewersReady, within)

    async def wait(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            self.timeline.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.timeline.changed.wait()
            if self.progress is not None:
                last = max(self.timeline.seconds, default=None)
                tick = self.timeline.seconds.get(last - 1) if last is not None else None
                self.progress("run", tick)

    def set_rate(self, rate: float) -> None:
        self.broadcast(
            lambda i: wire.SetRate(gifts_per_s=self.split(rate), inflight=self.o.inflight)
        )

    async def run(self) -> Result:
        o = self.o
        started_at = time.time()
        admin = None
        sampling: asyncio.Task[None] | None = None
        try:
            streams, tokens, creators, admin = await self.setup()
            diamonds_before = await self.balances(creators, admin)
            self.t0 = time.time()
            n = self.processes
            for i in range(n):
                plan = wire.WorkerPlan(
                    index=i,
                    workers=n,
                    url=o.url,
                    flavour=o.flavour,
                    run_id=self.run_id,
                    streams=streams,
                    gift=o.gift,
                    gifter_tokens=tokens[i::n],
                    t0=self.t0,
                    slow_share=o.slow_share if o.scenario == "slow-readers" else 0.0,
                    slow_delay=o.slow_delay,
                    connect_rate=o.connect_rate,
                    retry_for=o.retry_for,
                )
                self.workers.append(await start_worker(plan, self.timeline.add))
            before_viewers = await self._sample()
            sampling = asyncio.create_task(self._sampling())
            steps: list[Step] = []
            first_viewers = o.viewers
            if self.progress:
                self.progress("connecting", None)
            ready = await self.set_viewers(first_viewers)
            idle = await self._sample()
            connected = sum(r.count for r in ready)
            failed = sum(r.failed for r in ready)
            run_start = time.time()
            if o.scenario == "ramp":
                steps = await self._ramp(first_viewers, len(streams))
                viewers_total = steps[-1].viewers if steps else first_viewers
            else:
                viewers_total = first_viewers
                self.set_rate(o.gift_rate)
                if o.scenario == "reconnect-storm":
                    await self.wait(o.duration * o.storm_at)
                    self.broadcast(lambda i: wire.Storm(window=o.storm_window))
                    await self.wait(o.duration * (1 - o.storm_at))
                else:
                    await self.wait(o.duration)
            run_end = time.time()
            at_stop = await self._sample()
            if self.progress:
                self.progress("settling", None)
            self.broadcast(lambda i: wire.StopGifts())
            acked_reports: list[wire.Acked] = await self.gather(wire.Acked, o.retry_for + 60)
            merged: dict[str, list[int]] = {}
            for report in acked_reports:
                for stream, offsets in report.acked.items():
                    merged.setdefault(stream, []).extend(offsets)
            if self.progress:
                self.progress("verifying", None)
            self.broadcast(lambda i: wire.Verify(acked=merged, drain_timeout=o.drain_timeout))
            finals: list[wire.Final] = await self.gather(wire.Final, o.drain_timeout + 60)
            sampling.cancel()
            diamonds_after = await self.balances(creators, admin)
            coins_left = await self.wallet_coins(tokens) if not o.gifter_tokens else None
            conservation = self._conserve(
                acked_reports, diamonds_before, diamonds_after, coins_left, len(tokens)
            )
            reconcile = await self._reconcile() if o.reconcile else None
            return self._result(
                started_at=started_at,
                run=(run_start - self.t0, run_end - self.t0),
                streams=streams,
                gifters=len(tokens),
                viewers_total=viewers_total,
                connected=connected,
                failed=failed,
                samples=(before_viewers, idle, at_stop),
                acked_reports=acked_reports,
                finals=finals,
                conservation=conservation,
                reconcile=reconcile,
                steps=steps,
            )
        finally:
            if sampling is not None:
                sampling.cancel()
            await self.shutdown()
            if admin is not None:
                with contextlib.suppress(Exception):
                    await admin.close()

    async def shutdown(self) -> None:
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.send(wire.Exit())
        for w in self.workers:
            try:
                async with asyncio.timeout(15):
                    await w.proc.wait()
            except TimeoutError:
                w.proc.kill()
                await w.proc.wait()
            w.reader.cancel()

    async def _ramp(self, viewers0: int, streams: int) -> list[Step]:
        """Step viewers and gift rate up until a step misses the limits; the knee is before it."""
        o = self.o
        steps: list[Step] = []
        for k in range(1, o.max_steps + 1):
            viewers = viewers0 * k
            rate = o.gift_rate * k
            if k > 1:
                ready = await self.set_viewers(viewers)
                if sum(r.failed for r in ready):
                    steps.append(Step(index=k, viewers=viewers, gift_rate=rate, ok=False,
                                      reason="viewers could not connect"))  # fmt: skip
                    break
            self.set_rate(rate)
            first = int(time.time() - self.t0) + 1
            await self.wait(o.step_seconds)
            last = int(time.time() - self.t0) - 1
            await self.timeline.reported(last, len(self.workers))
            settle = first + 1 if last > first else first  # the step's first second settles
            ticks = self.timeline.window(settle, last)
            lat = self.timeline.latency_in(settle, last)
            span = max(1, len(ticks))
            acked = sum(t.gifts_acked for t in ticks)
            gift_events = sum(t.gift_events for t in ticks)
            delivery = gift_events / (acked * viewers / streams) if acked else 0.0
            p99 = percentile(lat, 99)
            bad = sum(n for t in ticks for c, n in t.errors.items() if c != "rate_limited")
            reason = ""
            if p99 > o.limit_p99:
                reason = f"p99 {p99:.0f} ms > {o.limit_p99:.0f} ms"
            elif delivery < o.min_delivery:
                reason = f"delivered {delivery:.1%} of the events due"
            elif bad:
                reason = f"{bad} errors"
            steps.append(
                Step(
                    index=k,
                    viewers=viewers,
                    gift_rate=rate,
                    gifts_per_s=acked / span,
                    events_per_s=sum(t.events for t in ticks) / span,
                    p50_ms=percentile(lat, 50),
                    p99_ms=p99,
                    delivery=delivery,
                    ok=not reason,
                    reason=reason,
                )
            )
            if self.progress:
                self.progress(f"step {k}: {reason or 'ok'}", None)
            if reason:
                break
        return steps

    # -- checks ----------------------------------------------------------------------------

    def _conserve(
        self,
        acked: list[wire.Acked],
        before: dict[str, int],
        after: dict[str, int],
        coins_left: int | None,
        gifters: int,
    ) -> Conservation:
        coins = sum(a.coins for a in acked)
        gifts = sum(a.gifts for a in acked)
        unresolved = sum(a.unresolved for a in acked)
        rate = Fraction(self.o.diamonds_per_coin)
        price = coins // gifts if gifts else 0
        expected = gifts * math.floor(price * rate)
        credited = sum(after.values()) - sum(before.values())
        wallets = None if coins_left is None else gifters * FUNDS - coins_left
        ok = credited == expected and unresolved == 0 and wallets in (None, coins)
        detail = (
            f"harness acknowledged {coins} coins in {gifts} gifts; "
            f"creators were credited {credited} diamonds (expected {expected})"
        )
        if wallets is not None:
            detail += f"; gifters' wallets went down by {wallets} coins"
        if unresolved:
            detail += f"; {unresolved} gifts with no known outcome"
        return Conservation(
            coins_acked=coins,
            coins_from_wallets=wallets,
            diamonds_credited=credited,
            diamonds_expected=expected,
            unresolved=unresolved,
            ok=ok,
            detail=detail,
        )

    async def _reconcile(self) -> Reconcile:
        """``giftrelay reconcile`` with this environment (it reads GIFTRELAY_* like the relay)."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "giftrelay", "reconcile", "--wait", "30",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        return Reconcile(ok=proc.returncode == 0, exit_status=proc.returncode or 0,
                         output=out.decode(errors="replace")[-4000:])  # fmt: skip

    def _result(
        self,
        *,
        started_at: float,
        run: tuple[float, float],
        streams: list[str],
        gifters: int,
        viewers_total: int,
        connected: int,
        failed: int,
        samples: tuple[Sample | None, Sample | None, Sample | None],
        acked_reports: list[wire.Acked],
        finals: list[wire.Final],
        conservation: Conservation,
        reconcile: Reconcile | None,
        steps: list[Step],
    ) -> Result:
        o = self.o
        tl = self.timeline
        seconds = max(1e-9, run[1] - run[0])
        # Rates from the whole seconds inside the run (the first and last are partial).
        first, last = math.ceil(run[0]), max(math.ceil(run[0]), math.floor(run[1]) - 1)
        ticks = tl.window(first, last)
        span = max(1, last - first + 1)
        totals = wire.ViewerTotals()
        codes: Counter[int] = Counter()
        for f in finals:
            t = f.totals
            for name in wire.ViewerTotals.__struct_fields__:
                if name != "close_codes":
                    setattr(totals, name, getattr(totals, name) + getattr(t, name))
            codes.update(t.close_codes)
        events = sum(t.events for t in ticks)
        gifts_acked = sum(a.gifts for a in acked_reports)
        gift_events = sum(t.gift_events for t in ticks)
        frames = sum(t.frames for t in ticks)
        before, idle, at_stop = samples
        usage = RelayUsage(source=self.sampler.source)
        if before and idle:
            usage.rss_before_viewers = before.rss_bytes
            usage.rss_idle = idle.rss_bytes
            if connected:
                usage.rss_per_idle_connection = (idle.rss_bytes - before.rss_bytes) / connected
        run_samples = [s for t, s in self.samples if run[0] - 1.5 <= t <= run[1] + 0.5]
        if idle and at_stop:
            usage.cpu_seconds = at_stop.cpu_seconds - idle.cpu_seconds
            usage.rss_max = max([s.rss_bytes for s in run_samples] + [at_stop.rss_bytes])
            if usage.cpu_seconds > 0:  # over the run: rates x its length / CPU in it
                usage.events_per_cpu_second = events / span * seconds / usage.cpu_seconds
                usage.gifts_per_cpu_second = gifts_acked / usage.cpu_seconds
        lat = summarise_latency(tl.latency)
        checks = Checks(
            no_loss=totals.lost == 0 and totals.undrained == 0,
            no_duplicates=totals.duplicates == 0,
            in_order=totals.order_violations == 0,
            no_unexpected=totals.unexpected == 0,
            conservation=conservation.ok,
            p99=None if o.max_p99 is None else lat.p99 <= o.max_p99,
            reconcile=None if reconcile is None else reconcile.ok,
            all_viewers_connected=failed == 0,
            gifts_applied=gifts_acked > 0 and set(tl.errors) <= PASSING_ERRORS,
        )
        timeline = [
            TimePoint(
                second=s,
                gifts_acked=t.gifts_acked,
                events=t.events,
                frames=t.frames,
                viewers=t.viewers,
                p50_ms=percentile(tl.per_second_latency.get(s, {}), 50),
                p99_ms=percentile(tl.per_second_latency.get(s, {}), 99),
                max_ms=percentile(tl.per_second_latency.get(s, {}), 100),
                errors=sum(t.errors.values()),
            )
            for s, t in sorted(tl.seconds.items())
        ]
        knee = None
        if steps:
            good = [s for s in steps if s.ok]
            knee = good[-1] if good else None
        acked = sum(t.gifts_acked for t in ticks)
        return Result(
            name=o.name or o.scenario,
            scenario=o.scenario,
            flavour=o.flavour,
            url=o.url,
            run_id=self.run_id,
            started_at=started_at,
            duration_s=seconds,
            processes=len(self.workers),
            options=msgspec.to_builtins(o, builtin_types=None)
            | {
                "secret": None,
                "admin_token": None,
                "gifter_tokens": None,
            },
            streams=len(streams),
            viewers=viewers_total,
            viewers_connected=connected,
            viewers_failed=failed,
            slow_viewers=totals.slow_viewers,
            gifters=gifters,
            gifts=GiftTotals(
                sent=sum(t.gifts_sent for t in tl.seconds.values()),
                acked=sum(a.gifts for a in acked_reports),
                acked_in_window=acked,
                per_second=gifts_acked / seconds,
                unresolved=conservation.unresolved,
            ),
            ack_latency_ms=summarise_latency(tl.ack_latency),
            latency_ms=lat,
            slow_latency_ms=summarise_latency(tl.slow_latency),
            events_per_s=events / span,
            gift_events_per_s=gift_events / span,
            frames_per_s=frames / span,
            events_per_frame=events / frames if frames else 0.0,
            delivery=Delivery(
                expected=totals.expected,
                received=totals.received,
                lost=totals.lost,
                viewers_with_loss=totals.viewers_with_loss,
                duplicates=totals.duplicates,
                order_violations=totals.order_violations,
                unexpected=totals.unexpected,
                not_recovered=totals.not_recovered,
                excused=totals.excused,
                undrained=totals.undrained,
            ),
            errors=dict(tl.errors),
            reconnects=totals.reconnects,
            close_codes={str(k): v for k, v in sorted(codes.items())},
            relay=usage,
            conservation=conservation,
            reconcile=reconcile,
            timeline=timeline,
            latency_histogram=histogram_buckets(tl.latency),
            steps=steps,
            knee=knee,
            checks=checks,
            passed=checks.passed(),
        )


def histogram_buckets(counts: Counter[int]) -> list[tuple[float, int]]:
    """Latency counts in log-spaced bins (upper bound in ms, count), for the report's chart."""
    if not counts:
        return []
    edges = [0.5 * (2 ** (i / 2)) for i in range(0, 34)]  # 0.5 ms .. ~65 s
    bins = [0] * len(edges)
    for bucket, n in counts.items():
        ms = max(0, bucket) * LATENCY_UNIT_MS
        for i, edge in enumerate(edges):
            if ms <= edge or i == len(edges) - 1:
                bins[i] += n
                break
    while bins and bins[-1] == 0:
        bins.pop()
    return [(round(edges[i], 3), bins[i]) for i in range(len(bins))]


def _subject(token: str) -> str:
    """The ``sub`` of a token given on the command line (not verified: the relay does that)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return str(claims["sub"])


async def run(options: Options) -> Result:
    """Run one scenario; raises :class:`UsageError` for bad options or targets."""
    return await Harness(options).run()
