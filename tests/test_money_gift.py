"""Gifts: exact balances, conservation under concurrency, and refusals that move nothing."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from redis.asyncio import Redis

from giftrelay.config import Settings
from giftrelay.ledger.entries import GiftEntry, ledger_decoder
from giftrelay.money import catalog, keys
from giftrelay.money.api import Money
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.events import GiftEvent, stored_event_decoder

from .conftest import Clock, dump, event_pubsub, ledger_entries, ledger_raw

pytestmark = pytest.mark.both_redis  # one Redis, then a Redis Cluster


@pytest.fixture
async def live(money: Money) -> Money:
    await money.stream_open("s1", "bob", "Bob live")
    return money


async def test_1000_concurrent_gifts_from_500_coins_never_overdraw(
    live: Money, redis: Redis
) -> None:
    await live.topup("alice", 500, "receipt-alice-1")
    results = await asyncio.gather(
        *(live.gift("alice", "s1", "rose", 1, f"gift-{i:06d}") for i in range(1000)),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(ok) == 500
    assert len(refused) == 500
    assert {r.code for r in refused} == {Code.INSUFFICIENT_COINS}
    assert (await live.balance("alice")).coins == 0
    assert (await live.balance("bob")).diamonds == 500
    gifts = await ledger_entries(redis, "gift")
    assert len(gifts) == 500
    assert sorted(g["id"] for g in gifts) == sorted(r.id for r in ok)
    # Conservation: coins debited = diamonds credited / rate (rate 1).
    assert sum(g["coins"] for g in gifts) == sum(g["diamonds"] for g in gifts) == 500
    assert (await live.stream_info("s1")).diamonds == 500


async def test_gift_debits_credits_and_records_everywhere(
    live: Money, redis: Redis, clock: Clock, redis_kind: str
) -> None:
    await live.topup("alice", 1000, "receipt-alice-1")
    pubsub = await event_pubsub(redis, keys.channel("s1"))

    receipt = await live.gift("alice", "s1", "heart", 3, "gift-abcdef01")

    assert (receipt.coins, receipt.balance, receipt.diamonds, receipt.combo) == (15, 985, 15, 3)
    assert not receipt.replayed
    assert (await live.balance("alice")).coins == 985
    assert (await live.balance("alice")).spent_today == 15
    assert (await live.balance("bob")).diamonds == 15
    assert await redis.zrange(keys.top("s1"), 0, -1, withscores=True) == [("alice", 15.0)]
    info = await live.stream_info("s1")
    assert (info.diamonds, info.coins, info.gifts) == (15, 15, 3)

    [(offset, fields)] = await redis.xrange(keys.history("s1"))
    assert offset == receipt.offset
    stored = msgspec.json.decode(fields["e"])
    assert stored["kind"] == "gift"
    assert stored["from"] == "alice"
    assert stored["count"] == 3

    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert message is not None
    event = stored_event_decoder.decode(message["data"])
    assert event == GiftEvent(
        offset=receipt.offset,
        ts=clock.ms,
        id="gift-abcdef01",
        sender="alice",
        gift="heart",
        name="Heart",
        count=3,
        coins=15,
        diamonds=15,
        combo=3,
        combo_id=receipt.combo_id,
    )
    await pubsub.aclose()

    [raw] = [e for e in await ledger_raw(redis) if "gift" in e]
    entry = ledger_decoder.decode(raw)
    assert entry == GiftEntry(
        v=1,
        ts=clock.ms,
        id="gift-abcdef01",
        stream="s1",
        offset=receipt.offset,
        sender="alice",
        to="bob",
        gift="heart",
        count=3,
        coins=15,
        diamonds=15,
        coins_after=985,
        diamonds_after=15,
        # On a cluster the diamonds wait on the stream as the creator's earnings.
        held="stream" if redis_kind == "cluster" else "wallet",
        combo=3,
        combo_id="c1",
    )


async def test_diamonds_round_down_at_a_fractional_rate(redis: Redis, clock: Clock) -> None:
    settings = Settings.load({"GIFTRELAY_DIAMONDS_PER_COIN": "1/2"})
    core = Money(redis, settings, catalog.load(), clock=clock)
    await core.start()
    await core.stream_open("s1", "bob", "t")
    await core.topup("alice", 100, "receipt-alice-1")
    receipt = await core.gift("alice", "s1", "heart", 1, "gift-00000001")  # 5 coins
    assert (receipt.coins, receipt.diamonds) == (5, 2)
    assert (await core.balance("bob")).diamonds == 2
    await core.aclose()


REFUSALS = [
    ("self_gift", dict(viewer="bob", stream="s1", gift="rose", count=1), Code.SELF_GIFT),
    ("unknown_stream", dict(viewer="alice", stream="nope", gift="rose", count=1),
     Code.UNKNOWN_STREAM),
    ("ended", dict(viewer="alice", stream="ended", gift="rose", count=1), Code.STREAM_NOT_LIVE),
    ("unknown_gift", dict(viewer="alice", stream="s1", gift="unicorn", count=1),
     Code.UNKNOWN_GIFT),
    ("too_expensive", dict(viewer="alice", stream="s1", gift="galaxy", count=1),
     Code.INSUFFICIENT_COINS),
    ("over_cap", dict(viewer="capped", stream="s1", gift="donut", count=1), Code.SPEND_LIMIT),
    ("zero_count", dict(viewer="alice", stream="s1", gift="rose", count=0), Code.BAD_REQUEST),
    ("huge_count", dict(viewer="alice", stream="s1", gift="rose", count=10**9),
     Code.BAD_REQUEST),
    ("bad_viewer", dict(viewer="a b", stream="s1", gift="rose", count=1), Code.BAD_REQUEST),
    ("conflict", dict(viewer="alice", stream="s1", gift="rose", count=2, id="gift-used-001"),
     Code.IDEMPOTENCY_CONFLICT),
    ("bad_id", dict(viewer="alice", stream="s1", gift="rose", count=1, id="short"),
     Code.BAD_REQUEST),
]  # fmt: skip


@pytest.mark.parametrize(("name", "request_", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_every_refusal_moves_nothing(
    live: Money, redis: Redis, name: str, request_: dict[str, object], code: Code
) -> None:
    await live.topup("alice", 1000, "receipt-alice-1")
    await live.topup("capped", 1000, "receipt-capped-1")
    await live.set_cap("capped", 10)
    await live.stream_open("ended", "carol", "over")
    await live.stream_close("ended")
    await live.gift("alice", "s1", "rose", 1, "gift-used-001")
    before = await dump(redis)

    args = {"id": "gift-new-0001", **request_}
    with pytest.raises(Refused) as refused:
        await live.gift(
            str(args["viewer"]), str(args["stream"]), str(args["gift"]),
            int(args["count"]), str(args["id"]),  # type: ignore[call-overload]
        )  # fmt: skip

    assert refused.value.code == code
    assert await dump(redis) == before
