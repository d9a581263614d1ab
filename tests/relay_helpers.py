"""A real relay on a free port for tests, and a small test client that speaks the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from prometheus_client import REGISTRY
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from giftrelay import auth, referee
from giftrelay.auth import Role
from giftrelay.config import Settings
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect
from giftrelay.relay.fanout import Fanout
from giftrelay.relay.room import Head, Room
from giftrelay.relay.server import Relay

SECRET = "test-secret-" + "x" * 32


class RelayHandle(msgspec.Struct):
    relay: Relay
    money: Money
    port: int

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def running_relay(
    url: str,
    drop_hook: Callable[[str, bytes], bool] | None = None,
    *,
    with_referee: bool = False,
    port: int = 0,
    **overrides: Any,
) -> AsyncIterator[RelayHandle]:
    """A relay worker in this process over the Redis at ``url``, on ``port`` (0: a free
    one; a ``catalog=`` path among the overrides replaces the shipped catalog), with the
    referee that ends battles beside it if ``with_referee`` (as ``giftrelay serve`` runs)."""
    settings = Settings.load({}, secret=SECRET, redis_url=url, **overrides)
    redis = redis_connect(url, timeout=settings.redis_timeout)
    core = Money(redis, settings, catalog.load(settings.catalog))
    await core.start()
    relay = Relay(settings, SECRET, url, core, core.catalog)
    if drop_hook is not None:
        _drop_events(relay.fanout, drop_hook)
    stop = asyncio.Event()
    ending = asyncio.create_task(referee.run(core, stop)) if with_referee else None
    try:
        port = await relay.start("127.0.0.1", port)
        yield RelayHandle(relay=relay, money=core, port=port)
    finally:
        stop.set()
        if ending is not None:
            await ending
        await relay.shutdown()
        await core.aclose()
        await redis.aclose()


def token(
    sub: str,
    role: Role = Role.VIEWER,
    stream: str | None = None,
    ttl: int = 600,
    now: float | None = None,
) -> str:
    return auth.mint(SECRET, sub, role, ttl=ttl, stream=stream, now=now)


class Client:
    """One connection: replies matched by ``ref``, events kept per stream, in arrival order."""

    _refs = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.unmatched: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.frames = 0
        self.changed = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, tok: str | None = None, **kwargs: Any) -> Client:
        full = f"{url}?token={tok}" if tok else url
        ws = await connect(full, max_size=None, **kwargs)
        client = cls(ws)
        client.hello = json.loads(await ws.recv())
        client.reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                self.on_message(json.loads(raw))
        self.changed.set()

    def on_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "events":
            self.frames += 1
            self.events[msg["stream"]].extend(msg["events"])
            self.changed.set()
            return
        ref = msg.get("ref")
        future = self.waiting.pop(ref, None) if ref else None
        if future is not None and not future.done():
            future.set_result(msg)
        else:
            self.unmatched.put_nowait(msg)

    async def request(self, within: float = 10.0, **message: Any) -> dict[str, Any]:
        """Send a message with a fresh ``ref``; its reply (whatever type)."""
        ref = message.setdefault("ref", f"r{next(self._refs)}")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[ref] = future
        await self.ws.send(json.dumps(message))
        async with asyncio.timeout(within):
            return await future

    async def join(self, stream: str, since: str | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "join", "stream": stream}
        if since is not None:
            message["since"] = since
        reply = await self.request(**message)
        if reply["type"] == "joined":
            self.events[stream].extend(reply["missed"])
        return reply

    async def send_raw(self, data: str | bytes) -> dict[str, Any]:
        """Send a frame as is; the next reply that carries no known ``ref``."""
        await self.ws.send(data)
        async with asyncio.timeout(10):
            return await self.unmatched.get()

    def gifts(self, stream: str) -> list[dict[str, Any]]:
        return [e for e in self.events[stream] if e["kind"] == "gift"]

    async def wait_for(
        self, check: Callable[[], bool], within: float = 10.0, what: str = "condition"
    ) -> None:
        """Wait (without polling sleeps) until ``check()`` holds after some message arrives."""
        async with asyncio.timeout(within):
            while not check():
                if self.ws.close_code is not None and self.reader and self.reader.done():
                    raise AssertionError(f"connection closed waiting for {what}")
                self.changed.clear()
                await self.changed.wait()

    async def closed(self, within: float = 10.0) -> int | None:
        async with asyncio.timeout(within):
            await self.ws.wait_closed()
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


def offsets(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    out = []
    for e in events:
        ms, _, seq = e["offset"].partition("-")
        out.append((int(ms), int(seq)))
    return out


def _drop_events(fanout: Fanout, drop: Callable[[str, bytes], bool]) -> None:
    """Make this worker lose the events ``drop`` picks, as if Redis never delivered them:
    for tests of the load-test harness's loss detection (no hook in the relay itself)."""
    accept = fanout._accept

    def dropping(room: Room, offset: str, data: bytes, head: Head | None) -> None:
        if not drop(room.stream, data):
            accept(room, offset, data, head)

    fanout._accept = dropping  # type: ignore[method-assign]


def slow_closes() -> float:
    """Viewers this process has closed as too slow (the relay's own metric)."""
    return REGISTRY.get_sample_value("giftrelay_slow_client_closes_total") or 0.0
