"""What the backend's API does, as socket clients see it (protocol v1 unchanged)."""

from __future__ import annotations

from redis.asyncio import Redis

from giftrelay.auth import Role
from giftrelay.embedded import RedisServer
from giftrelay.money.platform import Platform

from .relay_helpers import Client, running_relay, token


async def test_a_chargeback_debt_blocks_socket_gifts_until_covered(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url) as relay:
        money = relay.money
        await money.stream_open("s1", "creator", "t")
        await money.topup("alice", 10, "receipt-0001")
        alice = await Client.open(relay.ws, token("alice"))
        gift = {"type": "gift", "stream": "s1", "gift": "rose", "count": 4}
        assert (await alice.request(**gift, id="gift-0001"))["type"] == "gift_ok"
        await Platform(money).chargeback("receipt-0001", "fraud", "alice")
        balance = await alice.request(type="balance")
        assert balance["coins"] == -4
        refused = await alice.request(**{**gift, "count": 1}, id="gift-0002")
        assert (refused["type"], refused["code"]) == ("error", "insufficient_coins")
        await money.topup("alice", 5, "receipt-0002")
        assert (await alice.request(**{**gift, "count": 1}, id="gift-0003"))["balance"] == 0
        await alice.close()


async def test_the_setting_makes_socket_payouts_need_verification(
    redis: Redis, redis_server: RedisServer
) -> None:
    async with running_relay(redis_server.url, payout_requires_verification=True) as relay:
        money = relay.money
        await money.stream_open("s1", "creator", "t")
        await money.topup("alice", 2000, "receipt-0001")
        await money.gift("alice", "s1", "rose", 1000, "gift-0001")
        await money.gift("alice", "s1", "rose", 1000, "gift-0002")
        creator = await Client.open(relay.ws, token("creator", Role.CREATOR))
        refused = await creator.request(type="payout", diamonds=2000, id="payout-0001")
        assert (refused["type"], refused["code"]) == ("error", "not_verified")
        await Platform(money).verify("creator", True, "kyc-1")
        paid = await creator.request(type="payout", diamonds=2000, id="payout-0001")
        assert (paid["type"], paid["diamonds_left"]) == ("payout_ok", 0)
        await creator.close()
