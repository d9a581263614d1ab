"""Hostile input: property tests of the decoder and of live sessions, a fuzz run, bad tokens,
path traversal and oversized HTTP, floods. Nothing may escape, close what should stay open,
or move money."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jwt
import msgspec
import pytest
import redis as sync_redis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from giftrelay.auth import Role
from giftrelay.client import Client as RelayClient
from giftrelay.embedded import RedisServer
from giftrelay.money import keys
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code

from .fault_helpers import FAST, ask
from .relay_helpers import SECRET, Client, RelayHandle, running_relay, token

TYPES = [
    "join", "leave", "gift", "balance", "ping", "catalog", "topup", "stream_open",
    "stream_close", "payout", "set_goal", "test_alert", "revoke_overlays", "set_cap",
    "set_confirm", "set_cooldown", "spending",
]  # fmt: skip
FIELDS = [
    "ref", "stream", "since", "gift", "count", "id", "user", "coins", "title", "creator",
    "diamonds", "target", "daily_coins", "confirm", "minutes",
]  # fmt: skip
REPLY_TYPES = {
    "joined", "left", "gift_ok", "balance", "pong", "catalog", "topup_ok", "stream_ok",
    "payout_ok", "cap_ok", "goal_ok", "test_ok", "revoke_ok", "error", "events",
    "confirm_ok", "cooldown_ok", "spending",
}  # fmt: skip
ERROR_CODES = {c.value for c in Code}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=80)
    | st.sampled_from(["s1", "rose", "cre", "alice", "x" * 65, "1-1", "0-0", "../../etc"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.text(max_size=12) | json_values},
    optional={f: json_values for f in FIELDS},
)


def as_frame(message: Any) -> str:
    return json.dumps(message)


def _utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


frames = st.one_of(
    messages.map(as_frame),
    st.binary(max_size=300),
    st.text(max_size=300),
    json_values.map(json.dumps),
    st.text(min_size=4097, max_size=6000).map(lambda t: json.dumps({"type": "ping", "ref": t})),
)


# -- the decoder, pure -------------------------------------------------------------------------


@settings(max_examples=3000, deadline=None)
@given(frames)
def test_decode_accepts_or_refuses_anything(frame: str | bytes) -> None:
    refused: protocol.BadMessage | None = None
    try:
        message = protocol.decode(frame, 4096)
    except protocol.BadMessage as exc:
        refused = exc
    if refused is None:
        assert type(message).__struct_config__.tag in TYPES
        return
    assert refused.code in (Code.BAD_REQUEST, Code.TOO_LARGE)
    assert refused.ref is None or (isinstance(refused.ref, str) and len(refused.ref) <= 64)
    assert refused.id is None or (isinstance(refused.id, str) and len(refused.id) <= 64)
    protocol.encode(protocol.error(refused, refused.ref, refused.id))  # its error encodes


BAD_UTF8 = b'{"type":"ping","ref":"\xee"}'
"""Invalid UTF-8 inside a JSON string of a binary frame (once closed a connection with 1011)."""


@settings(max_examples=200, deadline=None)
@example(BAD_UTF8)
@given(st.binary(max_size=200).filter(lambda b: not _utf8(b)))
def test_decode_refuses_invalid_utf8_as_a_bad_request(frame: bytes) -> None:
    with pytest.raises(protocol.BadMessage):
        protocol.decode(frame, 4096)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200).filter(_utf8) | st.text(max_size=200))
def test_echo_never_raises(frame: str | bytes) -> None:
    ref, id_ = protocol.echo(frame)
    assert ref is None or len(ref) <= 64
    assert id_ is None or len(id_) <= 64


# -- sessions against a live relay -------------------------------------------------------------


class LiveRelay:
    """A relay on its own event loop in a thread, for synchronous hypothesis tests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.handle: RelayHandle | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),))

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with running_relay(self.url, **FAST) as handle:
            self.handle = handle
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> LiveRelay:
        self.thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        self.loop.close()


def money_state(r: sync_redis.Redis) -> dict[str, Any]:
    """Every wallet's coins and diamonds, and the ledger's length: what a money movement changes."""
    wallets = {}
    for k in r.scan_iter("w:*"):
        coins, diamonds = r.hmget(k, "coins", "diamonds")
        if int(coins or 0) or int(diamonds or 0):
            wallets[k] = (coins, diamonds)
    kinds = [json.loads(f["e"])["kind"] for _, f in r.xrange(keys.LEDGER)]
    # Settings (a cap, a confirmation threshold, a cool-down) are ledger events too, but
    # move nothing (no postings).
    settings = ("cap", "confirm", "cooldown")
    return {"wallets": wallets, "movements": [k for k in kinds if k not in settings]}


@pytest.fixture(scope="module")
def live(redis_server: RedisServer) -> Iterator[tuple[LiveRelay, sync_redis.Redis]]:
    r = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
    r.flushall()
    with LiveRelay(redis_server.url) as relay:
        assert relay.handle is not None
        core = relay.handle.money
        fut = asyncio.run_coroutine_threadsafe(core.stream_open("s1", "cre", "hostile"), relay.loop)
        fut.result(10)
        yield relay, r
    r.close()


LIVE_EXAMPLES = 150

SESSION_TOKENS = {
    "anonymous": None,
    "viewer": token("alice"),  # no coins: a gift cannot move anything
    "creator": token("cre", Role.CREATOR),  # no diamonds: a payout cannot either
    "overlay": token("ov", Role.OVERLAY, stream="s1"),
}


async def session(url: str, tok: str | None, sent: list[str | bytes]) -> list[dict[str, Any]]:
    """Send every frame; end with a ping; every reply up to its pong. The socket must stay open."""
    client = await Client.open(url, tok)
    replies: list[dict[str, Any]] = []

    def on_message(msg: dict[str, Any]) -> None:
        replies.append(msg)
        Client.on_message(client, msg)

    client.on_message = on_message  # type: ignore[method-assign]
    for frame in sent:
        await client.ws.send(frame)
    pong = await ask(client, 20, type="ping", ref="the-end")
    assert pong is not None, f"the connection closed ({client.ws.close_code}) or hung"
    assert client.ws.close_code is None
    await client.close()
    return replies


@settings(
    max_examples=LIVE_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: it re-runs sessions
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(role=st.sampled_from(sorted(SESSION_TOKENS)), sent=st.lists(frames, max_size=12))
def test_a_live_session_answers_any_frames_and_moves_no_money(
    live: tuple[LiveRelay, sync_redis.Redis], role: str, sent: list[str | bytes]
) -> None:
    relay, r = live
    assert relay.handle is not None
    before = money_state(r)
    future = asyncio.run_coroutine_threadsafe(
        session(relay.handle.ws, SESSION_TOKENS[role], sent), relay.loop
    )
    replies = future.result(60)
    for reply in replies:
        assert reply["type"] in REPLY_TYPES, reply
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES, reply
            assert reply["code"] != "internal", reply
    assert money_state(r) == before


async def test_a_binary_frame_with_invalid_utf8_gets_an_error_and_stays_open(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url) as h:
        replies = await session(h.ws, None, [BAD_UTF8])
        assert [r.get("code") for r in replies if r.get("ref") != "the-end"] == ["bad_request"]


def mutate(rng: random.Random, valid: list[dict[str, Any]]) -> str | bytes:
    """A frame near a valid one: a field changed, dropped, retyped, or the bytes damaged."""
    message = dict(rng.choice(valid))
    choice = rng.randrange(6)
    if choice == 0 and message:
        message.pop(rng.choice(list(message)))
    elif choice == 1:
        field = rng.choice(FIELDS)
        message[field] = rng.choice(
            [None, True, -1, 0, 2**63, 1.5, "", "x" * rng.randrange(70), [], {}, "s1", "../x"]
        )
    elif choice == 2:
        # Not revoke_overlays: it would (rightly) make the overlay session's token 401.
        kinds = [t for t in TYPES if t != "revoke_overlays"]
        message["type"] = rng.choice([*kinds, "", "GIFT", "gift ", 7])
    text = json.dumps(message)
    if choice == 3:
        cut = rng.randrange(len(text))
        return text[:cut]
    if choice == 4:
        data = bytearray(text.encode())
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    if choice == 5:
        return text + rng.choice(["", "}", ",", "\x00", " " * 10, "\ud800"[:0]])
    return text


FUZZ_FRAMES = 5000


async def test_fuzz_thousands_of_frames_against_a_live_relay(
    redis: Redis, redis_server: RedisServer
) -> None:
    rng = random.Random(7)
    valid: list[dict[str, Any]] = [
        {"type": "join", "stream": "s1"},
        {"type": "join", "stream": "s1", "since": "0-0"},
        {"type": "leave", "stream": "s1"},
        {"type": "gift", "stream": "s1", "gift": "rose", "id": "fuzz-0001"},
        {"type": "gift", "stream": "s1", "gift": "rose", "count": 3, "id": "fuzz-0002"},
        {"type": "balance"},
        {"type": "ping", "ref": "r"},
        {"type": "catalog"},
        {"type": "topup", "user": "alice", "coins": 5, "id": "receipt-0001"},
        {"type": "payout", "diamonds": 2000, "id": "payout-0001"},
        {"type": "set_goal", "stream": "s1", "title": "t", "target": 5},
        {"type": "test_alert", "stream": "s1", "gift": "rose"},
        {"type": "stream_close", "stream": "s2"},
        {"type": "set_cap", "daily_coins": 5},
        {"type": "set_confirm", "coins": 5},
        {"type": "set_cooldown", "coins": 5, "minutes": 1},
        {"type": "spending"},
        {"type": "gift", "stream": "s1", "gift": "rose", "id": "fuzz-0003", "confirm": True},
    ]
    async with running_relay(redis_server.url, **FAST) as h:
        await h.money.stream_open("s1", "cre", "fuzz")
        r = sync_redis.Redis.from_url(redis_server.url, decode_responses=True)
        before = money_state(r)
        counts: dict[str, int] = {}
        per = FUZZ_FRAMES // 4
        for role, tok in SESSION_TOKENS.items():
            sent = [mutate(rng, valid) for _ in range(per)]
            replies = []
            for chunk in range(0, per, 250):  # under the message burst
                replies += await session(h.ws, tok, sent[chunk : chunk + 250])
            for reply in replies:
                assert reply["type"] in REPLY_TYPES
                key = reply.get("code") or reply["type"]
                counts[key] = counts.get(key, 0) + 1
                assert key != "internal"
            assert not h.relay.stopping, role
        assert money_state(r) == before
        assert counts.get("bad_request", 0) > FUZZ_FRAMES / 4
        r.close()


# -- nesting past the recursion limit (issue 16) -----------------------------------------------


@pytest.mark.parametrize("framing", ["json", "msgpack"])
async def test_deeply_nested_frames_get_bad_request_and_the_connection_stays_open(
    relay: RelayHandle, redis: Redis, framing: str
) -> None:
    """A frame nested ~1,000 deep (at the top level, in ``ref``, in a gift's ``count``) once
    raised RecursionError in the decoder and closed the connection with 1011."""
    from .conftest import dump
    from .test_protocol import NESTED_AT, deep_json, deep_msgpack

    before = await dump(redis)
    url = f"{relay.ws}?token={token('alice')}"
    subprotocols = [protocol.MSGPACK] if framing == "msgpack" else None
    async with connect(url, subprotocols=subprotocols) as ws:  # type: ignore[arg-type]
        codec = protocol.codec_for(ws.subprotocol)
        assert codec.binary is (framing == "msgpack")

        async def reply() -> dict[str, Any]:
            async with asyncio.timeout(10):
                data = await ws.recv(decode=False)
            message: dict[str, Any] = (
                msgspec.msgpack.decode(data) if codec.binary else msgspec.json.decode(data)
            )
            return message

        assert (await reply())["type"] == "hello"
        for where in sorted(NESTED_AT):
            frame = deep_msgpack(where) if codec.binary else deep_json(where)
            await ws.send(frame)
            error = await reply()
            assert (error["type"], error["code"]) == ("error", "bad_request"), (where, error)
            ping = {"type": "ping", "ref": f"after-{where}"}
            await ws.send(msgspec.msgpack.encode(ping) if codec.binary else json.dumps(ping))
            assert await reply() == {"type": "pong", "ref": f"after-{where}"}, where
        assert ws.close_code is None
    assert (await relay.money.balance("alice")).coins == 100  # the nested gift moved nothing
    assert await dump(redis) == before


HELLO = '{"type":"hello","v":1,"server":"test","user":null,"role":"anonymous"}'


def deep_frame(kind: str) -> str:
    """A server frame of ``kind`` with an extra field nested ~1,000 deep."""
    from .test_protocol import DEEP, nested_json

    head = HELLO[:-1] if kind == "hello" else f'{{"type":"{kind}"'
    return f'{head},"x":{nested_json(DEEP)}}}'


async def test_the_client_drops_a_deeply_nested_frame_and_keeps_its_connection() -> None:
    """The client library decodes server frames with msgspec too: a nested frame is
    dropped, the connection stays and later replies still reach their requests."""

    async def handler(ws: Any) -> None:
        await ws.send(HELLO)
        async for data in ws:
            ref = json.loads(data)["ref"]
            for kind in ("pong", "events", "teleport"):  # known, events, a later reply type
                await ws.send(deep_frame(kind))
            await ws.send(json.dumps({"type": "pong", "ref": ref}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with RelayClient(f"ws://127.0.0.1:{port}/ws", reconnect=False) as client:
            await client.ping()
            await client.ping()
            assert client.connected
            assert not client.close_codes


async def test_the_client_retries_after_a_deeply_nested_hello_rather_than_giving_up() -> None:
    """A reconnect whose hello could not be decoded is one more failed attempt: the client
    backs off and connects again (a RecursionError used to end reconnecting for good)."""
    opened = 0
    third = asyncio.Event()

    async def handler(ws: Any) -> None:
        nonlocal opened
        opened += 1
        if opened == 3:
            third.set()
        if opened == 2:
            await ws.send(deep_frame("hello"))
            await ws.wait_closed()
            return
        await ws.send(HELLO)
        if opened == 1:
            await ws.close(1001, "going away")
            return
        async for data in ws:
            await ws.send(json.dumps({"type": "pong", "ref": json.loads(data)["ref"]}))

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with RelayClient(f"ws://127.0.0.1:{port}/ws", backoff=(0.01, 0.01)) as client:
            async with asyncio.timeout(10):  # the drop (1001), the nested hello, then this
                await third.wait()
            await client.wait_connected(10)
            await client.ping()
            assert opened == 3
            assert client.reconnects == 1
            assert client.close_codes == {1001: 1}


# -- tokens ------------------------------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"sub": "alice", "role": "admin", "exp": now + 600}
    good = token("alice")
    head, body, sig = good.split(".")
    return {
        "forged (another secret)": jwt.encode(claims, "another-secret-" + "y" * 32, "HS256"),
        "expired": jwt.encode({**claims, "exp": now - 10}, SECRET, "HS256"),
        "wrongly signed": f"{head}.{body}.{sig[::-1]}",
        "payload swapped": f"{head}.{_b64(claims)}.{sig}",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg HS512": jwt.encode(claims, SECRET, "HS512"),
        "unknown role": jwt.encode({**claims, "role": "root"}, SECRET, "HS256"),
        "no exp": jwt.encode({"sub": "alice", "role": "admin"}, SECRET, "HS256"),
        "bad subject": jwt.encode({**claims, "sub": "../alice"}, SECRET, "HS256"),
        "overlay without stream": jwt.encode({**claims, "role": "overlay"}, SECRET, "HS256"),
        "garbage": "a.b.c",
        "huge": "x" * 3000,
    }


@pytest.fixture
async def relay(redis: Redis, redis_server: RedisServer) -> AsyncIterator[RelayHandle]:
    async with running_relay(redis_server.url, **FAST) as handle:
        await handle.money.stream_open("s1", "cre", "one")
        await handle.money.stream_open("s2", "other", "two")
        await handle.money.topup("alice", 100, "grant-alice-0001")
        yield handle


async def test_bad_tokens_are_refused_with_401(relay: RelayHandle) -> None:
    for name, bad in bad_tokens().items():
        for how in ("query", "header"):
            url = f"{relay.ws}?token={bad}" if how == "query" else relay.ws
            headers = {"Authorization": f"Bearer {bad}"} if how == "header" else {}
            with pytest.raises(InvalidStatus) as caught:
                await connect(url, additional_headers=headers)
            assert caught.value.response.status_code == 401, (name, how)
    assert not relay.relay.sessions


async def test_wrong_roles_and_streams_are_forbidden_and_move_nothing(
    relay: RelayHandle, redis: Redis
) -> None:
    from .conftest import dump

    before = await dump(redis)
    viewer = await Client.open(relay.ws, token("alice"))
    overlay = await Client.open(relay.ws, token("ov", Role.OVERLAY, stream="s1"))
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    anon = await Client.open(relay.ws)
    checks = [
        (viewer, {"type": "topup", "user": "alice", "coins": 10**6, "id": "receipt-0002"}, "forbidden"),  # noqa: E501
        (viewer, {"type": "payout", "diamonds": 2000, "id": "payout-0002"}, "forbidden"),
        (viewer, {"type": "stream_close", "stream": "s1"}, "forbidden"),
        (overlay, {"type": "join", "stream": "s2"}, "forbidden"),
        (overlay, {"type": "gift", "stream": "s1", "gift": "rose", "id": "ov-gift-01"}, "forbidden"),  # noqa: E501
        (overlay, {"type": "topup", "user": "ov", "coins": 5, "id": "receipt-0003"}, "forbidden"),
        (creator, {"type": "topup", "user": "cre", "coins": 5, "id": "receipt-0004"}, "forbidden"),
        (creator, {"type": "stream_close", "stream": "s2"}, "forbidden"),
        (creator, {"type": "revoke_overlays", "stream": "s2"}, "forbidden"),
        (anon, {"type": "gift", "stream": "s1", "gift": "rose", "id": "anon-gift1"}, "unauthorized"),  # noqa: E501
        (anon, {"type": "balance"}, "unauthorized"),
    ]  # fmt: skip
    for client, message, code in checks:
        reply = await client.request(**message)
        assert reply.get("code") == code, (message, reply)
        assert client.ws.close_code is None
    assert await dump(redis) == before
    for c in (viewer, overlay, creator, anon):
        await c.close()


# -- HTTP: traversal and oversized requests ----------------------------------------------------


async def raw_http(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(30):  # the server's open_timeout (10 s) ends a stalled one
            return await reader.read(1 << 20)
    except (ConnectionResetError, BrokenPipeError):
        return b""
    finally:
        writer.close()


TRAVERSALS = [
    "/../pyproject.toml", "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd", "/%252e%252e/etc/passwd", "//etc/passwd",
    "/overlay/../../server.py", "/overlay/..%2f..%2fserver.py", "/web/__init__.py",
    "/__init__.py", "/catalog.toml", "/lua/gift.lua", "/index.html/../../cli.py",
    "/overlay/alerts/../../../../../etc/passwd", "/.%2e/.%2e/etc/passwd", "/\\..\\..\\etc\\passwd",
    "/%00", "/overlay/alerts%00.html", "http://evil/../etc/passwd", "/?file=../../etc/passwd",
]  # fmt: skip


async def test_path_traversal_never_reaches_a_file(relay: RelayHandle) -> None:
    secrets_on_disk = (b"root:", b"import ", b"[project]", b"redis.call")
    for path in TRAVERSALS:
        response = await raw_http(relay.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status = response.split(b" ", 2)[1] if response.startswith(b"HTTP/1.1 ") else b""
        assert status.startswith(b"4") or path.startswith("/?"), (path, response[:80])
        assert not any(s in response for s in secrets_on_disk), path


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a long request line
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",  # a huge header
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-N: 1\r\n" * 500 + b"\r\n",  # too many headers
        b"GET /ws?token=" + b"t" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # a huge token
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 200,  # TLS to a plain port
        b"GARBAGE\r\n\r\n",
    ],
    ids=["long-line", "huge-header", "many-headers", "huge-token", "tls", "garbage"],
)
async def test_oversized_or_malformed_http_gets_4xx_or_a_close(
    relay: RelayHandle, request_bytes: bytes
) -> None:
    response = await raw_http(relay.port, request_bytes)
    if response:
        assert response.startswith(b"HTTP/1.1 4"), response[:80]
    # The relay is unharmed.
    client = await Client.open(relay.ws)
    assert (await client.request(type="ping"))["type"] == "pong"
    await client.close()


# -- floods ------------------------------------------------------------------------------------


async def test_a_gift_flood_from_one_connection_is_closed_1008_and_bounded(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(
        redis_server.url, message_rate=20.0, message_burst=20, gift_rate=5.0, gift_burst=5
    ) as h:
        await h.money.stream_open("s1", "cre", "flood")
        await h.money.topup("alice", 10_000, "grant-alice-0002")
        client = await Client.open(h.ws, token("alice"))
        for i in range(2000):
            message = {"type": "gift", "stream": "s1", "gift": "rose", "id": f"flood-{i:05d}"}
            try:
                await client.ws.send(json.dumps(message))
            except ConnectionClosed:
                break
        assert await client.closed() == 1008
        spent = 10_000 - (await h.money.balance("alice")).coins
        assert 0 < spent <= 5 + 5 * 10  # the burst, plus the rate over at most 10 s
        # Others are unaffected.
        other = await Client.open(h.ws)
        assert (await other.request(type="ping"))["type"] == "pong"
        await other.close()


async def test_many_connections_from_one_ip_get_429_beyond_the_limit(
    redis: Redis, redis_server: RedisServer
) -> None:
    limit = 50
    async with running_relay(redis_server.url, max_connections_per_ip=limit) as h:
        opened = await asyncio.gather(*(Client.open(h.ws) for _ in range(limit)))
        statuses = []
        for _ in range(20):
            try:
                extra = await connect(h.ws)
                await extra.close()
                statuses.append(101)
            except InvalidStatus as exc:
                statuses.append(exc.response.status_code)
        assert statuses == [429] * 20
        assert h.relay.per_ip["127.0.0.1"] == limit
        for c in opened:
            await c.close()
        for _ in range(200):  # the handler's cleanup runs after the close handshake
            if not h.relay.per_ip:
                break
            await asyncio.sleep(0.01)
        assert not h.relay.per_ip
        again = await Client.open(h.ws)  # the slots came back
        await again.close()
