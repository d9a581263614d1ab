"""``Giftrelay-Signature``: HMAC-SHA256 over ``"{t}.{raw body}"``, pure.

The header is ``t=UNIX_SECONDS,v1=HEX``; ``t`` is the time of the attempt, so a
receiver can refuse old deliveries (a replayed capture) while a retry still verifies.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "Giftrelay-Signature"
EVENT_ID_HEADER = "Giftrelay-Event-Id"
DEFAULT_TOLERANCE_S = 300


class BadSignature(ValueError):
    """The header is missing parts, the signature does not match, or it is too old."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"{timestamp}.{body}"`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Giftrelay-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, value: str, body: bytes, *, now: int, tolerance: int = DEFAULT_TOLERANCE_S
) -> int:
    """Check a ``Giftrelay-Signature`` as a receiver does; returns its timestamp.

    Any ``v1`` may match (several appear while a secret is rotated); ``t`` must be
    within ``tolerance`` seconds of ``now``.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in value.split(","):
        name, _, item = part.strip().partition("=")
        if name == "t" and item.isdigit():
            timestamp = int(item)
        elif name == "v1":
            candidates.append(item)
    if timestamp is None or not candidates:
        raise BadSignature("the header needs t=UNIX_SECONDS and v1=HEX")
    expected = signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise BadSignature("no v1 signature matches the body under this secret")
    if abs(now - timestamp) > tolerance:
        raise BadSignature(f"signed {now - timestamp} s from now, beyond {tolerance} s")
    return timestamp
