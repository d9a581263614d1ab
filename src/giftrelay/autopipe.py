"""Automatic pipelining: concurrent script calls share round trips to Redis.

Callers await one call each; calls made while earlier ones are on the wire are
sent together as one pipeline (no MULTI: each script is atomic on its own). With
many concurrent callers this costs one round trip per batch instead of per call,
and a lone caller waits no longer than it would alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import structlog
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, NoScriptError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay.errors import Code, Refused, Unavailable
from giftrelay.scripts import SCRIPTS, Script

log = structlog.get_logger(__name__)

_Call = tuple[Script, list[str], list[str | int], "asyncio.Future[Any]"]


class AutoPipeline:
    """Batches EVALSHA calls into pipelines, at most ``max_inflight`` on the wire at once."""

    def __init__(self, redis: Redis, *, max_batch: int = 256, max_inflight: int = 4) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._pending: list[_Call] = []
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """Run one script; returns its reply. Raises :class:`Unavailable` if Redis is down."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return await future

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
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
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

        A broken connection is retried once on a fresh one, as the client's own
        retry would (every money script is idempotent by its id).
        """
        packed = b"".join(
            # hiredis's stub types the tuple as one item; it takes any number.
            hiredis.pack_command(("EVALSHA", SCRIPTS.sha[script], len(keys), *keys, *args))  # type: ignore[arg-type]
            for script, keys, args, _ in batch
        )
        for attempt in range(2):
            try:
                return await self._round(packed, len(batch))
            except RedisConnectionError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _round(self, packed: bytes, count: int) -> list[Any]:
        pool = self.redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed)
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # one script's error: the others stand
                    replies.append(exc)
            return replies
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


def _resolve(calls: list[_Call], replies: list[Any]) -> None:
    for (script, *_, future), reply in zip(calls, replies, strict=True):
        if future.done():
            continue
        if isinstance(reply, BusyLoadingError | ReadOnlyError) or _refused_for_now(reply):
            # Loading its AOF after a restart, a replica after a failover, or a primary
            # short of replicas (min-replicas-to-write): nothing ran.
            future.set_exception(Unavailable())
        elif isinstance(reply, Exception):
            log.error("money script failed", script=script.value, error=str(reply))
            future.set_exception(Refused(Code.INTERNAL))
        else:
            future.set_result(reply)


def _refused_for_now(reply: Any) -> bool:
    """Redis refused to run anything for a passing reason (NOREPLICAS, MASTERDOWN)."""
    return isinstance(reply, ResponseError) and str(reply).startswith(("NOREPLICAS", "MASTERDOWN"))


def _fail(calls: list[_Call], exc: BaseException) -> None:
    """Redis is unreachable. A call that was sent may or may not have run; its
    retry with the same id is safe either way (idempotency returns the first reply)."""
    log.warning("redis unavailable", error=str(exc), calls=len(calls))
    for *_, future in calls:
        if not future.done():
            future.set_exception(
                Unavailable("Redis is unavailable; retry with the same id to learn the outcome")
            )
