"""Signed webhooks (issue 19, item 5): every ledger movement reaches a real local HTTP
receiver at least once, signed, in order per wallet, through failures, time-outs, a
receiver that goes away, a dead letter and its replay, and a deliverer killed mid-way.

The pure parts (signing, the retry schedule, the per-wallet plan, events) are tested
first, without a loop; then the deliverer against a real redis-server, real money
movements made through the money API, and a receiver this file controls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import os
import signal
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from giftrelay.config import ConfigError, Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.money import keys as money_keys
from giftrelay.money.api import Money
from giftrelay.webhooks import admin, keys
from giftrelay.webhooks.deliverer import Deliverer
from giftrelay.webhooks.events import NotAnEvent, Pending, from_entry
from giftrelay.webhooks.ordering import Plan
from giftrelay.webhooks.outbox import Outbox
from giftrelay.webhooks.retry import Schedule
from giftrelay.webhooks.sender import Sender, wall_clock_ms
from giftrelay.webhooks.service import schedule_for
from giftrelay.webhooks.signing import BadSignature, header, signature, verify
from tests.ledger_helpers import drain, quick_consumer

SECRET = "whsec-test-" + "k" * 24


# -- signing (pure) ------------------------------------------------------------------------


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"topup:r-00000001","type":"topup"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1_700_000_000, body) == expected
    assert header(SECRET, 1_700_000_000, body) == f"t=1700000000,v1={expected}"
    assert verify(SECRET, header(SECRET, 1_700_000_000, body), body, now=1_700_000_100) == (
        1_700_000_000
    )


@pytest.mark.parametrize(
    ("value", "body", "secret", "now", "why"),
    [
        (None, b"{}x", SECRET, 1_700_000_000, "no v1"),  # another body
        (None, b"{}", "another-secret-000000", 1_700_000_000, "no v1"),
        (None, b"{}", SECRET, 1_700_000_301, "beyond 300 s"),  # too old
        ("v1=00", b"{}", SECRET, 1_700_000_000, "t=UNIX_SECONDS"),
        ("t=1700000000", b"{}", SECRET, 1_700_000_000, "t=UNIX_SECONDS"),
    ],
)
def test_a_signature_that_does_not_match_is_refused(
    value: str | None, body: bytes, secret: str, now: int, why: str
) -> None:
    value = value or header(SECRET, 1_700_000_000, b"{}")
    with pytest.raises(BadSignature, match=why):
        verify(secret, value, body, now=now)


def test_any_v1_may_match_while_a_secret_is_rotated() -> None:
    old = header("old-secret-000000000", 1_700_000_000, b"{}")
    new = header(SECRET, 1_700_000_000, b"{}").split(",")[1]
    assert verify(SECRET, f"{old},{new}", b"{}", now=1_700_000_000) == 1_700_000_000


# -- the retry schedule (pure) -------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap_with_full_jitter() -> None:
    schedule = schedule_for(Settings.load({}))
    assert schedule.base_ms <= 30_000  # the first retry within 30 s
    assert [schedule.ceiling(n) for n in (1, 2, 3, 4)] == [5_000, 10_000, 20_000, 40_000]
    assert schedule.ceiling(8) == 640_000
    assert schedule.ceiling(10) == 2_560_000
    assert schedule.ceiling(11) == schedule.ceiling(10_000) == 3_600_000
    assert schedule.delay(1, lambda: 0.0) == 0
    assert schedule.delay(1, lambda: 0.5) == 2_500
    assert schedule.delay(30, lambda: 0.999999) < 3_600_000


def test_a_failure_past_the_window_is_a_dead_letter() -> None:
    schedule = Schedule(base_ms=1_000, cap_ms=8_000, dead_after_ms=60_000)
    event = Pending(entry="1-0", id="topup:r1", type="topup", ms=0, wallets=("a",), body="{}")
    first, dead = schedule.after_failure(event, 10_000, "HTTP 500", lambda: 0.5)
    assert not dead
    assert (first.attempts, first.first_failure_ms, first.next_ms) == (1, 10_000, 10_500)
    second, dead = schedule.after_failure(first, 20_000, "timeout", lambda: 0.5)
    assert not dead
    assert (second.attempts, second.first_failure_ms, second.next_ms) == (2, 10_000, 21_000)
    assert second.error == "timeout"
    last, dead = schedule.after_failure(second, 70_000, "HTTP 503", lambda: 0.5)
    assert dead
    assert last.attempts == 3


def test_fractional_days_set_a_short_window() -> None:
    settings = Settings.load(
        {
            "GIFTRELAY_WEBHOOK_URL": "http://127.0.0.1:9/hooks",
            "GIFTRELAY_WEBHOOK_SECRET": SECRET,
            "GIFTRELAY_WEBHOOK_DEAD_AFTER_DAYS": "0.0001",
        }
    )
    assert schedule_for(settings).dead_after_ms == 8_640


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GIFTRELAY_WEBHOOK_URL": "http://127.0.0.1:9/h"}, "GIFTRELAY_WEBHOOK_SECRET: missing"),
        (
            {"GIFTRELAY_WEBHOOK_URL": "http://127.0.0.1:9/h", "GIFTRELAY_WEBHOOK_SECRET": "short"},
            "GIFTRELAY_WEBHOOK_SECRET: too short",
        ),
        (
            {"GIFTRELAY_WEBHOOK_URL": "ftp://host/h", "GIFTRELAY_WEBHOOK_SECRET": SECRET},
            "GIFTRELAY_WEBHOOK_URL: 'ftp://host/h' is not an http",
        ),
        (
            {"GIFTRELAY_WEBHOOK_URL": "http:///h", "GIFTRELAY_WEBHOOK_SECRET": SECRET},
            "GIFTRELAY_WEBHOOK_URL: 'http:///h' names no host",
        ),
        (
            {"GIFTRELAY_WEBHOOK_URL": "http://h:x/", "GIFTRELAY_WEBHOOK_SECRET": SECRET},
            "has a bad port",
        ),
        ({"GIFTRELAY_WEBHOOK_RETRY_BASE": "31"}, "GIFTRELAY_WEBHOOK_RETRY_BASE"),
        ({"GIFTRELAY_WEBHOOK_DEAD_AFTER_DAYS": "0"}, "GIFTRELAY_WEBHOOK_DEAD_AFTER_DAYS"),
    ],
)
def test_a_bad_webhook_setting_is_named(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        Settings.load(env)


# -- events (pure) -------------------------------------------------------------------------


def entry(body: dict[str, Any]) -> dict[str, str]:
    return {"e": msgspec.json.encode(body).decode()}


GIFT = {"kind": "gift", "v": 1, "ts": 1_795_435_200_123, "id": "g-00000001", "stream": "s1",
        "offset": "1-0", "from": "alice", "to": "creator", "gift": "rose", "count": 2,
        "coins": 2, "diamonds": 2, "coins_after": 8, "diamonds_after": 2}  # fmt: skip


def test_a_gift_is_an_event_keyed_by_its_business_id_for_both_wallets() -> None:
    event = from_entry("1795435200123-0", entry(GIFT))
    assert event.id == "gift:alice:g-00000001"
    assert event.wallets == ("alice", "creator")
    body = msgspec.json.decode(event.body)
    assert body == {"id": event.id, "type": "gift", "created": 1_795_435_200, "data": GIFT}
    assert list(body) == ["id", "type", "created", "data"]


def test_kinds_are_handled_generically() -> None:
    """A kind added after this code (a chargeback) goes out by its kind, ordered by its
    wallet, keyed by its business id from the ledger; one with none (a cap) by its entry."""
    chargeback = {"kind": "chargeback", "v": 1, "ts": 5_000, "id": "r-00000001",
                  "user": "alice", "coins": 10, "coins_after": -3}  # fmt: skip
    event = from_entry("5000-3", entry(chargeback))
    assert (event.id, event.type, event.wallets) == (
        "chargeback:r-00000001",
        "chargeback",
        ("alice",),
    )
    assert msgspec.json.decode(event.body)["data"] == chargeback
    cap = from_entry("6-0", entry({"kind": "cap", "v": 1, "ts": 6, "user": "bob",
                                   "daily_coins": None}))  # fmt: skip
    assert (cap.id, cap.wallets) == ("ledger:6-0", ("bob",))
    topup = from_entry("7-0", entry({"kind": "topup", "v": 1, "ts": 7, "id": "r-00000002",
                                     "user": "bob", "coins": 5, "coins_after": 5}))  # fmt: skip
    assert topup.id == "topup:r-00000002"


@pytest.mark.parametrize("fields", [{}, {"e": "not json"}, {"e": "[1]"}, {"e": '{"v": 1}'}])
def test_an_entry_that_is_no_ledger_event_is_no_webhook(fields: dict[str, str]) -> None:
    with pytest.raises(NotAnEvent):
        from_entry("1-0", fields)


# -- per-wallet ordering (pure) ------------------------------------------------------------


def pending(entry_id: str, *wallets: str, next_ms: int = 0) -> Pending:
    return Pending(entry=entry_id, id=f"e{entry_id}", type="t", ms=0, wallets=wallets,
                   body="{}", next_ms=next_ms)  # fmt: skip


def entries(events: list[Pending]) -> list[str]:
    return [e.entry for e in events]


def test_a_wallet_waits_for_its_earlier_movement_and_others_flow() -> None:
    plan = Plan()
    for e in [pending("1-0", "a"), pending("2-0", "a", "c"), pending("3-0", "b"),
              pending("4-0", "c"), pending("5-0")]:  # fmt: skip
        plan.add(e)
    assert entries(plan.take(0, 10)) == ["1-0", "3-0", "5-0"]  # 2 waits for a, 4 for 2
    assert plan.take(0, 10) == []
    plan.retry(msgspec.structs.replace(plan.get("1-0"), next_ms=100))  # failed: keeps its place
    assert plan.take(99, 10) == []
    assert plan.next_due() == 100
    plan.done("3-0")
    assert plan.take(100, 10)[0].entry == "1-0"
    plan.done("1-0")
    assert entries(plan.take(100, 10)) == ["2-0"]  # heads a and c now
    assert plan.blocked("4-0")
    plan.done("2-0")
    assert entries(plan.take(100, 10)) == ["4-0"]
    plan.done("4-0")
    plan.done("5-0")
    assert len(plan) == 0
    assert plan.next_due() is None


def test_gifts_both_ways_never_wait_on_each_other() -> None:
    plan = Plan()
    for e in [pending("3-0", "b", "a"), pending("1-0", "a", "b"), pending("2-0", "b", "a")]:
        plan.add(e)  # loaded out of order: the ledger's order still rules
    order = []
    while len(plan):
        [event] = plan.take(0, 10)
        order.append(event.entry)
        plan.done(event.entry)
    assert order == ["1-0", "2-0", "3-0"]


def test_take_respects_the_limit_and_the_retry_time() -> None:
    plan = Plan()
    for n in range(5):
        plan.add(pending(f"{n}-0", f"w{n}", next_ms=n * 10))
    assert entries(plan.take(25, 2)) == ["0-0", "1-0"]
    assert entries(plan.take(25, 2)) == ["2-0"]
    assert plan.in_flight == 3
    assert plan.next_due() == 30


# -- a real receiver -----------------------------------------------------------------------


class Hit:
    """One request the receiver got, and what it answered (None: no answer)."""

    def __init__(self, headers: dict[str, str], body: bytes, arrived: int, now: int) -> None:
        self.event_id = headers.get("giftrelay-event-id", "")
        self.signature = headers.get("giftrelay-signature", "")
        self.body = body
        self.arrived = arrived
        self.status: int | None = None
        self.answered: int | None = None
        self.now = now
        """The receiver's clock at arrival, in seconds (to check the signature's age)."""


class Receiver:
    """An HTTP/1.1 server on a free port whose answers the test decides: ``ok`` (200),
    ``fail`` (500) or ``hang`` (no answer until the client gives up); it can go away
    entirely (its port closed) and come back on the same port."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.policy: Callable[[Hit], str] = lambda hit: "ok"
        self.clock: Callable[[], int] = wall_clock_ms
        self.port = 0
        self.seq = 0
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Go away: the port is closed (connections refused) and open connections drop."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def attempts(self, event_id: str) -> int:
        return sum(1 for h in self.hits if h.event_id == event_id)

    def delivered(self) -> set[str]:
        return {h.event_id for h in self.hits if h.status == 200}

    async def until(self, condition: Callable[[], bool], within: float = 30) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(condition), within)

    async def _changed(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            while line := await reader.readline():
                assert line.startswith(b"POST /hooks HTTP/1.1"), line
                headers = {}
                while (raw := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seq += 1
                hit = Hit(headers, body, self.seq, self.clock() // 1000)
                self.hits.append(hit)
                action = self.policy(hit)
                await self._changed()
                if action == "hang":
                    await reader.read()  # until the client gives up and closes
                    break
                self.seq += 1
                hit.status, hit.answered = (200 if action == "ok" else 500), self.seq
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % hit.status)
                await writer.drain()
                await self._changed()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    if r._server is not None:
        await r.stop()


class ShiftedClock:
    """The wall clock, which a test may move forward (the dead-letter window)."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset


class Outcomes:
    """What a deliverer settled, to await (its observer)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Pending]] = []
        self.changed = asyncio.Event()

    def __call__(self, outcome: str, event: Pending) -> None:
        self.seen.append((outcome, event))
        self.changed.set()

    def count(self, outcome: str, event_id: str | None = None) -> int:
        return sum(1 for o, e in self.seen if o == outcome and event_id in (None, e.id))

    async def until(self, condition: Callable[[], bool], within: float = 30) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


def deliverer(
    redis: Redis,
    receiver: Receiver,
    *,
    clock: Callable[[], int] = wall_clock_ms,
    dead_after_ms: int = 3_600_000,
    name: str | None = None,
) -> tuple[Deliverer, Outcomes]:
    sender = Sender(receiver.url, SECRET, timeout=0.3, clock=clock, concurrency=8)
    schedule = Schedule(base_ms=40, cap_ms=160, dead_after_ms=dead_after_ms)
    d = Deliverer(redis, sender, schedule, name=name, concurrency=8, batch=50, block_ms=20,
                  lease_ttl_ms=900)  # fmt: skip
    outcomes = Outcomes()
    d.observers.append(outcomes)
    return d, outcomes


@contextlib.asynccontextmanager
async def running(d: Deliverer) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    leading = asyncio.create_task(d.leading.wait())
    await asyncio.wait([task, leading], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert d.leading.is_set(), task.exception() if task.done() else "not leading"
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def movements(money: Money, tag: str, users: tuple[str, ...] = ("alice", "bob", "carol"),
                    gifts: int = 12) -> None:  # fmt: skip
    """Top-ups, gifts (each sender to the creator) and a payout, through the money API."""
    await money.stream_open("s1", "creator", "Live")
    for u in users:
        await money.topup(u, 20_000, f"{tag}-topup-{u}")
    await asyncio.gather(*(
        money.gift(users[i % len(users)], "s1", ("rose", "donut", "rocket")[i % 3], 1,
                   f"{tag}-gift-{i:04d}")
        for i in range(gifts)
    ))  # fmt: skip
    await money.payout("creator", 2_000, f"{tag}-payout-1")


def business_key(entry_id: str, e: dict[str, Any]) -> str:
    """The event id docs/api.md promises for a ledger entry."""
    if e["kind"] == "topup":
        return f"topup:{e['id']}"
    if e["kind"] == "gift":
        return f"gift:{e['from']}:{e['id']}"
    if e["kind"] == "payout":
        return f"payout:{e['user']}:{e['id']}"
    return f"ledger:{entry_id}"


async def expected(redis: Redis) -> list[tuple[str, str, tuple[str, ...], dict[str, Any]]]:
    """(entry id, event id, wallets, data) of every ledger entry, by the documented rules."""
    out = []
    for entry_id, fields in await redis.xrange(money_keys.LEDGER):
        e = msgspec.json.decode(fields["e"])
        wallets = tuple(dict.fromkeys(e[f] for f in ("user", "from", "to") if f in e))
        out.append((entry_id, business_key(entry_id, e), wallets, e))
    return out


async def check(redis: Redis, receiver: Receiver, dead: dict[str, int] | None = None) -> None:
    """Every movement arrived (2xx) at least once, every request is signed, an event id
    always carries the same body, and per wallet no attempt of a later movement came
    before the earlier movement's 2xx, or the failure that made it a dead letter
    (``dead``: event id -> attempts when it was dead-lettered)."""
    dead = dead or {}
    want = await expected(redis)
    assert want
    assert {key for _, key, _, _ in want} <= receiver.delivered()
    bodies: dict[str, bytes] = {}
    for hit in receiver.hits:
        verify(SECRET, hit.signature, hit.body, now=hit.now)
        assert bodies.setdefault(hit.event_id, hit.body) == hit.body
        body = msgspec.json.decode(hit.body)
        assert list(body) == ["id", "type", "created", "data"]
        assert body["id"] == hit.event_id
    by_key = {key: (data, wallets) for _, key, wallets, data in want}
    for key, (data, _) in by_key.items():
        body = msgspec.json.decode(bodies[key])
        assert (body["type"], body["data"], body["created"]) == (data["kind"], data,
                                                                 data["ts"] // 1000)  # fmt: skip
    lanes: dict[str, list[str]] = {}
    for _, key, wallets, _ in want:
        for w in wallets:
            lanes.setdefault(w, []).append(key)
    for wallet, keys_in_order in lanes.items():
        for earlier, later in itertools.pairwise(keys_in_order):
            hits = [h for h in receiver.hits if h.event_id == earlier]
            if earlier in dead:
                ok = hits[dead[earlier] - 1].answered or 0
            else:
                ok = min(h.answered or 0 for h in hits if h.status == 200)
            first_try = min(h.arrived for h in receiver.hits if h.event_id == later)
            assert first_try > ok, f"{wallet}: {later} tried before {earlier} was delivered"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the deliverer, against real Redis and the real receiver -------------------------------


async def test_every_movement_arrives_signed_and_in_order_through_failures(
    redis: Redis, money: Money, receiver: Receiver
) -> None:
    """Some deliveries get a 500 (once or twice), some get no answer (time-out), and
    then the receiver goes away entirely for a while: everything arrives."""

    def flaky(hit: Hit) -> str:
        n, kind = receiver.attempts(hit.event_id), zlib.crc32(hit.event_id.encode()) % 4
        if kind == 0 and n <= 2:
            return "fail"
        if kind == 1 and n == 1:
            return "hang"
        return "ok"

    receiver.policy = flaky
    before = {o: metric("giftrelay_webhook_attempts_total", outcome=o)
              for o in ("delivered", "http_error", "timeout", "no_answer")}  # fmt: skip
    lags = metric("giftrelay_webhook_delivery_lag_seconds_count")
    retries = metric("giftrelay_webhook_retries_total")
    d, outcomes = deliverer(redis, receiver)
    async with running(d):
        await movements(money, "one")
        first = {key for _, key, _, _ in await expected(redis)}
        await receiver.until(lambda: first <= receiver.delivered())

        await receiver.stop()  # gone: connections refused
        await movements(money, "two", users=("alice", "dave"))
        await outcomes.until(lambda: sum("no answer" in e.error for o, e in outcomes.seen) >= 3)
        await receiver.start()  # back on the same port
        every = {key for _, key, _, _ in await expected(redis)}
        await receiver.until(lambda: every <= receiver.delivered())
    await check(redis, receiver)
    assert any(h.status == 500 for h in receiver.hits)
    assert any(h.status is None for h in receiver.hits)  # the hung ones
    for outcome in ("delivered", "http_error", "timeout", "no_answer"):
        assert metric("giftrelay_webhook_attempts_total", outcome=outcome) > before[outcome]
    assert metric("giftrelay_webhook_delivery_lag_seconds_count") >= lags + len(every)
    assert metric("giftrelay_webhook_retries_total") > retries
    # Nothing left: the outbox is empty, the group has nothing pending or unread.
    status = await admin.status(redis)
    assert (status.queued, status.unread, status.dead_letters) == (0, 0, 0)
    assert status.deliverer is None  # released at stop
    assert (await redis.xpending(money_keys.LEDGER, keys.GROUP))["pending"] == 0


async def test_one_failing_wallet_holds_up_only_itself_then_dead_letters_and_replays(
    redis: Redis, money: Money, receiver: Receiver
) -> None:
    clock = receiver.clock = ShiftedClock()  # the receiver's clock agrees with ours
    dead_after = 3_600_000
    receiver.policy = lambda hit: "fail" if b'"stuck"' in hit.body else "ok"
    d, outcomes = deliverer(redis, receiver, clock=clock, dead_after_ms=dead_after)
    async with running(d):
        await money.topup("stuck", 100, "stuck-topup-1")
        await money.topup("stuck", 100, "stuck-topup-2")
        await movements(money, "other")  # other wallets, after the stuck ones
        others = {key for _, key, w, _ in await expected(redis) if "stuck" not in w}
        await outcomes.until(lambda: outcomes.count("delivered") == len(others))
        await outcomes.until(lambda: outcomes.count("retry", "topup:stuck-topup-1") >= 2)
        assert receiver.attempts("topup:stuck-topup-2") == 0  # waits behind the first
        status = await admin.status(redis)
        assert (status.queued, status.retrying, status.dead_letters) == (2, 1, 0)

        clock.offset += dead_after  # the window passes
        d.wake()
        await outcomes.until(lambda: outcomes.count("dead") == 1)
        [(_, dead)] = [(o, e) for o, e in outcomes.seen if o == "dead"]
        assert dead.id == "topup:stuck-topup-1"
        assert dead.error == "HTTP 500"
        # The lane moves on: the second one is tried now (its own window starts).
        await receiver.until(lambda: receiver.attempts("topup:stuck-topup-2") >= 1)
        receiver.policy = lambda hit: "ok"
        await receiver.until(lambda: "topup:stuck-topup-2" in receiver.delivered())

    letters = await admin.dead_letters(redis)
    assert [letter.event.id for letter in letters] == ["topup:stuck-topup-1"]
    assert letters[0].event.attempts >= 3
    receiver.policy = lambda hit: "fail"
    sender = Sender(receiver.url, SECRET, timeout=0.3, clock=clock)
    result = await admin.replay(redis, sender, letters)
    assert (result.delivered, result.failed) == (0, [("topup:stuck-topup-1", "HTTP 500")])
    assert await redis.xlen(keys.DEAD) == 1  # still a dead letter
    receiver.policy = lambda hit: "ok"
    result = await admin.replay(redis, sender, await admin.dead_letters(redis))
    await sender.aclose()
    assert (result.total, result.delivered, result.failed) == (1, 1, [])
    assert await redis.xlen(keys.DEAD) == 0
    assert "topup:stuck-topup-1" in receiver.delivered()
    bodies = {h.body for h in receiver.hits if h.event_id == "topup:stuck-topup-1"}
    assert len(bodies) == 1  # the same body as every attempt, signed anew
    await check(redis, receiver, dead={dead.id: dead.attempts})


async def test_a_full_sender_waits_for_an_answer_rather_than_spinning(
    redis: Redis, money: Money, receiver: Receiver
) -> None:
    """With every slot taken by an attempt that hangs, events due meanwhile wait for a
    slot: the loop sleeps until an answer (or the time-out) rather than spinning."""
    receiver.policy = lambda hit: "hang" if receiver.attempts(hit.event_id) == 1 else "ok"
    d, outcomes = deliverer(redis, receiver)
    d.concurrency = 1
    async with running(d):
        await money.topup("alice", 5, "spin-topup-1")
        await receiver.until(lambda: len(receiver.hits) == 1)
        await money.topup("bob", 5, "spin-topup-2")  # due at once, no slot for it
        rounds = d.rounds
        await outcomes.until(lambda: outcomes.count("retry") >= 1)  # the 0.3 s time-out
        assert d.rounds - rounds < 60  # a read every 20 ms (block_ms) and the answers
        await receiver.until(lambda: len(receiver.delivered()) == 2)
    await check(redis, receiver)


async def test_a_standby_deliverer_takes_over_when_the_sender_stops(
    redis: Redis, money: Money, receiver: Receiver
) -> None:
    first, _ = deliverer(redis, receiver, name="hooks-a")
    second, _ = deliverer(redis, receiver, name="hooks-b")
    stop_second = asyncio.Event()
    async with running(first):
        standby = asyncio.create_task(second.run(stop_second))
        await movements(money, "one")
        want = {key for _, key, _, _ in await expected(redis)}
        await receiver.until(lambda: want <= receiver.delivered())
        assert not second.leading.is_set()
        assert await redis.get(keys.LEASE) == "hooks-a"
    await asyncio.wait_for(second.leading.wait(), 5)  # released at stop: taken at once
    await movements(money, "two")
    want = {key for _, key, _, _ in await expected(redis)}
    await receiver.until(lambda: want <= receiver.delivered())
    stop_second.set()
    await standby
    await check(redis, receiver)


async def test_a_deliverer_killed_mid_delivery_loses_nothing(
    redis_server: RedisServer, redis: Redis, money: Money, receiver: Receiver, tmp_path: Path
) -> None:
    """``giftrelay webhooks run`` is killed (SIGKILL) with deliveries in flight; more
    movements come while none runs, and the ledger consumer trims its stream meanwhile.
    Restarted under its name, the deliverer sends everything."""
    await Outbox(redis, "setup").ensure_group()  # as the process will; movements follow
    receiver.policy = lambda hit: "hang"
    env = {**os.environ, "GIFTRELAY_REDIS_URL": redis_server.url,
           "GIFTRELAY_WEBHOOK_URL": receiver.url, "GIFTRELAY_WEBHOOK_SECRET": SECRET,
           "GIFTRELAY_WEBHOOK_TIMEOUT": "30", "GIFTRELAY_WEBHOOK_RETRY_BASE": "0.05",
           "GIFTRELAY_WEBHOOK_RETRY_CAP": "0.2", "GIFTRELAY_LOG_FORMAT": "json"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "webhooks", "run", "--name", "hooks-1",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await movements(money, "one")
        await receiver.until(lambda: len({h.event_id for h in receiver.hits}) >= 3)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert await redis.get(keys.LEASE) == "hooks-1"  # a crash leaves its lease behind
    seen = {entry_id for entry_id, _, _, _ in await expected(redis)}
    await movements(money, "two")  # while no deliverer runs
    made = await expected(redis)
    every = {key for _, key, _, _ in made}
    unread = {entry_id for entry_id, _, _, _ in made} - seen

    store = SQLiteStore(f"sqlite:///{tmp_path}/ledger.sqlite3")
    await store.open()
    try:
        writer = quick_consumer(redis, store)
        await drain(writer)
        await writer.trim()
    finally:
        await store.close()
    kept = {entry_id for entry_id, _ in await redis.xrange(money_keys.LEDGER)}
    assert unread <= kept  # trimming keeps what the webhooks group has not read

    receiver.policy = lambda hit: "ok"
    d, _ = deliverer(redis, receiver, name="hooks-1")
    async with running(d):  # its own lease: no wait
        await receiver.until(lambda: every <= receiver.delivered())
    assert (await admin.status(redis)).queued == 0
    assert {h.event_id for h in receiver.hits} == every


# -- the commands --------------------------------------------------------------------------


async def test_serve_delivers_webhooks_when_the_url_is_set(
    redis_server: RedisServer, redis: Redis, money: Money, receiver: Receiver, tmp_path: Path
) -> None:
    env = {**os.environ, "GIFTRELAY_SECRET": "s" * 32, "GIFTRELAY_VAR_DIR": str(tmp_path),
           "GIFTRELAY_WEBHOOK_URL": receiver.url, "GIFTRELAY_WEBHOOK_SECRET": SECRET,
           "GIFTRELAY_LOG_FORMAT": "json"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "serve", "--port", str(free_port()),
        "--redis-url", redis_server.url, "--no-ledger",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):  # the group exists before serve prints its URLs
            while b"websocket:" not in await process.stdout.readline():
                assert process.returncode is None
        await money.topup("alice", 5, "serve-topup-1")
        await receiver.until(lambda: receiver.delivered() == {"topup:serve-topup-1"})
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()[-2000:]
    assert b"webhook deliverer stopped" in output
    await check(redis, receiver)


async def giftrelay(*args: str, **env: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", *args,
        env={**os.environ, "GIFTRELAY_LOG_FORMAT": "json",
             **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_replay_command_sends_dead_letters_and_says_what_failed(
    redis_server: RedisServer, redis: Redis, money: Money, receiver: Receiver
) -> None:
    await money.topup("alice", 10, "dead-topup-1")
    [(entry_id, fields)] = await redis.xrange(money_keys.LEDGER)
    event = from_entry(entry_id, fields)
    await Outbox(redis, "setup").dead(msgspec.structs.replace(event, error="HTTP 500"), 0)
    env = {"GIFTRELAY_REDIS_URL": redis_server.url, "GIFTRELAY_WEBHOOK_URL": receiver.url,
           "GIFTRELAY_WEBHOOK_SECRET": SECRET, "GIFTRELAY_WEBHOOK_TIMEOUT": "1"}  # fmt: skip

    receiver.policy = lambda hit: "fail"
    status, out, _ = await giftrelay("webhooks", "replay", **env)
    assert status == 1
    assert "failed: topup:dead-topup-1: HTTP 500" in out
    assert "replayed 0 of 1 dead letter(s); 1 failed again" in out

    status, out, _ = await giftrelay("webhooks", "replay", "--id", "nope", **env)
    assert (status, out.splitlines()[0]) == (1, "not found: no dead letter has event id 'nope'")

    receiver.policy = lambda hit: "ok"
    status, out, _ = await giftrelay("webhooks", "status", **env)
    assert status == 0
    assert msgspec.json.decode(out)["dead_letters"] == 1
    status, out, _ = await giftrelay("webhooks", "replay", **env)
    assert (status, out.strip()) == (0, "replayed 1 of 1 dead letter(s)")
    assert receiver.delivered() == {"topup:dead-topup-1"}
    assert await redis.xlen(keys.DEAD) == 0


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({}, "GIFTRELAY_WEBHOOK_URL: not set"),
        ({"GIFTRELAY_WEBHOOK_URL": "http://127.0.0.1:9/h"}, "GIFTRELAY_WEBHOOK_SECRET: missing"),
        (
            {"GIFTRELAY_WEBHOOK_URL": "localhost:9", "GIFTRELAY_WEBHOOK_SECRET": SECRET},
            "GIFTRELAY_WEBHOOK_URL: 'localhost:9' is not an http",
        ),
    ],
)
async def test_a_wrong_webhook_setting_stops_the_command_with_one_line(
    env: dict[str, str], name: str
) -> None:
    status, _, err = await giftrelay("webhooks", "run", **env)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: " + name)
