"""The HTTP API started for real (uvicorn on a free port) over the test's Redis and store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from giftrelay import auth
from giftrelay.api.server import serving
from giftrelay.config import Settings
from giftrelay.embedded import free_port
from giftrelay.ledger.reconcile import reconcile
from giftrelay.ledger.store import Store
from giftrelay.money import catalog
from giftrelay.money.api import Money

from .conftest import Clock
from .ledger_helpers import drain, quick_consumer

SECRET = "s" * 40


@dataclass
class Api:
    """A running API, an admin client, the money core behind it and its ledger store."""

    url: str
    client: httpx.AsyncClient
    money: Money
    redis: Redis
    store: Store
    settings: Settings

    async def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return await self.client.post(self.url + path, json=body, **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(self.url + path, **kw)

    async def agree(self) -> None:
        """The ledger consumer has written everything, and reconcile finds no difference."""
        await drain(quick_consumer(self.redis, self.store))
        report = await reconcile(self.redis, self.store, wait=5)
        assert report.lines() == []


def token(role: auth.Role, sub: str = "backend") -> str:
    return auth.mint(SECRET, sub, role, ttl=600)


@contextlib.asynccontextmanager
async def running_api(
    redis: Redis, store: Store, clock: Clock, tmp_path: Path, **env: str
) -> AsyncIterator[Api]:
    settings = Settings.load(
        {
            "GIFTRELAY_API_PORT": str(free_port()),
            "GIFTRELAY_LEDGER_URL": store.url,
            "GIFTRELAY_PAYOUT_BATCH_DIR": str(tmp_path / "payouts"),
            **env,
        }
    )
    money = Money(redis, settings, catalog.load(), clock=clock)
    await money.start()
    headers = {"Authorization": f"Bearer {token(auth.Role.ADMIN)}"}
    try:
        async with (
            serving(settings, SECRET, money) as url,
            httpx.AsyncClient(headers=headers, timeout=10) as client,
        ):
            assert url is not None
            yield Api(url, client, money, redis, store, settings)
    finally:
        await money.aclose()
