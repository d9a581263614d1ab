"""Battles: two creators link their streams for a few minutes, and each side's gifts push
its score. A part of :class:`~giftrelay.money.api.Money` (it inherits them).

Each stream keeps its own side in its own slot (``b_score`` in its hash, its gifters'
points in ``btop:{stream}``), and the gift adds its points there in the same atomic step
as the money (gift.lua on one Redis, gift_apply.lua on a cluster): never a second round
trip, never counted twice, wherever the two streams live. The battle's record
(``bt:{battle}``) is on a slot of its own; the server's clock decides the start (the
accept), the boosted windows and the end (:meth:`Battles.end_battles`, the referee, run
by every ``giftrelay serve``). Every step is idempotent: a retry, or two referees at once,
change nothing twice.

Scores are final once no gift stamped before the end can still arrive: the referee waits
``grace_ms`` past the end (a relay's clock a little behind, and on a cluster a transfer
the mover applies late). A gift applied even later (a shard failing over at the very
end) adds to its stream's side after the result was recorded; the ledger's result stands.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec
import structlog
from redis.asyncio import Redis

from giftrelay.money import keys
from giftrelay.money.catalog import Catalog
from giftrelay.money.common import MoneySettings, check_ident, check_request_id, guard, ok
from giftrelay.money.scripts import Script
from giftrelay.money.shards import Router
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.events import BattleSide, Contributor

log = structlog.get_logger(__name__)

RECORD_MS = 7 * 86_400_000
"""A battle's record is kept a week (its result is in the ledger for good)."""

BUSY_MS = 60_000
"""A stream whose last battle ended this long ago is free even if its end was never
processed (a referee that never came)."""

TOP = 3
"""Contributors per side on the events."""


class Stored(msgspec.Struct, frozen=True, kw_only=True):
    """A battle's record as :meth:`Battles.end_battles` reads it."""

    a: str
    b: str
    creator_a: str
    creator_b: str
    status: str
    duration_ms: int
    start_ms: int = 0
    end_ms: int = 0
    result: str = ""

    def unscored(self) -> list[BattleSide]:
        """The two sides before any gift: as a start announces them, or a cancellation."""
        return [
            BattleSide(self.a, self.creator_a, 0, []),
            BattleSide(self.b, self.creator_b, 0, []),
        ]


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """A battle's result: its ledger entry (kind ``battle``), and the ``battle_end`` event's
    content."""

    kind: str = "battle"
    v: int = 1
    ts: int
    id: str
    user: str
    """The inviting creator (the ledger's actor)."""
    streams: list[str]
    creators: list[str]
    scores: list[int]
    winner: str | None
    top: list[list[Contributor]]
    starts_at: int
    ends_at: int


_result = msgspec.json.Decoder(Result)


def battle_id(stream: str, request_id: str) -> str:
    """The battle an invitation makes: the same for a retry of the same request."""
    return (
        "b"
        + hashlib.sha1(f"{stream}|{request_id}".encode(), usedforsecurity=False).hexdigest()[:16]
    )


class Battles:
    """Battle calls, on the pipeline, clock, catalog and settings of the :class:`Money` they
    are part of."""

    redis: Redis
    settings: MoneySettings
    pipe: Router
    clock: Callable[[], int]
    catalog: Catalog

    if TYPE_CHECKING:  # Streams has it

        async def levels(self, users: list[str]) -> dict[str, int]: ...

    async def battle_invite(
        self, stream: str, opponent: str, duration_s: int, request_id: str, actor: str | None
    ) -> protocol.BattleOk:
        """The creator of ``stream`` (``actor``; None for an admin) invites the creator of
        ``opponent``; the opponent's stream gets a ``battle_invite`` event."""
        check_ident("stream", stream)
        check_ident("opponent", opponent)
        check_request_id(request_id)
        rules = self.catalog.battle
        if not rules.min_s <= duration_s <= rules.max_s:
            raise Refused(
                Code.BAD_REQUEST, f"duration_s must be {rules.min_s} to {rules.max_s} seconds"
            )
        if stream == opponent:
            raise Refused(Code.BAD_REQUEST, "a stream cannot battle itself")
        now = self.clock()
        ours, theirs = await asyncio.gather(self._side(stream), self._side(opponent))
        if actor is not None and actor != ours["creator"]:
            raise Refused(Code.FORBIDDEN, "not your stream")
        if ours["creator"] == theirs["creator"]:
            raise Refused(Code.BAD_REQUEST, "a creator cannot battle their own stream")
        for side in (ours, theirs):
            if side.get("status") != "live":
                raise Refused(Code.STREAM_NOT_LIVE, f"{side['stream']} is not live")
            if _busy(side, now):
                raise Refused(Code.BATTLE_BUSY, f"{side['stream']} is in a battle")
        battle = battle_id(stream, request_id)
        expires = now + rules.invite_s * 1000
        reply = await self.pipe.call(
            Script.BATTLE_INVITE,
            [keys.battle(battle)],
            [
                stream,
                opponent,
                ours["creator"],
                theirs["creator"],
                duration_s * 1000,
                now,
                expires,
                RECORD_MS,
            ],
            idempotent=True,  # by the battle's id, made from the request's
        )
        _, status, new = ok(reply, "battle_invite")
        announced = not new and await guard(self.redis.hexists(keys.battle(battle), "announced"))
        if status == "invited" and not announced:  # (a retry announces what a crash did not)
            await self._announce(
                opponent,
                {"kind": "battle_invite", "ts": now, "battle": battle, "opponent": stream,
                 "opponent_creator": ours["creator"], "duration_s": duration_s,
                 "expires_at": expires},
            )  # fmt: skip
            await guard(self.redis.hset(keys.battle(battle), "announced", 1))
        return protocol.BattleOk(battle=battle, status=str(status))

    async def battle_answer(
        self, battle: str, accept: bool, actor: str | None
    ) -> protocol.BattleOk:
        """The invited creator (``actor``; None for an admin) accepts, which starts the
        battle on both streams now, or declines."""
        check_ident("battle", battle)
        stored = await self._stored(battle)
        if stored is None:
            raise Refused(Code.UNKNOWN_BATTLE, f"there is no battle {battle!r}")
        now = self.clock()
        reply = await self.pipe.call(
            Script.BATTLE_ANSWER,
            [keys.battle(battle)],
            ["accept" if accept else "decline", actor or "", now, now + stored.duration_ms],
            idempotent=True,  # an answer given is found given
        )
        _, status, starts, ends, replayed = ok(reply, "battle_answer")
        if status == "declined":
            if not replayed:
                await self._announce(
                    stored.a,
                    {"kind": "battle_declined", "ts": now, "battle": battle, "opponent": stored.b},
                )
            return protocol.BattleOk(battle=battle, status="declined")
        if status == "running":
            await self._start(battle, stored, int(starts), int(ends))
        return protocol.BattleOk(
            battle=battle, status=str(status), starts_at=int(starts), ends_at=int(ends)
        )

    async def _start(self, battle: str, stored: Stored, starts: int, ends: int) -> None:
        """Both streams join (each announces ``battle_start``); the referee learns the end
        first, so that a battle started half-way still ends. A stream that cannot join
        cancels the battle."""
        await guard(self.redis.zadd(keys.BATTLES, {battle: ends}))
        rules = self.catalog.battle
        start_event = msgspec.json.encode(
            {"kind": "battle_start", "ts": starts, "battle": battle,
             "sides": stored.unscored(),
             "starts_at": starts, "ends_at": ends, "boosts": rules.boosts(starts, ends)}
        ).decode()  # fmt: skip
        joined = await asyncio.gather(
            *(
                self.pipe.call(
                    Script.BATTLE_JOIN,
                    [keys.stream(s), keys.battle_top(s), keys.history(s), keys.channel(s)],
                    [
                        battle,
                        starts,
                        ends,
                        rules.argument,
                        start_event,
                        self.settings.history_len,
                        self.clock(),
                    ],
                    idempotent=True,  # a stream in this battle already is left as it is
                )
                for s in (stored.a, stored.b)
            )
        )
        refusal = next((r for r in joined if r[0] != "ok"), None)
        if refusal is None:
            return
        await self._cancel(battle, stored, starts, ends)
        ok(refusal, "battle_join")  # raises it

    async def _cancel(self, battle: str, stored: Stored, starts: int, ends: int) -> None:
        """A battle a stream could not join (or, for the referee, never joined): the
        stream that joined announced the start, so it announces the end, cancelled; no
        result is recorded."""
        cancelled = msgspec.json.encode(
            {"kind": "battle_end", "ts": self.clock(), "battle": battle,
             "sides": stored.unscored(),
             "winner": None, "starts_at": starts, "ends_at": ends, "cancelled": True}
        ).decode()  # fmt: skip
        await asyncio.gather(*(self._leave(s, battle, cancelled) for s in (stored.a, stored.b)))
        await self.pipe.call(
            Script.BATTLE_ANSWER,
            [keys.battle(battle)],
            ["cancel", "", self.clock(), 0],
            idempotent=True,
        )
        await guard(self.redis.zrem(keys.BATTLES, battle))

    async def battle_state(self, battle: str) -> protocol.BattleState | None:
        """A running battle as events and snapshots show it; None once it is over."""
        stored = await self._stored(battle)
        if stored is None or stored.status != "running":
            return None
        a, b = await self._sides(battle, stored)
        if a is None or b is None:  # being ended right now: its battle_end is on its way
            return None
        return protocol.BattleState(
            battle=battle,
            sides=[a, b],
            starts_at=stored.start_ms,
            ends_at=stored.end_ms,
            boosts=self.catalog.battle.boosts(stored.start_ms, stored.end_ms),
        )

    async def end_battles(self, *, grace_ms: int) -> int:
        """The referee: end every battle whose end passed ``grace_ms`` ago (its result in
        the ledger, ``battle_end`` on both streams); how many."""
        now = self.clock()
        due = await guard(
            self.redis.zrangebyscore(keys.BATTLES, "-inf", now - grace_ms, start=0, num=32)
        )
        for battle in due:
            try:
                await self._end(str(battle))
            except Exception:  # one battle that fails must not keep the others running
                log.exception("battle not ended; the next look tries again", battle=str(battle))
        return len(due)

    async def _end(self, battle: str) -> None:
        stored = await self._stored(battle)
        if stored is not None and stored.status in ("running", "ended"):
            raw = stored.result
            if stored.status == "running":
                a, b = await self._sides(battle, stored)
                if a is None or b is None:  # a stream never joined (its accept died half-way)
                    await self._cancel(battle, stored, stored.start_ms, stored.end_ms)
                    return
                raw = msgspec.json.encode(_result_of(battle, stored, [a, b])).decode()
                reply = await self.pipe.call(
                    Script.BATTLE_CLOSE,
                    [keys.battle(battle)],
                    [raw],
                    idempotent=True,  # a second run returns the first result
                    shard=(keys.ledger,),
                )
                raw = str(ok(reply, "battle_close")[1])
            result = _result.decode(raw)
            event = msgspec.json.encode(
                {"kind": "battle_end", "ts": self.clock(), "battle": battle,
                 "sides": [BattleSide(s, c, score, top) for s, c, score, top in zip(
                     result.streams, result.creators, result.scores, result.top, strict=True)],
                 "winner": result.winner, "starts_at": result.starts_at,
                 "ends_at": result.ends_at}
            ).decode()  # fmt: skip
            await asyncio.gather(*(self._leave(s, battle, event) for s in result.streams))
            log.info("battle ended", battle=battle, scores=result.scores, winner=result.winner)
        elif stored is not None:  # cancelled or never started: free the streams quietly
            await asyncio.gather(*(self._leave(s, battle, "") for s in (stored.a, stored.b)))
        await guard(self.redis.zrem(keys.BATTLES, battle))

    async def _leave(self, stream: str, battle: str, event: str) -> None:
        reply = await self.pipe.call(
            Script.BATTLE_LEAVE,
            [
                keys.stream(stream),
                keys.history(stream),
                keys.channel(stream),
                keys.battle_top(stream),
            ],
            [battle, event, self.settings.history_len],
            idempotent=True,  # leaves only a stream still in this battle
        )
        ok(reply, "battle_leave")

    async def _announce(self, stream: str, event: dict[str, Any]) -> None:
        reply = await self.pipe.call(
            Script.ANNOUNCE,
            [keys.history(stream), keys.channel(stream)],
            [msgspec.json.encode(event).decode(), self.settings.history_len],
            idempotent=False,  # each run announces again
        )
        ok(reply, "announce")

    async def _side(self, stream: str) -> dict[str, str]:
        raw = await guard(
            self.redis.hmget(keys.stream(stream), ["creator", "status", "battle", "b_end"])
        )
        creator, status, battle, ends = cast(list[str | None], raw)
        if creator is None:
            raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
        side = {"stream": stream, "creator": creator, "status": status or ""}
        if battle is not None:
            side["battle"], side["b_end"] = battle, ends or "0"
        return side

    async def _stored(self, battle: str) -> Stored | None:
        raw = cast(dict[str, str], await guard(self.redis.hgetall(keys.battle(battle))))
        if not raw:
            return None
        return msgspec.convert(raw, Stored, strict=False)

    async def _sides(
        self, battle: str, stored: Stored
    ) -> tuple[BattleSide | None, BattleSide | None]:
        """Both sides, each from its stream's slot (:meth:`_score`)."""
        a, b = await asyncio.gather(
            self._score(stored.a, stored.creator_a, battle),
            self._score(stored.b, stored.creator_b, battle),
        )
        return a, b

    async def _score(self, stream: str, creator: str, battle: str) -> BattleSide | None:
        """One side: its score and top contributors with their levels (the stream's slot,
        read at one instant); None when the stream is not in the battle (it never joined,
        or the referee let it go)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hmget(keys.stream(stream), ["battle", "b_score"])
            pipe.zrevrange(keys.battle_top(stream), 0, TOP - 1, withscores=True)
            (current, score), top = await guard(pipe.execute())
        if current != battle:
            return None
        levels = await self.levels([str(user) for user, _ in top])
        return BattleSide(
            stream=stream,
            creator=creator,
            score=int(score or 0),
            top=[Contributor(str(u), int(p), levels.get(str(u), 0)) for u, p in top],
        )


def _busy(side: dict[str, str], now: int) -> bool:
    return "battle" in side and int(side["b_end"]) + BUSY_MS > now


def _result_of(battle: str, stored: Stored, sides: list[BattleSide]) -> Result:
    a, b = sides
    winner = a.stream if a.score > b.score else b.stream if b.score > a.score else None
    return Result(
        ts=stored.end_ms,
        id=battle,
        user=stored.creator_a,
        streams=[a.stream, b.stream],
        creators=[a.creator, b.creator],
        scores=[a.score, b.score],
        winner=winner,
        top=[a.top, b.top],
        starts_at=stored.start_ms,
        ends_at=stored.end_ms,
    )
