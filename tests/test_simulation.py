"""A simulation in the spirit of TigerBeetle's VOPR: seeded money workloads under
seeded faults, then an auditor.

Each seed draws a schedule: rounds of concurrent top-ups, gifts, payouts and cap
changes from a few users (new requests and retries of earlier ids), interleaved
with faults:

- ``kill``: redis-server is killed -9 while a round is in flight, and restarted;
- ``pause``: redis-server is stopped (SIGSTOP) past the client's time-out while a
  round is in flight, so its requests are answered ``unavailable`` although Redis
  runs them once it resumes;
- ``restore``: Redis goes back to an older copy of its files (taken earlier in the
  run), then ``giftrelay recover`` brings it back to the ledger store;
- ``consumer``: the ledger consumer process is killed -9 wherever it is and a new
  one takes over (claiming what the old one left pending);
- ``relay``: the client's connections are dropped while a round is in flight (a
  relay dying under its callers).

A request that got no answer is retried with the same id until it gets one, as a
client must after ``unavailable``. Then the auditor checks that every
acknowledged movement is reflected exactly once: in every wallet in Redis (exact
balances from the acknowledged replies alone), exactly once per business id in
the store, and that ``reconcile`` agrees.

Redis runs with ``appendfsync always``: a reply is sent only after its write is on
disk, so a kill -9 loses nothing acknowledged (with ``everysec`` up to a second of
acknowledged movements may be lost by design: docs/ledger.md, "Durability").

CI runs a few seeds. ``GIFTRELAY_SIM_SEEDS=200`` runs 200 (the long mode), and
``GIFTRELAY_SIM_SEED=N`` replays seed N alone: the schedule and faults replay
exactly; only Redis's timing within a round may differ. A failing seed names itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer
from giftrelay.ledger.entries import ledger_decoder
from giftrelay.ledger.postings import identity_of
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.recover import recover
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Code, Refused

from .ledger_helpers import backup_aof, caught_up, restore_aof, spawn, wait_for

log = structlog.get_logger(__name__)

VIEWERS = ("v0", "v1", "v2", "v3")
CREATORS = {"s0": "c0", "s1": "c1"}
GIFTS = ("rose", "heart", "donut", "confetti", "rocket")
ROUNDS = 40
FAULTS = ("kill", "pause", "restore", "consumer", "relay")
PAUSE_S = 0.8
"""How long a ``pause`` stops Redis: past the client's time-out, so answers are lost."""


def seeds() -> list[int]:
    if one := os.environ.get("GIFTRELAY_SIM_SEED"):
        return [int(one)]
    return list(range(1, int(os.environ.get("GIFTRELAY_SIM_SEEDS", "3")) + 1))


@dataclass(frozen=True)
class Request:
    kind: str  # topup | gift | payout | cap
    user: str
    id: str
    amount: int
    stream: str = ""
    gift: str = ""


@dataclass
class Ledger:
    """What the clients were told: the acknowledged movements, by business key."""

    acked: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    """business key -> (kind, coins, diamonds) as the first acknowledgement said."""
    coins: Counter[str] = field(default_factory=Counter)
    diamonds: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    unknown: int = 0
    """Answers lost to a fault (retried with the same id until answered)."""

    def ack(self, r: Request, reply: Any) -> None:
        if r.kind == "topup":
            key, coins, diamonds = f"topup:{r.id}", r.amount, 0
        elif r.kind == "gift":
            key, coins, diamonds = f"gift:{r.user}:{r.id}", reply.coins, reply.diamonds
        elif r.kind == "payout":
            key, coins, diamonds = f"payout:{r.user}:{r.id}", 0, reply.diamonds
        else:
            return
        known = key in self.acked
        first = self.acked.setdefault(key, (r.kind, coins, diamonds))
        assert first == (r.kind, coins, diamonds), f"{key}: answered {first}, then otherwise"
        if known:
            assert reply.replayed, f"{key} was acknowledged before, yet moved again"
            return
        if r.kind == "topup":
            self.coins[r.user] += coins
        elif r.kind == "gift":
            self.coins[r.user] -= coins
            self.diamonds[CREATORS[r.stream]] += diamonds
        else:
            self.diamonds[r.user] -= diamonds


class Site:
    """Redis with AOF (fsync always), its older copies, a money client, and a ledger
    consumer process (``giftrelay ledger``) that a fault kills -9."""

    def __init__(self, directory: Path, store: SQLiteStore) -> None:
        self.directory = directory
        self.server = RedisServer(directory / "redis", appendonly=True, appendfsync="always")
        self.server.start()
        self.store = store
        self.settings = Settings.load({})
        self.redis: Redis = connect(self.server.url, timeout=0.5)  # pause outlasts it
        self.money = Money(self.redis, self.settings, catalog.load())
        self.consumer: subprocess.Popen[str] | None = None
        self.backup: Path | None = None

    async def start(self) -> None:
        await self.money.start()
        self.start_consumer()

    def start_consumer(self) -> None:
        env = {
            **os.environ,
            "GIFTRELAY_REDIS_URL": self.server.url,
            "GIFTRELAY_LEDGER_URL": self.store.url,
            "GIFTRELAY_SECRET": "s" * 32,
            "GIFTRELAY_LOG_LEVEL": "warning",
            "GIFTRELAY_LEDGER_CLAIM_IDLE_MS": "200",
        }
        self.consumer = spawn("ledger", env=env)

    def kill_consumer(self) -> None:
        if self.consumer is not None:
            self.consumer.kill()
            self.consumer.wait()
            self.consumer = None

    async def drain(self) -> None:
        """Until the store holds everything Redis's ledger stream does."""
        await wait_for(lambda: caught_up(self.redis), within=60)

    async def pause(self, seconds: float) -> None:
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)  # the fault's length, not a synchronisation
        finally:
            self.server.process.send_signal(signal.SIGCONT)

    def take_backup(self) -> None:
        self.backup = self.directory / f"backup-{len(list(self.directory.iterdir()))}"
        backup_aof(self.server, self.backup)

    async def restore_and_recover(self) -> None:
        """The runbook: stop consumers and relays, put the old copy back, recover."""
        assert self.backup is not None
        await self.drain()
        self.kill_consumer()
        restore_aof(self.server, self.backup)
        # force: this process knows the consumer is gone (the runbook waits 10 s).
        await recover(
            self.redis, self.store, retention_ms=self.settings.idempotency_ttl * 1000, force=True
        )
        self.start_consumer()

    async def close(self) -> None:
        self.kill_consumer()
        await self.money.aclose()
        await self.redis.aclose()
        self.server.stop()


def schedule(rng: random.Random) -> list[tuple[list[Request], str | None]]:
    """The whole run, drawn before it starts: rounds of requests, and a fault or none."""
    sent: list[Request] = []
    rounds = []
    n = 0
    for _ in range(ROUNDS):
        batch = []
        for _ in range(rng.randint(1, 8)):
            n += 1
            roll = rng.random()
            if sent and roll < 0.15:  # a client retrying an earlier request
                batch.append(rng.choice(sent))
                continue
            if roll < 0.35:
                r = Request("topup", rng.choice(VIEWERS), f"receipt-{n:06d}", rng.randint(1, 3000))
            elif roll < 0.85:
                stream = rng.choice(list(CREATORS))
                r = Request("gift", rng.choice(VIEWERS), f"gift-{n:08d}", rng.randint(1, 5),
                            stream, rng.choice(GIFTS))  # fmt: skip
            elif roll < 0.95:
                r = Request("payout", rng.choice(list(CREATORS.values())), f"payout-{n:06d}",
                            rng.choice((2000, 2500, 4000)))  # fmt: skip
            else:
                cap = rng.choice((None, 20_000, 50_000))
                r = Request("cap", rng.choice(VIEWERS), f"cap-{n:06d}", -1 if cap is None else cap)
            sent.append(r)
            batch.append(r)
        fault = rng.choice(FAULTS) if rng.random() < 0.25 else None
        rounds.append((batch, fault))
    return rounds


async def send(money: Money, r: Request) -> Any:
    if r.kind == "topup":
        return await money.topup(r.user, r.amount, r.id)
    if r.kind == "gift":
        return await money.gift(r.user, r.stream, r.gift, r.amount, r.id)
    if r.kind == "payout":
        return await money.payout(r.user, r.amount, r.id)
    return await money.set_cap(r.user, None if r.amount < 0 else r.amount)


async def answer(money: Money, r: Request, ledger: Ledger) -> bool:
    """Send once; True when answered (acknowledged or refused), False when unknown."""
    try:
        reply = await send(money, r)
    except Refused as exc:
        # Refused otherwise: moved nothing (insufficient coins, below minimum, ...).
        return exc.code not in (Code.UNAVAILABLE, Code.INTERNAL)
    except (OSError, ConnectionError):
        return False
    ledger.ack(r, reply)
    return True


async def run_seed(seed: int, tmp: Path) -> Ledger:
    rng = random.Random(seed)
    rounds = schedule(rng)
    store = SQLiteStore(f"sqlite:///{tmp}/ledger.sqlite3")
    await store.open()
    site = Site(tmp, store)
    ledger = Ledger()
    try:
        await site.start()
        for stream, creator in CREATORS.items():
            await site.money.stream_open(stream, creator, "sim")
        site.take_backup()
        unanswered: list[Request] = []
        for number, (batch, fault) in enumerate(rounds):
            log.debug("round", seed=seed, round=number, fault=fault, requests=len(batch))
            if fault == "restore" and rng.random() < 0.5:
                site.take_backup()  # a newer copy to go back to, some of the time
            if fault:
                ledger.faults[fault] += 1
            work = [asyncio.create_task(answer(site.money, r, ledger)) for r in batch]
            if fault in ("kill", "pause", "relay"):
                await asyncio.sleep(0)  # the round is on the wire
                if fault == "kill":
                    site.server.kill()
                    site.server.start()
                elif fault == "pause":
                    await site.pause(PAUSE_S)
                else:
                    await site.redis.connection_pool.disconnect()
            answered = await asyncio.gather(*work)
            unanswered += [r for r, ok in zip(batch, answered, strict=True) if not ok]
            if fault == "consumer":
                site.kill_consumer()
                site.start_consumer()
            elif fault == "restore":
                await site.restore_and_recover()
        ledger.unknown = len(unanswered)
        for r in unanswered:  # every client retries with the same id until answered
            for _ in range(50):
                if await answer(site.money, r, ledger):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"seed {seed}: {r} never answered")
        await site.drain()
        await audit(seed, site, ledger)
        log.info("seed audited", seed=seed, rounds=len(rounds), acknowledged=len(ledger.acked),
                 unknown=ledger.unknown, **ledger.faults)  # fmt: skip
    finally:
        await site.close()
        await store.close()
    return ledger


async def audit(seed: int, site: Site, ledger: Ledger) -> None:
    where = f"seed {seed} (replay: GIFTRELAY_SIM_SEED={seed} pytest tests/test_simulation.py)"
    # In Redis: every wallet is exactly what the acknowledged replies add up to.
    for user in {*VIEWERS, *CREATORS.values()}:
        balance = await site.money.balance(user)
        assert (balance.coins, balance.diamonds) == (
            ledger.coins[user],
            ledger.diamonds[user],
        ), f"{where}: wallet {user}"
    # In the store: each acknowledged movement once, and nothing else that moves money.
    stored: Counter[str] = Counter()
    async for row in site.store.export(None, None):
        key, _ = identity_of(ledger_decoder.decode(row.body))
        if key is not None:
            stored[key] += 1
    assert dict(stored) == dict.fromkeys(ledger.acked, 1), f"{where}: store"
    assert not await site.store.conflicts(), where
    report = await reconcile(site.redis, site.store, wait=10)
    assert report.ok, f"{where}: {report.lines()}"


@pytest.mark.parametrize("seed", seeds())
async def test_simulation(seed: int, tmp_path: Path) -> None:
    ledger = await run_seed(seed, tmp_path)
    assert ledger.acked, "the workload moved money"


async def test_the_schedule_is_a_function_of_the_seed() -> None:
    assert schedule(random.Random(7)) == schedule(random.Random(7))
    assert schedule(random.Random(7)) != schedule(random.Random(8))
