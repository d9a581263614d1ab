"""What reconcile finds: a report of differences, lost data and the rest, and the wait for
the consumer group to have written up to a stream id. Shared by one Redis's reconcile
(:mod:`giftrelay.ledger.reconcile`) and a cluster's (:mod:`giftrelay.ledger.cluster`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis

from giftrelay.ledger.buckets import group_info, text
from giftrelay.ledger.postings import Asset
from giftrelay.ledger.store import Conflict
from giftrelay.money import keys

WALLET_ASSETS = (Asset.COINS, Asset.DIAMONDS)


class Difference(msgspec.Struct, frozen=True):
    wallet: str
    asset: str
    redis: int
    ledger: int

    def __str__(self) -> str:
        return (
            f"difference: wallet={self.wallet} asset={self.asset} "
            f"redis={self.redis} ledger={self.ledger}"
        )


class Unreadable(msgspec.Struct, frozen=True):
    """A wallet field that is not an integer: Redis was written by something else."""

    wallet: str
    field: str
    value: str

    def __str__(self) -> str:
        return (
            f"unreadable: wallet={self.wallet} field={self.field} is not an integer: {self.value!r}"
        )


class Shard(msgspec.Struct):
    """On a Redis Cluster, what one primary holds and how it compared."""

    node: str
    buckets: list[int]
    """The ledger buckets it holds (its streams and outboxes)."""
    wallets: int = 0
    differences: int = 0
    in_flight: int = 0
    """Gifts debited on it whose transfer waits in its outboxes, not yet in the ledger."""
    lost: int = 0
    """Stored movements of its buckets that its ledger streams never generated."""

    def __str__(self) -> str:
        counts = ((self.differences, "difference(s)"), (self.lost, "lost movement(s)"))
        problems = [f"{n} {what}" for n, what in counts if n]
        return (
            f"shard {self.node} (buckets {_spans(self.buckets)}): {self.wallets} wallets,"
            f" {self.in_flight} transfer(s) in flight: {', '.join(problems) or 'OK'}"
        )


class Report(msgspec.Struct):
    position: str | None
    """The ledger stream's last generated id at the snapshot: everything up to it was compared
    (on a cluster, the newest of the bucket streams')."""
    caught_up: bool
    wallets: int = 0
    differences: list[Difference] = msgspec.field(default_factory=list)
    unbalanced: dict[str, int] = msgspec.field(default_factory=dict)
    """Assets whose postings do not sum to zero, with the sum."""
    dead_letters: int = 0
    lost: dict[str, int] = msgspec.field(default_factory=dict)
    """Per wallet: movements the store holds that Redis does not (Redis lost data)."""
    conflicts: list[Conflict] = msgspec.field(default_factory=list)
    unreadable: list[Unreadable] = msgspec.field(default_factory=list)
    waiting: str = ""
    shards: list[Shard] = msgspec.field(default_factory=list)
    """On a Redis Cluster, per primary (empty on one Redis)."""
    in_flight: int = 0
    """On a Redis Cluster, gifts debited whose ledger entry is not written yet (counted as
    debited: the wallets hold them, the ledger will)."""
    lost_buckets: dict[str, int] = msgspec.field(default_factory=dict)
    """On a Redis Cluster, per bucket stream that lost data: the stored movements above
    what the stream generated."""

    @property
    def ok(self) -> bool:
        return self.caught_up and not (
            self.differences
            or self.unbalanced
            or self.dead_letters
            or self.lost
            or self.conflicts
            or self.unreadable
        )

    def lines(self) -> list[str]:
        if not self.caught_up:
            return [f"not caught up: {self.waiting}"]
        out = [
            f"lost: stream={k}: the ledger store holds {n} movement(s) above its last id"
            for k, n in sorted(self.lost_buckets.items())
        ]
        out += [
            f"lost: wallet={w}: the ledger store holds {n} movement(s) that Redis does not"
            for w, n in sorted(self.lost.items())
        ]
        if self.lost:
            out.append(
                "Redis lost data (restored from an older copy, a lost AOF tail or a failover):"
                " stop the relays and consumers, run `giftrelay recover`, then reconcile again"
            )
        out += [str(u) for u in self.unreadable]
        out += [str(d) for d in self.differences]
        out += [
            f"unbalanced: asset={a} postings sum to {s}, not 0" for a, s in self.unbalanced.items()
        ]
        if self.dead_letters:
            where = f"{keys.LEDGER_DEAD}:{{…}}" if self.shards else keys.LEDGER_DEAD
            dead = f"{self.dead_letters} entries in {where}"
            out.append(f"dead letters: {dead} are not in the ledger")
        out += [
            f"conflict: {c.business_key} at {c.event_id} differs from the stored {c.stored_id}"
            f" ({c.reason}); it is counted in no balance"
            for c in self.conflicts
        ]
        return out


async def wait_until_written(
    redis: Redis, position: str | None, wait: float, stream: str = keys.LEDGER
) -> str:
    """'' once the group has written every entry of ``stream`` up to ``position``, else why
    not."""
    if position is None:
        return ""
    deadline = time.monotonic() + wait
    while True:
        reason = await unwritten(redis, position, stream)
        if not reason:
            return ""
        if time.monotonic() >= deadline:
            return f"{reason} (waited {wait:.0f} s)"
        await asyncio.sleep(0.1)


async def unwritten(redis: Redis, position: str, stream: str = keys.LEDGER) -> str:
    group = await group_info(redis, stream)
    if group is None:
        if not await redis.xlen(stream):
            return ""  # nothing left to write (e.g. after recover)
        return (
            f"no ledger consumer group {keys.LEDGER_GROUP!r}: start one with `giftrelay ledger`"
            " (or `giftrelay serve` on the embedded default)"
        )
    delivered = str(group["last-delivered-id"])
    # An entry the group has not read yet, up to the position? (Ids between may never
    # have been used: after recover the last generated id jumps ahead.)
    where = "" if stream == keys.LEDGER else f" of {stream}"
    if await redis.xrange(stream, min=f"({delivered}", max=position, count=1):
        return (
            f"the consumer has not yet read up to {position}{where}: is a ledger consumer"
            " running (`giftrelay ledger`)?"
        )
    if await redis.xpending_range(stream, keys.LEDGER_GROUP, min="-", max=position, count=1):
        return f"entries up to {position}{where} are read but not yet written"
    return ""


def _spans(buckets: list[int]) -> str:
    """``[0, 1, 2, 5]`` as ``0-2, 5``."""
    spans: list[list[int]] = []
    for b in sorted(buckets):
        if spans and spans[-1][1] == b - 1:
            spans[-1][1] = b
        else:
            spans.append([b, b])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "none"


def take_wallet(
    key: str,
    values: Sequence[Any],
    wallets: dict[str, dict[str, int]],
    unreadable: list[Unreadable],
) -> None:
    """A wallet's fields as read (``WALLET_ASSETS``, in order) into ``wallets``, or, if
    one is no integer, its unreadable fields into ``unreadable``; a wallet with none of
    the fields is no wallet to compare."""
    if all(v is None for v in values):
        return
    user = keys.wallet_user(key)
    wallet: dict[str, int] = {}
    bad: list[Unreadable] = []
    for asset, v in zip(WALLET_ASSETS, values, strict=True):
        try:
            wallet[asset.value] = int(v or 0)
        except ValueError:
            bad.append(Unreadable(user, asset.value, text(v)))
    if bad:
        unreadable += bad
    else:
        wallets[user] = wallet
