"""Load drivers and checks for the fault, hostile-input and bounds tests.

``GiftLoad`` sends gifts through the relay at a pace, one request at a time per
user, and settles every id it starts: ``unavailable``, a time-out or a lost
connection is retried with the same id (the protocol's contract), so each id ends
acknowledged or refused and the money checks can be exact. ``Watcher`` is a viewer
that reconnects with ``since`` whenever it is closed and keeps every gift event.
Both are the load test's drivers (:mod:`loadtest.drivers`), with what the tests read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from giftrelay.client import GiftOk
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.store import Store
from giftrelay.money import keys
from loadtest.drivers.connection import Connection
from loadtest.drivers.gifter import Gifter
from loadtest.drivers.target import Target, running, serve_command, serve_env
from loadtest.drivers.viewer import Expected, Meter, Viewer
from loadtest.drivers.viewer import Watcher as Watching

from .relay_helpers import SECRET, Client, token

FAST_ENV = {
    "GIFTRELAY_GIFT_RATE": "100000",
    "GIFTRELAY_GIFT_BURST": "100000",
    "GIFTRELAY_MESSAGE_RATE": "100000",
    "GIFTRELAY_MAX_CONNECTIONS_PER_IP": "100000",  # every test client is on loopback
}
FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}
TOPUP = 1_000_000


class Reply:
    __slots__ = ("code", "seconds", "sent")

    def __init__(self, sent: float, seconds: float, code: str) -> None:
        self.sent = sent
        self.seconds = seconds
        self.code = code


async def ask(client: Client, within: float, **message: Any) -> dict[str, Any] | None:
    """A request's reply, or None when the connection closed or nothing came ``within``."""
    loop = asyncio.get_running_loop()
    ref = message.setdefault("ref", f"q{next(Client._refs)}")
    future: asyncio.Future[dict[str, Any]] = loop.create_future()
    client.waiting[ref] = future
    try:
        await client.ws.send(json.dumps(message))
    except ConnectionClosed:
        return None
    assert client.reader is not None
    done, _ = await asyncio.wait(
        {future, client.reader}, timeout=within, return_when="FIRST_COMPLETED"
    )
    client.waiting.pop(ref, None)
    return future.result() if future in done else None


class GiftLoad:
    """``users`` each send gifts of ``gift`` on ``stream`` at ``rate`` per second, one at a
    time, each settled (:class:`loadtest.drivers.gifter.Gifter`); every try is recorded."""

    def __init__(
        self,
        url: str | list[str],
        users: list[str],
        stream: str,
        *,
        rate: float,
        prefix: str,
        gift: str = "rose",
        reply_within: float = 10.0,
        retry_pause: float = 0.1,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else url
        self.users = users
        self.stream = stream
        self.interval = 1 / rate
        self.prefix = prefix
        self.acked: dict[str, tuple[str, int, str]] = {}
        """id -> (user, coins, offset) of every ``gift_ok``."""
        self.refused: dict[str, str] = {}
        self.replies: list[Reply] = []
        self.unanswered: list[str] = []
        """Requests that got no reply within ``reply_within`` (then retried)."""
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()
        self._codes: dict[str, str] = {}
        self.connections = [
            Connection(self.urls[i % len(self.urls)], token(u), request_timeout=reply_within)
            for i, u in enumerate(users)
        ]
        self.gifters = [
            Gifter(c, u, gift=gift, pause=(retry_pause, retry_pause), on_attempt=self._attempt)
            for c, u in zip(self.connections, users, strict=True)
        ]

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self.connections)

    def start(self) -> None:
        self.tasks = []
        for g in self.gifters:

            def name(n: int, user: str = g.user) -> str:
                return f"{self.prefix}-{user}-{n:06d}"

            settled = functools.partial(self._settled, g.user)
            run = g.paced(self.stopping, self.stream, self.interval, name, settled)
            self.tasks.append(asyncio.create_task(run))

    def _attempt(self, gift_id: str, code: str, sent: float, seconds: float) -> None:
        self._codes[gift_id] = code
        if code == "timeout":  # the connection was closed, and the same id sent on a new one
            self.unanswered.append(gift_id)
        elif code not in ("disconnected", "connect_failed"):
            self.replies.append(Reply(sent, seconds, code))

    def _settled(self, user: str, gift_id: str, ok: GiftOk | None) -> None:
        code = self._codes.pop(gift_id, "")
        if ok is not None:
            self.acked[gift_id] = (user, ok.coins, ok.offset)
        else:
            self.refused[gift_id] = code
        self.started.set()

    async def stop(self, within: float = 60.0) -> None:
        """Stop starting ids; every id started is settled (retried until answered)."""
        self.stopping.set()
        async with asyncio.timeout(within):
            await asyncio.gather(*self.tasks)
        for c in self.connections:
            with contextlib.suppress(Exception):
                await c.close()

    def codes(self, since: float = 0.0) -> Counter[str]:
        return Counter(r.code for r in self.replies if r.sent >= since)

    async def wait_acked(self, count: int, within: float = 30.0) -> None:
        """Until at least ``count`` more gifts than now are acknowledged."""
        target = len(self.acked) + count
        async with asyncio.timeout(within):
            while len(self.acked) < target:  # noqa: ASYNC110 - fed by the load's own tasks
                await asyncio.sleep(0.02)


class Watcher(Watching):
    """A viewer of ``stream`` that rejoins with ``since`` whenever its connection closes
    (:class:`loadtest.drivers.viewer.Watcher`), keeping every gift it receives."""

    def __init__(self, urls: str | list[str], stream: str, index: int = 0) -> None:
        self.seen = Viewer(stream, Meter(), keep=True)
        assert self.seen.kept is not None
        self.kept = self.seen.kept
        super().__init__(urls, stream, self.seen, index=index, pause=0.1)

    def ids(self) -> list[str]:
        return self.kept.ids

    @property
    def latencies(self) -> list[float]:
        """Arrival time - the event's ``ts``, ms, of each gift that came live (not ``missed``)."""
        return self.kept.latencies

    @property
    def unrecovered(self) -> int:
        return self.seen.not_recovered

    async def wait_for_ids(self, ids: set[str], within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while not ids <= set(self.kept.ids):
                self.kept.changed.clear()
                await self.kept.changed.wait()


def check_watchers(watchers: list[Watcher], load: GiftLoad) -> None:
    """Every watcher saw every acknowledged gift exactly once, in offset order
    (:meth:`loadtest.drivers.viewer.Viewer.check`; other gifts on the stream may come too)."""
    expected = Expected.of_offsets({load.stream: [o for _, _, o in load.acked.values()]})
    for i, w in enumerate(watchers):
        d = w.seen.check(expected)
        assert d.duplicates == 0, f"watcher {i}: duplicate gift events"
        assert d.lost == 0, f"watcher {i}: {d.lost} acknowledged gifts missing"
        assert d.order_violations == 0, f"watcher {i}: gift events out of order"
        assert w.unrecovered == 0, f"watcher {i}: a rejoin could not recover"


async def fund(redis_url_money: Any, users: list[str], coins: int = TOPUP) -> None:
    await asyncio.gather(*(redis_url_money.topup(u, coins, f"fund-{u}-{coins}") for u in users))


async def check_money(
    redis: Redis,
    load: GiftLoad,
    *,
    creator: str,
    topup: int = TOPUP,
    diamonds_per_coin: int = 1,
    extra_diamonds: int = 0,
) -> None:
    """Each viewer: top-up - acknowledged gifts. The creator: those coins x the rate."""
    spent: Counter[str] = Counter()
    for user, coins, _ in load.acked.values():
        spent[user] += coins
    for user in load.users:
        coins = int(await redis.hget(keys.wallet(user), "coins") or 0)
        assert coins == topup - spent[user], (user, coins, topup, spent[user])
    diamonds = int(await redis.hget(keys.wallet(creator), "diamonds") or 0)
    assert diamonds == sum(spent.values()) * diamonds_per_coin + extra_diamonds
    assert not load.refused, f"gifts refused for good: {Counter(load.refused.values())}"


async def check_ledger(
    redis: Redis, store: Store, load: GiftLoad, topups: int, extra_gifts: set[str] | None = None
) -> None:
    """The store holds exactly the acknowledged gifts and the top-ups, once each."""
    report = await reconcile(redis, store, wait=30)
    assert report.ok, report.lines()
    rows = [row async for row in store.export(None, None)]
    gift_ids = Counter(r.request_id for r in rows if r.kind == "gift")
    assert max(gift_ids.values(), default=1) == 1, "a gift is in the ledger twice"
    extra = extra_gifts or set()
    assert set(gift_ids) == set(load.acked) | extra, (
        f"ledger gifts {len(gift_ids)} != acknowledged {len(load.acked)}"
    )
    assert Counter(r.kind for r in rows)["topup"] == topups
    assert len(rows) == len(load.acked) + len(extra) + topups


# -- giftrelay serve as a process ---------------------------------------------------------------


class Serve:
    """``giftrelay serve`` started by a test (:mod:`loadtest.drivers.target`)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.proc = target.proc
        self.port = target.port
        self.log = target.log

    @property
    def ws(self) -> str:
        return self.target.url

    def workers(self) -> list[int]:
        """Pids of the worker processes (children running ``giftrelay worker``)."""
        return self.target.workers()

    def rss_kb(self) -> int:
        return self.target.usage().rss_bytes // 1024

    async def stop(self, within: float = 30.0) -> int:
        return await self.target.stop(within=within, force=False)

    def kill(self) -> None:
        self.target.kill()


@contextlib.asynccontextmanager
async def serve(tmp_path: Path, redis_url: str, *args: str, **env: str) -> AsyncIterator[Serve]:
    """Started and waited for; killed at the end (its output in ``serve-PORT.log``)."""
    from giftrelay.embedded import free_port

    port = free_port()
    argv = serve_command(port, redis_url=redis_url, ledger=False, extra=args)
    settings = serve_env(SECRET, FAST_ENV | env, var=tmp_path / "var")
    log = tmp_path / f"serve-{port}.log"
    async with running("giftrelay", argv, port=port, env=settings, log=log, graceful=False) as t:
        yield Serve(t)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def p99(values: list[float]) -> float:
    return quantile(values, 0.99)


async def wait_until(check: Any, within: float = 20.0, what: str = "condition") -> None:
    """Poll state owned by another task or process (no event to await) with a bound."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


__all__ = ["FAST", "FAST_ENV", "SECRET", "GiftLoad", "InvalidStatus", "Watcher", "token"]
