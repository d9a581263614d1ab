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
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

from giftrelay import auth
from giftrelay.client import Client

from ...drivers.viewer import percentile
from . import battle, preflight, wire
from .options import Options, UsageError, check_target, metrics_url_for
from .outcome import FUNDS, conserve, reconcile, result
from .relaystats import RelaySampler, Sample
from .result import Result, Step
from .workers import Timeline, WorkerProc, start_worker


class Harness:
    """One run of a scenario (:meth:`run`), against the relay at ``options.url``."""

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
            from ...drivers.sio import SioClient

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
        if o.flavour == "giftrelay":
            await asyncio.to_thread(preflight.check, o, admin_token)
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

    async def wait(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """``seconds``, or until ``until()`` holds (looked at as each worker's tick comes
        in); the progress line is drawn meanwhile."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0 and not (until is not None and until()):
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
                    gift_streams=battle_split(streams) if o.scenario == "battle" else None,
                    battle=o.scenario == "battle",
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
            started: battle.Started | None = None
            if o.scenario == "battle":
                viewers_total = first_viewers
                started = await self._battle(streams, creators, connected)
            elif o.scenario == "ramp":
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
            conservation = conserve(
                acked_reports, diamonds_before, diamonds_after, coins_left, len(tokens),
                o.diamonds_per_coin,
            )  # fmt: skip
            reconciled = await reconcile() if o.reconcile else None
            verdict = None
            if started is not None:
                seen = [f.battle for f in finals if f.battle is not None]
                verdict = battle.judge(started, streams, creators, seen)
            return result(
                self,
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
                reconcile=reconciled,
                steps=steps,
                battle=verdict,
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

    async def _battle(
        self, streams: list[str], creators: dict[str, str], viewers: int
    ) -> battle.Started:
        """Gifts on both sides; a moment later the battle, invited by the first stream's
        creator and accepted by the other's; gifts go on until every viewer has received
        ``battle_end`` (or ``end_timeout`` s past the end)."""
        o = self.o
        self.set_rate(o.gift_rate)
        await self.wait(o.battle_lead)  # gifts before the battle: they must not count
        tokens = [self._mint(creators[s], auth.Role.CREATOR) for s in streams]
        started = await battle.start(
            o.url, streams, tokens, o.battle_seconds, f"lt{self.run_id}-battle"
        )
        if self.progress:
            self.progress(f"battle {started.battle} running", None)
        await self.wait(started.ends_at / 1000 - time.time())
        await self.wait(o.end_timeout, until=lambda: self.timeline.battle_ends >= viewers)
        return started

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


def battle_split(streams: list[str]) -> list[str]:
    """The streams gifts go to in turn in a battle: 3 of 5 to the inviting side, so that
    a side wins (an even split of one gift would often draw)."""
    a, b = streams
    return [a, b, a, b, a]


def _subject(token: str) -> str:
    """The ``sub`` of a token given on the command line (not verified: the relay does that)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return str(claims["sub"])


async def run(options: Options) -> Result:
    """Run one scenario; raises :class:`UsageError` for bad options or targets."""
    return await Harness(options).run()
