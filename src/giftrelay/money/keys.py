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

BUCKETS = 64
"""On a Redis Cluster the ledger stream and the outbox come in this many copies, the
*buckets*. A script may touch one slot's keys only, plus keys of other slots its node
owns: it writes the ledger and the outbox of a bucket its own node holds. Bucket ``b``'s
tag hashes to slot ``256 * b``, so any node owning 256 contiguous slots owns a bucket."""

BUCKET_TAGS = (
    "b00.96", "b01.hhp", "b02.cmg", "b03.bib", "b04.euy", "b05.d5t", "b06.otk", "b07.fyv",
    "b08.b86", "b09.zs3", "b10.z22", "b11.by7", "b12.aqx", "b13.h8m", "b14.vo6", "b15.wk3",
    "b16.a8k", "b17.h5v", "b18.h8s", "b19.aqf", "b20.7kl", "b21.ce9", "b22.5cf", "b23.6s",
    "b24.j05", "b25.kp8", "b26.q37", "b27.ix2", "b28.axo", "b29.hur", "b30.h4s", "b31.a9n",
    "b32.lcx", "b33.ene", "b34.b26", "b35.c63", "b36.hsl", "b37.iwi", "b38.ast", "b39.qua",
    "b40.byb", "b41.c9o", "b42.hxp", "b43.aum", "b44.fiv", "b45.gms", "b46.lhd", "b47.eey",
    "b48.aq3", "b49.are5", "b50.5zo", "b51.a02", "b52.jum", "b53.cxp", "b54.ol", "b55.mm6",
    "b56.jit", "b57.cdi", "b58.cil", "b59.bmi", "b60.x23", "b61.hl", "b62.cu9", "b63.b54",
)  # fmt: skip
"""Tag ``b`` hashes to slot ``256 * b`` (found by search; tests/test_keys.py checks them)."""

BUCKET_SLOT_SPAN = 16384 // BUCKETS


def ledger(bucket: int | None) -> str:
    """The ledger stream a script writes: ``ledger`` on one Redis, a bucket's on a cluster."""
    return LEDGER if bucket is None else f"ledger:{{{BUCKET_TAGS[bucket]}}}"


def ledger_dead(bucket: int) -> str:
    """On a cluster, a bucket's dead-letter stream: the bucket stream's slot, so moving an
    entry there and acknowledging it is one transaction."""
    return f"{LEDGER_DEAD}:{{{BUCKET_TAGS[bucket]}}}"


def outbox(bucket: int | None) -> str:
    """Stream: on a cluster, *transfers*: gifts whose coins moved and whose stream's side
    (totals, event, the creator's earnings and the ledger entry) is still to apply, and
    collects of earnings still to credit to a wallet; entry ``t`` the transfer."""
    return f"out:{{{BUCKET_TAGS[bucket or 0]}}}"


def hold(bucket: int | None) -> str:
    """Set with a TTL: on a cluster, the reconciles counting (a token each), on every
    bucket; while it is not empty the collects of earnings on its node wait (collect.lua)."""
    return f"hold:{{{BUCKET_TAGS[bucket or 0]}}}"


LEDGERS = tuple(ledger(b) for b in range(BUCKETS))
"""Every bucket's ledger stream, on a cluster."""

OUTBOXES = tuple(outbox(b) for b in range(BUCKETS))
"""Every bucket's outbox, on a cluster."""

HOLDS = tuple(hold(b) for b in range(BUCKETS))
"""Every bucket's hold, on a cluster."""


def wallet(user: str) -> str:
    """Hash: coins, diamonds, spent_day, spent, lifetime (coins ever spent: the gifter level),
    cap, verified (ms, when a creator was verified), and the mindful-spending settings:
    confirm, cool_coins, cool_minutes, cool_log."""
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


def applied(stream_id: str, viewer: str, request_id: str) -> str:
    """String: on a cluster, a gift applied to its stream (offset, combo); the stream's slot."""
    return f"xf:{{{stream_id}}}:a:{viewer}:{request_id}"


def collected(creator: str, stream_id: str, n: int) -> str:
    """String: on a cluster, the ``n``-th collect of the creator's earnings on a stream,
    credited to the wallet (the diamonds after); the creator's slot."""
    return f"xf:{{{creator}}}:k:{stream_id}:{n}"


def creator_streams(creator: str) -> str:
    """Set: on a cluster, the streams a creator opened, whose earnings are theirs (the
    creator's slot): a balance adds them, a payout collects them."""
    return f"cs:{{{creator}}}"


def topup_credit(user: str, receipt: str) -> str:
    """String: on a cluster, a receipt credited to the user's wallet (the user's slot; the
    receipt's own record, :func:`topup_idem`, claims it for one user and amount)."""
    return f"idem:{{{user}}}:t:{receipt}"


def chargeback_record(user: str, receipt: str) -> str:
    """String: on a cluster, a receipt's chargeback, once applied (the user's slot)."""
    return f"idem:{{{user}}}:cb:{receipt}"


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
    """Hash: creator, title, status, totals, goal; during a battle its id (``battle``),
    times (``b_start``, ``b_end``), boost windows (``b_boosts``) and the side's score
    (``b_score``); on a cluster also the creator's ``earnings`` on the stream not yet
    collected into the wallet, and ``collects`` made."""
    return f"st:{{{stream_id}}}"


STREAMS = "st:{*}"
"""A SCAN pattern matching every stream."""


def stream_id(key: str) -> str:
    """The stream whose hash is ``key`` (the inverse of :func:`stream`)."""
    return key[len("st:{") : -1]


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


def battle_top(stream_id: str) -> str:
    """Sorted set: the points each gifter scored for the stream's side of its running
    battle (emptied when the next battle starts)."""
    return f"btop:{{{stream_id}}}"


def battle(battle_id: str) -> str:
    """Hash: a battle's two streams and creators, status (invited, running, ended,
    declined, expired, cancelled), times and, once ended, its result."""
    return f"bt:{{{battle_id}}}"


BATTLES = "battles"
"""Sorted set: running battles by the time they end (ms), for the referee."""


def viewers(stream_id: str) -> str:
    """Hash: each relay worker's viewer count of the stream, with its heartbeat expiry."""
    return f"vw:{{{stream_id}}}"
