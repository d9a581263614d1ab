"""Coin packages: the catalog's [[package]] entries, their offers per region and
promotion window, and top-ups that name them (checked, and priced in the ledger)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.ledger.store import Store
from giftrelay.money import catalog
from giftrelay.money.catalog import CatalogError
from giftrelay.money.packages import offer, offers

from .api_helpers import Api, running_api
from .conftest import Clock, dump, ledger_entries
from .test_catalog import GOOD

PACKAGES = """
[[package]]
id = "small"
coins = 100
bonus_coins = 5
prices = [{ region = "US", currency = "USD", amount = 199 },
          { region = "JP", currency = "JPY", amount = 300 }]

[[package.promotion]]
id = "weekend"
starts = 2026-11-28T00:00:00Z
ends = 2026-11-30T00:00:00Z
bonus_coins = 20
discount_percent = 25
regions = ["US"]
"""


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_offers_follow_the_region_and_the_promotion_window() -> None:
    [package] = catalog.parse(GOOD + PACKAGES).packages
    plain = offer(package, "US", at("2026-11-27T23:59:59"))
    assert plain is not None
    assert (plain.price, plain.currency, plain.total_coins, plain.promotion) == (
        199,
        "USD",
        105,
        None,
    )
    promoted = offer(package, "US", at("2026-11-28T00:00:00"))
    assert promoted is not None
    assert (promoted.price, promoted.bonus_coins, promoted.total_coins) == (149, 25, 125)
    assert promoted.promotion == "weekend"
    ended = offer(package, "US", at("2026-11-30T00:00:00"))  # ends is exclusive
    assert ended is not None
    assert ended.promotion is None
    japan = offer(package, "JP", at("2026-11-29T00:00:00"))  # not a promotion region
    assert japan is not None
    assert (japan.price, japan.currency, japan.total_coins) == (300, "JPY", 105)
    assert offer(package, "GB", at("2026-11-29T00:00:00")) is None
    assert [o.region for o in offers((package,), None, at("2026-11-01T00:00:00"))] == ["US", "JP"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('region = "US"', 'region = "JP"', "package #1 (line 2): a region is priced twice"),
        ("ends = 2026-11-30T00:00:00Z", "ends = 2026-11-28T00:00:00Z",
         "package #1 (line 2): promotion 'weekend': starts must be before ends"),
        ("starts = 2026-11-28T00:00:00Z", "starts = 2026-11-28T00:00:00",
         "promotion 'weekend': give starts and ends with a time zone"),
        ("coins = 100", "coins = 0", "package #1 (line 2): Expected `int` >= 1"),
        ('currency = "USD"', 'currency = "usd"', "package #1 (line 2): Expected `str` matching"),
    ],
)  # fmt: skip
def test_a_bad_package_names_its_line_and_what_is_wrong(old: str, new: str, expected: str) -> None:
    with pytest.raises(CatalogError) as failed:
        catalog.parse(PACKAGES.replace(old, new, 1) + GOOD, "mine.toml")
    assert str(failed.value).startswith("catalog mine.toml: ")
    assert expected in str(failed.value)


def test_the_shipped_catalog_has_packages_in_three_regions() -> None:
    shipped = catalog.load()
    assert [p.id for p in shipped.packages] == ["coins_70", "coins_350", "coins_1400"]
    regions = {o.region for o in offers(shipped.packages, None, at("2026-11-01T00:00:00"))}
    assert regions == {"US", "GB", "DE"}


@pytest.fixture
async def api(redis: Redis, store: Store, clock: Clock, tmp_path: Path) -> AsyncIterator[Api]:
    clock.ms = int(at("2026-11-28T12:00:00").timestamp() * 1000)  # Black Friday weekend
    async with running_api(redis, store, clock, tmp_path) as running:
        yield running


async def test_the_api_lists_packages_and_prices_a_topup_naming_one(api: Api, redis: Redis) -> None:
    listed = (await api.get("/coin-packages", params={"region": "US"})).json()
    assert listed["region"] == "US"
    by_id = {p["id"]: p for p in listed["packages"]}
    assert by_id["coins_350"] == {
        "id": "coins_350", "region": "US", "currency": "USD", "price": 499, "coins": 350,
        "bonus_coins": 35, "total_coins": 385, "promotion": "black_friday_2026",
        "promotion_ends": "2026-12-01T00:00:00Z",
    }  # fmt: skip
    everywhere = (await api.get("/coin-packages")).json()
    assert len(everywhere["packages"]) == 9
    assert (await api.get("/coin-packages", params={"region": "FR"})).json()["packages"] == []
    assert (await api.get("/coin-packages", params={"region": "usa"})).status_code == 400

    body = {"user": "alice", "coins": 385, "receipt": "receipt-0001", "package": "coins_350",
            "region": "US"}  # fmt: skip
    reply = await api.post("/topups", body)
    assert reply.json() == {"user": "alice", "coins": 385, "receipt": "receipt-0001",
                            "replayed": False}  # fmt: skip
    assert (await api.post("/topups", body)).json()["replayed"] is True
    # The same receipt without its package is other content.
    plain = {k: v for k, v in body.items() if k not in ("package", "region")}
    other = await api.post("/topups", plain)
    assert other.status_code == 409
    [entry] = await ledger_entries(redis, "topup")
    assert (entry["package"], entry["region"], entry["currency"], entry["price_minor"]) == (
        "coins_350",
        "US",
        "USD",
        499,
    )
    await api.agree()
    row = await api.store.movement("topup:receipt-0001")
    assert row is not None
    assert msgspec.json.decode(row.body)["price_minor"] == 499

    before = await dump(redis)
    wrong = [
        {**body, "receipt": "receipt-0002", "coins": 350},  # the promotion's bonus is due
        {**body, "receipt": "receipt-0002", "region": "FR"},
        {**body, "receipt": "receipt-0002", "package": "coins_9999"},
        {k: v for k, v in body.items() if k != "region"} | {"receipt": "receipt-0002"},
        {"user": "alice", "coins": 5, "receipt": "receipt-0002", "region": "US"},
    ]
    for bad in wrong:
        refused = await api.post("/topups", bad)
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["code"] == "bad_request"
    assert await dump(redis) == before
