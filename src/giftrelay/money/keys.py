"""The whole Redis key schema, in one place.

Every key a script touches is built here and passed to it in KEYS. The part in
braces is the hash tag: a user's wallet and idempotency records share the user's
slot, and a stream's keys share the stream's slot, so a Redis Cluster layout can
keep each together.
"""

from __future__ import annotations

LEDGER = "ledger"
"""The stream of every money movement, read by the ledger consumer group."""

LEDGER_GROUP = "ledger-writers"
"""The consumer group that writes ``ledger`` into the ledger store."""

LEDGER_DEAD = "ledger:dead"
"""Stream of ledger entries that failed too often, with the reason, for a person to look at."""


def wallet(user: str) -> str:
    """Hash: coins, diamonds, spent_day, spent, cap, verified (ms, when a creator was verified),
    and the mindful-spending settings: confirm, cool_coins, cool_minutes, cool_log."""
    return f"w:{{{user}}}"


WALLETS = "w:{*}"
"""A SCAN pattern matching every wallet."""


def wallet_user(key: str) -> str:
    """The user whose wallet is ``key`` (the inverse of :func:`wallet`)."""
    return key[len("w:{") : -1]


def spending(user: str, day: int) -> str:
    """Hash: the user's coins spent per creator on UTC day ``day`` (days since the epoch);
    expires 31 days after the day began. Shares the wallet's slot."""
    return f"sp:{{{user}}}:{day}"


SPENDING = "sp:{*}:*"
"""A SCAN pattern matching every day's spending of every user."""


def gift_idem(viewer: str, request_id: str) -> str:
    """String: the fingerprint and first reply of a gift request."""
    return f"idem:{{{viewer}}}:g:{request_id}"


def payout_idem(creator: str, request_id: str) -> str:
    """String: the fingerprint and first reply of a payout request."""
    return f"idem:{{{creator}}}:p:{request_id}"


def topup_idem(receipt: str) -> str:
    """String: a payment receipt already credited (receipts are global)."""
    return f"idem:topup:{{{receipt}}}"


def chargeback_idem(receipt: str) -> str:
    """String: a receipt's chargeback, once applied (shares the receipt's slot)."""
    return f"idem:chargeback:{{{receipt}}}"


VERIFIED = "creators:verified"
"""Set: the creators whose verification is on record (their wallets' ``verified`` field)."""


def stream(stream_id: str) -> str:
    """Hash: creator, title, status, totals, goal."""
    return f"st:{{{stream_id}}}"


def top(stream_id: str) -> str:
    """Sorted set: coins spent on the stream, by viewer."""
    return f"top:{{{stream_id}}}"


def history(stream_id: str) -> str:
    """Stream (capped): the stream's public events; entry ids are the offsets."""
    return f"hist:{{{stream_id}}}"


def combo(stream_id: str, viewer: str, gift: str) -> str:
    """String with a TTL: the viewer's running combo of one gift."""
    return f"combo:{{{stream_id}}}:{viewer}:{gift}"


def channel(stream_id: str) -> str:
    """Pub/sub channel carrying the stream's events to relay workers."""
    return f"ev:{{{stream_id}}}"


def channel_stream(channel_name: str) -> str:
    """The stream whose events ``channel_name`` carries (the inverse of :func:`channel`)."""
    return channel_name[len("ev:{") : -1]


def viewers(stream_id: str) -> str:
    """Hash: each relay worker's viewer count of the stream, with its heartbeat expiry."""
    return f"vw:{{{stream_id}}}"
