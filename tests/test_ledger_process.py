"""The ledger as operators run it: consumer processes, reconcile and export commands."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.embedded import RedisServer, free_port
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.sqlite import SQLiteStore
from giftrelay.ledger.store import Store
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.redis_client import connect

from .conftest import START_MS
from .ledger_helpers import (
    caught_up,
    drain,
    gift_load,
    make_store,
    quick_consumer,
    spawn,
    true,
    wait_for,
)

SECRET = "test-secret-" + "x" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async for opened in make_store(request.param, tmp_path):
        yield opened


def env_for(redis_server: RedisServer, store: Store, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "GIFTRELAY_REDIS_URL": redis_server.url,
        "GIFTRELAY_LEDGER_URL": store.url,
        "GIFTRELAY_SECRET": SECRET,
        "GIFTRELAY_LOG_FORMAT": "json",
        **extra,
    }


def giftrelay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "giftrelay", *args], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


async def test_a_consumer_process_killed_mid_batch_restarts_exactly_once(
    money: Money, redis: Redis, redis_server: RedisServer, store: Store
) -> None:
    events = await gift_load(money, viewers=10, gifts=15_000)
    env = env_for(
        redis_server, store, GIFTRELAY_LEDGER_BATCH="200", GIFTRELAY_LEDGER_CLAIM_IDLE_MS="300"
    )

    pending = 0
    for _ in range(5):  # until the kill lands while a batch is read but not acknowledged
        consumer = spawn("ledger", env=env)
        written = await store.count()
        await wait_for(lambda w=written: _more_than(store, w))
        consumer.send_signal(signal.SIGKILL)
        consumer.wait()
        pending = int((await redis.xpending(keys.LEDGER, keys.LEDGER_GROUP))["pending"])
        if pending:
            break
    assert pending > 0, "the consumer was never killed mid-batch"
    assert await store.count() < events

    restarted = spawn("ledger", env=env, stderr=subprocess.PIPE)
    try:
        await wait_for(lambda: caught_up(redis), within=60)
    finally:
        restarted.send_signal(signal.SIGTERM)
        _, stderr = restarted.communicate(timeout=20)
    assert restarted.returncode == 0, stderr
    assert "claimed pending ledger entries" in stderr
    assert await store.count() == events
    report = await reconcile(redis, store, wait=5)
    assert report.ok, report.lines()


async def _more_than(store: Store, count: int) -> bool:
    return await store.count() > count


async def test_reconcile_command_exits_1_naming_the_tampered_wallet(
    money: Money, redis: Redis, redis_server: RedisServer, store: Store
) -> None:
    await gift_load(money, viewers=5, gifts=200)
    await drain(quick_consumer(redis, store))
    env = env_for(redis_server, store)

    ok = giftrelay("reconcile", "--wait", "5", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: every wallet agrees" in ok.stdout

    await redis.hincrby(keys.wallet("creator"), "diamonds", -7)
    bad = giftrelay("reconcile", "--wait", "5", env=env)
    assert bad.returncode == 1
    assert "difference: wallet=creator asset=diamonds" in bad.stdout
    assert "FAILED: 1 problem(s)" in bad.stdout


async def test_export_writes_one_row_per_event_with_postings(
    money: Money, redis: Redis, redis_server: RedisServer, store: Store, tmp_path: Path
) -> None:
    events = await gift_load(money, viewers=3, gifts=30)
    await drain(quick_consumer(redis, store))
    env = env_for(redis_server, store)

    out = tmp_path / "ledger.jsonl"
    result = giftrelay("ledger", "export", "--format", "jsonl", "-o", str(out), env=env)
    assert result.returncode == 0, result.stderr
    rows = [msgspec.json.decode(line) for line in out.read_text().splitlines()]
    assert len(rows) == events
    assert all(sum(p["amount"] for p in r["postings"] if p["asset"] == "coins") == 0 for r in rows)
    assert rows[-1]["event"]["kind"] == "gift"

    result = giftrelay("ledger", "export", "--format", "csv", env=env)
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(table) == events
    assert table[0]["kind"] == "topup"
    assert "system:coins_sold coins" in table[0]["postings"]

    day_after = str(START_MS + 86_400_000)
    later = giftrelay("ledger", "export", "--since", day_after, env=env)
    assert later.stdout.strip().splitlines() == [
        "event_id,time,kind,request_id,actor,postings,event"
    ]
    same_day = giftrelay("ledger", "export", "--since", "2026-11-23", "--until", "2026-11-24",
                         env=env)  # fmt: skip
    assert len(same_day.stdout.strip().splitlines()) == events + 1
    assert giftrelay("ledger", "export", "--since", "yesterday", env=env).returncode == 2


def test_serve_on_the_embedded_default_writes_the_ledger(tmp_path: Path) -> None:
    env = {**os.environ, "GIFTRELAY_VAR_DIR": str(tmp_path / "var"), "GIFTRELAY_LOG_FORMAT": "json"}
    proc = spawn("serve", env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "press Ctrl+C" in line:
                break
        result = giftrelay("reconcile", "--wait", "20", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "2 wallets" in result.stdout  # the demo viewers' top-ups
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (tmp_path / "var" / "ledger.sqlite3").exists()


async def test_consumer_survives_a_redis_restart(
    own_redis_server: RedisServer, tmp_path: Path
) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/ledger.sqlite3")
    await store.open()
    redis = connect(own_redis_server.url)
    money = Money(redis, Settings.load({}), catalog.load())
    await money.start()
    stop = asyncio.Event()
    consumer = quick_consumer(connect(own_redis_server.url, timeout=1), store)
    task = asyncio.create_task(consumer.run(stop))
    first = await gift_load(money, viewers=2, gifts=50)
    await wait_for(lambda: caught_up(redis))
    own_redis_server.kill()
    await wait_for(lambda: true(consumer.failures > 0))
    own_redis_server.start()
    second = await gift_load(money, viewers=2, gifts=50, stream="s2") - 2
    await wait_for(lambda: caught_up(redis))
    stop.set()
    await task
    assert await store.count() == first + second
    for closing in (money.aclose(), redis.aclose(), consumer.redis.aclose(), store.close()):
        await closing


async def test_the_consumer_alone_serves_its_metrics(
    money: Money, redis: Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    async for store in make_store("sqlite", tmp_path):
        events = await gift_load(money, viewers=3, gifts=50)
        port = free_port()
        consumer = spawn("ledger", "--metrics-port", str(port), env=env_for(redis_server, store))
        try:
            await wait_for(lambda: caught_up(redis), within=60)
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, _metrics, port)
        finally:
            consumer.send_signal(signal.SIGTERM)
            consumer.wait(timeout=20)
        written = re.search(
            r'^giftrelay_ledger_events_total\{outcome="written"\} (\S+)$', body, re.M
        )
        assert written is not None
        assert float(written.group(1)) == events


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()
