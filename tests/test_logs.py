"""Logs: one format for every line of a process, and each connection's lines carry
its id and user."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from giftrelay.embedded import RedisServer

from .relay_helpers import Client, running_relay, token

STDLIB_LINE = """
import logging
from giftrelay import logs
logs.configure("json", "info")
logging.getLogger("redis.asyncio.connection").warning("a library speaks: %s", "lost")
logging.getLogger("websockets.server").info("connection open")
"""


def test_the_standard_librarys_loggers_go_through_structlog() -> None:
    done = subprocess.run(
        [sys.executable, "-c", STDLIB_LINE], capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1, done.stderr  # websockets' INFO is below its WARNING floor
    [line] = lines
    assert line["event"] == "a library speaks: lost"
    assert line["level"] == "warning"
    assert line["logger"] == "redis.asyncio.connection"
    assert "timestamp" in line


async def test_a_connections_lines_carry_its_id_and_user(redis_server: RedisServer) -> None:
    from structlog import contextvars
    from structlog.testing import capture_logs

    async with running_relay(redis_server.url) as h:
        with capture_logs(processors=[contextvars.merge_contextvars]) as logged:
            client = await Client.open(h.ws, token("alice"))
            await client.request(type="ping")
            await client.close()
            async with asyncio.timeout(10):
                while h.relay.sessions:  # noqa: ASYNC110 - the server's task logs, then leaves
                    await asyncio.sleep(0.01)
    [closed] = [e for e in logged if e["event"] == "connection closed"]
    assert closed["user"] == "alice"
    assert len(closed["conn"]) == 8
