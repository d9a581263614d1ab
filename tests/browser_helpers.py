"""A real headless browser (Debian's chromium through Playwright) and a relay on a chosen port.

Playwright never downloads a browser here: it drives the system's ``chromium``.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

from giftrelay.config import Settings
from giftrelay.money import catalog
from giftrelay.money.api import Money
from giftrelay.redis_client import connect as redis_connect
from giftrelay.relay.server import Relay

from .relay_helpers import SECRET, RelayHandle

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "overlays"

# What a page that must reconnect or is refused logs by design: the browser reports a
# refused WebSocket handshake, and /healthz while the relay is down, as console errors.
BACKDROP = "linear-gradient(135deg, #1d2b4a, #5a3d6e)"
EXPECTED_WHEN_REFUSED = re.compile(r"WebSocket connection to .* failed|Failed to load resource")


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


class Watched:
    """A page with every JavaScript error and console error it produced."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def unexpected_errors(self, allowed: re.Pattern[str] | None = None) -> list[str]:
        return [e for e in self.errors if allowed is None or not allowed.search(e)]

    async def showcase(self, name: str) -> bytes:
        """A screenshot over a dark backdrop, as the widget looks on a stream (for the docs)."""
        await self.page.add_style_tag(content=f"html {{ background: {BACKDROP} !important; }}")
        return await self.screenshot(name)

    async def screenshot(self, name: str, **kwargs: Any) -> bytes:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        return await self.page.screenshot(path=ARTIFACTS / f"{name}.png", **kwargs)


async def open_page(
    browser: Browser, url: str, size: tuple[int, int] = (640, 240), **options: Any
) -> Watched:
    """A new page at ``url``; ``options`` go to ``new_page`` (e.g. ``reduced_motion="reduce"``)."""
    page = await browser.new_page(viewport={"width": size[0], "height": size[1]}, **options)
    page.set_default_timeout(10_000)
    watched = Watched(page)
    try:
        await page.goto(url)
    except Error:
        await page.close()
        raise
    return watched


@contextlib.asynccontextmanager
async def relay_on(url: str, port: int, **overrides: Any) -> AsyncIterator[RelayHandle]:
    """A relay worker on ``port`` (so a test can stop it and start another in its place)."""
    settings = Settings.load({}, secret=SECRET, redis_url=url, **overrides)
    redis = redis_connect(url, timeout=settings.redis_timeout)
    core = Money(redis, settings, catalog.load())
    await core.start()
    relay = Relay(settings, SECRET, url, core, core.catalog)
    try:
        await relay.start("127.0.0.1", port)
        yield RelayHandle(relay=relay, money=core, port=port)
    finally:
        await relay.shutdown()
        await core.aclose()
        await redis.aclose()


def corner_alpha(png: bytes) -> int:
    """The alpha of a PNG screenshot's top-left pixel (8-bit RGBA, as Chromium writes).

    The first pixel of the first row is stored as is under every PNG filter (its
    neighbours count as zero), so no full decoder is needed.
    """
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            data += body
        pos += 12 + length
    bit_depth, color_type = header[8], header[9]
    assert (bit_depth, color_type) == (8, 6), "expected 8-bit RGBA"
    first_row = zlib.decompressobj().decompress(data, 16)
    return first_row[1 + 3]  # filter byte, then R, G, B, A
