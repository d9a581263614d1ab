"""The money core's stream calls: open, close, goals, test alerts, overlay revocation,
viewer counts, top gifters and a stream's state. A part of :class:`~giftrelay.money.api.Money`
(it inherits them), kept apart so that the gift path's module stays small."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from fractions import Fraction
from typing import cast

from redis.asyncio import Redis

from giftrelay.money import keys, rules
from giftrelay.money.catalog import Catalog
from giftrelay.money.common import (
    MoneySettings,
    check_ident,
    check_title,
    guard,
    ok,
    priced,
)
from giftrelay.money.receipts import StreamInfo
from giftrelay.money.scripts import Script
from giftrelay.money.shards import Router
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.events import TopEntry


class Streams:
    """Stream calls, on the pipeline, clock and settings of the :class:`Money` they are part of."""

    redis: Redis
    settings: MoneySettings
    pipe: Router
    clock: Callable[[], int]
    diamond_rate: Fraction
    _creators: dict[str, str]
    _live_until: dict[str, float]
    catalog: Catalog

    async def stream_open(self, stream: str, creator: str, title: str) -> StreamInfo:
        check_ident("stream", stream)
        check_ident("creator", creator)
        check_title(title)
        if self.pipe.cluster:  # first, so that a stream opened is always listed (a process
            # dying in between lists one not opened: its owner is checked where it is read)
            owner = await guard(self.redis.hget(keys.stream(stream), "creator"))
            if owner in (None, creator):  # (another's stream: the open is refused below)
                await guard(self.redis.sadd(keys.creator_streams(creator), stream))
        reply = await self.pipe.call(
            Script.STREAM_OPEN,
            [keys.stream(stream)],
            [creator, title, self.clock()],
            idempotent=False,  # no id: run again after a close, it would reopen the stream
        )
        ok(reply, "stream_open")
        self._creators[stream] = creator
        return await self.stream_info(stream)

    async def stream_close(self, stream: str, actor: str | None = None) -> StreamInfo:
        """Close a stream. ``actor`` is the creator acting, or None for an admin."""
        check_ident("stream", stream)
        reply = await self.pipe.call(
            Script.STREAM_CLOSE,
            [keys.stream(stream), keys.history(stream), keys.channel(stream)],
            [actor or "", self.clock(), self.settings.history_len],
            idempotent=False,  # no id: run again after a reopen, it would close the stream
        )
        ok(reply, "stream_close")
        self._live_until.pop(stream, None)  # on a cluster, gifts look at the stream again
        return await self.stream_info(stream)

    async def set_goal(
        self, stream: str, actor: str | None, title: str, target: int
    ) -> protocol.GoalState:
        """Set the stream's goal; progress counts diamonds received from now on."""
        check_ident("stream", stream)
        check_title(title)
        if not 1 <= target <= self.settings.max_balance:
            raise Refused(Code.BAD_REQUEST, f"target must be 1 to {self.settings.max_balance}")
        reply = await self.pipe.call(
            Script.SET_GOAL,
            [keys.stream(stream), keys.history(stream), keys.channel(stream)],
            [actor or "", title, target, self.clock(), self.settings.history_len],
            idempotent=False,  # no id: each run appends a goal event to the history
        )
        ok(reply, "set_goal")
        return protocol.GoalState(title=title, target=target, progress=0)

    async def test_alert(self, stream: str, actor: str | None, gift: str, count: int) -> str:
        """Show a gift marked ``test`` on the stream's overlays; returns its offset.

        Nothing but the stream's history and channel is written: no wallet, no total,
        no leaderboard, no ledger entry.
        """
        check_ident("stream", stream)
        item, coins = priced(self.catalog, self.settings.max_gift_count, gift, count)
        if coins > self.settings.max_balance:
            # No wallet can pay for it, so no real gift could show it; and its amounts,
            # like every amount a script writes, stay below 10^14 (rules.EXACT_LIMIT).
            raise Refused(
                Code.BAD_REQUEST,
                f"{count} x {gift} costs {coins} coins, more than a wallet can hold "
                f"({self.settings.max_balance})",
            )
        now = self.clock()
        reply = await self.pipe.call(
            Script.TEST_ALERT,
            [keys.stream(stream), keys.history(stream), keys.channel(stream)],
            [
                actor or "",
                f"test-{now}-{secrets.token_hex(4)}",
                gift,
                item.name,
                count,
                coins,
                rules.diamonds_for(coins, self.diamond_rate),
                now,
                self.settings.history_len,
            ],
            idempotent=False,  # no id: each run shows another alert
        )
        return str(ok(reply, "test_alert")[1])

    async def revoke_overlays(self, stream: str, actor: str | None) -> int:
        """Overlay tokens of the stream issued before now stop working; returns now (ms)."""
        check_ident("stream", stream)
        now = self.clock()
        reply = await self.pipe.call(
            Script.REVOKE_OVERLAYS,
            [keys.stream(stream), keys.channel(stream)],
            [actor or "", now],
            idempotent=False,  # no id: run again after a later revoke, it would undo it
        )
        ok(reply, "revoke_overlays")
        return now

    async def overlay_epoch(self, stream: str) -> int | None:
        """Overlay tokens of the stream issued before this moment (ms) are revoked."""
        raw = await guard(self.redis.hget(keys.stream(stream), "overlay_epoch"))
        return None if raw is None else int(raw)

    async def viewers_heartbeat(self, stream: str, worker: str, count: int, ttl_ms: int) -> int:
        """Report this worker's viewers of the stream; returns the total over live workers."""
        reply = await self.pipe.call(
            Script.VIEWERS,
            [keys.viewers(stream)],
            [worker, count, self.clock(), ttl_ms],
            idempotent=True,  # sets this worker's count, which only this worker's beats change
        )
        return int(ok(reply, "viewers")[1])

    async def top(self, stream: str, n: int = 10) -> list[tuple[str, int]]:
        """The stream's top gifters by coins spent, highest first."""
        raw = await guard(self.redis.zrevrange(keys.top(stream), 0, n - 1, withscores=True))
        return [(str(user), int(score)) for user, score in cast(list[tuple[str, float]], raw)]

    async def levels(self, users: list[str]) -> dict[str, int]:
        """Each user's gifter level, from the coins they spent in all (their wallets)."""
        if not users:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:  # one connection, not N
            for u in users:
                pipe.hget(keys.wallet(u), "lifetime")
            lifetimes = await guard(pipe.execute())
        return {
            u: self.catalog.levels.level(int(t or 0)) for u, t in zip(users, lifetimes, strict=True)
        }

    async def top_entries(self, stream: str, n: int = 10) -> list[TopEntry]:
        """The stream's top gifters with their levels, as ``top`` events show them."""
        top = await self.top(stream, n)
        levels = await self.levels([user for user, _ in top])
        return [TopEntry(user=u, coins=c, level=levels.get(u, 0)) for u, c in top]

    async def stream_info(self, stream: str) -> StreamInfo:
        check_ident("stream", stream)
        raw = cast(dict[str, str], await guard(self.redis.hgetall(keys.stream(stream))))
        if not raw:
            raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
        return self.parse_stream(stream, raw)

    @staticmethod
    def parse_stream(stream: str, raw: dict[str, str]) -> StreamInfo:
        """A stream's hash (``st:{stream}``) as a :class:`StreamInfo`."""
        diamonds = int(raw.get("diamonds", 0))
        goal = None
        if "goal_target" in raw:
            goal = protocol.GoalState(
                title=raw["goal_title"],
                target=int(raw["goal_target"]),
                progress=diamonds - int(raw["goal_base"]),
            )
        return StreamInfo(
            stream=stream,
            creator=raw["creator"],
            title=raw.get("title", ""),
            live=raw.get("status") == "live",
            diamonds=diamonds,
            coins=int(raw.get("coins", 0)),
            gifts=int(raw.get("gifts", 0)),
            battle=raw.get("battle"),
            goal=goal,
        )
