"""Chargebacks and creator verification: real Redis, real SQLite and PostgreSQL stores."""

from __future__ import annotations

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.recover import recover
from giftrelay.ledger.store import Store
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.money.platform import ChargebackReceipt, Platform
from giftrelay.money.receipts import PackagePrice, PayoutReceipt
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.protocol import Balance

from .conftest import Clock, dump, ledger_entries
from .ledger_helpers import drain, quick_consumer


@pytest.fixture
def platform(money: Money) -> Platform:
    return Platform(money)


async def agree(redis: Redis, store: Store) -> None:
    await drain(quick_consumer(redis, store))
    report = await reconcile(redis, store, wait=5)
    assert report.lines() == []


async def test_a_chargeback_takes_the_coins_back_into_debt_and_debt_blocks_gifts(
    money: Money, platform: Platform, redis: Redis, store: Store
) -> None:
    await money.stream_open("s1", "creator", "t")
    await money.topup("alice", 100, "receipt-0001")
    await money.gift("alice", "s1", "rose", 70, "gift-00000001")  # 70 coins spent

    receipt = await platform.chargeback("receipt-0001", "fraudulent", "alice")
    assert (receipt.user, receipt.coins_clawed_back, receipt.coins) == ("alice", 100, -70)
    assert not receipt.replayed
    assert (await money.balance("alice")).coins == -70
    assert (await money.balance("creator")).diamonds == 70  # the creator keeps them

    # In debt: no gift, whatever its price; nothing moves.
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await money.gift("alice", "s1", "rose", 1, "gift-00000002")
    assert refused.value.code is Code.INSUFFICIENT_COINS
    assert await dump(redis) == before

    # Idempotent by receipt, whatever the reason says the second time.
    again = await platform.chargeback("receipt-0001", "another reason", "alice")
    assert again == ChargebackReceipt(**{**_fields(receipt), "replayed": True})
    assert (await money.balance("alice")).coins == -70

    # Top-ups cover the debt first.
    assert (await money.topup("alice", 71, "receipt-0002")).coins == 1
    await money.gift("alice", "s1", "rose", 1, "gift-00000003")
    assert (await money.balance("alice")).coins == 0

    [entry] = await ledger_entries(redis, "chargeback")
    assert entry["coins"] == 100
    assert entry["coins_after"] == -70
    assert entry["reason"] == "fraudulent"
    assert entry["id"] == "receipt-0001"
    await agree(redis, store)
    balances = await store.balances()
    assert balances[("system:chargebacks", "coins")] == 100
    assert balances[("user:alice", "coins")] == 0
    assert sum(v for (_, asset), v in balances.items() if asset == "coins") == 0
    row = await store.movement("chargeback:receipt-0001")
    assert row is not None
    assert row.kind == "chargeback"


def _fields(receipt: ChargebackReceipt) -> dict[str, object]:
    return msgspec.structs.asdict(receipt)


async def test_an_unknown_receipt_is_refused_and_moves_nothing(
    money: Money, platform: Platform, redis: Redis
) -> None:
    await money.topup("alice", 100, "receipt-0001")
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await platform.chargeback("receipt-never", "fraud", "alice")
    assert refused.value.code is Code.UNKNOWN_RECEIPT
    with pytest.raises(Refused) as refused:
        await platform.chargeback("receipt-0001", "fraud", "bob")  # not bob's receipt
    assert refused.value.code is Code.INTERNAL
    with pytest.raises(Refused) as refused:
        await platform.chargeback("bad receipt!", "fraud", "alice")
    assert refused.value.code is Code.BAD_REQUEST
    assert await dump(redis) == before
    assert await platform.receipt_holder("receipt-0001") == "alice"
    assert await platform.receipt_holder("receipt-never") is None


async def test_a_receipt_redis_forgot_is_charged_back_with_what_the_ledger_holds(
    redis: Redis, store: Store, settings: Settings, clock: Clock
) -> None:
    short = Settings.load({"GIFTRELAY_RECEIPT_TTL": "60"})
    money = Money(redis, short, catalog.load(), clock=clock)
    await money.start()
    platform = Platform(money)
    await money.topup("alice", 100, "receipt-0001")
    await drain(quick_consumer(redis, store))
    await redis.delete(keys.topup_idem("receipt-0001"))  # as its retention ends
    assert await platform.receipt_holder("receipt-0001") is None

    row = await store.movement("topup:receipt-0001")
    assert row is not None
    assert row.actor == "alice"
    receipt = await platform.chargeback("receipt-0001", "late", "alice", ledger_coins=100)
    assert (receipt.coins_clawed_back, receipt.coins) == (100, 0)
    assert await platform.receipt_holder("receipt-0001") == "alice"  # from the chargeback
    await agree(redis, store)
    await money.aclose()


async def test_verification_gates_payouts_when_asked_and_is_in_the_ledger(
    money: Money, platform: Platform, redis: Redis, store: Store, clock: Clock
) -> None:
    await money.stream_open("s1", "creator", "t")
    await money.topup("alice", 5000, "receipt-0001")
    await money.gift("alice", "s1", "rose", 1000, "gift-00000001")
    await money.gift("alice", "s1", "rose", 1000, "gift-00000002")
    await money.gift("alice", "s1", "rose", 1000, "gift-00000003")

    # The v1 socket default: any creator may cash out.
    paid = await money.payout("creator", 2000, "payout-0001")
    assert paid.diamonds_left == 1000
    with pytest.raises(Refused) as refused:
        await money.payout("creator", 1000, "run.2026-11", scheduled=True)
    assert refused.value.code is Code.BELOW_MINIMUM
    await money.gift("alice", "s1", "rose", 1000, "gift-00000004")
    with pytest.raises(Refused) as refused:
        await money.payout("creator", 2000, "run.2026-11", scheduled=True)
    assert refused.value.code is Code.NOT_VERIFIED

    assert await platform.verify("creator", True, "kyc-42") == clock.ms
    assert await platform.verified_creators() == ["creator"]
    assert await platform.verified_since("creator") == clock.ms
    assert (await money.payout("creator", 2000, "run.2026-11", scheduled=True)).cash_cents
    with pytest.raises(Refused) as refused:  # a creator's own id is never a run's
        await money.payout("creator", 2000, "run.2026-11")
    assert refused.value.code is Code.BAD_REQUEST
    with pytest.raises(Refused) as refused:
        await money.payout("creator", 2000, "payout-0003", scheduled=True)
    assert refused.value.code is Code.BAD_REQUEST
    [_, entry] = await ledger_entries(redis, "payout")
    assert entry["currency"] == "USD"
    assert await platform.verify("creator", False, "withdrawn") == 0
    assert await platform.verified_creators() == []
    [on, off] = await ledger_entries(redis, "verification")
    assert (on["verified"], on["reference"], off["verified"]) == (True, "kyc-42", False)
    await agree(redis, store)


async def test_recover_brings_back_chargebacks_packages_and_verifications(
    redis: Redis, store: Store, clock: Clock
) -> None:
    import time

    clock.ms = int(time.time() * 1000)  # recover keeps records by the real clock
    settings = Settings.load({"GIFTRELAY_PAYOUT_MIN_DIAMONDS": "100"})
    money = Money(redis, settings, catalog.load(), clock=clock)
    await money.start()
    platform = Platform(money)
    price = PackagePrice("coins_100", "US", "USD", 139)
    first = await money.topup("alice", 100, "receipt-0001", package=price)
    await money.topup("bob", 50, "receipt-0002")
    charged = await platform.chargeback("receipt-0002", "fraud", "bob")
    await platform.verify("creator", True, "kyc-1")
    await money.stream_open("s1", "creator", "t")
    await money.gift("alice", "s1", "rose", 100, "gift-00000001")
    run = await money.payout("creator", 100, "run.2026-11", scheduled=True)
    await drain(quick_consumer(redis, store))
    expected = await dump(redis)

    await redis.flushall()  # Redis lost everything; the store holds it all
    await recover(redis, store, retention_ms=3_600_000, receipt_retention_ms=86_400_000)
    assert await platform.verified_creators() == ["creator"]
    assert await money.balance("bob") == Balance(coins=0, diamonds=0, spent_today=0, daily_cap=None)
    again = await money.topup("alice", 100, "receipt-0001", package=price)
    assert (again.coins, again.replayed) == (first.coins, True)
    with pytest.raises(Refused) as refused:  # same receipt, other content
        await money.topup("alice", 100, "receipt-0001")
    assert refused.value.code is Code.IDEMPOTENCY_CONFLICT
    replayed = await platform.chargeback("receipt-0002", "x", "bob")
    assert replayed == ChargebackReceipt(**{**_fields(charged), "replayed": True})
    restored = await dump(redis)
    for key in (
        keys.topup_idem("receipt-0001"),
        keys.chargeback_idem("receipt-0002"),
        keys.payout_idem("creator", "run.2026-11"),
    ):
        assert restored[key] == expected[key]
    again_run = await money.payout("creator", 100, "run.2026-11", scheduled=True)
    assert again_run == PayoutReceipt(**{**msgspec.structs.asdict(run), "replayed": True})
    assert restored[keys.wallet("creator")][1]["verified"] == str(clock.ms)
    report = await reconcile(redis, store, wait=5)
    assert report.lines() == []
    await money.aclose()


async def test_the_setting_makes_socket_payouts_require_verification(
    redis: Redis, clock: Clock
) -> None:
    strict = Settings.load({"GIFTRELAY_PAYOUT_REQUIRES_VERIFICATION": "true"})
    money = Money(redis, strict, catalog.load(), clock=clock)
    await money.start()
    await money.stream_open("s1", "creator", "t")
    await money.topup("alice", 2000, "receipt-0001")
    await money.gift("alice", "s1", "rose", 1000, "gift-00000001")
    await money.gift("alice", "s1", "rose", 1000, "gift-00000002")
    before = await dump(redis)
    with pytest.raises(Refused) as refused:
        await money.payout("creator", 2000, "payout-0001")  # as the socket's payout calls it
    assert refused.value.code is Code.NOT_VERIFIED
    assert await dump(redis) == before
    await Platform(money).verify("creator", True, "kyc-1")
    assert (await money.payout("creator", 2000, "payout-0001")).diamonds_left == 0
    await money.aclose()
