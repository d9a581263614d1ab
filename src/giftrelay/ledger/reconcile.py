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

from collections import Counter
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from giftrelay.ledger.buckets import dead_count, is_cluster
from giftrelay.ledger.cluster import reconcile_cluster
from giftrelay.ledger.postings import USER, Asset
from giftrelay.ledger.report import (
    WALLET_ASSETS,
    Difference,
    Report,
    Shard,
    Unreadable,
    take_wallet,
    wait_until_written,
)
from giftrelay.ledger.store import Position, Store
from giftrelay.money import keys
from giftrelay.wire.offsets import parse_offset

__all__ = ["WALLET_ASSETS", "Difference", "Report", "Shard", "Unreadable", "reconcile"]


class Snapshot(msgspec.Struct):
    position: str | None
    wallets: dict[str, dict[str, int]]
    unreadable: list[Unreadable]


async def reconcile(redis: Redis, store: Store, *, wait: float = 30.0) -> Report:
    """Compare every wallet with the ledger; see :class:`Report`."""
    if is_cluster(redis):
        return await reconcile_cluster(redis, store, wait=wait)
    stored_last = await store.last_position()  # before the snapshot: see the module's doc
    wallet_keys = [k async for k in redis.scan_iter(match=keys.WALLETS, count=1000)]
    for _ in range(3):
        snap = await _snapshot(redis, wallet_keys)
        waiting = await wait_until_written(redis, snap.position, wait)
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
        take_wallet(key, values, snap.wallets, snap.unreadable)
    return snap
