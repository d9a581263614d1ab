"""One signed POST of one event (httpx): 2xx is delivered, anything else a failure."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from giftrelay import __version__
from giftrelay.webhooks.events import Pending
from giftrelay.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, header

USER_AGENT = f"giftrelay-webhooks/{__version__}"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Sender:
    """POSTs events to ``url``, each signed at the time of its attempt."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float,
        clock: Callable[[], int] = wall_clock_ms,
        concurrency: int = 16,
    ) -> None:
        self.url = url
        self.secret = secret
        self.clock = clock
        self.timeout = timeout
        # No redirects followed: a 3xx is a failure, like any answer but 2xx.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
            trust_env=False,
        )

    async def send(self, event: Pending) -> str | None:
        """Deliver ``event`` once: None when the receiver answered 2xx, else why not."""
        body = event.body.encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event.id,
            SIGNATURE_HEADER: header(self.secret, self.clock() // 1000, body),
        }
        try:
            response = await self.client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return f"timeout: no answer in time ({type(exc).__name__})"
        except (httpx.HTTPError, OSError) as exc:  # refused, reset, DNS, TLS: no answer
            return f"no answer: {type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def aclose(self) -> None:
        await self.client.aclose()


def outcome_of(error: str | None) -> str:
    """The metric label of an attempt's result."""
    if error is None:
        return "delivered"
    if error.startswith("timeout"):
        return "timeout"
    if error.startswith("HTTP "):
        return "http_error"
    return "no_answer"
