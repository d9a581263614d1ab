"""Checks on the target before a run starts: it answers, it takes our tokens, and it
has the gift. Each failure is a :class:`UsageError` (exit status 2) naming the flag."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit

from .options import Options, UsageError

TIMEOUT = 5.0


def check(options: Options, admin_token: str | None) -> None:
    """Reachable, ``admin_token`` accepted, ``--gift`` in the catalog: else UsageError.

    A target without ``/token-check`` or ``/catalog.json`` (a peer for comparison) is
    only checked for reachability.
    """
    base = _http_base(options.url)
    if admin_token is not None:
        status, body = _get(f"{base}/token-check?token={quote(admin_token)}", options.url)
        if status == 401:
            raise UsageError(
                f"the relay at {options.url} refused our token ({body.strip()}): give its "
                "GIFTRELAY_SECRET as --secret (var/secret on the embedded default)"
            )
    status, body = _get(f"{base}/catalog.json", options.url)
    if status == 200:
        gifts = [gift["id"] for gift in json.loads(body).get("gifts", [])]
        if gifts and options.gift not in gifts:
            raise UsageError(
                f"--gift {options.gift!r}: the relay's catalog has no such gift; "
                f"use one of: {', '.join(gifts)}"
            )


def _http_base(url: str) -> str:
    parts = urlsplit(url)
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"


def _get(url: str, target: str) -> tuple[int, str]:
    """Status and body; an unreachable target is a UsageError naming ``--url``."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(
            f"cannot reach the relay at {target} ({reason}): start it (giftrelay serve) "
            "or fix --url"
        ) from None
