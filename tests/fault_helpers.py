"""Load drivers and checks for the fault, hostile-input and bounds tests.

``GiftLoad`` sends gifts through the relay at a pace, one request at a time per
user, and settles every id it starts: ``unavailable``, a time-out or a lost
connection is retried with the same id (the protocol's contract), so each id ends
acknowledged or refused and the money checks can be exact. ``Watcher`` is a viewer
that reconnects with ``since`` whenever it is closed and keeps every gift event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from giftrelay import keys
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.store import Store
from loadtest.drivers.target import Target, running, serve_command, serve_env

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
    """``users`` each send gifts of ``gift`` on ``stream`` at ``rate`` per second."""

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
        self.gift = gift
        self.reply_within = reply_within
        self.retry_pause = retry_pause
        self.acked: dict[str, tuple[str, int, str]] = {}
        """id -> (user, coins, offset) of every ``gift_ok``."""
        self.refused: dict[str, str] = {}
        self.replies: list[Reply] = []
        self.unanswered: list[str] = []
        """Requests that got no reply within ``reply_within`` (then retried)."""
        self.reconnects = 0
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.clients: dict[str, Client] = {}
        self.started = asyncio.Event()

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._user(i, u)) for i, u in enumerate(self.users)]

    async def stop(self, within: float = 60.0) -> None:
        """Stop starting ids; every id started is settled (retried until answered)."""
        self.stopping.set()
        async with asyncio.timeout(within):
            await asyncio.gather(*self.tasks)
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()

    def codes(self, since: float = 0.0) -> Counter[str]:
        return Counter(r.code for r in self.replies if r.sent >= since)

    async def wait_acked(self, count: int, within: float = 30.0) -> None:
        """Until at least ``count`` more gifts than now are acknowledged."""
        target = len(self.acked) + count
        async with asyncio.timeout(within):
            while len(self.acked) < target:  # noqa: ASYNC110 - fed by the load's own tasks
                await asyncio.sleep(0.02)

    async def _client(self, index: int, user: str) -> Client:
        client = self.clients.get(user)
        if client is not None and client.ws.close_code is None:
            return client
        if client is not None:
            self.reconnects += 1
        while True:
            url = self.urls[index % len(self.urls)]
            try:
                client = await Client.open(url, token(user), open_timeout=10)
                self.clients[user] = client
                return client
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                await asyncio.sleep(self.retry_pause)  # a client's reconnect pause

    async def _user(self, index: int, user: str) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while not self.stopping.is_set():
            await self.settle(index, user, f"{self.prefix}-{user}-{n:06d}")
            self.started.set()
            n += 1
            next_at += self.interval
            delay = next_at - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)  # pacing
            else:
                next_at = loop.time()

    async def settle(self, index: int, user: str, gift_id: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client = await self._client(index, user)
            sent = loop.time()
            reply = await ask(
                client,
                self.reply_within,
                type="gift",
                stream=self.stream,
                gift=self.gift,
                id=gift_id,
            )
            if reply is None:
                if client.ws.close_code is None:
                    self.unanswered.append(gift_id)
                    await client.ws.close()
                continue  # the same id again, on a new connection
            code = reply["type"] if reply["type"] == "gift_ok" else reply["code"]
            self.replies.append(Reply(sent, loop.time() - sent, code))
            if code == "gift_ok":
                self.acked[gift_id] = (user, reply["coins"], reply["offset"])
                return
            if code in ("unavailable", "rate_limited"):
                await asyncio.sleep(self.retry_pause)  # a client's retry pause
                continue
            self.refused[gift_id] = code
            return


class Watcher:
    """A viewer of ``stream`` that rejoins with ``since`` whenever its connection closes."""

    def __init__(self, urls: str | list[str], stream: str, index: int = 0) -> None:
        self.urls = [urls] if isinstance(urls, str) else urls
        self.stream = stream
        self.index = index
        self.gifts: list[dict[str, Any]] = []
        self.latencies: list[float] = []
        """Arrival time - the event's ``ts``, ms, of each gift that came live (not ``missed``)."""
        self.last: str | None = None
        self.reconnects = 0
        self.join_refusals: Counter[str] = Counter()
        self.unrecovered = 0
        self.close_codes: list[int | None] = []
        self.client: Client | None = None
        self.joined = asyncio.Event()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.task is not None:
            await self.task

    async def reconnect(self) -> None:
        """Close the connection from this side: the watcher rejoins with ``since``."""
        self.joined.clear()
        if self.client is not None:
            await self.client.ws.close()

    def ids(self) -> list[str]:
        return [g["id"] for g in self.gifts]

    def _take(self, events: list[dict[str, Any]], live: bool = False) -> None:
        now = time.time() * 1000
        for e in events:
            if e["kind"] == "gift" and not e.get("test"):
                self.gifts.append(e)
                self.last = e["offset"]
                if live:
                    self.latencies.append(now - e["ts"])
        self.changed.set()

    async def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            url = self.urls[(self.index + attempt) % len(self.urls)]
            attempt += 1
            try:
                client = await Client.open(url, open_timeout=10)
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed):
                await asyncio.sleep(0.1)  # a client's reconnect pause
                continue
            self.client = client
            # Events go to this watcher, not into the client's own lists.
            client.on_message = self._on_message(client)  # type: ignore[method-assign]
            message: dict[str, Any] = {"type": "join", "stream": self.stream}
            if self.last is not None:
                message["since"] = self.last
            reply = await ask(client, 15, **message)
            if reply is None or reply["type"] != "joined":
                self.join_refusals[reply["code"] if reply else "no reply"] += 1
                await client.close()
                await asyncio.sleep(0.1)  # a client's retry pause
                continue
            self.joined.set()  # `missed` was taken as the reply arrived, before any event
            assert client.reader is not None
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait({client.reader, stop}, return_when="FIRST_COMPLETED")
            stop.cancel()
            self.close_codes.append(client.ws.close_code)
            self.joined.clear()
            if not self._stop.is_set():
                self.reconnects += 1

    def _on_message(self, client: Client) -> Any:
        original = Client.on_message

        def on_message(msg: dict[str, Any]) -> None:
            if msg["type"] == "events" and msg["stream"] == self.stream:
                self._take(msg["events"], live=True)
                return
            if msg["type"] == "joined" and msg["stream"] == self.stream:
                # Here, in the reader, so that no later `events` frame is taken before it.
                if self.last is not None and not msg["recovered"]:
                    self.unrecovered += 1
                self._take(msg["missed"])
                if self.last is None:
                    self.last = msg["offset"]
            original(client, msg)

        return on_message

    async def wait_for_ids(self, ids: set[str], within: float = 30.0) -> None:
        async with asyncio.timeout(within):
            while not ids <= set(self.ids()):
                self.changed.clear()
                await self.changed.wait()


def check_watchers(watchers: list[Watcher], load: GiftLoad) -> None:
    """Every watcher saw every acknowledged gift exactly once, in offset order."""
    acked = set(load.acked)
    for i, w in enumerate(watchers):
        ids = w.ids()
        assert len(ids) == len(set(ids)), f"watcher {i}: duplicate gift events"
        assert acked <= set(ids), f"watcher {i}: {len(acked - set(ids))} acknowledged gifts missing"
        keys_ = [tuple(map(int, g["offset"].split("-"))) for g in w.gifts]
        assert keys_ == sorted(keys_), f"watcher {i}: gift events out of order"
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
