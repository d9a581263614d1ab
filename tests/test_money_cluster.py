"""The money core on a real Redis Cluster (3 primaries, a replica each): a gift's two
steps on two slots and the creator's earnings collected into the wallet, exactly once,
through retries, a mover that finishes what a relay left, a primary killed under load, and
a slot that moves while gifts flow."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from giftrelay.config import Settings
from giftrelay.embedded import LocalCluster
from giftrelay.money import catalog, keys, rules
from giftrelay.money.api import Money
from giftrelay.money.platform import Platform
from giftrelay.money.scripts import Script
from giftrelay.money.transfers import Steps, Transfer, gift_fields, transfer_decoder
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Refused, Unavailable

from .cluster_helpers import flush_cluster

VIEWERS = [f"viewer{i}" for i in range(12)]
STREAMS = [f"stream{i}" for i in range(6)]


async def money_on(cluster: LocalCluster, **env: str) -> tuple[Money, Redis]:
    redis = connect(cluster.url, timeout=2.0)
    settings = Settings.load({f"GIFTRELAY_{k.upper()}": v for k, v in env.items()})
    core = Money(redis, settings, catalog.load())
    await core.start()
    return core, redis


@pytest.fixture
async def money(redis_cluster: LocalCluster) -> AsyncIterator[Money]:
    await flush_cluster(redis_cluster)
    core, redis = await money_on(redis_cluster, payout_min_diamonds="1")
    yield core
    await core.aclose()
    await redis.aclose()


def rose_price(core: Money) -> int:
    rose = core.catalog.get("rose")
    assert rose is not None
    return rose.coins


def steps_of(core: Money) -> Steps:
    assert core.steps is not None
    return core.steps


async def ledger_entries(redis: Redis) -> list[dict[str, Any]]:
    """Every entry of every bucket's ledger stream."""
    out = []
    for stream in keys.LEDGERS:
        out += [json.loads(fields["e"]) for _, fields in await redis.xrange(stream)]
    return out


async def outbox_length(redis: Redis) -> int:
    return sum([int(await redis.xlen(outbox)) for outbox in keys.OUTBOXES])


async def open_streams(core: Money) -> None:
    for i, stream in enumerate(STREAMS):
        await core.stream_open(stream, f"creator{i % 3}", f"stream {i}")


def test_the_keys_of_a_gift_lie_on_every_shard(redis_cluster: LocalCluster) -> None:
    """The tests below mean something only if viewers, streams and creators are spread."""
    owners = {redis_cluster.owner_of_slot(key_slot(keys.wallet(v).encode())) for v in VIEWERS}
    streams = {redis_cluster.owner_of_slot(key_slot(keys.stream(s).encode())) for s in STREAMS}
    assert len(owners) == 3
    assert len(streams) == 3
    assert all(key_slot(name.encode()) == 256 * b for b, name in enumerate(keys.LEDGERS))
    assert all(key_slot(name.encode()) == 256 * b for b, name in enumerate(keys.OUTBOXES))


async def test_concurrent_gifts_with_retries_move_exactly_once(money: Money) -> None:
    await open_streams(money)
    for v in VIEWERS:
        await money.topup(v, 500, f"grant-{v}")
    rng = random.Random(7)
    plan = [(rng.choice(VIEWERS), rng.choice(STREAMS), f"gift-{i:05d}") for i in range(600)]

    async def send(viewer: str, stream: str, request_id: str) -> Any:
        try:
            return await money.gift(viewer, stream, "rose", 1, request_id)
        except Refused as refused:
            return refused.code

    first = await asyncio.gather(*(send(*p) for p in plan))
    again = await asyncio.gather(*(send(*p) for p in plan))  # every request retried
    acked = [(p, r) for p, r in zip(plan, first, strict=True) if not isinstance(r, str)]
    assert [r for r in first if isinstance(r, str)] == []  # 500 coins cover 50 roses each
    for (_, receipt), retry in zip(acked, again, strict=True):
        assert retry.replayed
        assert (retry.offset, retry.combo) == (receipt.offset, receipt.combo)

    price = rose_price(money)
    diamonds = rules.diamonds_for(price, money.diamond_rate)
    spent = Counter(v for (v, _, _), _ in acked)
    for v in VIEWERS:
        assert (await money.balance(v)).coins == 500 - spent[v] * price
    per_stream = Counter(s for (_, s, _), _ in acked)
    for _i, s in enumerate(STREAMS):
        info = await money.stream_info(s)
        assert (info.gifts, info.coins) == (per_stream[s], per_stream[s] * price)
    earned = Counter(f"creator{STREAMS.index(s) % 3}" for (_, s, _), _ in acked)
    for creator, n in earned.items():
        assert (await money.balance(creator)).diamonds == n * diamonds

    entries = [e for e in await ledger_entries(money.redis) if e["kind"] == "gift"]
    assert sorted(e["id"] for e in entries) == sorted(rid for (_, _, rid), _ in acked)
    assert sum(e["coins"] for e in entries) == len(acked) * price  # coins debited
    assert sum(e["diamonds"] for e in entries) == len(acked) * diamonds  # = diamonds credited
    assert await outbox_length(money.redis) == 0  # every transfer finished and taken out
    # Each stream's offsets: one event per gift, in the order the stream's shard gave them.
    for s in STREAMS:
        history = await money.redis.xrange(keys.history(s))
        ids = [json.loads(f["e"])["id"] for _, f in history if "gift" in f["e"]]
        assert len(ids) == len(set(ids)) == per_stream[s]


async def test_every_money_call_works_on_a_cluster(money: Money) -> None:
    platform = Platform(money)
    await open_streams(money)
    assert (await money.topup("viewer1", 100, "receipt-00001")).coins == 100
    assert (await money.topup("viewer1", 100, "receipt-00001")).replayed
    with pytest.raises(Refused) as conflict:
        await money.topup("viewer2", 100, "receipt-00001")  # the receipt credited viewer1
    assert conflict.value.code == "idempotency_conflict"
    assert (await money.balance("viewer2")).coins == 0

    await money.set_cap("viewer1", 10)
    with pytest.raises(Refused) as capped:
        await money.gift("viewer1", "stream0", "heart", 3, "gift-capped-1")  # 15 coins
    assert capped.value.code == "spend_limit"
    await money.set_cap("viewer1", None)
    await money.set_confirm("viewer1", 20)
    with pytest.raises(Refused) as confirm:
        await money.gift("viewer1", "stream0", "heart", 5, "gift-confirm-1")
    assert confirm.value.code == "confirm_required"
    receipt = await money.gift("viewer1", "stream0", "heart", 5, "gift-confirm-1", confirm=True)
    assert (receipt.coins, receipt.balance) == (25, 75)
    await money.stream_close("stream1")
    with pytest.raises(Refused) as closed:
        await money.gift("viewer1", "stream1", "heart", 1, "gift-closed-1")
    assert closed.value.code == "stream_not_live"
    # A retry of a gift made while live still gets its first reply after the close.
    await money.stream_close("stream0")
    assert (await money.gift("viewer1", "stream0", "heart", 5, "gift-confirm-1")).replayed

    assert await platform.verify("creator0", True, "case-1") > 0
    assert await platform.verified_creators() == ["creator0"]
    paid = await money.payout("creator0", 25, "payout-00001")
    assert paid.diamonds_left == 0
    assert (await money.payout("creator0", 25, "payout-00001")).replayed
    back = await platform.chargeback("receipt-00001", "fraud", "viewer1")
    assert (back.coins_clawed_back, back.coins) == (100, -25)
    assert (await platform.chargeback("receipt-00001", "fraud", "viewer1")).replayed

    kinds = Counter(e["kind"] for e in await ledger_entries(money.redis))
    assert kinds == Counter(
        topup=1, cap=2, confirm=1, gift=1, verification=1, payout=1, chargeback=1
    )


async def test_a_transfer_a_relay_left_is_applied_once_by_the_mover(
    money: Money, redis_cluster: LocalCluster
) -> None:
    """The relay died after the debit (step 1), or after the stream's step (2) but before
    the transfer left the outbox: the mover finishes the gift, the event is published
    once, the creator's diamonds added once."""
    await open_streams(money)
    await money.topup("viewer3", 100, "grant-viewer3")
    steps = steps_of(money)
    channel = keys.channel("stream2")  # published on the shard holding the stream
    shard = Redis(port=redis_cluster.owner_of_slot(key_slot(channel.encode())))
    pubsub = shard.pubsub()
    await pubsub.ssubscribe(channel)

    async def debit_only(request_id: str) -> list[Any]:
        now = money.clock()
        return list(
            await money.pipe.call(
                Script.GIFT_DEBIT,
                [
                    keys.wallet("viewer3"),
                    keys.gift_idem("viewer3", request_id),
                    keys.spending("viewer3", now // rules.DAY_MS),
                ],
                [
                    request_id,
                    "viewer3",
                    "creator2",
                    "stream2",
                    "rose",
                    "Rose",
                    1,
                    1,
                    1,
                    1,
                    now,
                    3600000,
                    0,
                    "",
                    money.level_thresholds,
                ],
                idempotent=True,
                shard=(keys.outbox,),
            )
        )

    await debit_only("gift-left-001")  # the relay died after step 1
    half = await debit_only("gift-half-001")  # ... and this one after step 2
    applied = await money.pipe.call(
        Script.GIFT_APPLY,
        [
            keys.stream("stream2"),
            keys.top("stream2"),
            keys.history("stream2"),
            keys.combo("stream2", "viewer3", "rose"),
            keys.channel("stream2"),
            keys.applied("stream2", "viewer3", "gift-half-001"),
            keys.battle_top("stream2"),
        ],
        [
            *gift_fields(
                Transfer(
                    id="gift-half-001",
                    to="creator2",
                    stream="stream2",
                    diamonds=1,
                    ts=half[5],
                    gift="rose",
                    name="Rose",
                    count=1,
                    coins=1,
                    coins_after=half[4],
                    from_="viewer3",
                )
            ),
            10_000,
            3_600_000,
            1000,
            10**9,
        ],
        idempotent=True,
        shard=(keys.ledger,),
    )
    assert applied[0] == "ok"
    assert await outbox_length(money.redis) == 2
    assert (await money.balance("viewer3")).coins == 98  # the coins moved at step 1
    assert (await money.balance("creator2")).diamonds == 1  # the applied one's, as earnings

    sweep = await steps.sweep(grace_ms=0)
    assert sweep.moved == 2
    assert (await steps.sweep(grace_ms=0)).moved == 0  # nothing left, nothing twice
    assert await outbox_length(money.redis) == 0
    assert (await money.balance("creator2")).diamonds == 2
    assert (await money.stream_info("stream2")).gifts == 2
    gifts = [e for e in await ledger_entries(money.redis) if e["kind"] == "gift"]
    assert sorted(e["id"] for e in gifts) == ["gift-half-001", "gift-left-001"]
    # The half-applied gift kept its offset: the stream's step ran once.
    assert next(e for e in gifts if e["id"] == "gift-half-001")["offset"] == applied[1]

    heard = []
    while len(heard) < 3:  # the subscribe confirmation and two events
        message = await pubsub.get_message(timeout=2.0)
        assert message is not None, "an event did not come"
        heard.append(message)
    events = [json.loads(m["data"]) for m in heard if m["type"] == "smessage"]
    assert sorted(e["id"] for e in events) == ["gift-half-001", "gift-left-001"]
    assert await pubsub.get_message(timeout=0.3) is None  # and no event twice
    await pubsub.aclose()
    await shard.aclose()

    # The client's retry of the first gift gets its one outcome.
    retried = await money.gift("viewer3", "stream2", "rose", 1, "gift-left-001")
    assert retried.replayed
    assert retried.balance == 99
    assert len([e for e in await ledger_entries(money.redis) if e["kind"] == "gift"]) == 2


async def test_earnings_wait_on_the_stream_until_a_payout_collects_them_once(
    money: Money,
) -> None:
    """A gift's diamonds are the creator's earnings on the stream (its slot, not the
    wallet's); a balance counts them, a payout collects them into the wallet, once, even
    with two payouts at once."""
    await open_streams(money)  # creator0 opened stream0 and stream3
    await money.topup("viewer1", 100, "grant-viewer1")
    for n, stream in enumerate(["stream0", "stream3", "stream0"]):
        await money.gift("viewer1", stream, "rose", 1, f"gift-{n:05d}")  # 1 coin, 1 diamond
    assert (await money.balance("creator0")).diamonds == 3
    assert await money.redis.hget(keys.wallet("creator0"), "diamonds") is None
    held = [await money.redis.hget(keys.stream(s), "earnings") for s in ("stream0", "stream3")]
    assert held == ["2", "1"]

    results = await asyncio.gather(
        money.payout("creator0", 3, "payout-00001"),
        money.payout("creator0", 3, "payout-00002"),
        return_exceptions=True,
    )
    paid = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Refused)]
    assert len(paid) == 1
    assert paid[0].diamonds_left == 0
    # The other found the diamonds there when it looked, gone when it paid: unavailable
    # (the diamonds were moving), or refused; its retry is refused, moving nothing.
    assert [r.code for r in refused] in (["insufficient_diamonds"], ["unavailable"])
    other = "payout-00002" if paid[0].id == "payout-00001" else "payout-00001"
    with pytest.raises(Refused) as again:
        await money.payout("creator0", 3, other)
    assert again.value.code == "insufficient_diamonds"
    assert (await money.balance("creator0")).diamonds == 0
    assert await money.redis.hget(keys.wallet("creator0"), "diamonds") == "0"
    held = [await money.redis.hget(keys.stream(s), "earnings") for s in ("stream0", "stream3")]
    assert held == ["0", "0"]
    for stream in ("stream0", "stream3"):  # each stream's earnings collected once
        assert await money.redis.get(keys.collected("creator0", stream, 1)) is not None
        assert await money.redis.get(keys.collected("creator0", stream, 2)) is None
    assert await outbox_length(money.redis) == 0
    payouts = [e for e in await ledger_entries(money.redis) if e["kind"] == "payout"]
    assert [(e["diamonds"], e["diamonds_after"]) for e in payouts] == [(3, 0)]
    # No entry for a collect: the diamonds were the creator's since each gift's entry.
    assert {e["kind"] for e in await ledger_entries(money.redis)} == {"topup", "gift", "payout"}


async def test_a_retried_gift_keeps_the_amounts_it_was_debited_at(
    money: Money, redis_cluster: LocalCluster
) -> None:
    """A relay died after the debit; the retry reaches a relay with another diamond rate:
    the stream's step credits what the debit priced, not the retry's price."""
    await open_streams(money)
    await money.topup("viewer4", 100, "grant-viewer4")
    first = await money.gift("viewer4", "stream1", "heart", 2, "gift-price-01")  # 10, 10
    other, redis = await money_on(redis_cluster, diamonds_per_coin="1/2")
    try:
        again = await other.gift("viewer4", "stream1", "heart", 2, "gift-price-01")
        assert again.replayed
        assert (again.coins, again.diamonds) == (first.coins, first.diamonds) == (10, 10)
        steps = steps_of(other)
        t = Transfer(id="gift-price-02", to="creator1", stream="stream1", diamonds=5, ts=1,
                     gift="heart", name="Heart", count=2, coins=10, from_="viewer4")  # fmt: skip
        debit = other.pipe.submit(  # a debit at the old price, as the dead relay made it
            Script.GIFT_DEBIT,
            [keys.wallet("viewer4"), keys.gift_idem("viewer4", "gift-price-02"),
             keys.spending("viewer4", money.clock() // rules.DAY_MS)],
            ["gift-price-02", "viewer4", "creator1", "stream1", "heart", "Heart", 2, 10, 10,
             1, money.clock(), 3_600_000, 0, "", other.level_thresholds],
            idempotent=True,
            shard=(keys.outbox,),
        )  # fmt: skip
        reply = await steps.after_debit(debit, t)  # the retry's own price said 5 diamonds
        assert reply[6] == 10
        await steps.settle()
    finally:
        await other.aclose()
        await redis.aclose()
    gifts = [e for e in await ledger_entries(money.redis) if e["kind"] == "gift"]
    assert sorted(e["diamonds"] for e in gifts) == [10, 10]
    assert await money.redis.hget(keys.stream("stream1"), "earnings") == "20"


async def test_a_collect_a_payout_left_is_credited_once_by_the_mover(money: Money) -> None:
    """The payout's process died between a collect's steps: the earnings left the stream
    for the outbox; the mover credits them to the wallet once."""
    await open_streams(money)
    await money.topup("viewer2", 100, "grant-viewer2")
    await money.gift("viewer2", "stream1", "rose", 5, "gift-00001")  # creator1: 5 diamonds
    taken = await money.pipe.call(
        Script.COLLECT,
        [keys.stream("stream1")],
        ["stream1", money.clock(), "creator1"],
        idempotent=False,
        shard=(keys.outbox, keys.hold),
    )
    assert taken[0] == "ok"
    assert transfer_decoder.decode(taken[1]).diamonds == 5
    assert await outbox_length(money.redis) == 1
    assert (await money.balance("creator1")).diamonds == 0  # in flight: counted nowhere yet
    assert (await steps_of(money).sweep(grace_ms=0)).moved == 1
    assert (await steps_of(money).sweep(grace_ms=0)).moved == 0  # nothing left, nothing twice
    assert await outbox_length(money.redis) == 0
    assert (await money.balance("creator1")).diamonds == 5
    assert await money.redis.hget(keys.wallet("creator1"), "diamonds") == "5"
    # Nothing held: a collect moves nothing and leaves no transfer.
    assert await steps_of(money).collect("stream1", "creator1") == 0
    await money.gift("viewer2", "stream1", "rose", 2, "gift-00002")
    assert await steps_of(money).collect("stream1", "creator2") == 0  # not creator2's stream
    assert await money.redis.hget(keys.stream("stream1"), "earnings") == "2"
    assert await outbox_length(money.redis) == 0


async def gift_until_acknowledged(
    core: Money, viewer: str, stream: str, request_id: str, deadline: float
) -> Any:
    """A client's loop: retry with the same id while Redis is unavailable."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await core.gift(viewer, stream, "rose", 1, request_id)
        except Unavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_a_primary_killed_under_load_loses_no_acknowledged_gift(
    own_cluster: LocalCluster,
) -> None:
    """With GIFTRELAY_ACK_REPLICAS=1, kill -9 the primary of viewers, streams and a
    creator while gifts flow: after the failover every acknowledged gift is in the
    ledger exactly once and every balance is what the replies said."""
    core, redis = await money_on(own_cluster, ack_replicas="1", ack_timeout="1")
    try:
        await open_streams(core)
        for v in VIEWERS:
            await core.topup(v, 1000, f"grant-{v}")
        victim = own_cluster.owner_of_slot(key_slot(keys.wallet(VIEWERS[0]).encode()))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        plan = [(VIEWERS[i % len(VIEWERS)], STREAMS[i % len(STREAMS)]) for i in range(400)]
        started = asyncio.Event()
        acknowledged = 0

        async def gifter(i: int, viewer: str, stream: str) -> Any:
            nonlocal acknowledged
            await asyncio.sleep(i * 0.002)  # a flow, not one burst: ~500 gifts/s
            receipt = await gift_until_acknowledged(core, viewer, stream, f"load-{i:05d}", deadline)
            acknowledged += 1
            if acknowledged == 100:
                started.set()
            return receipt

        sends = asyncio.gather(*(gifter(i, v, s) for i, (v, s) in enumerate(plan)))
        await started.wait()
        own_cluster.kill(victim)
        await asyncio.to_thread(own_cluster.wait_failover, victim)
        # The promoted replica has no replica of its own: it acknowledges nothing (WAIT 1)
        # until the old primary comes back as its replica, as an operator would see to.
        await asyncio.to_thread(own_cluster.restart, victim)
        receipts = await sends
        await steps_of(core).sweep(grace_ms=0)  # anything a failed step left behind

        price = rose_price(core)
        assert await outbox_length(redis) == 0
        gifts = [e for e in await ledger_entries(redis) if e["kind"] == "gift"]
        assert sorted(e["id"] for e in gifts) == sorted(r.id for r in receipts)  # once each
        spent = Counter(v for v, _ in plan)
        for v in VIEWERS:
            assert (await core.balance(v)).coins == 1000 - spent[v] * price
        total = sum([(await core.stream_info(s)).gifts for s in STREAMS])
        assert total == len(plan)
    finally:
        await core.aclose()
        await redis.aclose()


async def test_gifts_flow_while_a_slot_migrates(own_cluster: LocalCluster) -> None:
    """The slot of a viewer's wallet and of a stream move to another primary, in small
    batches, while gifts are sent: every gift is applied once, balances exact."""
    core, redis = await money_on(own_cluster)
    try:
        await open_streams(core)
        viewer, stream = VIEWERS[0], STREAMS[0]
        await core.topup(viewer, 1000, "grant-migrating")
        loop = asyncio.get_running_loop()
        slots = [key_slot(keys.wallet(viewer).encode()), key_slot(keys.stream(stream).encode())]
        for i in range(20):  # keys enough in the slots to move in several batches
            await core.gift(viewer, stream, "rose", 1, f"before-{i:04d}")
        stop = asyncio.Event()
        sent: list[str] = []

        async def gifts() -> None:
            i = 0
            while not stop.is_set():
                request_id = f"during-{i:05d}"
                await gift_until_acknowledged(core, viewer, stream, request_id, loop.time() + 20)
                sent.append(request_id)
                i += 1

        sender = asyncio.create_task(gifts())
        for slot in slots:
            source = own_cluster.owner_of_slot(slot)
            target = next(p for p in own_cluster.primary_ports() if p != source)
            await asyncio.to_thread(own_cluster.migrate_slot, slot, target, batch=3)
        stop.set()
        await sender
        assert len(sent) > 0
        price = rose_price(core)
        assert (await core.balance(viewer)).coins == 1000 - (20 + len(sent)) * price
        info = await core.stream_info(stream)
        assert info.gifts == 20 + len(sent)
        gifts_ = [e for e in await ledger_entries(redis) if e["kind"] == "gift"]
        assert len(gifts_) == len({e["id"] for e in gifts_}) == 20 + len(sent)
        assert await outbox_length(redis) == 0
    finally:
        await core.aclose()
        await redis.aclose()
