"""Reconcile on a Redis Cluster: every wallet against the ledger store, shard by shard.

On one Redis, reconcile takes one snapshot (MULTI) of every wallet and the ledger
stream's last id. A cluster has no such snapshot: its wallets, its streams' earnings and
its 64 bucket streams live on several nodes, and a gift moves on two of them (the viewer's
debit, which leaves a transfer in an outbox; then the stream's side, which adds the
diamonds to the creator's *earnings* on the stream and writes the gift's ledger entry;
then the transfer leaves the outbox). A creator holds their wallet's diamonds plus their
earnings on every stream; a collect moves earnings into the wallet (money.transfers).

Collects are held while reconcile counts (``hold:{bucket}`` on every bucket; collect.lua
waits), and those in flight are let finish first, so a creator's diamonds do not move
between nodes meanwhile. Then each node is read at instants of its own, by a script over
its own keys (:data:`SNAPSHOT`): some of its wallets or streams with the last ids of its
bucket streams and outboxes, atomically. In order:

1. ``before``: every bucket stream's last id;
2. each node's instants (:class:`Look`);
3. the transfers waiting in every outbox;
4. ``after``: every bucket stream's last id again. The consumer must have written
   everything up to them (else "not caught up"), and the ledger is summed up to them.

A wallet or a stream's earnings at its node's instant holds every movement that node made
before the instant and none after. The ledger up to ``after`` differs from it by three
kinds of movement:

- made on its node after its instant (a top-up, a chargeback or payout on the wallet's
  node; a gift's earnings on the stream's): their entries are in that node's buckets
  above the ids the instant read, and are taken off;
- gifts the wallet's owner sent after its instant, whose entry (on the stream's node) is
  in the ledger already: the debit's transfer id, kept in the viewer's idempotency
  record, is above its outbox's last id at the instant; they are added back. Only gifts
  with entries between ``before`` and ``after`` can be such;
- gifts debited before the instant whose entry is not in the ledger up to ``after``: in
  flight. Their transfer was in the outbox at the instant and, since it leaves only after
  the entry is written, still is at step 3; counted as debited.

What is left is a difference. Lost data is seen per bucket stream: an event the store held
before step 1, above the stream's last id at step 4, is one Redis no longer has.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import Counter
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from giftrelay.ledger.buckets import (
    bucket_slot,
    dead_count,
    key_owner,
    last_ids,
    node_clients,
    owner,
    scan,
    text,
)
from giftrelay.ledger.entries import GiftEntry, ledger_decoder
from giftrelay.ledger.postings import SINGLE, USER
from giftrelay.ledger.report import (
    WALLET_ASSETS,
    Difference,
    Report,
    Shard,
    Unreadable,
    take_wallet,
    wait_until_written,
)
from giftrelay.ledger.store import ExportRow, Position, Store
from giftrelay.money import keys
from giftrelay.money.transfers import Transfer, transfer_decoder
from giftrelay.wire.offsets import format_offset, parse_offset

log = structlog.get_logger(__name__)

SNAPSHOT = """
-- ARGV: wallets n, stream hashes n, bucket streams n, then the wallet keys, the stream
-- hashes, the bucket streams, the outboxes: every key this node's own. Returns {wallets'
-- {coins, diamonds}, streams' {creator, earnings}, bucket streams' last ids, outboxes'
-- last ids}, all at one instant.
local nw, nh, ns = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function last_id(key)
  if redis.call('EXISTS', key) == 0 then return '0-0' end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return info[i + 1] end
  end
  return '0-0'
end
local wallets, held, streams, outboxes = {}, {}, {}, {}
local first = 4
for i = first, first + nw - 1 do
  wallets[#wallets + 1] = redis.call('HMGET', ARGV[i], 'coins', 'diamonds')
end
first = first + nw
for i = first, first + nh - 1 do
  held[#held + 1] = redis.call('HMGET', ARGV[i], 'creator', 'earnings')
end
first = first + nh
for i = first, first + ns - 1 do streams[#streams + 1] = last_id(ARGV[i]) end
for i = first + ns, #ARGV do outboxes[#outboxes + 1] = last_id(ARGV[i]) end
return {wallets, held, streams, outboxes}
"""

CHUNK = 500
"""Wallets per look: the script holds its node for as long as it reads them."""

ATTEMPTS = 5


class Look(msgspec.Struct):
    """Some wallets of one node, with its streams' and outboxes' last ids, at one instant."""

    node: str
    wallets: dict[str, dict[str, int]]
    unreadable: list[Unreadable]
    earnings: dict[str, tuple[str, int]]
    """Stream -> its creator and the creator's earnings on it."""
    streams: dict[int, Position]
    """Bucket -> its ledger stream's last id."""
    outboxes: dict[str, Position]
    """Outbox key -> its last id."""


class Moving(msgspec.Struct, frozen=True):
    """A transfer waiting in an outbox."""

    outbox: str
    entry: Position
    transfer: Transfer


class Seen(msgspec.Struct):
    before: list[Position]
    looks: list[Look]
    moving: list[Moving]
    after: list[Position]
    owners: dict[int, str]
    """Bucket -> the node holding it."""


class SlotsMoved(Exception):
    """A key was no longer on the node a look asked: the slot map changed meanwhile."""


async def reconcile_cluster(redis: Redis, store: Store, *, wait: float = 30.0) -> Report:
    """``giftrelay.ledger.reconcile.reconcile`` on a Redis Cluster; see the module's doc."""
    heads = await store.heads()  # before anything else: see the lost-data rule
    token = secrets.token_hex(8)
    await _hold(redis, token, wait)
    try:
        collecting = await _let_collects_finish(redis, wait)
        if collecting:
            return Report(position=None, caught_up=False, waiting=collecting)
        return await _reconcile(redis, store, heads, wait, token)
    finally:
        await _release(redis, token)


async def _reconcile(
    redis: Redis, store: Store, heads: dict[int, Position], wait: float, token: str
) -> Report:
    extra: list[str] = []
    for attempt in range(ATTEMPTS):
        try:
            await _hold(redis, token, wait)  # again: the wait and sums of an attempt take time
            seen = await _see(redis, extra)
        except SlotsMoved:
            if attempt == ATTEMPTS - 1:
                raise
            await _reread_slots(redis)
            continue
        newest = max(seen.after)
        position = format_offset(newest) if newest > (0, 0) else None
        waiting = await _wait(redis, seen.after, wait)
        if waiting:
            return Report(position=position, caught_up=False, waiting=waiting)
        upto = dict(enumerate(seen.after))
        if SINGLE in heads:  # a store kept from one Redis: its events count as they are
            upto[SINGLE] = heads[SINGLE]
        balances = await store.balances(upto)
        users = {account[len(USER) :] for account, _ in balances if account.startswith(USER)}
        looked = {u for look in seen.looks for u in look.wallets}
        looked |= {x.wallet for look in seen.looks for x in look.unreadable}
        looked |= {c for look in seen.looks for c, _ in look.earnings.values()}
        missing = users - looked
        if not missing:
            break
        # Wallets made after the SCAN of their node: look again with them.
        extra = sorted({*extra, *(keys.wallet(u) for u in missing)})
    report = await _compare(redis, store, seen, balances, users)
    report.position = position
    await _lost(store, heads, seen, report)
    report.dead_letters = await dead_count(redis)
    report.conflicts = await store.conflicts()
    return report


HOLD_MS = 120_000
"""A hold outlives the reconcile that set it by at most this: a reconcile that dies does
not stop collects for long."""


async def _hold(redis: Redis, token: str, wait: float) -> None:
    """Hold collects on every node (collect.lua refuses while its bucket's hold is not
    empty): this run's ``token`` joins the bucket's set of holders, so that a reconcile
    running beside it, ending first, does not release this one's hold."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys.HOLDS:
            pipe.sadd(key, token)
            pipe.pexpire(key, HOLD_MS + round(wait * 1000))
        await pipe.execute()


async def _release(redis: Redis, token: str) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys.HOLDS:
            pipe.srem(key, token)
        await pipe.execute()


async def _let_collects_finish(redis: Redis, wait: float) -> str:
    """'' once no collect is in an outbox (a payout's own steps finish theirs at once, the
    mover one left behind within its grace period), else why not after ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        collecting = [m for m in await _outboxes(redis) if m.transfer.kind == "collect"]
        if not collecting:
            return ""
        if time.monotonic() >= deadline:
            return f"{len(collecting)} collect(s) of earnings still in the outboxes"
        await asyncio.sleep(0.05)


async def _see(redis: Redis, extra: list[str]) -> Seen:
    """Steps 1 to 4 of the module's doc."""
    cluster: RedisCluster = redis  # type: ignore[assignment]
    await cluster.initialize()
    before = await last_ids(redis, keys.LEDGERS)
    owners = {b: owner(redis, bucket_slot(b)) for b in range(keys.BUCKETS)}
    looks: list[Look] = []
    async with node_clients(redis) as nodes:
        wallets: dict[str, list[str]] = {name: [] for name in nodes}
        held: dict[str, list[str]] = {name: [] for name in nodes}
        for name, (_, client) in nodes.items():  # (SCAN may return a key twice)
            wallets[name] = list(dict.fromkeys([key async for key in scan(client, keys.WALLETS)]))
            held[name] = list(dict.fromkeys([key async for key in scan(client, keys.STREAMS)]))
        known = {key for found in wallets.values() for key in found}
        for key in extra:
            if key not in known:
                wallets.setdefault(key_owner(redis, key), []).append(key)
        for name, found in wallets.items():
            if name not in nodes:
                raise SlotsMoved(name)
            mine = [b for b, holder in owners.items() if holder == name]
            for start in range(0, max(len(found), 1), CHUNK):
                chunk = found[start : start + CHUNK]
                looks.append(await _look(nodes[name][1], name, chunk, [], mine))
            for start in range(0, len(held[name]), CHUNK):
                chunk = held[name][start : start + CHUNK]
                looks.append(await _look(nodes[name][1], name, [], chunk, mine))
    moving = await _outboxes(redis)
    after = await last_ids(redis, keys.LEDGERS)
    return Seen(before, looks, moving, after, owners)


async def _look(
    client: Redis, node: str, wallets: list[str], held: list[str], buckets: list[int]
) -> Look:
    streams = [keys.ledger(b) for b in buckets]
    outboxes = [keys.outbox(b) for b in buckets]
    try:
        reply: Any = await client.eval(
            SNAPSHOT,
            0,
            len(wallets),
            len(held),
            len(streams),
            *wallets,
            *held,
            *streams,
            *outboxes,
        )
    except ResponseError as exc:
        if "non local key" in str(exc) or "MOVED" in str(exc):
            raise SlotsMoved(str(exc)) from exc
        raise
    values, earnings, stream_ids, outbox_ids = reply
    look = Look(
        node,
        {},
        [],
        {},
        {b: parse_offset(text(i)) for b, i in zip(buckets, stream_ids, strict=True)},
        {k: parse_offset(text(i)) for k, i in zip(outboxes, outbox_ids, strict=True)},
    )
    for key, fields in zip(wallets, values, strict=True):
        take_wallet(key, fields, look.wallets, look.unreadable)
    for key, (creator, amount) in zip(held, earnings, strict=True):
        if creator is None:
            continue
        try:
            look.earnings[keys.stream_id(key)] = (text(creator), int(amount or 0))
        except ValueError:
            look.unreadable.append(Unreadable(text(creator), "earnings", text(amount)))
    return look


async def _outboxes(redis: Redis) -> list[Moving]:
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys.OUTBOXES:
            pipe.xrange(key)
        replies: list[Any] = await pipe.execute()
    moving = []
    for key, entries in zip(keys.OUTBOXES, replies, strict=True):
        for entry, fields in entries:
            try:
                transfer = transfer_decoder.decode(fields["t"])
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                log.error("outbox entry without a transfer", outbox=key, entry=entry)
                continue
            moving.append(Moving(key, parse_offset(text(entry)), transfer))
    return moving


async def _wait(redis: Redis, after: list[Position], wait: float) -> str:
    """'' once the group has written every bucket stream up to ``after``, else why not."""
    waited = await asyncio.gather(
        *(
            wait_until_written(redis, format_offset(at), wait, keys.ledger(b))
            for b, at in enumerate(after)
            if at > (0, 0)
        )
    )
    return next((reason for reason in waited if reason), "")


async def _reread_slots(redis: Redis) -> None:
    cluster: RedisCluster = redis  # type: ignore[assignment]
    await cluster.nodes_manager.initialize()


async def _compare(
    redis: Redis,
    store: Store,
    seen: Seen,
    balances: dict[tuple[str, str], int],
    users: set[str],
) -> Report:
    """Each wallet against the ledger as of its look (the module's doc)."""
    where = {u: look for look in seen.looks for u in look.wallets}
    earned = {st: (c, n, look) for look in seen.looks for st, (c, n) in look.earnings.items()}
    """Stream -> its creator, their earnings on it, and the look that read them."""
    unreadable = [u for look in seen.looks for u in look.unreadable]
    adjust: Counter[tuple[str, str]] = Counter()
    """(user, asset) -> what Redis at the looks holds beyond the ledger up to ``after``."""
    spans = enumerate(zip(seen.before, seen.after, strict=True))
    window = {b: (lo, hi) for b, (lo, hi) in spans if hi > lo}
    rows = [row async for row in store.between(window)]
    gifts = {id(row): _gift(row) for row in rows if row.kind == "gift"}
    debits = await _debits(
        redis, [(g.sender, g.id) for g in gifts.values() if g is not None and g.sender in where]
    )
    for row in rows:
        gift = gifts.get(id(row))
        for p in row.postings:
            if not p.account.startswith(USER) or p.asset not in WALLET_ASSETS:
                continue
            user = p.account[len(USER) :]
            if gift is not None and gift.held == "stream" and p.asset == "diamonds":
                # The creator's earnings on the stream, read by that stream's look.
                found = earned.get(gift.stream)
                if found is None:  # a stream opened after its node's SCAN: no look read it
                    adjust[(user, p.asset)] -= p.amount
                    continue
                at = found[2].streams.get(row.bucket)
                if at is not None and row.position > at:
                    adjust[(user, p.asset)] -= p.amount  # made on its node after the look
                continue
            look = where.get(user)
            if look is None:
                continue
            if gift is not None and user == gift.sender and p.asset == "coins":
                debit = debits.get((gift.sender, gift.id))
                last = look.outboxes.get(debit[0]) if debit else None
                if debit is not None and last is not None and debit[1] > last:
                    adjust[(user, p.asset)] -= p.amount  # debited after the look
            else:
                at = look.streams.get(row.bucket)
                if at is not None and row.position > at:
                    adjust[(user, p.asset)] -= p.amount  # made on its node after the look
    earnings: Counter[str] = Counter()
    for creator, amount, _ in earned.values():
        if amount:  # (a stream without earnings adds no creator to compare)
            earnings[creator] += amount
    gifts_moving = [m for m in seen.moving if m.transfer.kind == "gift"]
    held = await store.holders([_key(m.transfer) for m in gifts_moving])
    in_flight = []
    for m in gifts_moving:
        holder = held.get(_key(m.transfer))
        if holder is not None and (holder[0] == SINGLE or holder[1] <= seen.after[holder[0]]):
            continue  # in the ledger already: its outbox entry is only not cleared yet
        in_flight.append(m)
        look = where.get(m.transfer.from_)
        last = look.outboxes.get(m.outbox) if look is not None else None
        if look is not None and (last is None or m.entry <= last):
            adjust[(m.transfer.from_, "coins")] -= m.transfer.coins

    report = Report(
        position=None,
        caught_up=True,
        wallets=len(where.keys() | earnings.keys() | {u.wallet for u in unreadable}),
        unreadable=unreadable,
        in_flight=len(in_flight),
    )
    shards = {name: Shard(name, sorted(b for b, n in seen.owners.items() if n == name))
              for name in sorted(set(seen.owners.values()))}  # fmt: skip
    for look in seen.looks:
        shards.setdefault(look.node, Shard(look.node, [])).wallets += len(look.wallets)
    for creator in earnings.keys() - where.keys():  # a creator whose diamonds are all earnings
        wallet_node = key_owner(redis, keys.wallet(creator))
        if wallet_node in shards:
            shards[wallet_node].wallets += 1
    for m in in_flight:
        node = seen.owners.get(keys.OUTBOXES.index(m.outbox))
        if node in shards:
            shards[node].in_flight += 1
    skip = {u.wallet for u in unreadable}
    for user in sorted((where.keys() | users | earnings.keys()) - skip):
        held_now = where[user].wallets[user] if user in where else {}
        for asset in WALLET_ASSETS:
            in_redis = held_now.get(asset, 0) + (earnings[user] if asset == "diamonds" else 0)
            in_ledger = balances.get((f"{USER}{user}", asset), 0) + adjust[(user, asset)]
            if in_redis != in_ledger:
                report.differences.append(Difference(user, asset, in_redis, in_ledger))
                node = where[user].node if user in where else key_owner(redis, keys.wallet(user))
                if node in shards:
                    shards[node].differences += 1
    report.shards = list(shards.values())
    totals: Counter[str] = Counter()
    for (_, kind), amount in balances.items():
        totals[kind] += amount
    report.unbalanced = {kind: total for kind, total in totals.items() if total}
    return report


def _gift(row: ExportRow) -> GiftEntry | None:
    entry = ledger_decoder.decode(row.body)
    return entry if isinstance(entry, GiftEntry) else None


def _key(t: Transfer) -> str:
    """A transfer's gift's business key in the store (``postings``)."""
    return f"gift:{t.from_}:{t.id}"


async def _debits(
    redis: Redis, gifts: list[tuple[str, str]]
) -> dict[tuple[str, str], tuple[str, Position]]:
    """Per (viewer, gift id): the outbox and entry id of its transfer, from the viewer's
    idempotency record (gift_debit.lua's reply); none for a record gone."""
    if not gifts:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for viewer, gift_id in gifts:
            pipe.get(keys.gift_idem(viewer, gift_id))
        values: list[Any] = await pipe.execute()
    found = {}
    for gift, value in zip(gifts, values, strict=True):
        if value is None:
            continue
        try:
            reply = json.loads(text(value).partition("\n")[2])
            if reply[0] == "ok":
                found[gift] = (str(reply[1]), parse_offset(str(reply[2])))
        except (ValueError, IndexError, TypeError):
            log.warning("gift record unreadable", viewer=gift[0], gift=gift[1])
    return found


async def _lost(store: Store, heads: dict[int, Position], seen: Seen, report: Report) -> None:
    """Per bucket stream, the stored events above its last id (Redis lost them)."""
    bounds = {b: (seen.after[b], at) for b, at in heads.items() if b >= 0 and at > seen.after[b]}
    if not bounds:
        return
    lost: Counter[str] = Counter()
    per_bucket: Counter[int] = Counter()
    async for row in store.between(bounds):
        per_bucket[row.bucket] += 1
        wallets = {p.account[len(USER) :] for p in row.postings if p.account.startswith(USER)}
        lost.update(wallets or {row.actor})
    report.lost = dict(lost)
    report.lost_buckets = {keys.ledger(b): n for b, n in per_bucket.items()}
    for shard in report.shards:
        shard.lost = sum(n for b, n in per_bucket.items() if b in shard.buckets)
