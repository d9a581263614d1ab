"""A platform backend talking to giftrelay's HTTP API (docs/api.md), with httpx.

    python examples/backend_client.py --url http://127.0.0.1:8081/api/v1 --token ADMIN_JWT

``make run`` prints the URL and an admin token. The script plays the worked example of
docs/api.md: the payment provider confirms a purchase (our top-up), later reverses it
(a chargeback), and finance reads a creator's statement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from typing import Any

import httpx


class ApiError(Exception):
    """An error reply: ``{"error": {"code", "message"}}`` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Backend:
    """The calls a platform's backend makes. Every money call is idempotent by its receipt
    (or period): on a timeout or a 503, call again with the same one."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=url.rstrip("/"), headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> Any:
        reply = await self.http.request(method, path, **kw)
        if reply.status_code >= 400:
            error = reply.json()["error"]
            raise ApiError(reply.status_code, error["code"], error["message"])
        return (
            reply.json()
            if reply.headers["content-type"].startswith("application/json")
            else reply.text
        )

    async def topup(self, user: str, coins: int, receipt: str, **package: str) -> Any:
        """Credit coins for a payment receipt (``package=..., region=...`` to name one)."""
        body = {"user": user, "coins": coins, "receipt": receipt, **package}
        return await self._call("POST", "/topups", json=body)

    async def chargeback(self, receipt: str, reason: str) -> Any:
        return await self._call("POST", "/chargebacks", json={"receipt": receipt, "reason": reason})

    async def wallet(self, user: str) -> Any:
        return await self._call("GET", f"/wallets/{user}")

    async def packages(self, region: str) -> Any:
        return await self._call("GET", "/coin-packages", params={"region": region})

    async def statement(self, creator: str, period: str, *, csv: bool = False) -> Any:
        headers = {"Accept": "text/csv"} if csv else {}
        return await self._call(
            "GET", f"/creators/{creator}/statement", params={"period": period}, headers=headers
        )

    async def verify(self, creator: str, reference: str) -> Any:
        body = {"verified": True, "reference": reference}
        return await self._call("POST", f"/creators/{creator}/verification", json=body)

    async def payout_run(self, period: str) -> Any:
        return await self._call("POST", "/payout-runs", json={"period": period})


async def worked_example(backend: Backend, user: str = "demo_viewer") -> dict[str, Any]:
    """Top up by a receipt, retry it (a replay), charge it back, and read the wallet."""
    receipt = f"pay-{uuid.uuid4().hex[:20]}"  # the payment provider's id for the purchase
    first = await backend.topup(user, 500, receipt)
    again = await backend.topup(user, 500, receipt)  # the provider retried its webhook
    back = await backend.chargeback(receipt, "card reported stolen")
    return {
        "topup": first,
        "retry": again,
        "chargeback": back,
        "wallet": await backend.wallet(user),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8081/api/v1")
    parser.add_argument(
        "--token", required=True, help="an admin token (giftrelay token NAME --role admin)"
    )
    parser.add_argument("--user", default="demo_viewer")
    args = parser.parse_args()
    async with Backend(args.url, args.token) as backend:
        print(json.dumps(await worked_example(backend, args.user), indent=2))  # noqa: T201
        print(json.dumps(await backend.packages("US"), indent=2))  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main())
