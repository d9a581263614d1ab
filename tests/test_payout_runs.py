"""Scheduled payout runs: verified creators above the minimum, paid once per period even
when run twice or again after a crash half-way; one batch file; statements per period."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from giftrelay.embedded import RedisServer
from giftrelay.ledger.store import Store
from giftrelay.money import keys
from giftrelay.money.platform import Platform

from .api_helpers import Api, running_api
from .conftest import Clock, dump, ledger_entries

DEC_2 = int(datetime(2026, 12, 2, tzinfo=UTC).timestamp() * 1000)
BATCH_HEADER = "period,creator,payout_id,diamonds,gross_cents,fee_cents,net_cents,currency"


@pytest.fixture
async def api(redis: Redis, store: Store, clock: Clock, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(redis, store, clock, tmp_path, GIFTRELAY_PAYOUT_FEE_PERCENT="10") as a:
        yield a


def read(path: Path) -> str:
    return path.read_text()


async def earn(api: Api, creator: str, diamonds: int, n: int) -> None:
    """``creator`` receives ``diamonds`` from a viewer, on a stream of their own."""
    money = api.money
    await money.stream_open(f"st-{creator}", creator, "t")
    await money.topup(f"fan-{creator}", diamonds, f"receipt-{creator}-{n:04d}")
    left = diamonds
    while left:
        count = min(left, 1000)
        await money.gift(
            f"fan-{creator}", f"st-{creator}", "rose", count, f"g-{creator}-{n}-{left}"
        )
        left -= count


async def verify(api: Api, creator: str) -> None:
    reply = await api.post(f"/creators/{creator}/verification", {"reference": f"kyc-{creator}"})
    assert reply.status_code == 200
    assert reply.json()["verified"] is True


async def test_a_period_is_paid_once_to_verified_creators_above_the_minimum(
    api: Api, clock: Clock, tmp_path: Path
) -> None:
    await earn(api, "anna", 5000, 1)  # verified, above the minimum of 2000
    await earn(api, "bert", 100, 1)  # verified, below it
    await earn(api, "cleo", 5000, 1)  # not verified: not paid
    for creator in ("anna", "bert"):
        await verify(api, creator)
    assert (await api.get("/creators/cleo/verification")).json() == {
        "creator": "cleo", "verified": False, "since": None}  # fmt: skip

    early = await api.post("/payout-runs", {"period": "2026-11"})
    assert early.status_code == 400  # November has not ended on the test's clock
    assert "has not ended" in early.json()["error"]["message"]
    clock.ms = DEC_2
    for bad in ({"period": "2026-13"}, {"period": "November"}, {}):
        assert (await api.post("/payout-runs", bad)).status_code == 400

    run = (await api.post("/payout-runs", {"period": "2026-11"})).json()
    # 5000 diamonds at 1/2 cent: 2500 cents gross, 10 % fee 250, 2250 net.
    anna = {"creator": "anna", "payout_id": "run.2026-11", "diamonds": 5000, "gross_cents": 2500,
            "fee_cents": 250, "net_cents": 2250, "currency": "USD"}  # fmt: skip
    assert run["paid"] == [{**anna, "status": "paid"}]
    assert run["skipped"] == [{"creator": "bert", "reason": "below_minimum", "diamonds": 100}]
    assert (run["start"], run["end"]) == ("2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z")
    batch = Path(run["batch_file"])
    assert batch == tmp_path / "payouts" / "2026-11.csv"
    expected_file = f"{BATCH_HEADER}\n2026-11,anna,run.2026-11,5000,2500,250,2250,USD\n"
    assert read(batch) == expected_file
    assert (await api.money.balance("anna")).diamonds == 0
    assert (await api.money.balance("cleo")).diamonds == 5000
    await api.agree()

    # Run again, after anna earned more: nobody is paid twice for the period.
    await earn(api, "anna", 3000, 2)
    before = await dump(api.redis)
    again = (await api.post("/payout-runs", {"period": "2026-11"})).json()
    assert again["paid"] == [{**anna, "status": "already_paid"}]
    assert read(batch) == expected_file
    assert await dump(api.redis) == before
    assert len(await ledger_entries(api.redis, "payout")) == 1
    await api.agree()

    # The next period pays what was earned since.
    clock.ms = int(datetime(2027, 1, 2, tzinfo=UTC).timestamp() * 1000)
    december = (await api.post("/payout-runs", {"period": "2026-12"})).json()
    assert [(p["creator"], p["diamonds"], p["status"]) for p in december["paid"]] == [
        ("anna", 3000, "paid")
    ]
    await api.agree()

    # Statements per period, by when each movement happened: gross, fees and net per
    # currency, for the tax form. November's run paid on December 2nd, December's in January.
    q4 = (await api.get("/creators/anna/statement", params={"period": "2026-Q4"})).json()
    assert (q4["diamonds_earned"], q4["gross_cents"], q4["fee_cents"], q4["cash_cents"]) == (
        8000, 2500, 250, 2250)  # fmt: skip
    assert q4["currencies"] == [
        {"currency": "USD", "payouts": 1, "gross_cents": 2500, "fee_cents": 250, "net_cents": 2250}
    ]
    q1 = (await api.get("/creators/anna/statement", params={"period": "2027-Q1"})).json()
    assert (q1["diamonds_earned"], q1["gross_cents"], q1["fee_cents"], q1["cash_cents"]) == (
        0, 1500, 150, 1350)  # fmt: skip


async def test_a_run_again_after_a_crash_half_way_pays_the_rest_once(
    api: Api, clock: Clock, tmp_path: Path
) -> None:
    for creator in ("anna", "dora"):
        await earn(api, creator, 4000, 1)
        await verify(api, creator)
    clock.ms = DEC_2
    # The first run paid anna, then crashed before dora and before its batch file.
    await api.money.payout("anna", 4000, "run.2026-11", scheduled=True)
    run = (await api.post("/payout-runs", {"period": "2026-11"})).json()
    assert [(p["creator"], p["status"]) for p in run["paid"]] == [
        ("anna", "already_paid"),
        ("dora", "paid"),
    ]
    file = read(tmp_path / "payouts" / "2026-11.csv")
    assert file.splitlines()[1:] == [
        "2026-11,anna,run.2026-11,4000,2000,200,1800,USD",
        "2026-11,dora,run.2026-11,4000,2000,200,1800,USD",
    ]
    await api.agree()

    # Long after, Redis has forgotten the run's ids: the ledger store remembers them.
    for creator in ("anna", "dora"):
        await api.redis.delete(keys.payout_idem(creator, "run.2026-11"))
        await earn(api, creator, 2500, 2)
    late = (await api.post("/payout-runs", {"period": "2026-11"})).json()
    assert [(p["creator"], p["status"]) for p in late["paid"]] == [
        ("anna", "already_paid"),
        ("dora", "already_paid"),
    ]
    assert read(tmp_path / "payouts" / "2026-11.csv") == file
    assert (await api.money.balance("dora")).diamonds == 2500
    await api.agree()


async def test_a_withdrawn_verification_stops_payouts(api: Api, clock: Clock) -> None:
    await earn(api, "anna", 4000, 1)
    await verify(api, "anna")
    withdrawn = await api.post(
        "/creators/anna/verification", {"verified": False, "reference": "documents forged"}
    )
    assert withdrawn.json() == {"creator": "anna", "verified": False, "since": None}
    clock.ms = DEC_2
    run = (await api.post("/payout-runs", {"period": "2026-Q4"})).status_code
    assert run == 400  # the quarter has not ended
    assert (await api.post("/payout-runs", {"period": "2026-11"})).json()["paid"] == []
    assert await Platform(api.money).verified_creators() == []
    [on, off] = await ledger_entries(api.redis, "verification")
    assert (on["verified"], off["verified"], off["reference"]) == (True, False, "documents forged")
    await api.agree()


async def test_giftrelay_payouts_run_from_the_command_line(
    redis: Redis, redis_server: RedisServer, store: Store, clock: Clock, tmp_path: Path
) -> None:
    async with running_api(redis, store, clock, tmp_path) as api:
        await earn(api, "anna", 2000, 1)
        await verify(api, "anna")
        await api.agree()
    env = {**os.environ, "GIFTRELAY_REDIS_URL": redis_server.url, "GIFTRELAY_SECRET": "s" * 40,
           "GIFTRELAY_LEDGER_URL": store.url, "GIFTRELAY_LOG_FORMAT": "json",
           "GIFTRELAY_PAYOUT_BATCH_DIR": str(tmp_path / "batches")}  # fmt: skip

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "giftrelay", "payouts", "run", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    status, out, _ = await run("--period", "2026-11")  # the real clock: November has ended
    assert status == 0
    result = json.loads(out)
    assert [(p["creator"], p["diamonds"], p["status"]) for p in result["paid"]] == [
        ("anna", 2000, "paid")
    ]
    assert (tmp_path / "batches" / "2026-11.csv").exists()
    status, out, _ = await run("--period", "2026-11")
    assert status == 0
    assert json.loads(out)["paid"][0]["status"] == "already_paid"
    status, _, err = await run("--period", "2026-14")  # a usage error: exit 2, one line
    assert status == 2
    assert "Invalid value for '--period': period '2026-14' is neither a month" in err
    status, _, err = await run("--period", "2099-01")  # a refusal: exit 1
    assert status == 1
    assert (
        err.strip()
        == "Error: bad_request: period 2099-01 has not ended yet: run it after 2099-02-01T00:00:00Z"
    )
