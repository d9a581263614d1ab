"""Overlay revocation survives a lost event channel.

``revoke_overlays`` stores the revocation time on the stream and publishes it; nothing
goes into the history. A worker whose pub/sub connection is down when it is published
misses it, and the gap fill from the history cannot bring it back: the worker reads
the stored time when the channel comes back and closes the overlays it revokes.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from giftrelay.auth import Role
from giftrelay.embedded import RedisServer
from giftrelay.money import keys
from giftrelay.money.scripts import SCRIPTS, Script

from .relay_helpers import Client, running_relay, token

FAST = {"gift_rate": 100_000.0, "gift_burst": 100_000, "message_rate": 100_000.0}


async def test_a_revocation_missed_while_the_channel_was_down_closes_the_overlay(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, **FAST) as h:
        await h.money.stream_open("s1", "cre", "s1 live")
        await h.money.topup("alice", 100, "grant-alice-0001")
        overlay = await Client.open(h.ws, token("ov", Role.OVERLAY, "s1", now=time.time() - 5))
        assert (await overlay.join("s1"))["type"] == "joined"
        viewer = await Client.open(h.ws)
        assert (await viewer.join("s1"))["type"] == "joined"
        worker = h.relay.fanout
        assert worker.connected.is_set()

        # One transaction: the worker's pub/sub connection is killed, then the stream's
        # overlays are revoked (the money core's own script, as revoke_overlays runs it).
        # Its publish reaches no one: the worker can only learn of it from Redis.
        revoked_at = time.time_ns() // 1_000_000
        async with redis.pipeline(transaction=True) as tx:
            tx.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            tx.pubsub_shardnumsub(keys.channel("s1"))
            tx.evalsha(
                SCRIPTS.sha[Script.REVOKE_OVERLAYS],
                2,
                keys.stream("s1"),
                keys.channel("s1"),
                "",
                revoked_at,
            )
            killed, numsub, revoke = await tx.execute()
        assert killed >= 1
        assert numsub == [(keys.channel("s1"), 0)]  # the revocation was published to no one
        assert revoke == ["ok"]
        assert await h.money.overlay_epoch("s1") == revoked_at

        # The channel comes back by itself; the overlay is closed as a live revoke closes it.
        assert await overlay.closed() == 1008
        assert overlay.ws.close_reason == "overlay token revoked"
        assert worker.rooms["s1"].revoked_before == revoked_at

        # The viewer is not an overlay: still in the room, and the room is live again.
        await h.money.gift("alice", "s1", "rose", 1, "gift-after-0001")
        await viewer.wait_for(lambda: len(viewer.gifts("s1")) == 1, what="the gift after")
        assert viewer.ws.close_code is None
        await viewer.close()


async def test_a_revocation_applied_live_is_not_applied_again_after_a_reconnect(
    redis: Redis, redis_server: RedisServer
) -> None:
    """An overlay whose token was minted after the revocation keeps working through a
    reconnect: only tokens issued before the stored time are closed."""
    async with running_relay(redis_server.url, **FAST) as h:
        await h.money.stream_open("s1", "cre", "s1 live")
        old = await Client.open(h.ws, token("ov", Role.OVERLAY, "s1", now=time.time() - 5))
        await old.join("s1")
        await h.money.revoke_overlays("s1", "cre")
        assert await old.closed() == 1008  # the live path
        fresh = await Client.open(h.ws, token("ov", Role.OVERLAY, "s1"))
        assert (await fresh.join("s1"))["type"] == "joined"
        worker = h.relay.fanout
        applied = worker.rooms["s1"].revoked_before
        assert applied == await h.money.overlay_epoch("s1")

        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await h.money.topup("alice", 100, "grant-alice-0001")
        # A marker that the worker's channel is back and its gap was filled: a gift.
        await h.money.gift("alice", "s1", "rose", 1, "gift-after-0001")
        await fresh.wait_for(lambda: len(fresh.gifts("s1")) == 1, what="the gift after")
        assert fresh.ws.close_code is None
        assert worker.rooms["s1"].revoked_before == applied
        await fresh.close()
