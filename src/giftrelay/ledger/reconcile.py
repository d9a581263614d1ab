"""Reconcile: prove that every wallet in Redis agrees with the ledger store.

The wallets and the ledger's last position are read in one MULTI, so they are a
consistent snapshot even while gifts flow. Then it waits until the consumer
group has written everything up to that position, and compares each wallet with
the sum of its postings up to it. It also checks that every asset's postings
sum to zero, and that nothing sits in the dead-letter stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from redis.asyncio import Redis

from giftrelay import keys
from giftrelay.ledger.consumer import group_info, parse_id
from giftrelay.ledger.postings import Asset
from giftrelay.ledger.store import Store

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


class Report(msgspec.Struct):
    position: str | None
    """The last ledger stream entry at the snapshot: everything up to it was compared."""
    caught_up: bool
    wallets: int = 0
    differences: list[Difference] = msgspec.field(default_factory=list)
    unbalanced: dict[str, int] = msgspec.field(default_factory=dict)
    """Assets whose postings do not sum to zero, with the sum."""
    dead_letters: int = 0
    waiting: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.caught_up
            and not self.differences
            and not self.unbalanced
            and not self.dead_letters
        )

    def lines(self) -> list[str]:
        if not self.caught_up:
            return [f"not caught up: {self.waiting}"]
        out = [str(d) for d in self.differences]
        out += [
            f"unbalanced: asset={a} postings sum to {s}, not 0" for a, s in self.unbalanced.items()
        ]
        if self.dead_letters:
            dead = f"{self.dead_letters} entries in {keys.LEDGER_DEAD}"
            out.append(f"dead letters: {dead} are not in the ledger")
        return out


async def reconcile(redis: Redis, store: Store, *, wait: float = 30.0) -> Report:
    """Compare every wallet with the ledger; see :class:`Report`."""
    wallet_keys = [k async for k in redis.scan_iter(match="w:{*}", count=1000)]
    for _ in range(3):
        position, wallets = await _snapshot(redis, wallet_keys)
        waiting = await _wait_until_written(redis, position, wait)
        if waiting:
            return Report(position=position, caught_up=False, waiting=waiting)
        upto = parse_id(position) if position else None
        balances = await store.balances(upto)
        users = {account[5:] for account, _ in balances if account.startswith("user:")}
        missing = users - wallets.keys()
        if not missing:
            break
        # Wallets made between the SCAN and the snapshot: take the snapshot again with them.
        wallet_keys += [keys.wallet(u) for u in missing]

    report = Report(position=position, caught_up=True, wallets=len(wallets))
    for user in sorted(wallets.keys() | users):
        held = wallets.get(user, {})
        for asset in WALLET_ASSETS:
            in_redis = held.get(asset, 0)
            in_ledger = balances.get((f"user:{user}", asset), 0)
            if in_redis != in_ledger:
                report.differences.append(Difference(user, asset, in_redis, in_ledger))
    for asset in Asset:
        total = sum(v for (_, a), v in balances.items() if a == asset)
        if total:
            report.unbalanced[asset] = total
    report.dead_letters = int(await redis.xlen(keys.LEDGER_DEAD))
    return report


async def _snapshot(
    redis: Redis, wallet_keys: list[str]
) -> tuple[str | None, dict[str, dict[str, int]]]:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xrevrange(keys.LEDGER, count=1)
        for key in wallet_keys:
            pipe.hmget(key, [a.value for a in WALLET_ASSETS])
        replies: list[Any] = await pipe.execute()
    last = replies[0]
    position = str(last[0][0]) if last else None
    wallets: dict[str, dict[str, int]] = {}
    for key, values in zip(wallet_keys, replies[1:], strict=True):
        if any(v is not None for v in values):
            user = key[len("w:{") : -1]
            wallets[user] = {
                a.value: int(v or 0) for a, v in zip(WALLET_ASSETS, values, strict=True)
            }
    return position, wallets


async def _wait_until_written(redis: Redis, position: str | None, wait: float) -> str:
    """'' once the group has acknowledged every entry up to ``position``, else why not."""
    if position is None:
        return ""
    target = parse_id(position)
    deadline = time.monotonic() + wait
    while True:
        group = await group_info(redis)
        if group is None:
            reason = (
                f"no ledger consumer group {keys.LEDGER_GROUP!r}: is a ledger consumer running?"
            )
        elif parse_id(str(group["last-delivered-id"])) < target:
            reason = f"the consumer has not yet read up to {position}"
        elif await redis.xpending_range(
            keys.LEDGER, keys.LEDGER_GROUP, min="-", max=position, count=1
        ):
            reason = f"entries up to {position} are read but not yet written"
        else:
            return ""
        if time.monotonic() >= deadline:
            return f"{reason} (waited {wait:.0f} s)"
        await asyncio.sleep(0.1)
