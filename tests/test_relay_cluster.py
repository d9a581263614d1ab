"""The relay's fan-out on a real Redis Cluster (3 primaries, a replica each): a sharded
pub/sub connection per shard, streams on every shard, a stream's slot migrating while
gifts flow, the primary of a stream killed, and a gift the mover applies twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from giftrelay.embedded import LocalCluster
from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.money.transfers import Transfer
from giftrelay.relay import sharded as sharded_module
from giftrelay.relay.room import RECENT_GIFTS, Head, Room, gift_key
from giftrelay.relay.sharded import ShardedChannel
from giftrelay.wire.errors import Unavailable

from .cluster_helpers import flush_cluster
from .relay_helpers import Client, RelayHandle, offsets, running_relay, token

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


def streams_on_every_shard(cluster: LocalCluster, per_shard: int = 1) -> list[str]:
    """Stream names whose slots lie on each primary, ``per_shard`` of each."""
    found: dict[int, list[str]] = {port: [] for port in cluster.primary_ports()}
    i = 0
    while any(len(names) < per_shard for names in found.values()):
        name = f"st{i}"
        owner = cluster.owner_of_slot(key_slot(keys.channel(name).encode()))
        if len(found[owner]) < per_shard:
            found[owner].append(name)
        i += 1
    return [name for names in found.values() for name in names]


def sharded(h: RelayHandle) -> ShardedChannel:
    channel = h.relay.fanout.channel
    assert isinstance(channel, ShardedChannel)
    return channel


def user_not_on(cluster: LocalCluster, port: int, prefix: str) -> str:
    """A user name whose wallet's slot is not on the node ``port``."""
    for i in range(1000):
        name = f"{prefix}{i}"
        if cluster.owner_of_slot(key_slot(keys.wallet(name).encode())) != port:
            return name
    raise AssertionError("no such name")


async def setup(
    h: RelayHandle, streams: list[str], viewers: list[str], creator: str | None = None
) -> None:
    for stream in streams:
        await h.money.stream_open(stream, creator or f"cre-{stream}", f"{stream} live")
    for viewer in viewers:
        await h.money.topup(viewer, 100_000, f"grant-{viewer}")


async def gift(money: Money, viewer: str, stream: str, request_id: str, within: float) -> str:
    """A client's loop: send, and send again with the same id while Redis is unavailable;
    the gift's offset once acknowledged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return (await money.gift(viewer, stream, "rose", 1, request_id)).offset
        except Unavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


def gift_ids(client: Client, stream: str) -> list[str]:
    return [e["id"] for e in client.gifts(stream)]


def has_all(client: Client, stream: str, ids: Callable[[], list[str]]) -> Callable[[], bool]:
    return lambda: set(ids()) <= set(gift_ids(client, stream))


def assert_once_in_order(client: Client, stream: str, acknowledged: list[str]) -> None:
    got = client.gifts(stream)
    ids = [e["id"] for e in got]
    assert [i for i, n in Counter(ids).items() if n > 1] == []  # nothing twice
    assert set(acknowledged) <= set(ids)  # nothing acknowledged missing
    assert offsets(got) == sorted(offsets(got))  # in offset order
    assert client.ws.close_code is None  # and the socket never closed


@pytest.fixture
async def relay(redis_cluster: LocalCluster) -> AsyncIterator[RelayHandle]:
    await flush_cluster(redis_cluster)
    async with running_relay(redis_cluster.url, **FAST) as handle:
        yield handle


async def test_viewers_of_streams_on_every_shard_get_each_gift_once_in_order(
    relay: RelayHandle, redis_cluster: LocalCluster
) -> None:
    streams = streams_on_every_shard(redis_cluster, per_shard=2)
    senders = [f"fan{i}" for i in range(4)]
    await setup(relay, streams, senders)
    everywhere = await Client.open(relay.ws)  # one connection watching all six streams
    for stream in streams:
        assert (await everywhere.join(stream))["type"] == "joined"
    pairs = []
    for stream in streams:
        for _ in range(2):
            viewer = await Client.open(relay.ws)
            assert (await viewer.join(stream))["type"] == "joined"
            pairs.append((viewer, stream))
    # One connection per shard, each stream's channel on its slot's primary.
    channel = sharded(relay)
    assert set(channel.links) == {f"127.0.0.1:{p}" for p in redis_cluster.primary_ports()}
    for stream in streams:
        owner = redis_cluster.owner_of_slot(key_slot(keys.channel(stream).encode()))
        assert channel.routes[keys.channel(stream)] == f"127.0.0.1:{owner}"

    plan = [(senders[i % 4], streams[i % len(streams)], f"gift-{i:04d}") for i in range(300)]
    sent = await asyncio.gather(*(relay.money.gift(v, s, "rose", 1, rid) for v, s, rid in plan))
    by_stream = {s: [rid for _, st, rid in plan if st == s] for s in streams}
    for viewer, stream in [*pairs, *((everywhere, s) for s in streams)]:
        await viewer.wait_for(has_all(viewer, stream, lambda s=stream: by_stream[s]))
        assert_once_in_order(viewer, stream, by_stream[stream])
        assert len(viewer.gifts(stream)) == len(by_stream[stream])
    # The offsets are the ones the gifts were acknowledged with.
    acked = {rid: r.offset for (_, _, rid), r in zip(plan, sent, strict=True)}
    assert {e["id"]: e["offset"] for e in everywhere.gifts(streams[0])} == {
        rid: acked[rid] for rid in by_stream[streams[0]]
    }


async def test_a_gift_applied_twice_reaches_viewers_once(relay: RelayHandle) -> None:
    """After a failover that lost a gift's stream step, the mover applies it again at a
    new offset: the history holds it twice, the viewers see it once. Test alerts, whose
    ids are their own, all come through."""
    await setup(relay, ["twice"], ["alice"])
    steps = relay.money.steps
    assert steps is not None
    finished: list[tuple[Transfer, str, str]] = []
    finish = steps.finish

    def recording(t: Transfer, outbox: str, entry: str) -> Any:
        finished.append((t, outbox, entry))
        return finish(t, outbox, entry)

    steps.finish = recording  # type: ignore[method-assign]
    viewer = await Client.open(relay.ws)
    await viewer.join("twice")
    first = await relay.money.gift("alice", "twice", "rose", 1, "gift-once")
    await viewer.wait_for(lambda: gift_ids(viewer, "twice") == ["gift-once"])
    # The stream step's record lost, as on a promoted replica that never got it: the
    # transfer is applied again, with a new offset.
    await relay.money.redis.delete(keys.applied("twice", "alice", "gift-once"))
    apply_reply = await finish(*finished[0])
    assert apply_reply[1] > first.offset
    history = await relay.money.redis.xrange(keys.history("twice"))
    assert sum('"gift-once"' in fields["e"] for _, fields in history) == 2
    for _ in range(2):
        await relay.money.test_alert("twice", "cre-twice", "rose", 1)  # its own ids
    await relay.money.gift("alice", "twice", "rose", 1, "gift-after")
    await viewer.wait_for(lambda: "gift-after" in gift_ids(viewer, "twice"))
    ids = gift_ids(viewer, "twice")
    assert [i for i in ids if not i.startswith("test-")] == ["gift-once", "gift-after"]
    assert len([i for i in ids if i.startswith("test-")]) == 2


@pytest.mark.parametrize("announced", [True, False], ids=["sunsubscribe", "unannounced"])
async def test_viewers_follow_a_stream_whose_slot_migrates_while_gifts_flow(
    own_cluster: LocalCluster, announced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis pushes ``sunsubscribe`` when the slot leaves its node; without it (a change
    this worker was not told of) the slot map, looked at every few seconds, tells."""
    streams = streams_on_every_shard(own_cluster)
    moving, still = streams[0], streams[1]
    channel_name = keys.channel(moving)
    slot = key_slot(channel_name.encode())
    source = own_cluster.owner_of_slot(slot)
    target = next(p for p in own_cluster.primary_ports() if p != source)
    if not announced:
        monkeypatch.setattr(sharded_module, "MAP_CHECK", 0.5)
    async with running_relay(own_cluster.url, **FAST) as h:
        if not announced:
            monkeypatch.setattr(sharded(h), "_pushed_out", lambda link, channel: None)
        await setup(h, [moving, still], ["bob", "carol"])
        viewers = [await Client.open(h.ws) for _ in range(3)]
        for viewer in viewers:
            await viewer.join(moving)
        other = await Client.open(h.ws)
        await other.join(still)
        acked: list[str] = []
        for i in range(20):  # keys enough in the slot to move in several batches
            await h.money.gift("bob", moving, "rose", 1, f"before-{i:03d}")
            acked.append(f"before-{i:03d}")
        stop = asyncio.Event()

        async def flow() -> None:
            i = 0
            while not stop.is_set():
                await gift(h.money, "bob", moving, f"during-{i:04d}", within=20)
                acked.append(f"during-{i:04d}")
                await h.money.gift("carol", still, "rose", 1, f"still-{i:04d}")
                i += 1

        sender = asyncio.create_task(flow())
        await asyncio.to_thread(own_cluster.migrate_slot, slot, target, batch=3)
        await viewers[0].wait_for(lambda: len(acked) >= 30)  # gifts after the move, too
        stop.set()
        await sender
        for viewer in viewers:
            await viewer.wait_for(has_all(viewer, moving, lambda: acked))
            assert_once_in_order(viewer, moving, acked)
        assert sharded(h).routes[channel_name] == f"127.0.0.1:{target}"
        await other.wait_for(lambda: len(other.gifts(still)) >= 1)
        assert_once_in_order(other, still, [])


async def synced(port: int, stream: str) -> None:
    """Every write the primary on ``port`` made is on its replica: a write in the stream's
    slot after them, and WAIT for it."""
    async with Redis(host="127.0.0.1", port=port) as primary:
        await primary.set(f"probe:{{{stream}}}", 1)
        assert await primary.wait(1, 5000) == 1


async def test_viewers_keep_their_sockets_when_a_streams_primary_is_killed(
    own_cluster: LocalCluster,
) -> None:
    streams = streams_on_every_shard(own_cluster)
    doomed, other = streams[0], streams[1]
    victim = own_cluster.owner_of_slot(key_slot(keys.channel(doomed).encode()))
    # A gift touches its sender's and its creator's slots too: theirs stay up, so that
    # the other stream's gifts flow on while the doomed stream's shard is down.
    senders = [user_not_on(own_cluster, victim, "dave"), user_not_on(own_cluster, victim, "erin")]
    creator = user_not_on(own_cluster, victim, "cre")
    async with running_relay(own_cluster.url, **FAST) as h:
        await setup(h, [doomed, other], senders, creator)
        viewers = [await Client.open(h.ws, token(f"watcher{i}")) for i in range(3)]
        for viewer in viewers:
            await viewer.join(doomed)
            await viewer.join(other)
        before = []
        for i in range(10):
            await h.money.gift(senders[i % 2], doomed, "rose", 1, f"before-{i:03d}")
            before.append(f"before-{i:03d}")
        for viewer in viewers:
            await viewer.wait_for(has_all(viewer, doomed, lambda: before))
        await synced(victim, doomed)

        own_cluster.kill(victim)
        # While the shard is down: the other stream's gifts flow on, and gifts to the
        # doomed one are retried by their senders until the replica took over.
        during = [f"during-{i:03d}" for i in range(5)]
        retried = [
            asyncio.create_task(gift(h.money, senders[i % 2], doomed, rid, within=30))
            for i, rid in enumerate(during)
        ]
        await h.money.gift(senders[0], other, "rose", 1, "other-while-down")
        for viewer in viewers:
            await viewer.wait_for(lambda v=viewer: "other-while-down" in gift_ids(v, other))
        # A join of the doomed stream is told at once that it cannot be served now; it
        # comes back after the failover, from the last gift before the kill.
        late = await Client.open(h.ws)
        refused = await late.join(doomed)
        assert (refused["type"], refused["code"]) == ("error", "unavailable")
        assert (await late.join(other))["type"] == "joined"
        await asyncio.to_thread(own_cluster.wait_failover, victim)
        await asyncio.gather(*retried)
        since = next(e for e in viewers[0].gifts(doomed) if e["id"] == before[-1])["offset"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while (joined := await late.join(doomed, since=since))["type"] != "joined":
            assert joined["code"] == "unavailable", joined
            assert loop.time() < deadline, "the stream's new primary did not take joins"
            await asyncio.sleep(0.1)  # a client's back-off before it joins again
        assert joined["recovered"]
        after = []
        for i in range(10):
            await gift(h.money, senders[i % 2], doomed, f"after-{i:03d}", within=10)
            after.append(f"after-{i:03d}")
        acked = [*before, *during, *after]
        for viewer in viewers:
            await viewer.wait_for(has_all(viewer, doomed, lambda: acked), within=15)
            assert_once_in_order(viewer, doomed, acked)
            assert_once_in_order(viewer, other, ["other-while-down"])
        await late.wait_for(has_all(late, doomed, lambda: [*during, *after]))
        assert_once_in_order(late, doomed, [*during, *after])
        promoted = own_cluster.owner_of_slot(key_slot(keys.channel(doomed).encode()))
        assert sharded(h).routes[keys.channel(doomed)] == f"127.0.0.1:{promoted}"
        assert f"127.0.0.1:{victim}" not in sharded(h).links


def test_a_room_remembers_the_last_gifts_it_delivered() -> None:
    """By sender and id, at any offset, the last RECENT_GIFTS of them; a test alert with a
    gift's id is another event."""
    room = Room("s")

    def event(sender: str, gift_id: str, test: bool = False) -> int | None:
        return gift_key(Head(kind="gift", sender=sender, id=gift_id, test=test))

    raw = msgspec.Raw(b"{}")
    assert room.accept("1-1", raw, event("alice", "gift-1"))
    assert not room.accept("2-1", raw, event("alice", "gift-1"))  # the same gift again
    assert room.accept("3-1", raw, event("bob", "gift-1"))  # another sender's
    assert room.accept("4-1", raw, event("alice", "gift-1", test=True))
    assert room.accept("5-1", raw, gift_key(Head(kind="viewers")))  # not a gift: no key
    assert not room.accept("5-1", raw, None)  # an offset seen
    for i in range(RECENT_GIFTS):
        assert room.accept(f"{10 + i}-0", raw, event("carol", f"gift-{i}"))
    assert room.accept("9000-0", raw, event("alice", "gift-1"))  # forgotten by now
    assert not room.accept("9001-0", raw, event("carol", f"gift-{RECENT_GIFTS - 1}"))
    assert len(room.recent) == len(room.recent_order) == RECENT_GIFTS
