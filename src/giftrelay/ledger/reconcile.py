"""Reconcile: prove that every wallet in Redis agrees with the ledger store.

The wallets and the ledger stream's last generated id are read in one MULTI, so
they are a consistent snapshot even while gifts flow. Then it waits until the
consumer group has written everything up to that id, and compares each wallet
with the sum of its postings up to it. It also checks that every asset's postings
sum to zero, that nothing sits in the dead-letter stream, and that the store holds
no conflicting movements.

**Lost data.** Redis's last generated id only grows, and the store only holds ids
Redis generated, so every event the store held *before* the snapshot has an id at
or below the snapshot's. One above it is a movement Redis no longer has: Redis was
restored from an older copy, lost its AOF tail, or failed over to a replica that
was behind. Those are reported per wallet; ``giftrelay recover`` brings Redis back
to the store. (Read the store's newest id first: events written after the snapshot
are newer than it, and are not mistaken for lost ones.)

On a Redis Cluster there is no one snapshot: :mod:`giftrelay.ledger.cluster` compares each
node's wallets with the ledger as of that node's own instant, counting the gifts still in
its outboxes as in flight, and looks for lost data per bucket stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from giftrelay.ledger.buckets import dead_count, group_info, is_cluster
from giftrelay.ledger.postings import USER, Asset
from giftrelay.ledger.store import Conflict, Position, Store
from giftrelay.money import keys
from giftrelay.wire.offsets import parse_offset

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


class Snapshot(msgspec.Struct):
    position: str | None
    wallets: dict[str, dict[str, int]]
    unreadable: list[Unreadable]


async def reconcile(redis: Redis, store: Store, *, wait: float = 30.0) -> Report:
    """Compare every wallet with the ledger; see :class:`Report`."""
    if is_cluster(redis):
        from giftrelay.ledger.cluster import reconcile_cluster

        return await reconcile_cluster(redis, store, wait=wait)
    stored_last = await store.last_position()  # before the snapshot: see the module's doc
    wallet_keys = [k async for k in redis.scan_iter(match=keys.WALLETS, count=1000)]
    for _ in range(3):
        snap = await _snapshot(redis, wallet_keys)
        waiting = await _wait_until_written(redis, snap.position, wait)
        if waiting:
            return Report(position=snap.position, caught_up=False, waiting=waiting)
        upto = parse_offset(snap.position) if snap.position else (0, 0)
        balances = await store.balances(upto)
        users = {account[len(USER) :] for account, _ in balances if account.startswith(USER)}
        missing = users - snap.wallets.keys() - {u.wallet for u in snap.unreadable}
        if not missing:
            break
        # Wallets made between the SCAN and the snapshot: take the snapshot again with them.
        wallet_keys += [keys.wallet(u) for u in missing]

    report = Report(
        position=snap.position,
        caught_up=True,
        wallets=len(snap.wallets) + len(snap.unreadable),
        unreadable=snap.unreadable,
    )
    unreadable = {u.wallet for u in snap.unreadable}
    for user in sorted((snap.wallets.keys() | users) - unreadable):
        held = snap.wallets.get(user, {})
        for asset in WALLET_ASSETS:
            in_redis = held.get(asset, 0)
            in_ledger = balances.get((f"{USER}{user}", asset), 0)
            if in_redis != in_ledger:
                report.differences.append(Difference(user, asset, in_redis, in_ledger))
    for asset in Asset:
        total = sum(v for (_, a), v in balances.items() if a == asset)
        if total:
            report.unbalanced[asset] = total
    report.dead_letters = await dead_count(redis)
    if stored_last is not None and stored_last > upto:
        report.lost = await _lost(store, after=upto, upto=stored_last)
    report.conflicts = await store.conflicts()
    return report


async def _lost(store: Store, *, after: Position, upto: Position) -> dict[str, int]:
    """Per wallet, the stored events in (after, upto]: movements Redis never had."""
    lost: Counter[str] = Counter()
    async for row in store.export(None, None, after=after):
        if parse_offset(row.event_id) > upto:
            break
        wallets = {p.account[len(USER) :] for p in row.postings if p.account.startswith(USER)}
        lost.update(wallets or {row.actor})
    return dict(lost)


async def _snapshot(redis: Redis, wallet_keys: list[str]) -> Snapshot:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xinfo_stream(keys.LEDGER)
        for key in wallet_keys:
            pipe.hmget(key, [a.value for a in WALLET_ASSETS])
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    info = replies[0]
    if isinstance(info, ResponseError):  # no ledger stream: nothing was ever moved
        position = None
    elif isinstance(info, Exception):
        raise info
    else:
        last = info["last-generated-id"]
        last = last.decode() if isinstance(last, bytes) else str(last)
        position = None if last == "0-0" else last
    snap = Snapshot(position, {}, [])
    for key, values in zip(wallet_keys, replies[1:], strict=True):
        if isinstance(values, Exception):
            raise values
        if all(v is None for v in values):
            continue
        user = keys.wallet_user(key)
        wallet: dict[str, int] = {}
        unreadable: list[Unreadable] = []
        for a, v in zip(WALLET_ASSETS, values, strict=True):
            try:
                wallet[a.value] = int(v or 0)
            except ValueError:
                unreadable.append(Unreadable(user, a.value, str(v)))
        if unreadable:
            snap.unreadable += unreadable
        else:
            snap.wallets[user] = wallet
    return snap


async def _wait_until_written(
    redis: Redis, position: str | None, wait: float, stream: str = keys.LEDGER
) -> str:
    """'' once the group has written every entry of ``stream`` up to ``position``, else why
    not."""
    if position is None:
        return ""
    deadline = time.monotonic() + wait
    while True:
        reason = await _unwritten(redis, position, stream)
        if not reason:
            return ""
        if time.monotonic() >= deadline:
            return f"{reason} (waited {wait:.0f} s)"
        await asyncio.sleep(0.1)


async def _unwritten(redis: Redis, position: str, stream: str = keys.LEDGER) -> str:
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
