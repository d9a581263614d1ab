"""``giftrelay serve`` serves the HTTP API: the banner (``make run``) names it, and with
several workers every one of them serves it on the one port (SO_REUSEPORT)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx

from giftrelay.auth import Role
from giftrelay.embedded import RedisServer, free_port

from .relay_helpers import SECRET, token


async def start(tmp_path: Path, *args: str, **env: str) -> tuple[asyncio.subprocess.Process, str]:
    """serve, until its banner is printed; returns it and the banner."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("GIFTRELAY_REDIS_URL",
                                                                   "GIFTRELAY_SECRET")}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "giftrelay", "serve", "--port", str(free_port()), *args,
        env={**inherited, "GIFTRELAY_VAR_DIR": str(tmp_path / "var"),
             "GIFTRELAY_LOG_FORMAT": "json", **env},
        stdout=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = ""
    async with asyncio.timeout(60):
        while "press Ctrl+C" not in banner:
            line = (await proc.stdout.readline()).decode()
            assert line, f"serve exited before listening: {banner}"
            banner += line
    return proc, banner


async def stop(proc: asyncio.subprocess.Process) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0


async def test_make_run_prints_the_api_url_and_the_api_answers(tmp_path: Path) -> None:
    port = free_port()
    proc, banner = await start(tmp_path, GIFTRELAY_API_PORT=str(port))  # the embedded default
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        assert f"  api:       {url}  (admin token; docs: {url}/openapi.json)" in banner
        admin = re.search(r"admin   admin: (\S+)", banner)
        assert admin is not None
        headers = {"Authorization": f"Bearer {admin.group(1)}"}
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            body = {"user": "api_user", "coins": 42, "receipt": "receipt-serve-1"}
            reply = await client.post("/topups", json=body)
            assert reply.json() == {**body, "replayed": False}
            assert (await client.get("/wallets/api_user")).json()["coins"] == 42
            document = await client.get("/openapi.json", headers={"Authorization": ""})
            assert document.status_code == 200
    finally:
        await stop(proc)


async def test_every_worker_serves_the_api_on_one_port(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    proc, banner = await start(
        tmp_path, "--workers", "2", "--redis-url", redis_server.url, "--no-ledger",
        GIFTRELAY_SECRET=SECRET, GIFTRELAY_API_PORT=str(port),
    )  # fmt: skip
    try:
        assert f"http://127.0.0.1:{port}/api/v1" in banner
        headers = {"Authorization": f"Bearer {token('backend', Role.ADMIN)}"}
        url = f"http://127.0.0.1:{port}/api/v1"
        for n in range(20):  # a connection each: the kernel spreads them over the workers
            async with httpx.AsyncClient(base_url=url, headers=headers) as client:
                body = {"user": "multi", "coins": 1, "receipt": f"receipt-multi-{n:04d}"}
                assert (await client.post("/topups", json=body)).status_code == 200
        async with httpx.AsyncClient(base_url=url, headers=headers) as client:
            assert (await client.get("/wallets/multi")).json()["coins"] == 20
    finally:
        await stop(proc)


async def test_a_busy_api_port_names_the_setting(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "giftrelay", "serve", "--port", str(free_port()),
            env={**os.environ, "GIFTRELAY_VAR_DIR": str(tmp_path / "var"),
                 "GIFTRELAY_API_PORT": str(port)},
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            _, stderr = await proc.communicate()
    assert proc.returncode == 2
    assert f"GIFTRELAY_API_PORT: port {port} on 127.0.0.1 is already in use" in stderr.decode()
