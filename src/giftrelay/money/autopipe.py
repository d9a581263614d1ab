"""Automatic pipelining: concurrent script calls share round trips to Redis.

Callers await one call each; calls made while earlier ones are on the wire are
sent together as one pipeline (no MULTI: each script is atomic on its own). With
many concurrent callers this costs one round trip per batch instead of per call,
and a lone caller waits no longer than it would alone.

Each call says whether it is idempotent: whether running it twice has the effect of
running it once, whatever ran in between (gifts, top-ups and payouts, by their id).
When the connection breaks with replies outstanding, only those are sent again; the
others may have run, so they fail as ``unavailable``, which tells the caller exactly
that, and are never run a second time behind its back.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import hiredis
import structlog
from redis._parsers.hiredis import NOT_ENOUGH_DATA  # the reader's own sentinel
from redis.asyncio import Redis
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay.money.scripts import SCRIPTS, Script
from giftrelay.wire.errors import Code, Refused, Unavailable

log = structlog.get_logger(__name__)


class _Call(NamedTuple):
    script: Script
    keys: list[str]
    args: list[str | int]
    future: asyncio.Future[Any]
    idempotent: bool
    """Safe to send again when it may already have run (see :meth:`AutoPipeline.call`)."""
    asking: bool = False
    """Preceded by ``ASKING``: on a Redis Cluster, for a slot this node is importing."""


class _Broken(Exception):
    """A round trip failed after the replies to the first ``len(replies)`` calls were read.

    ``sent`` is False when nothing was written (no connection could be had): then none
    of the calls ran.
    """

    def __init__(self, replies: list[Any], cause: Exception, *, sent: bool) -> None:
        super().__init__(str(cause))
        self.replies = replies
        self.cause = cause
        self.sent = sent


class _Lost(Exception):
    """In a call's reply slot: its connection broke and it was not sent again."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class AutoPipeline:
    """Batches EVALSHA calls into pipelines, at most ``max_inflight`` on the wire at once."""

    def __init__(
        self,
        redis: Redis,
        *,
        max_batch: int = 256,
        max_inflight: int = 4,
        ack_replicas: int = 0,
        ack_timeout_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.ack_replicas = ack_replicas
        """Replicas that must hold a money movement before its reply is given (``WAIT``)."""
        self.ack_timeout_ms = ack_timeout_ms
        self._pending: list[_Call] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(
        self, script: Script, keys: list[str], args: list[str | int], *, idempotent: bool
    ) -> Any:
        """Run one script; returns its reply. Raises :class:`Unavailable` if Redis is down.

        ``idempotent``: running the script again, even after other calls ran in between,
        changes nothing more and gives the first run's reply (true of the scripts that
        dedupe on a request id). Only such a call is sent again when the connection
        breaks before its reply came; any other fails as ``unavailable`` (it may or may
        not have run), as it would had Redis been unreachable.
        """
        return await self.submit(script, keys, args, idempotent=idempotent)

    def submit(
        self,
        script: Script,
        keys: list[str],
        args: list[str | int],
        *,
        idempotent: bool,
        asking: bool = False,
    ) -> asyncio.Future[Any]:
        """:meth:`call` without a coroutine: the future of its reply, for callers that
        would rather be called back than keep a task per call (the relay's gifts).
        ``asking``: send ``ASKING`` first (a cluster slot this node is importing)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append(_Call(script, keys, args, future, idempotent, asking))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        while self._pending and self._inflight < self.max_inflight:
            batch = self._pending[: self.max_batch]
            del self._pending[: len(batch)]
            self._inflight += 1
            task = asyncio.create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight -= 1
        if self._pending and not self._scheduled:
            self._flush()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            replies = await self._round_trip(batch)
            if replies is None:
                return
            missing = {i for i, r in enumerate(replies) if isinstance(r, NoScriptError)}
            ran = [i for i in range(len(batch)) if i not in missing]
            _resolve([batch[i] for i in ran], [replies[i] for i in ran])
            if missing:
                # Redis restarted and lost its script cache: none of these ran.
                again = [batch[i] for i in sorted(missing)]
                try:
                    await SCRIPTS.load(self.redis)
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    _fail(again, exc)
                    return
                retried = await self._round_trip(again)
                if retried is not None:
                    _resolve(again, retried)
        except asyncio.CancelledError:
            for call in batch:
                call.future.cancel()
            raise
        except Exception as exc:
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
            raise

    async def _round_trip(self, batch: list[_Call]) -> list[Any] | None:
        """The replies, or None having failed every call because Redis is unreachable."""
        try:
            return await self._execute(batch)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            _fail(batch, exc)
            return None

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        """One round trip: the batch packed by hiredis (in C) and written at once.

        Returns one reply per call. When the connection breaks, the replies read so far
        stand, and of the calls still waiting the idempotent ones are sent once more on
        a fresh connection, as the client's own retry would (a pooled connection may
        have died with a Redis restart). The others may have run: they are not sent
        again, and their slot holds a :class:`_Lost`, answered as Redis being
        unavailable. Raises when no call got a reply at all.
        """
        try:
            return await self._round(batch)
        except _Broken as broken:
            first = broken
        read, cause = first.replies, first.cause
        waiting = batch[len(read) :]
        again: list[int] = []  # positions in ``waiting``
        if isinstance(cause, RedisConnectionError):  # never a time-out: that keeps the bound
            again = [i for i, c in enumerate(waiting) if c.idempotent or not first.sent]
        answers: dict[int, Any] = {}
        if again:
            try:
                got = await self._round([waiting[i] for i in again])
            except _Broken as second:
                got, cause = second.replies, second.cause
            answers = dict(zip(again, got, strict=False))
        if not read and not answers:
            raise cause
        return read + [answers[i] if i in answers else _Lost(cause) for i in range(len(waiting))]

    async def _round(self, batch: list[_Call]) -> list[Any]:
        """Send the calls, read one reply each; :class:`_Broken` when the connection fails."""
        packed = b"".join((_ASKING if c.asking else b"") + _evalsha(c) for c in batch)
        asked = sum(c.asking for c in batch)
        durable = self.ack_replicas > 0 and any(c.script in DURABLE for c in batch)
        if durable:  # one WAIT a pipeline, not one a movement
            packed += hiredis.pack_command(("WAIT", self.ack_replicas, self.ack_timeout_ms))  # type: ignore[arg-type]
        pool = self.redis.connection_pool
        try:
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise _Broken([], exc, sent=False) from exc
        replies: list[Any] = []
        try:
            await conn.send_packed_command(packed)
            reader = getattr(conn._parser, "_reader", None)
            expected = len(batch) + durable + asked
            if type(reader) is hiredis.Reader:
                await _read_all(conn, reader, expected, replies)
            else:  # pragma: no cover - another parser than hiredis: one reply at a time
                for _ in range(expected):
                    try:
                        replies.append(await conn.read_response())
                    except ResponseError as exc:  # one script's error: the others stand
                        replies.append(exc)
            if asked:
                replies = _without_asking(batch, replies)
            if durable:
                held_by = replies.pop()
                if not isinstance(held_by, int) or held_by < self.ack_replicas:
                    _not_held(batch, replies, held_by, self.ack_replicas)
            return replies
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            await conn.disconnect()
            if asked:  # the replies read so far, without the ASKINGs' (a partial read too)
                replies = _without_asking(batch, replies)
            if durable:  # no WAIT answer: no movement read so far is known to be held
                _not_held(batch, replies, None, self.ack_replicas)
            raise _Broken(replies, exc, sent=True) from exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def aclose(self) -> None:
        """Wait until every call made so far has its reply."""
        while self._pending or self._tasks:
            if self._pending:
                self._flush()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0)


def _evalsha(c: _Call) -> bytes:
    # hiredis's stub types the tuple as one item; it takes any number.
    command = ("EVALSHA", SCRIPTS.sha[c.script], len(c.keys), *c.keys, *c.args)
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]
    return packed


_ASKING: bytes = hiredis.pack_command(("ASKING",))


def _without_asking(batch: list[_Call], replies: list[Any]) -> list[Any]:
    """The replies with those of the ``ASKING`` commands taken out, one per call in
    order; of a read broken part-way, the calls' replies that came (an ASKING's ``OK``
    whose call's reply did not come is dropped)."""
    out: list[Any] = []
    i = 0
    for call in batch:
        if call.asking:
            i += 1
        if i >= len(replies):
            return out
        out.append(replies[i])
        i += 1
    out.extend(replies[i:])  # the WAIT's, if any
    return out


async def _read_all(conn: Any, reader: hiredis.Reader, n: int, replies: list[Any]) -> None:
    """Read ``n`` replies into ``replies`` within one socket time-out for them all.

    redis-py reads each reply in a coroutine with a timer of its own; a batch of
    replies is usually in one read already. This reads with the connection's own hiredis
    reader (so an error reply arrives as its redis-py exception, kept in its slot), and
    raises redis-py's errors when the socket times out or breaks.
    """
    parser = conn._parser
    try:
        async with asyncio.timeout(conn.socket_timeout):
            while len(replies) < n:
                reply = reader.gets()
                if reply is NOT_ENOUGH_DATA:
                    await parser.read_from_socket()
                    continue
                replies.append(reply)
    except TimeoutError as exc:
        raise RedisTimeoutError("Timeout reading from Redis") from exc


DURABLE = frozenset(
    {
        Script.GIFT,
        Script.GIFT_DEBIT,
        Script.GIFT_APPLY,
        Script.COLLECT,
        Script.COLLECT_CREDIT,
        Script.TOPUP,
        Script.PAYOUT,
        Script.CHARGEBACK,
    }
)
"""The scripts whose replies wait for ``ack_replicas`` (GIFTRELAY_ACK_REPLICAS)."""


class _NotHeld(Exception):
    """In a reply slot: the movement ran, but too few replicas confirmed it in time."""


def _not_held(batch: list[_Call], replies: list[Any], held_by: object, wanted: int) -> None:
    """Turn the replies of the batch's movements into :class:`_NotHeld`: the primary may
    lose them in a failover, so they are not acknowledged (refusals moved nothing)."""
    for i, (call, reply) in enumerate(zip(batch, replies, strict=False)):
        if call.script in DURABLE and isinstance(reply, list) and reply and reply[0] == "ok":
            replies[i] = _NotHeld(f"{held_by} of {wanted} replicas confirmed it")


def _resolve(calls: list[_Call], replies: list[Any]) -> None:
    lost = [(call, r) for call, r in zip(calls, replies, strict=True) if isinstance(r, _Lost)]
    if lost:
        _fail([call for call, _ in lost], lost[0][1].cause)
    for call, reply in zip(calls, replies, strict=True):
        script, future = call.script, call.future
        if future.done():
            continue
        if isinstance(reply, _REDIRECTS) or _non_local(reply):
            future.set_exception(Misrouted(reply))  # nothing ran: the cluster router resends
        elif isinstance(reply, _NotHeld):
            log.warning("movement not confirmed by the replicas", detail=str(reply))
            future.set_exception(Unavailable(_NOT_HELD))
        elif isinstance(reply, BusyLoadingError | ReadOnlyError) or _refused_for_now(reply):
            # Loading its AOF after a restart, a replica after a failover, or a primary
            # short of replicas (min-replicas-to-write): nothing ran.
            future.set_exception(Unavailable())
        elif isinstance(reply, Exception):
            log.error("money script failed", script=script.value, error=str(reply))
            future.set_exception(Refused(Code.INTERNAL))
        else:
            future.set_result(reply)


class Misrouted(Exception):
    """On a Redis Cluster: the call reached a node that does not hold its slot (``MOVED``,
    ``ASK``), or a slot in migration or a cluster without quorum refused it for now
    (``TRYAGAIN``, ``CLUSTERDOWN``), or its shard key is no longer this node's. Nothing
    ran; the router (:mod:`giftrelay.money.shards`) sends it again where it belongs."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)


def _non_local(reply: Any) -> bool:
    """A script touched a shard key its node does not hold (before any write)."""
    return isinstance(reply, ResponseError) and "non local key" in str(reply)


def _refused_for_now(reply: Any) -> bool:
    """Redis refused to run anything for a passing reason (NOREPLICAS, MASTERDOWN)."""
    return isinstance(reply, ResponseError) and str(reply).startswith(("NOREPLICAS", "MASTERDOWN"))


def _fail(calls: list[_Call], exc: BaseException) -> None:
    """Redis is unreachable, or the connection broke before these calls' replies.

    A call that was sent may or may not have run. An idempotent one's retry with the
    same id is safe either way (it returns the first reply); any other, the caller
    must look before it does it again (``unavailable`` says exactly that).
    """
    log.warning("redis unavailable", error=str(exc), calls=len(calls))
    for call in calls:
        if not call.future.done():
            call.future.set_exception(Unavailable(_IDEMPOTENT if call.idempotent else _MAYBE))


_IDEMPOTENT = "Redis is unavailable; retry with the same id to learn the outcome"
_NOT_HELD = (
    "the movement was not confirmed by enough replicas in time (GIFTRELAY_ACK_REPLICAS);"
    " it may or may not survive a failover: retry with the same id"
)
_MAYBE = "Redis is unavailable; this may or may not have taken effect: check, then retry"
