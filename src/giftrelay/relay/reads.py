"""What the fan-out reads from Redis about a stream, each in one MULTI, so at one
instant of the stream: a join's history, snapshot and marker, and the gap a room
missed while its channel was down.

On a Redis Cluster every key a MULTI names is in the stream's slot (and the marker's
``SPUBLISH`` on the stream's channel, in the same slot), so redis-py's cluster pipeline
runs it as one MULTI/EXEC on the slot's primary, following ``MOVED`` and ``ASK``."""

from __future__ import annotations

import asyncio
from typing import cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import (
    AskError,
    ClusterError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay.money import keys
from giftrelay.money.api import Money
from giftrelay.relay.room import (
    ZERO,
    Gap,
    Room,
    as_text,
    reaches_back,
    snapshot_of,
    viewers_total,
    with_offset,
)
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable

UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    # On a Redis Cluster: the slot's primary is down or moving, past the client's retries.
    ClusterError,
    AskError,  # and MovedError
    TryAgainError,
    RedisClusterException,
)
"""What makes a read ``unavailable``: Redis did not answer it, so retrying may work."""

FAILURES = (RedisError, RedisClusterException, OSError)
"""Every way a read can fail (RedisClusterException is none of redis-py's RedisError)."""


async def stream_exists(redis: Redis, stream: str) -> bool:
    try:
        return bool(await redis.exists(keys.stream(stream)))
    except UNREACHABLE as exc:
        raise Unavailable() from exc


async def read_join(
    money: Money,
    room: Room,
    token: str,
    since: str | None,
    ref: str | None,
    issued_ms: int | None,
    history_limit: int,
) -> tuple[protocol.Joined, str]:
    """The reply (history after ``since``, snapshot) and its marker's offset.

    One MULTI reads the latest offset, the history and the snapshot, and
    publishes the marker: all at one instant of the stream.
    """
    stream, redis = room.stream, money.redis
    hist = keys.history(stream)
    marker = msgspec.json.encode({"kind": "sync", "token": token})
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.xrevrange(hist, "+", "-", count=1)
            pipe.spublish(room.channel, marker)
            pipe.hgetall(keys.stream(stream))
            pipe.zrevrange(keys.top(stream), 0, 9, withscores=True)
            pipe.hgetall(keys.viewers(stream))
            if since is not None:
                pipe.xrange(hist, f"({since}", "+", count=history_limit)
                pipe.xinfo_stream(hist)
            replies = await pipe.execute(raise_on_error=False)
    except UNREACHABLE as exc:
        raise Unavailable() from exc
    latest_raw, _, info_raw, top_raw, viewers_raw = replies[:5]
    for reply in replies[:5]:
        if isinstance(reply, Exception):
            raise Refused(Code.INTERNAL) from reply
    if not info_raw:
        raise Refused(Code.UNKNOWN_STREAM, f"there is no stream {stream!r}")
    if issued_ms is not None and issued_ms < int(info_raw.get("overlay_epoch", 0)):
        raise Refused(Code.UNAUTHORIZED, "this overlay token was revoked")
    latest = latest_raw[0][0] if latest_raw else "0-0"
    info = Money.parse_stream(stream, info_raw)
    # Read after the MULTI, live as viewers are: the gifters' levels (their wallets), and
    # a battle's both sides (the other stream is on another slot).
    try:
        levels = await money.levels([str(user) for user, _ in top_raw])
        battle = await money.battle_state(info.battle) if info.battle else None
    except UNREACHABLE as exc:
        raise Unavailable() from exc
    room.battle = battle.battle if battle is not None else room.battle
    snapshot = snapshot_of(info, top_raw, viewers_total(viewers_raw), levels, battle)
    missed: list[msgspec.Raw] = []
    recovered = True
    if since is not None:
        entries, xinfo = replies[5], replies[6]
        if isinstance(entries, Exception):
            raise Refused(Code.BAD_REQUEST, f"since: {entries}") from entries
        recovered = reaches_back(since, latest, xinfo) and len(entries) < history_limit
        if recovered:
            missed = [with_offset(entry_id, fields) for entry_id, fields in entries]
    reply = protocol.Joined(
        ref=ref,
        stream=stream,
        offset=latest,
        recovered=recovered,
        missed=missed,
        snapshot=snapshot,
        ts=money.clock(),
    )
    return reply, latest


async def read_gap(redis: Redis, room: Room, history_limit: int) -> Gap:
    """The history after the room's last offset, and the stream's revocation time.

    Read after the resubscription was confirmed: a later revocation is published
    to this worker, an earlier one is stored, so none falls in between.
    """
    hist = keys.history(room.stream)
    async with asyncio.timeout(2.0), redis.pipeline(transaction=True) as pipe:
        pipe.xrange(hist, f"({room.last_offset}", "+", count=history_limit)
        pipe.xinfo_stream(hist)
        pipe.hget(keys.stream(room.stream), "overlay_epoch")
        entries, xinfo, epoch = await pipe.execute(raise_on_error=False)
    for reply in (entries, epoch):
        if isinstance(reply, Exception):
            raise reply
    revoked = int(epoch) if isinstance(epoch, str) and epoch.isdigit() else 0
    last = as_text(xinfo["last-generated-id"]) if isinstance(xinfo, dict) else "0-0"
    if not reaches_back(room.last_offset, last, xinfo) and room.last != ZERO:
        return Gap(None, revoked)
    return Gap(cast(list[tuple[str, dict[str, str]]], entries), revoked)
