"""The HTTP API for the platform's backend, end to end: uvicorn on a free port, httpx,
real Redis, and real SQLite and PostgreSQL ledger stores; reconcile after each movement."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from giftrelay import auth
from giftrelay.ledger.store import Store
from giftrelay.money import keys

from .api_helpers import Api, running_api, token
from .conftest import ROOT, Clock, dump, ledger_entries


@pytest.fixture
async def api(redis: Redis, store: Store, clock: Clock, tmp_path: Path) -> AsyncIterator[Api]:
    async with running_api(redis, store, clock, tmp_path) as running:
        yield running


def error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    return response.status_code, body["error"]["code"]


async def test_topups_are_idempotent_by_receipt(api: Api) -> None:
    body = {"user": "alice", "coins": 100, "receipt": "receipt-0001"}
    first = await api.post("/topups", body)
    assert first.status_code == 200
    assert first.json() == {"user": "alice", "coins": 100, "receipt": "receipt-0001",
                            "replayed": False}  # fmt: skip
    again = await api.post("/topups", body)
    assert again.json() == {**first.json(), "replayed": True}
    other = await api.post("/topups", {**body, "coins": 101})
    assert error(other) == (409, "idempotency_conflict")
    assert (await api.money.balance("alice")).coins == 100
    await api.agree()
    assert len(await ledger_entries(api.redis, "topup")) == 1


async def test_a_receipt_redis_forgot_is_still_known_to_the_ledger(api: Api) -> None:
    body = {"user": "alice", "coins": 100, "receipt": "receipt-0001"}
    await api.post("/topups", body)
    await api.agree()
    await api.redis.delete(keys.topup_idem("receipt-0001"))  # past GIFTRELAY_RECEIPT_TTL
    again = await api.post("/topups", body)
    assert again.json() == {"user": "alice", "coins": 100, "receipt": "receipt-0001",
                            "replayed": True}  # fmt: skip
    assert error(await api.post("/topups", {**body, "user": "bob"})) == (
        409,
        "idempotency_conflict",
    )
    assert (await api.money.balance("alice")).coins == 100
    # ... and can be charged back at any age the store holds.
    back = await api.post("/chargebacks", {"receipt": "receipt-0001", "reason": "late"})
    assert back.json() == {"user": "alice", "receipt": "receipt-0001", "coins_clawed_back": 100,
                           "coins": 0, "replayed": False}  # fmt: skip
    await api.agree()
    await api.redis.delete(keys.chargeback_idem("receipt-0001"))
    again = await api.post("/chargebacks", {"receipt": "receipt-0001", "reason": "late"})
    assert again.json() == {**back.json(), "replayed": True}
    assert (await api.money.balance("alice")).coins == 0
    await api.agree()


async def test_bad_input_gets_a_clear_4xx_and_moves_nothing(api: Api, redis: Redis) -> None:
    await api.post("/topups", {"user": "alice", "coins": 5, "receipt": "receipt-0001"})
    before = await dump(redis)
    bad_bodies = [
        {"user": "alice", "coins": 0, "receipt": "receipt-0002"},
        {"user": "alice", "coins": -5, "receipt": "receipt-0002"},
        {"user": "alice", "coins": "5", "receipt": "receipt-0002"},
        {"user": "alice", "coins": 5.5, "receipt": "receipt-0002"},
        {"user": "alice", "coins": 10**13, "receipt": "receipt-0002"},
        {"user": "al ice", "coins": 5, "receipt": "receipt-0002"},
        {"user": "x" * 65, "coins": 5, "receipt": "receipt-0002"},
        {"user": "alice", "coins": 5, "receipt": "short"},
        {"user": "alice", "coins": 5, "receipt": "receipt.0002"},
        {"user": "alice", "coins": 5},
        {"user": "alice", "coins": 5, "receipt": "receipt-0002", "extra": 1},
        {"user": "alice", "coins": 5, "receipt": "receipt-0002", "package": "nope",
         "region": "US"},
        [1, 2],
    ]  # fmt: skip
    for body in bad_bodies:
        assert error(await api.post("/topups", body)) == (400, "bad_request"), body
    not_json = await api.client.post(api.url + "/topups", content=b"{not json")
    assert error(not_json) == (400, "bad_request")
    for body in ({"receipt": "receipt-0001"}, {"receipt": "bad!", "reason": "x"},
                 {"receipt": "receipt-0001", "reason": "x" * 201}):  # fmt: skip
        assert error(await api.post("/chargebacks", body)) == (400, "bad_request"), body
    assert error(await api.get("/wallets/al%20ice")) == (400, "bad_request")
    for path, body in (
        ("/creators/bad%20id/verification", {}),
        ("/creators/ok/verification", {"verified": "yes"}),
        ("/creators/ok/verification", {"reference": "x" * 201}),
        ("/payout-runs", {"period": 202611}),
        ("/payout-runs", {"period": "2026-11", "dry_run": True}),
    ):
        assert error(await api.post(path, body)) == (400, "bad_request"), (path, body)
    assert error(await api.get("/nowhere")) == (404, "bad_request")
    assert await dump(redis) == before


async def test_a_body_over_64_kib_is_refused_before_it_is_read(api: Api, redis: Redis) -> None:
    before = await dump(redis)
    big = json.dumps({"user": "alice", "coins": 5, "receipt": "receipt-0001",
                      "pad": "x" * 70_000}).encode()  # fmt: skip
    response = await api.client.post(api.url + "/topups", content=big)
    assert error(response) == (413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(80):
            yield b" " * 1024

    chunked = await api.client.post(api.url + "/topups", content=chunks())
    assert error(chunked) == (413, "too_large")
    assert await dump(redis) == before


async def test_tokens_401_and_403_exactly_as_the_contract_says(api: Api) -> None:
    body = {"user": "alice", "coins": 5, "receipt": "receipt-0001"}
    async with httpx.AsyncClient() as anonymous:
        none = await anonymous.post(api.url + "/topups", json=body)
        assert error(none) == (401, "unauthorized")
        assert none.headers["www-authenticate"].startswith("Bearer")
        bad = await anonymous.get(
            api.url + "/wallets/alice", headers={"Authorization": "Bearer not.a.jwt"}
        )
        assert error(bad) == (401, "unauthorized")
        other = auth.mint("another-secret" * 3, "backend", auth.Role.ADMIN)
        forged = await anonymous.get(
            api.url + "/wallets/alice", headers={"Authorization": f"Bearer {other}"}
        )
        assert error(forged) == (401, "unauthorized")
        for role in (auth.Role.VIEWER, auth.Role.CREATOR):
            refused = await anonymous.post(
                api.url + "/topups", json=body, headers={"Authorization": f"Bearer {token(role)}"}
            )
            assert error(refused) == (403, "forbidden")
        document = await anonymous.get(api.url + "/openapi.json")  # no token needed
        assert document.status_code == 200
        assert document.json()["openapi"].startswith("3.1")
        # The committed document is exactly what the running API serves.
        assert document.json() == json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert (await api.money.balance("alice")).coins == 0


async def test_chargeback_into_debt_blocks_gifts_until_topups_cover_it(api: Api) -> None:
    money = api.money
    await money.stream_open("s1", "creator", "t")
    await api.post("/topups", {"user": "alice", "coins": 100, "receipt": "receipt-0001"})
    await money.gift("alice", "s1", "rose", 60, "gift-00000001")
    await api.agree()

    back = await api.post("/chargebacks", {"receipt": "receipt-0001", "reason": "fraud"})
    assert back.status_code == 200
    assert back.json() == {"user": "alice", "receipt": "receipt-0001", "coins_clawed_back": 100,
                           "coins": -60, "replayed": False}  # fmt: skip
    again = await api.post("/chargebacks", {"receipt": "receipt-0001", "reason": "dispute"})
    assert again.json() == {**back.json(), "replayed": True}
    unknown = await api.post("/chargebacks", {"receipt": "receipt-none", "reason": "x"})
    assert error(unknown) == (404, "unknown_receipt")
    wallet = (await api.get("/wallets/alice")).json()
    assert wallet == {"user": "alice", "coins": -60, "diamonds": 0, "spent_today": 60,
                      "daily_cap": None}  # fmt: skip
    assert (await api.get("/wallets/creator")).json()["diamonds"] == 60  # kept
    await api.agree()

    from giftrelay.wire.errors import Code, Refused

    with pytest.raises(Refused) as refused:
        await money.gift("alice", "s1", "rose", 1, "gift-00000002")
    assert refused.value.code is Code.INSUFFICIENT_COINS
    await api.post("/topups", {"user": "alice", "coins": 61, "receipt": "receipt-0002"})
    assert (await money.gift("alice", "s1", "rose", 1, "gift-00000003")).balance == 0
    await api.agree()
    balances = await api.store.balances()
    assert balances[("system:chargebacks", "coins")] == 100
    assert balances[("system:coins_sold", "coins")] == -161


async def test_wallets_read_as_zeros_when_never_used(api: Api) -> None:
    response = await api.get("/wallets/nobody")
    assert response.json() == {"user": "nobody", "coins": 0, "diamonds": 0, "spent_today": 0,
                               "daily_cap": None}  # fmt: skip


async def test_statements_in_json_and_csv_from_the_ledger(api: Api, clock: Clock) -> None:
    money = api.money
    await money.stream_open("s1", "creator", "t")
    await api.post("/topups", {"user": "alice", "coins": 10_000, "receipt": "receipt-0001"})
    for n in range(3):
        await money.gift("alice", "s1", "rose", 1000, f"gift-0000000{n}")
    await money.gift("alice", "s1", "heart", 2, "gift-00000009")
    paid = await money.payout("creator", 2000, "payout-0001")
    clock.advance(40 * 86_400_000)  # outside the statement's period
    await money.gift("alice", "s1", "rose", 1, "gift-00000003")
    await api.agree()

    query = {"from": "2026-11-23T00:00:00Z", "to": "2026-12-01T00:00:00Z"}
    response = await api.get("/creators/creator/statement", params=query)
    assert response.status_code == 200, response.text
    made = response.json()
    heart = money.catalog.get("heart")
    assert heart is not None
    assert made["creator"] == "creator"
    assert (made["from"], made["to"]) == ("2026-11-23T00:00:00Z", "2026-12-01T00:00:00Z")
    assert made["gifts"] == 3002  # each gift's count
    assert made["diamonds_earned"] == 3000 + 2 * heart.coins
    assert made["payouts"] == [{"id": "payout-0001", "at": "2026-11-23T12:00:00Z",
                                "diamonds": 2000, "cash_cents": paid.cash_cents,
                                "fee_cents": paid.fee_cents, "currency": "USD"}]  # fmt: skip
    assert (made["cash_cents"], made["fee_cents"]) == (paid.cash_cents, paid.fee_cents)
    gross = paid.cash_cents + paid.fee_cents
    fee, net = paid.fee_cents, paid.cash_cents
    assert made["currencies"] == [{"currency": "USD", "payouts": 1, "gross_cents": gross,
                                   "fee_cents": fee, "net_cents": net}]  # fmt: skip
    same = await api.get("/creators/creator/statement", params={"period": "2026-11"})
    assert same.json() == {**made, "to": "2026-12-01T00:00:00Z", "from": "2026-11-01T00:00:00Z"}

    csv_reply = await api.get(
        "/creators/creator/statement", params=query, headers={"Accept": "text/csv"}
    )
    assert csv_reply.headers["content-type"].startswith("text/csv")
    lines = csv_reply.text.splitlines()
    assert lines[0] == "at,kind,id,from,gift,count,diamonds,cash_cents,fee_cents,currency"
    assert lines[1:] == [
        *(f"2026-11-23T12:00:00Z,gift,gift-0000000{n},alice,rose,1000,1000,,," for n in range(3)),
        f"2026-11-23T12:00:00Z,gift,gift-00000009,alice,heart,2,{2 * heart.coins},,,",
        f"2026-11-23T12:00:00Z,payout,payout-0001,,,,-2000,{paid.cash_cents},{paid.fee_cents},USD",
    ]
    for params in ({"from": "2026-12-01", "to": "2026-11-01"}, {"from": "yesterday", "to": "x"},
                   {"period": "2026-13"}, {}):  # fmt: skip
        bad = await api.get("/creators/creator/statement", params=params)
        assert error(bad) == (400, "bad_request"), params
    nobody = await api.get("/creators/nobody/statement", params={"period": "2026-11"})
    assert error(nobody) == (404, "unknown_user")


async def test_the_store_being_down_is_503_unavailable(
    redis: Redis, clock: Clock, tmp_path: Path
) -> None:
    from giftrelay.ledger.sqlite import SQLiteStore

    (tmp_path / "a-file").write_text("")
    missing = SQLiteStore(f"sqlite:///{tmp_path}/a-file/ledger.sqlite3")  # cannot be opened
    async with running_api(redis, missing, clock, tmp_path) as api:
        # A receipt Redis does not know may be one the store holds: no top-up without it.
        topup = await api.post("/topups", {"user": "alice", "coins": 5, "receipt": "receipt-0001"})
        assert error(topup) == (503, "unavailable")
        assert await dump(redis) == {}
        await api.money.topup("creator", 5, "receipt-0002")
        response = await api.get("/creators/creator/statement", params={"period": "2026-11"})
        assert error(response) == (503, "unavailable")
        assert (await api.get("/wallets/creator")).json()["coins"] == 5  # Redis alone: served


def test_the_committed_openapi_document_is_generated_from_the_app() -> None:
    """docs/openapi.json is generated (python -m scripts.openapi) and must not drift."""
    from scripts.openapi import document

    committed = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert committed == document()
    assert set(committed["paths"]) >= {
        "/api/v1/topups",
        "/api/v1/chargebacks",
        "/api/v1/wallets/{user}",
        "/api/v1/creators/{creator}/statement",
        "/api/v1/coin-packages",
        "/api/v1/creators/{creator}/verification",
        "/api/v1/payout-runs",
    }


async def test_the_example_client_plays_the_worked_example(api: Api) -> None:
    """examples/backend_client.py, against the running API."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "backend_client", ROOT / "examples" / "backend_client.py"
    )
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    async with example.Backend(api.url, token(auth.Role.ADMIN)) as backend:
        played = await example.worked_example(backend, "viewer1")
        assert played["retry"] == {**played["topup"], "replayed": True}
        assert played["chargeback"]["coins_clawed_back"] == 500
        assert played["wallet"]["coins"] == 0
        with pytest.raises(example.ApiError) as refused:
            await backend.chargeback("receipt-unknown", "x")
        assert (refused.value.status, refused.value.code) == (404, "unknown_receipt")
    await api.agree()


async def test_requests_are_counted_by_route_and_status(api: Api) -> None:
    from giftrelay import metrics

    def count(route: str, status: str) -> float:
        return metrics.API_REQUESTS.labels(route, status)._value.get()

    before = count("/api/v1/wallets/{user}", "200"), count("/api/v1/topups", "400")
    await api.get("/wallets/alice")
    await api.post("/topups", {"user": "alice"})
    after = count("/api/v1/wallets/{user}", "200"), count("/api/v1/topups", "400")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_the_api_cannot_share_the_relays_port() -> None:
    from giftrelay.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="GIFTRELAY_API_PORT: 8080 is the relay's own port"):
        Settings.load({"GIFTRELAY_API_PORT": "8080"})
    assert Settings.load({"GIFTRELAY_API_PORT": "0", "GIFTRELAY_PORT": "0"}).api_port == 0


async def test_spending_per_day_and_creator_and_the_settings(api: Api) -> None:
    money = api.money
    await money.stream_open("s1", "bob", "t")
    await money.stream_open("s2", "carol", "t")
    await api.post("/topups", {"user": "alice", "coins": 1000, "receipt": "receipt-0001"})
    await money.set_confirm("alice", 50)
    await money.gift("alice", "s1", "rose", 60, "gift-00000001", confirm=True)
    await money.gift("alice", "s2", "heart", 2, "gift-00000002")
    response = await api.get("/wallets/alice/spending")
    assert response.status_code == 200
    assert response.json() == {
        "user": "alice", "today": 70, "last_7_days": 70, "last_30_days": 70,
        "per_creator": [{"creator": "bob", "coins": 60}, {"creator": "carol", "coins": 10}],
        "confirm_coins": 50, "cooldown": None,
    }  # fmt: skip
    nobody = (await api.get("/wallets/nobody/spending")).json()
    assert (nobody["last_30_days"], nobody["per_creator"]) == (0, [])
    assert error(await api.get("/wallets/al%20ice/spending")) == (400, "bad_request")
    async with httpx.AsyncClient() as anonymous:
        assert error(await anonymous.get(api.url + "/wallets/alice/spending")) == (
            401,
            "unauthorized",
        )
    await api.agree()
