"""The relay end to end: a real server on a free port, real WebSocket clients, real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from giftrelay.auth import Role
from giftrelay.embedded import RedisServer
from giftrelay.money import keys

from .conftest import ledger_entries
from .relay_helpers import Client, RelayHandle, offsets, running_relay, slow_closes, token

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


@pytest.fixture
async def relay(redis: Redis, redis_url: str) -> AsyncIterator[RelayHandle]:
    async with running_relay(redis_url, **FAST) as handle:
        yield handle


async def open_stream(h: RelayHandle, stream: str = "s1", creator: str = "cre") -> None:
    await h.money.stream_open(stream, creator, f"{stream} live")


async def fund(h: RelayHandle, user: str, coins: int = 10_000) -> None:
    await h.money.topup(user, coins, f"grant-{user}-{coins}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# -- connecting ------------------------------------------------------------------------------


async def test_hello_names_the_user_and_role(relay: RelayHandle) -> None:
    anon = await Client.open(relay.ws)
    alice = await Client.open(relay.ws, token("alice"))
    assert anon.hello == {
        "type": "hello",
        "v": 1,
        "server": anon.hello["server"],
        "user": None,
        "role": "anonymous",
    }
    assert anon.hello["server"].startswith("giftrelay/")
    assert (alice.hello["user"], alice.hello["role"]) == ("alice", "viewer")
    # The Authorization header works as well as ?token=.
    async with connect(
        relay.ws, additional_headers={"Authorization": f"Bearer {token('bob', Role.CREATOR)}"}
    ) as ws:
        hello = json.loads(await ws.recv())
        assert (hello["user"], hello["role"]) == ("bob", "creator")
    await anon.close()
    await alice.close()


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-jwt",
        token("alice", ttl=10, now=time.time() - 100),  # expired
        token("alice").rsplit(".", 1)[0] + ".AAAA",  # wrongly signed
    ],
)
async def test_bad_token_refuses_the_handshake_with_401(relay: RelayHandle, bad: str) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await connect(f"{relay.ws}?token={bad}")
    assert caught.value.response.status_code == 401


async def test_http_routes(relay: RelayHandle) -> None:
    loop = asyncio.get_running_loop()

    async def get(path: str) -> tuple[int, str]:
        return await loop.run_in_executor(None, http_get, relay.http + path)

    assert await get("/healthz") == (200, "ok\n")
    assert await get("/readyz") == (200, "ready\n")
    status, body = await get("/catalog.json")
    assert status == 200
    assert [g["id"] for g in json.loads(body)["gifts"]][:2] == ["gg", "rose"]
    status, body = await get("/metrics")
    assert status == 200
    for name in (
        "giftrelay_open_connections",
        "giftrelay_joins_total",
        "giftrelay_gifts_total",
        "giftrelay_gift_seconds",
        "giftrelay_fanout_lag_seconds",
        "giftrelay_frames_sent_total",
        "giftrelay_bytes_sent_total",
        "giftrelay_slow_client_closes_total",
    ):
        assert name in body
    status, body = await get("/")
    assert status == 200
    assert "<html" in body
    for path in ("/nope", "/../pyproject.toml", "/%2e%2e/%2e%2e/etc/passwd", "/web/__init__.py"):
        assert (await get(path))[0] == 404, path


# -- fan-out ---------------------------------------------------------------------------------


async def test_every_viewer_gets_every_gift_once_in_order_and_nothing_else(
    relay: RelayHandle,
) -> None:
    await open_stream(relay, "s1")
    await open_stream(relay, "s2", "cre2")
    gifters = [f"g{i}" for i in range(4)]
    for g in gifters:
        await fund(relay, g)
    # Half of them with permessage-deflate (as browsers offer it), half without.
    viewers1 = [
        await Client.open(relay.ws, compression=None if i % 2 else "deflate") for i in range(12)
    ]
    assert [bool(v.ws.protocol.extensions) for v in viewers1] == [True, False] * 6
    viewers2 = [await Client.open(relay.ws, token(f"w{i}")) for i in range(5)]
    both = await Client.open(relay.ws)
    for v in viewers1:
        assert (await v.join("s1"))["type"] == "joined"
    for v in viewers2:
        await v.join("s2")
    await both.join("s1")
    await both.join("s2")

    senders = [await Client.open(relay.ws, token(g)) for g in gifters]

    async def send(client: Client, n: int, stream: str) -> list[str]:
        replies = await asyncio.gather(
            *(
                client.request(type="gift", stream=stream, gift="rose", id=f"{stream}-{n}-{i:04d}x")
                for i in range(n)
            )
        )
        assert all(r["type"] == "gift_ok" for r in replies), replies
        return [r["offset"] for r in replies]

    results = await asyncio.gather(
        *(send(s, 60, "s1") for s in senders), *(send(s, 15, "s2") for s in senders)
    )
    acked1 = sorted({o for r in results[:4] for o in r}, key=lambda o: offsets([{"offset": o}]))
    acked2 = sorted({o for r in results[4:] for o in r}, key=lambda o: offsets([{"offset": o}]))
    assert len(acked1) == 240
    assert len(acked2) == 60

    async def received(v: Client, stream: str, acked: list[str]) -> list[str]:
        await v.wait_for(lambda: len(v.gifts(stream)) >= len(acked))
        return [e["offset"] for e in v.gifts(stream)]

    for v in [*viewers1, both]:
        assert await received(v, "s1", acked1) == acked1  # every gift, once, in offset order
    for v in [*viewers2, both]:
        assert await received(v, "s2", acked2) == acked2
    for v in viewers1:
        assert set(v.events) == {"s1"}  # nothing of another stream
    for v in viewers2:
        assert set(v.events) == {"s2"}
    # Few frames for many events: the tick coalesces.
    assert viewers1[0].frames < 240
    # Money: each gifter spent exactly what was acknowledged.
    for g in gifters:
        assert (await relay.money.balance(g)).coins == 10_000 - 75
    assert (await relay.money.balance("cre")).diamonds == 240
    assert (await relay.money.balance("cre2")).diamonds == 60


async def test_join_since_recovers_what_was_missed(relay: RelayHandle) -> None:
    await open_stream(relay)
    await fund(relay, "alice")
    alice = await Client.open(relay.ws, token("alice"))
    viewer = await Client.open(relay.ws)
    await viewer.join("s1")
    first = await alice.request(type="gift", stream="s1", gift="rose", id="gift-0001")
    await viewer.wait_for(lambda: len(viewer.gifts("s1")) == 1)
    await viewer.close()

    missed = [
        (await alice.request(type="gift", stream="s1", gift="heart", id=f"gift-1{i:03d}"))["offset"]
        for i in range(5)
    ]
    again = await Client.open(relay.ws)
    joined = await again.join("s1", since=first["offset"])
    assert joined["recovered"] is True
    assert [e["offset"] for e in joined["missed"]] == missed
    assert all(e["kind"] == "gift" and e["gift"] == "heart" for e in joined["missed"])
    assert joined["offset"] == missed[-1]
    # And the live events continue after what was recovered, with nothing twice.
    last = await alice.request(type="gift", stream="s1", gift="rose", id="gift-2000")
    await again.wait_for(lambda: len(again.gifts("s1")) == 6)
    assert [e["offset"] for e in again.gifts("s1")] == [*missed, last["offset"]]


async def test_join_since_too_old_gives_a_snapshot_instead(
    relay: RelayHandle, redis: Redis
) -> None:
    await open_stream(relay)
    await fund(relay, "alice")
    alice = await Client.open(relay.ws, token("alice"))
    first = await alice.request(type="gift", stream="s1", gift="rose", id="gift-0001")
    for i in range(3):
        await alice.request(type="gift", stream="s1", gift="rose", id=f"gift-1{i:03d}")
    await redis.xtrim(
        keys.history("s1"), maxlen=1, approximate=False
    )  # history no longer reaches back
    viewer = await Client.open(relay.ws)
    joined = await viewer.join("s1", since=first["offset"])
    assert joined["recovered"] is False
    assert joined["missed"] == []
    assert joined["snapshot"]["diamonds"] == 4
    # An offset from the future is not this stream's history either.
    other = await Client.open(relay.ws)
    joined = await other.join("s1", since="99999999999999-0")
    assert joined["recovered"] is False


async def test_snapshot_has_creator_title_live_viewers_diamonds_top_goal(
    relay: RelayHandle,
) -> None:
    await open_stream(relay)
    for user, n in (("alice", 3), ("bob", 5)):
        await fund(relay, user)
        c = await Client.open(relay.ws, token(user))
        for i in range(n):
            await c.request(type="gift", stream="s1", gift="rose", id=f"{user}-gift-{i}")
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    goal = await creator.request(type="set_goal", stream="s1", title="new mic", target=100)
    assert goal == {
        "type": "goal_ok",
        "ref": goal["ref"],
        "stream": "s1",
        "goal": {"title": "new mic", "target": 100, "progress": 0},
    }
    watcher = await Client.open(relay.ws)
    await watcher.join("s1")
    await watcher.wait_for(
        lambda: any(e["kind"] == "viewers" and e["count"] == 1 for e in watcher.events["s1"])
    )
    late = await Client.open(relay.ws)
    snapshot = (await late.join("s1"))["snapshot"]
    assert snapshot == {
        "creator": "cre",
        "title": "s1 live",
        "live": True,
        "viewers": 1,
        "diamonds": 8,
        "top": [{"user": "bob", "coins": 5, "level": 0}, {"user": "alice", "coins": 3, "level": 0}],
        "goal": {"title": "new mic", "target": 100, "progress": 0},
        "battle": None,
    }


async def test_viewers_and_top_events(relay: RelayHandle) -> None:
    await open_stream(relay)
    await fund(relay, "alice")
    a = await Client.open(relay.ws)
    await a.join("s1")
    b = await Client.open(relay.ws)
    await b.join("s1")

    def counts() -> list[int]:
        return [e["count"] for e in a.events["s1"] if e["kind"] == "viewers"]

    await a.wait_for(lambda: counts()[-1:] == [2])
    await b.request(type="leave", stream="s1")
    await a.wait_for(lambda: counts()[-1:] == [1])
    alice = await Client.open(relay.ws, token("alice"))
    await alice.request(type="gift", stream="s1", gift="donut", id="gift-top-1")
    await a.wait_for(lambda: any(e["kind"] == "top" for e in a.events["s1"]))
    top = [e for e in a.events["s1"] if e["kind"] == "top"][-1]
    assert top["top"] == [{"user": "alice", "coins": 30, "level": 0}]
    gift = a.gifts("s1")[-1]
    assert top["offset"] == gift["offset"]  # not stored: carries the latest stored offset


async def test_combo_counts_up_and_ends_once(redis: Redis, redis_url: str) -> None:
    async with running_relay(redis_url, combo_window_ms=300, **FAST) as h:
        await open_stream(h)
        await fund(h, "alice")
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        alice = await Client.open(h.ws, token("alice"))
        combos = [
            (await alice.request(type="gift", stream="s1", gift="rose", id=f"combo-{i:04d}"))[
                "combo"
            ]
            for i in range(3)
        ]
        assert combos == [1, 2, 3]

        def ends() -> list[dict[str, Any]]:
            return [e for e in viewer.events["s1"] if e["kind"] == "combo_end"]

        await viewer.wait_for(lambda: len(ends()) == 1)
        first = viewer.gifts("s1")[0]
        assert ends()[0] | {"offset": "", "ts": 0} == {
            "kind": "combo_end",
            "combo_id": first["combo_id"],
            "from": "alice",
            "gift": "rose",
            "total": 3,
            "coins": 3,
            "offset": "",
            "ts": 0,
        }
        # A gift after the window starts a new combo, which ends by itself: still one
        # combo_end for the first.
        again = await alice.request(type="gift", stream="s1", gift="rose", id="combo-late")
        assert again["combo"] == 1
        await viewer.wait_for(lambda: len(ends()) == 2)
        assert [e["combo_id"] for e in ends()] == [
            first["combo_id"],
            viewer.gifts("s1")[-1]["combo_id"],
        ]


# -- errors and roles ------------------------------------------------------------------------


async def test_every_error_code_is_reachable(relay: RelayHandle, redis: Redis) -> None:
    await open_stream(relay)
    await open_stream(relay, "closed", "cre")
    await relay.money.stream_close("closed")
    await fund(relay, "alice", 100)
    alice = await Client.open(relay.ws, token("alice"))
    anon = await Client.open(relay.ws)
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))

    async def code(client: Client, **message: Any) -> str:
        ref = f"ref-{len(message)}-{message.get('id', '')}"
        reply = await client.request(**message, ref=ref)
        assert reply["type"] == "error", reply
        assert reply["ref"] == ref
        assert reply["message"]
        if "id" in message:
            assert reply["id"] == message["id"]
        return str(reply["code"])

    gift = {"type": "gift", "stream": "s1", "gift": "rose"}
    reply = await alice.send_raw("{not json")
    assert reply["code"] == "bad_request"
    reply = await alice.send_raw(json.dumps({"type": "launch_rockets", "ref": "x1"}))
    assert (reply["code"], reply["ref"]) == ("bad_request", "x1")
    reply = await alice.send_raw(json.dumps({**gift, "count": "2", "ref": "x2", "id": "abcdefgh"}))
    assert (reply["code"], reply["ref"], reply["id"]) == ("bad_request", "x2", "abcdefgh")
    reply = await alice.send_raw(json.dumps({"type": "ping", "pad": "x" * 5000}))
    assert reply["code"] == "too_large"
    assert await code(anon, **gift, id="anon-0001") == "unauthorized"
    assert await code(alice, type="topup", user="alice", coins=5, id="rcpt-0001") == "forbidden"
    assert await code(alice, **{**gift, "stream": "nowhere"}, id="gift-0001") == "unknown_stream"
    assert await code(alice, **{**gift, "stream": "closed"}, id="gift-0002") == "stream_not_live"
    assert await code(alice, **{**gift, "gift": "unicorn"}, id="gift-0003") == "unknown_gift"
    assert await code(creator, **gift, id="gift-0004") == "self_gift"
    assert await code(alice, **{**gift, "gift": "galaxy"}, id="gift-0005") == "insufficient_coins"
    assert await code(creator, type="payout", diamonds=5000, id="pay-00001") == (
        "insufficient_diamonds"
    )
    assert await code(creator, type="payout", diamonds=10, id="pay-00002") == "below_minimum"
    assert (await alice.request(type="set_cap", daily_coins=2))["type"] == "cap_ok"
    assert await code(alice, **gift, count=3, id="gift-0006") == "spend_limit"
    assert (await alice.request(**gift, id="gift-0007"))["type"] == "gift_ok"
    assert await code(alice, **{**gift, "gift": "gg"}, id="gift-0007") == "idempotency_conflict"
    await redis.set(keys.wallet("broken"), "not a hash")  # a planted bad key
    broken = await Client.open(relay.ws, token("broken"))
    assert await code(broken, **gift, id="gift-0008") == "internal"
    many = await Client.open(relay.ws)
    for i in range(16):
        await open_stream(relay, f"m{i}")
        await many.join(f"m{i}")
    await open_stream(relay, "m16")
    assert await code(many, type="join", stream="m16") == "rate_limited"


async def test_gift_rate_limit_per_user(redis: Redis, redis_url: str) -> None:
    async with running_relay(redis_url, gift_rate=1.0, gift_burst=3) as h:
        await open_stream(h)
        await fund(h, "alice")
        alice = await Client.open(h.ws, token("alice"))
        replies = [
            await alice.request(type="gift", stream="s1", gift="rose", id=f"rate-{i:04d}")
            for i in range(5)
        ]
        assert [r["type"] for r in replies[:3]] == ["gift_ok"] * 3
        assert [r.get("code") for r in replies[3:]] == ["rate_limited"] * 2
        assert (await h.money.balance("alice")).coins == 10_000 - 3  # refused gifts moved nothing


async def test_a_flood_is_closed_with_1008(redis: Redis, redis_url: str) -> None:
    async with running_relay(redis_url, message_rate=5.0, message_burst=5) as h:
        client = await Client.open(h.ws)
        for _ in range(40):
            await client.ws.send(json.dumps({"type": "ping"}))
        assert await client.closed() == 1008


async def test_connections_per_ip_are_bounded(redis: Redis, redis_url: str) -> None:
    async with running_relay(redis_url, max_connections_per_ip=2) as h:
        a, b = await Client.open(h.ws), await Client.open(h.ws)
        with pytest.raises(InvalidStatus) as caught:
            await connect(h.ws)
        assert caught.value.response.status_code == 429
        await a.close()
        await b.close()


async def test_frame_above_the_limit_closes_with_1009(relay: RelayHandle) -> None:
    client = await Client.open(relay.ws)
    await client.ws.send("x" * 70_000)
    assert await client.closed() == 1009


async def test_roles(relay: RelayHandle) -> None:
    await open_stream(relay, "s1", "cre")
    await open_stream(relay, "s2", "other")
    viewer = await Client.open(relay.ws, token("vic"))
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    admin = await Client.open(relay.ws, token("root", Role.ADMIN))
    overlay = await Client.open(relay.ws, token("ov", Role.OVERLAY, stream="s1"))
    anon = await Client.open(relay.ws)

    async def kind(client: Client, **message: Any) -> str:
        reply = await client.request(**message)
        return str(reply.get("code", reply["type"]))

    manage = [
        {"type": "stream_open", "stream": "s1", "title": "t"},
        {"type": "stream_close", "stream": "s2"},
        {"type": "set_goal", "stream": "s1", "title": "t", "target": 5},
        {"type": "test_alert", "stream": "s1", "gift": "rose"},
        {"type": "revoke_overlays", "stream": "s1"},
        {"type": "topup", "user": "vic", "coins": 5, "id": "receipt-1"},
        {"type": "payout", "diamonds": 5000, "id": "payout-01"},
    ]
    for message in manage:
        assert await kind(viewer, **message) == "forbidden", message
        assert await kind(overlay, **message) == "forbidden", message
        assert await kind(anon, **message) == "unauthorized", message
    # A creator manages only its own streams.
    assert await kind(creator, type="stream_close", stream="s2") == "forbidden"
    assert await kind(creator, type="set_goal", stream="s2", title="t", target=5) == "forbidden"
    assert await kind(creator, type="test_alert", stream="s2", gift="rose") == "forbidden"
    assert await kind(creator, type="revoke_overlays", stream="s2") == "forbidden"
    assert await kind(creator, type="stream_open", stream="s2", title="mine") == "forbidden"
    assert await kind(creator, type="stream_open", stream="s3", title="t", creator="x") == (
        "forbidden"
    )
    assert await kind(creator, type="topup", user="cre", coins=5, id="receipt-2") == "forbidden"
    assert await kind(creator, type="stream_open", stream="s3", title="mine") == "stream_ok"
    assert await kind(creator, type="stream_close", stream="s3") == "stream_ok"
    # An admin may do all of it, for anyone.
    reply = await admin.request(type="topup", user="vic", coins=50, id="receipt-3")
    assert reply == {"type": "topup_ok", "ref": reply["ref"], "user": "vic", "coins": 50}
    assert await kind(admin, type="stream_open", stream="s4", title="t") == "bad_request"
    assert await kind(admin, type="stream_open", stream="s4", title="t", creator="z") == "stream_ok"
    assert await kind(admin, type="stream_close", stream="s2") == "stream_ok"
    # An overlay reads only its own stream, and never spends.
    assert await kind(overlay, type="join", stream="s1") == "joined"
    assert await kind(overlay, type="join", stream="s4") == "forbidden"
    assert await kind(overlay, type="gift", stream="s1", gift="rose", id="ovgift-01") == "forbidden"
    assert await kind(overlay, type="balance") == "forbidden"
    # Anonymous may watch, never spend.
    assert await kind(anon, type="join", stream="s1") == "joined"
    assert await kind(anon, type="balance") == "unauthorized"
    assert await kind(anon, type="ping") == "pong"
    catalog = await anon.request(type="catalog")
    assert [g["coins"] for g in catalog["gifts"]] == sorted(g["coins"] for g in catalog["gifts"])


async def test_replies_of_each_message(relay: RelayHandle) -> None:
    await open_stream(relay)
    await fund(relay, "alice", 50)
    alice = await Client.open(relay.ws, token("alice"))
    reply = await alice.request(type="gift", stream="s1", gift="rose", count=2, id="gift-0001")
    assert reply == {
        "type": "gift_ok",
        "ref": reply["ref"],
        "id": "gift-0001",
        "stream": "s1",
        "offset": reply["offset"],
        "coins": 2,
        "balance": 48,
        "combo": 2,
    }
    again = await alice.request(type="gift", stream="s1", gift="rose", count=2, id="gift-0001")
    assert again | {"ref": ""} == reply | {"ref": ""}  # a repeat returns the first reply
    reply = await alice.request(type="balance")
    assert reply == {
        "type": "balance",
        "ref": reply["ref"],
        "coins": 48,
        "diamonds": 0,
        "spent_today": 2,
        "daily_cap": None,
    }
    assert (await alice.request(type="set_cap", daily_coins=None))["daily_coins"] is None
    joined = await alice.join("s1")
    assert joined["offset"] == again["offset"]  # the latest event
    left = await alice.request(type="leave", stream="s1")
    assert left == {"type": "left", "ref": left["ref"], "stream": "s1"}
    await fund(relay, "bob", 3000)
    bob = await Client.open(relay.ws, token("bob"))
    await bob.request(type="gift", stream="s1", gift="crown", count=6, id="gift-crown")
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    paid = await creator.request(type="payout", diamonds=2000, id="payout-0001")
    assert paid == {
        "type": "payout_ok",
        "ref": paid["ref"],
        "id": "payout-0001",
        "diamonds": 2000,
        "cash_cents": 1000,
        "fee_cents": 0,
        "diamonds_left": 1002,
    }
    closed = await creator.request(type="stream_close", stream="s1")
    assert closed == {"type": "stream_ok", "ref": closed["ref"], "stream": "s1", "live": False}
    assert (await creator.request(type="ping"))["type"] == "pong"


async def test_test_alert_reaches_viewers_and_moves_nothing(
    relay: RelayHandle, redis: Redis
) -> None:
    await open_stream(relay)
    overlay = await Client.open(relay.ws, token("ov", Role.OVERLAY, stream="s1"))
    await overlay.join("s1")
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    ledger_before = await redis.xlen(keys.LEDGER)
    info_before = await relay.money.stream_info("s1")
    reply = await creator.request(type="test_alert", stream="s1", gift="castle", count=2)
    assert reply["type"] == "test_ok"
    await overlay.wait_for(lambda: len(overlay.gifts("s1")) == 1)
    event = overlay.gifts("s1")[0]
    assert event["test"] is True
    assert (event["gift"], event["name"], event["count"], event["from"]) == (
        "castle",
        "Castle",
        2,
        "cre",
    )
    assert event["offset"] == reply["offset"]
    assert await redis.xlen(keys.LEDGER) == ledger_before
    assert await relay.money.stream_info("s1") == info_before
    assert (await relay.money.balance("cre")).diamonds == 0


async def test_revoked_overlay_tokens_stop_working(relay: RelayHandle) -> None:
    await open_stream(relay)
    old = token("ov", Role.OVERLAY, stream="s1")
    overlay = await Client.open(relay.ws, old)
    await overlay.join("s1")
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    assert (await creator.request(type="revoke_overlays", stream="s1"))["type"] == "revoke_ok"
    assert await overlay.closed() == 1008
    with pytest.raises(InvalidStatus) as caught:
        await connect(f"{relay.ws}?token={old}")
    assert caught.value.response.status_code == 401
    fresh = await Client.open(relay.ws, token("ov", Role.OVERLAY, stream="s1"))
    assert (await fresh.join("s1"))["type"] == "joined"


# -- slow readers ------------------------------------------------------------------------------


async def test_compression_can_be_turned_off(redis: Redis, redis_url: str) -> None:
    async with running_relay(redis_url, compression=False, **FAST) as h:
        viewer = await Client.open(h.ws, compression="deflate")
        assert viewer.ws.protocol.extensions == []
        assert (await viewer.request(type="ping"))["type"] == "pong"


async def test_slow_reader_is_closed_with_1013_and_fast_viewers_keep_up(
    redis: Redis, redis_url: str
) -> None:
    async with running_relay(redis_url, write_buffer_bytes=65536, **FAST) as h:
        await open_stream(h)
        await fund(h, "alice", 1_000_000)
        fast = await Client.open(h.ws)
        await fast.join("s1")
        # A reader that stops reading: a tiny receive buffer, nothing taken off it, and
        # no compression, so that the flood fills it fast.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", h.port))
        slow_ws = await connect(h.ws, sock=sock, max_queue=1, max_size=None, compression=None)
        await slow_ws.recv()  # hello
        await slow_ws.send(json.dumps({"type": "join", "stream": "s1"}))
        alice = await Client.open(h.ws, token("alice"))
        sent = 0
        closed_before = slow_closes()
        while slow_closes() == closed_before and sent < 40_000:
            await asyncio.gather(
                *(
                    alice.request(type="gift", stream="s1", gift="gg", id=f"flood-{sent + i:06d}")
                    for i in range(500)
                )
            )
            sent += 500
        assert slow_closes() == closed_before + 1
        await fast.wait_for(lambda: len(fast.gifts("s1")) == sent, within=30)
        assert [e["offset"] for e in fast.gifts("s1")] == sorted(
            (e["offset"] for e in fast.gifts("s1")), key=lambda o: tuple(map(int, o.split("-")))
        )
        # The slow reader, reading again, finds the close frame with 1013.
        with contextlib.suppress(ConnectionClosed):
            async for _ in slow_ws:
                pass
        assert slow_ws.close_code == 1013


# -- Redis going away ---------------------------------------------------------------------------


async def test_redis_killed_and_restarted(own_redis_server: RedisServer) -> None:
    async with running_relay(own_redis_server.url, **FAST) as h:
        await open_stream(h)
        await fund(h, "alice")
        viewer = await Client.open(h.ws)
        await viewer.join("s1")
        alice = await Client.open(h.ws, token("alice"))
        assert (await alice.request(type="gift", stream="s1", gift="rose", id="before-01"))[
            "type"
        ] == "gift_ok"
        await viewer.wait_for(lambda: len(viewer.gifts("s1")) == 1)

        own_redis_server.kill()
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await alice.request(type="gift", stream="s1", gift="rose", id="during-01")
        assert reply["code"] == "unavailable"
        assert reply["id"] == "during-01"
        assert loop.time() - started < 2.0
        status, _ = await loop.run_in_executor(None, http_get, h.http + "/readyz")
        assert status == 503

        own_redis_server.start()
        # The same id, retried until Redis answers: applied exactly once.
        async with asyncio.timeout(15):
            while True:
                reply = await alice.request(type="gift", stream="s1", gift="rose", id="during-01")
                if reply["type"] == "gift_ok":
                    break
                assert reply["code"] == "unavailable"
                await asyncio.sleep(0.1)  # a client's retry pause, not synchronisation
        after = await alice.request(type="gift", stream="s1", gift="rose", id="after-001")
        # The viewer never reconnected and receives both.
        assert after["type"] == "gift_ok"
        await viewer.wait_for(lambda: len(viewer.gifts("s1")) == 3, within=15)
        assert [e["id"] for e in viewer.gifts("s1")] == ["before-01", "during-01", "after-001"]
        assert viewer.gifts("s1")[-1]["offset"] == after["offset"]
        assert viewer.ws.close_code is None
        assert (await h.money.balance("alice")).coins == 10_000 - 3


async def test_token_check_tells_pages_what_the_handshake_would(relay: RelayHandle) -> None:
    await open_stream(relay)
    loop = asyncio.get_running_loop()

    async def check(tok: str) -> tuple[int, str]:
        return await loop.run_in_executor(None, http_get, f"{relay.http}/token-check?token={tok}")

    overlay = token("ov", Role.OVERLAY, stream="s1")
    status, body = await check(overlay)
    assert status == 200
    assert json.loads(body)["stream"] == "s1"
    assert (await check("garbage"))[0] == 401
    creator = await Client.open(relay.ws, token("cre", Role.CREATOR))
    await creator.request(type="revoke_overlays", stream="s1")
    status, body = await check(overlay)
    assert (status, body) == (401, "this overlay token was revoked\n")
    # Every page is served so that its URL (and token) is never passed on as a referrer.
    policy = await loop.run_in_executor(None, referrer_policy, f"{relay.http}/overlay/alerts")
    assert policy == "no-referrer"


def referrer_policy(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.headers["Referrer-Policy"]


async def test_mindful_spending_over_the_socket(relay: RelayHandle, redis: Redis) -> None:
    await open_stream(relay)
    await fund(relay, "alice", 1000)
    alice = await Client.open(relay.ws, token("alice"))
    ok = await alice.request(type="set_confirm", coins=10)
    assert ok == {"type": "confirm_ok", "ref": ok["ref"], "coins": 10}
    gift = {"type": "gift", "stream": "s1", "gift": "rose", "count": 11, "id": "gift-big-01"}
    refused = await alice.request(**gift)
    assert (refused["type"], refused["code"], refused["id"]) == (
        "error",
        "confirm_required",
        "gift-big-01",
    )
    assert "resume_at" not in refused
    assert (await alice.request(type="balance"))["coins"] == 1000  # nothing moved
    confirmed = await alice.request(**gift, confirm=True)
    assert (confirmed["type"], confirmed["coins"], confirmed["balance"]) == ("gift_ok", 11, 989)
    again = await alice.request(**gift, confirm=True)
    assert again | {"ref": ""} == confirmed | {"ref": ""}  # the same id: the first reply
    assert (await alice.request(type="balance"))["coins"] == 989

    cooldown = await alice.request(type="set_cooldown", coins=5, minutes=60)
    assert cooldown == {"type": "cooldown_ok", "ref": cooldown["ref"], "coins": 5, "minutes": 60}
    sent = await alice.request(type="gift", stream="s1", gift="heart", id="gift-cool-01")
    assert sent["type"] == "gift_ok"
    cooling = await alice.request(type="gift", stream="s1", gift="rose", id="gift-cool-02")
    assert cooling["code"] == "cooling_down"
    assert cooling["resume_at"] > time.time() * 1000 + 59 * 60_000
    spending = await alice.request(type="spending")
    assert spending == {
        "type": "spending",
        "ref": spending["ref"],
        "today": 16,
        "last_7_days": 16,
        "last_30_days": 16,
        "per_creator": [{"creator": "cre", "coins": 16}],
        "confirm_coins": 10,
        "cooldown": {"coins": 5, "minutes": 60, "spent": 5, "resume_at": cooling["resume_at"]},
    }
    removed = await alice.request(type="set_cooldown", coins=None)
    assert (removed["coins"], removed["minutes"]) == (None, None)
    bad = await alice.request(type="set_cooldown", coins=5)
    assert (bad["code"], "minutes" in bad["message"]) == ("bad_request", True)
    anon = await Client.open(relay.ws)
    assert (await anon.request(type="spending"))["code"] == "unauthorized"
    kinds = [e["kind"] for e in await ledger_entries(redis)]
    assert (kinds.count("confirm"), kinds.count("cooldown")) == (1, 2)
