"""Automatic pipelining: concurrent script calls share round trips to Redis.

Callers await one call each; calls made while earlier ones are on the wire are
sent together as one pipeline (no MULTI: each script is atomic on its own). With
many concurrent callers this costs one round trip per batch instead of per call,
and a lone caller waits no longer than it would alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from giftrelay.errors import Unavailable
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
            replies = await self._execute(batch)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:
                # Redis restarted and lost its script cache: nothing of these ran.
                await SCRIPTS.load(self.redis)
                retried = await self._execute([batch[i] for i in missing])
                for i, reply in zip(missing, retried, strict=True):
                    replies[i] = reply
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("redis unavailable", error=str(exc), calls=len(batch))
            for *_, future in batch:
                if not future.done():
                    future.set_exception(Unavailable())
            return
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            raise
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                pipe.execute_command("EVALSHA", SCRIPTS.sha[script], len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    async def aclose(self) -> None:
        """Wait for the batches already on the wire."""
        while self._tasks or self._pending:
            if self._pending and not self._scheduled:
                self._flush()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
