"""Recover: after Redis lost data, bring it back to what the ledger store holds.

The store is the system of record. Redis restored from an older copy, a lost AOF
tail or a failover to a replica that was behind leaves Redis *behind* the store:
wallets without their latest movements, and worse, without the idempotency
records that make a retried request a replay. ``recover`` rebuilds, from the
store alone:

- every wallet: coins and diamonds (the sums of its postings), the day's spending
  that the daily cap counts, the coins ever spent (the gifter level), the cap itself (the
  latest cap entry) and a creator's verification (the latest verification entry, with
  the set payout runs list);
- a viewer's mindful-spending settings (the latest confirm and cooldown entries), the
  cool-down's log of recent gifts, and the per-creator spending of the last 30 days;
- the idempotency record of every gift, top-up, payout and chargeback still within
  its retention, holding its first reply, so a retry is answered as a replay;
- the totals, combo counter and top gifters of every stream Redis still knows;
- the ledger stream's last id, moved past everything stored.

Run it with the relays and ledger consumers stopped: it refuses while a relay is
subscribed to events or a consumer was active moments ago. It first writes what
Redis's ``ledger`` stream holds and the store does not, so nothing Redis moved is
lost either. The rebuild (:class:`Rebuild`) is pure; :func:`recover` does the I/O.

On a Redis Cluster the same, per node and per bucket: the refusal looks at every node;
the gifts still in the outboxes are applied first (the mover's sweep, until they are
empty), so that their ledger entries exist; then every bucket stream is written to the
store, the wallets and records are rebuilt wherever their keys live now (the cluster
client routes each), in the cluster's formats (a gift's record holds gift_debit.lua's
reply, with the stream's step record beside it; a top-up's receipt claim and its credit
on the user's slot; a chargeback's record on the user's slot), a creator's diamonds all in
the wallet (no stream holds earnings afterwards), and each bucket stream's last id is
moved past the store's newest event of that bucket.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from giftrelay.ledger.buckets import (
    Source,
    active_consumers,
    is_cluster,
    lengths,
    node_clients,
    scan_all,
    sources,
    text,
)
from giftrelay.ledger.entries import (
    CapEntry,
    ChargebackEntry,
    ConfirmEntry,
    CooldownEntry,
    GiftEntry,
    PayoutEntry,
    TopupEntry,
    VerificationEntry,
    ledger_decoder,
)
from giftrelay.ledger.postings import SINGLE, USER, PoisonEntry, Record, record
from giftrelay.ledger.store import ExportRow, Store
from giftrelay.money import keys, rules
from giftrelay.money.catalog import Catalog
from giftrelay.money.transfers import Steps
from giftrelay.wire.offsets import format_offset, parse_offset

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
QUIET_MS = 10_000
"""A consumer active within this long is taken to be running."""
PAGE = 1000


class RecoverRefused(Exception):
    """Recovering now would race a running relay or consumer."""


@dataclass
class Wallet:
    coins: int = 0
    diamonds: int = 0
    spent_day: int = 0
    spent: int = 0
    lifetime: int = 0
    """Coins ever spent on gifts: the gifter level (capped as gift.lua caps it)."""
    cap: int | None = None
    verified: int | None = None
    """Since when (ms) the creator's verification is on record."""
    confirm: int | None = None
    cool_coins: int | None = None
    cool_minutes: int | None = None
    cool_log: rules.CoolLog = field(default_factory=list)
    """As gift.lua keeps it: the gifts since the cool-down was set, within its window."""


@dataclass
class StreamTotals:
    diamonds: int = 0
    coins: int = 0
    gifts: int = 0
    combos: int = 0
    top: dict[str, int] = field(default_factory=dict)


# The idempotency records as the scripts write them: '<fingerprint>\n<first reply>'.
# Keep in step with lua/gift.lua, topup.lua, payout.lua and chargeback.lua.
def _gift_record(e: GiftEntry) -> str:
    reply = ["ok", e.offset, e.coins, e.coins_after, e.combo or e.count, e.combo_id, e.diamonds]
    return f"gift|{e.stream}|{e.gift}|{e.count}\n{_json(reply)}"


def _topup_record(e: TopupEntry) -> str:
    package = f"|{e.package}|{e.region}" if e.package else ""
    return f"topup|{e.user}|{e.coins}{package}\n{_json(['ok', e.coins_after])}"


def _chargeback_record(e: ChargebackEntry) -> str:
    return f"chargeback|{e.id}\n{_json(['ok', e.user, e.coins, e.coins_after])}"


def _payout_record(e: PayoutEntry) -> str:
    reply = ["ok", e.diamonds, e.cash_cents, e.fee_cents, e.diamonds_after]
    return f"payout|{e.diamonds}\n{_json(reply)}"


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


# On a Redis Cluster a gift's records are two, one per step (lua/gift_debit.lua,
# gift_apply.lua), and a top-up's two (topup_claim.lua, topup.lua).
RECORDED_OUTBOX_ENTRY = "0-1"
"""The outbox entry a rebuilt gift record names: a retry deletes it from the outbox when
it finishes (XDEL), and no outbox ever holds it (entry ids are times)."""


def _debit_record(e: GiftEntry, level: int) -> str:
    """gift_debit.lua's record of the gift (``level``: the sender's after it); the outbox
    entry it names is none (RECORDED_OUTBOX_ENTRY): the stream's step is recorded too."""
    outbox = keys.outbox(key_slot(keys.wallet(e.sender).encode()) // keys.BUCKET_SLOT_SPAN)
    reply = ["ok", outbox, RECORDED_OUTBOX_ENTRY, e.coins, e.coins_after, e.ts, level, 0,
             int(e.confirmed), e.diamonds]  # fmt: skip
    return f"gift|{e.stream}|{e.gift}|{e.count}\n{_json(reply)}"


def _applied_record(e: GiftEntry) -> str:
    return _json(["ok", e.offset, e.combo or e.count, e.combo_id])


def _topup_claim(e: TopupEntry) -> str:
    return _topup_record(e).partition("\n")[0] + "\n[]"


class Rebuild:
    """Redis's money state, rebuilt from the ledger's events in ledger order (pure)."""

    def __init__(
        self,
        now_ms: int,
        retention_ms: int,
        receipt_retention_ms: int | None = None,
        *,
        cluster: bool = False,
        catalog: Catalog | None = None,
    ) -> None:
        self.cluster = cluster
        """Write the records in a Redis Cluster's formats (see the module's doc)."""
        self.catalog = catalog
        self.now_ms = now_ms
        self.retention_ms = retention_ms
        self.receipt_retention_ms = receipt_retention_ms or retention_ms
        """Top-ups, chargebacks and payout runs' ids are kept longer (``receipt_ttl``)."""
        self.wallets: dict[str, Wallet] = {}
        self.streams: dict[str, StreamTotals] = {}
        self.idempotency: dict[str, tuple[str, int]] = {}
        """key -> (record, milliseconds left to keep it)."""
        self.first_day = now_ms // DAY_MS - rules.SPENDING_DAYS
        """Spending of this UTC day and later is kept (a day more than ``spending`` reads)."""
        self.spending: dict[tuple[str, int], dict[str, int]] = {}
        """(viewer, UTC day) -> coins per creator, as gift.lua keeps them."""
        self.events = 0

    def wallet(self, user: str) -> Wallet:
        found = self.wallets.get(user)
        if found is None:
            found = self.wallets[user] = Wallet()
        return found

    def add(self, row: ExportRow) -> None:
        self.events += 1
        for p in row.postings:
            if p.account.startswith(USER) and p.asset in ("coins", "diamonds"):
                w = self.wallet(p.account[len(USER) :])
                if p.asset == "coins":
                    w.coins += p.amount
                else:
                    w.diamonds += p.amount
        entry = ledger_decoder.decode(row.body)
        left = entry.ts + self.retention_ms - self.now_ms
        records = self.idempotency
        if isinstance(entry, GiftEntry):
            self._gift(entry)
            if left > 0 and self.cluster:
                g = entry
                level = (
                    self.catalog.levels.level(self.wallet(g.sender).lifetime) if self.catalog else 0
                )
                records[keys.gift_idem(g.sender, g.id)] = (_debit_record(g, level), left)
                records[keys.applied(g.stream, g.sender, g.id)] = (_applied_record(g), left)
            elif left > 0:
                records[keys.gift_idem(entry.sender, entry.id)] = (_gift_record(entry), left)
        elif isinstance(entry, TopupEntry):
            left = entry.ts + self.receipt_retention_ms - self.now_ms
            if left > 0 and self.cluster:
                records[keys.topup_idem(entry.id)] = (_topup_claim(entry), left)
                key = keys.topup_credit(entry.user, entry.id)
                records[key] = (_topup_record(entry), left)
            elif left > 0:
                records[keys.topup_idem(entry.id)] = (_topup_record(entry), left)
        elif isinstance(entry, ChargebackEntry):
            left = entry.ts + self.receipt_retention_ms - self.now_ms
            if left > 0:
                key = (
                    keys.chargeback_record(entry.user, entry.id)
                    if self.cluster
                    else keys.chargeback_idem(entry.id)
                )
                records[key] = (_chargeback_record(entry), left)
        elif isinstance(entry, VerificationEntry):
            self.wallet(entry.user).verified = entry.ts if entry.verified else None
        elif isinstance(entry, PayoutEntry):
            if entry.id.startswith("run."):  # a payout run's: kept as long as receipts
                left = entry.ts + self.receipt_retention_ms - self.now_ms
            if left > 0:
                key = keys.payout_idem(entry.user, entry.id)
                self.idempotency[key] = (_payout_record(entry), left)
        elif isinstance(entry, CapEntry):
            self.wallet(entry.user).cap = entry.daily_coins
        elif isinstance(entry, ConfirmEntry):
            self.wallet(entry.user).confirm = entry.coins
        elif isinstance(entry, CooldownEntry):
            w = self.wallet(entry.user)
            w.cool_coins, w.cool_minutes = entry.coins, entry.minutes
            if entry.coins is None:
                w.cool_log = []

    def _gift(self, e: GiftEntry) -> None:
        # The day the cap counts, as gift.lua keeps it: the latest UTC day spent on.
        sender = self.wallet(e.sender)
        day = max(e.ts // DAY_MS, sender.spent_day)
        sender.spent = (sender.spent if sender.spent_day == day else 0) + e.coins
        sender.spent_day = day
        sender.lifetime = min(sender.lifetime + e.coins, rules.EXACT_LIMIT - 1)
        if sender.cool_coins is not None and sender.cool_minutes is not None:
            sender.cool_log = rules.cool_add(sender.cool_log, e.ts, e.coins, sender.cool_minutes)
        if e.ts // DAY_MS >= self.first_day:
            spent = self.spending.setdefault((e.sender, e.ts // DAY_MS), {})
            spent[e.to] = spent.get(e.to, 0) + e.coins
        totals = self.streams.get(e.stream)
        if totals is None:
            totals = self.streams[e.stream] = StreamTotals()
        totals.diamonds += e.diamonds
        totals.coins += e.coins
        totals.gifts += e.count
        if e.combo_id[1:].isdigit():
            totals.combos = max(totals.combos, int(e.combo_id[1:]))
        totals.top[e.sender] = totals.top.get(e.sender, 0) + e.coins


class Outcome(msgspec.Struct):
    swept: int = 0
    """On a Redis Cluster, gifts in the outboxes applied first (their entries then written)."""
    drained: int = 0
    """Entries of Redis's ledger stream the store did not hold yet, written first."""
    poison: int = 0
    """Entries of Redis's ledger stream that are no ledger event (left to the dead letters)."""
    events: int = 0
    wallets: int = 0
    records: int = 0
    streams: int = 0
    unknown_streams: list[str] = msgspec.field(default_factory=list)
    """Streams with gifts in the ledger that Redis no longer knows: open them again."""
    position: str = ""


Progress = Callable[[str, int, int], None]
"""Told (stage, done, total) as the work goes."""


async def recover(
    redis: Redis,
    store: Store,
    *,
    retention_ms: int,
    receipt_retention_ms: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    steps: Steps | None = None,
    catalog: Catalog | None = None,
) -> Outcome:
    """Rebuild Redis's money state from the store; see the module's doc.
    ``receipt_retention_ms`` (default ``retention_ms``): how long receipts are kept. On a
    Redis Cluster, ``steps`` (``Money.steps``) applies the outboxes' gifts first, and
    ``catalog`` names the gifts in the rebuilt records."""
    tell = progress or (lambda stage, done, total: None)
    cluster = is_cluster(redis)
    if not force:
        await _check_quiet(redis)
    outcome = Outcome()
    if cluster:
        if steps is None:
            raise ValueError("recover on a Redis Cluster needs the money core's steps")
        outcome.swept = await _sweep(steps, tell)
    outcome.drained, outcome.poison = await _drain(redis, store, tell)
    now = int(time.time() * 1000)
    rebuild = Rebuild(now, retention_ms, receipt_retention_ms, cluster=cluster, catalog=catalog)
    total = await store.count()
    async for row in store.export(None, None):
        rebuild.add(row)
        if rebuild.events % PAGE == 0:
            tell("reading the ledger", rebuild.events, total)
    tell("reading the ledger", rebuild.events, total)
    outcome.events = rebuild.events
    await _write(redis, rebuild, outcome, tell)
    if cluster:
        heads = await store.heads()
        moved = [
            await _advance_ledger(redis, format_offset(at), keys.ledger(bucket))
            for bucket, at in sorted(heads.items())
            if bucket != SINGLE
        ]
        outcome.position = max(moved, key=parse_offset, default="")
    else:
        last = await store.last_position()
        if last is not None:
            outcome.position = await _advance_ledger(redis, f"{last[0]}-{last[1]}")
    log.info("recovered Redis from the ledger store", **msgspec.structs.asdict(outcome))
    return outcome


async def _check_quiet(redis: Redis) -> None:
    """Refuse while a relay is subscribed (on any node, replicas too: a relay may read a
    replica's sharded channels) or a ledger consumer was active."""
    async with node_clients(redis, replicas=True) as nodes:
        for name, (_, client) in nodes.items():
            if await client.client_list(_type="pubsub"):
                where = f" (node {name})" if name else ""
                raise RecoverRefused(
                    f"a relay is connected to this Redis{where} (subscribed to events): stop"
                    " every `giftrelay serve` first, or pass --force if you know it is safe"
                )
    for _, name, idle in await active_consumers(redis, QUIET_MS):
        raise RecoverRefused(
            f"ledger consumer {name!r} was active {idle / 1000:.1f} s ago:"
            " stop every `giftrelay ledger` first (wait 10 s), or pass --force"
        )


SWEEPS = 1000
"""Most looks at the outboxes before recover gives up on emptying them."""


async def _sweep(steps: Steps, tell: Progress) -> int:
    """Apply every transfer in the outboxes (a gift's stream step, a collect's credit), until
    they are empty; how many. Refuses when some cannot be applied (the log says why)."""
    moved = 0
    for _ in range(SWEEPS):
        found = await steps.sweep(grace_ms=0)
        await steps.aclose()  # the finished ones leave their outboxes (XDEL) before the next look
        waiting = sum(found.waiting.values())
        moved += found.moved
        tell("applying the gifts in the outboxes", moved, moved + waiting - found.moved)
        if not waiting:
            return moved
        if not found.moved:
            break
    raise RecoverRefused(
        f"{waiting} transfer(s) in the outboxes cannot be applied (the log says why):"
        " fix that first, then recover again; the ledger lacks them until they are"
    )


async def _drain(redis: Redis, store: Store, tell: Progress) -> tuple[int, int]:
    """Write what Redis's ledger stream(s) hold into the store (a redelivery of what
    the store has already is a no-op). Returns (entries newly written, poison)."""
    written = poison = 0
    streams = sources(redis)
    total = await lengths(redis, (s.key for s in streams))
    seen = 0
    for source in streams:
        w, p, n = await _drain_one(redis, store, source, seen, total, tell)
        written, poison, seen = written + w, poison + p, seen + n
    return written, poison


async def _drain_one(
    redis: Redis, store: Store, source: Source, before: int, total: int, tell: Progress
) -> tuple[int, int, int]:
    written = poison = seen = 0
    start = "-"
    while True:
        page = await redis.xrange(source.key, min=start, max="+", count=PAGE)
        if not page:
            break
        records: list[Record] = []
        for entry_id, fields in page:
            try:
                records.append(record(text(entry_id), text((fields or {}).get("e", "")),
                                      source.bucket))  # fmt: skip
            except PoisonEntry:
                poison += 1
        result = await store.write(records)
        written += result.inserted
        seen += len(page)
        tell("writing Redis's ledger stream to the store", before + seen, total)
        start = f"({page[-1][0]!s}"
    return written, poison, seen


async def _write(redis: Redis, rebuild: Rebuild, outcome: Outcome, tell: Progress) -> None:
    wallet_users = {keys.wallet_user(k) async for k in scan_all(redis, keys.WALLETS)}
    users = sorted(wallet_users | rebuild.wallets.keys())
    async with redis.pipeline(transaction=False) as pipe:
        for n, user in enumerate(users, 1):
            w = rebuild.wallets.get(user, Wallet())
            key = keys.wallet(user)
            pipe.hset(key, mapping={"coins": w.coins, "diamonds": w.diamonds,
                                    "spent_day": w.spent_day, "spent": w.spent,
                                    "lifetime": w.lifetime})  # fmt: skip
            if w.cap is None:
                pipe.hdel(key, "cap")
            else:
                pipe.hset(key, "cap", w.cap)
            if w.verified is None:
                pipe.hdel(key, "verified")
            else:
                pipe.hset(key, "verified", w.verified)
            _write_settings(pipe, key, w)
            if n % PAGE == 0:
                await pipe.execute()
                tell("writing wallets", n, len(users))
        pipe.delete(keys.VERIFIED)
        verified = [u for u in users if u in rebuild.wallets and rebuild.wallets[u].verified]
        if verified:
            pipe.sadd(keys.VERIFIED, *verified)
        await pipe.execute()
        outcome.wallets = len(users)
        tell("writing wallets", len(users), len(users))

        async for stale in scan_all(redis, keys.SPENDING):
            pipe.delete(stale)
        for (viewer, day), per_creator in rebuild.spending.items():
            key = keys.spending(viewer, day)
            pipe.hset(key, mapping=per_creator)  # type: ignore[arg-type]
            pipe.pexpireat(key, (day + 31) * DAY_MS)
        await pipe.execute()

        for n, (key, (value, ttl_ms)) in enumerate(rebuild.idempotency.items(), 1):
            pipe.set(key, value, px=ttl_ms)
            if n % PAGE == 0:
                await pipe.execute()
        await pipe.execute()
        outcome.records = len(rebuild.idempotency)

        for stream, totals in sorted(rebuild.streams.items()):
            key = keys.stream(stream)
            if not await redis.hexists(key, "creator"):
                outcome.unknown_streams.append(stream)
                continue
            combos = max(totals.combos, int(await redis.hget(key, "combos") or 0))
            pipe.hset(key, mapping={"diamonds": totals.diamonds, "coins": totals.coins,
                                    "gifts": totals.gifts, "combos": combos})  # fmt: skip
            pipe.delete(keys.top(stream))
            if totals.top:
                pipe.zadd(keys.top(stream), totals.top)
            outcome.streams += 1
        await pipe.execute()
        if rebuild.cluster:
            await _reset_earnings(redis)


async def _reset_earnings(redis: Redis) -> None:
    """On a cluster, every creator's diamonds are in the wallet now (the ledger's sums):
    no stream holds earnings, and each creator's streams are listed again."""
    async with redis.pipeline(transaction=False) as pipe:
        async for key in scan_all(redis, keys.STREAMS):
            creator = await redis.hget(key, "creator")
            if creator is None:
                continue
            pipe.hset(key, "earnings", 0)
            pipe.sadd(keys.creator_streams(text(creator)), keys.stream_id(key))
        await pipe.execute()


def _write_settings(pipe: Any, key: str, w: Wallet) -> None:
    """The mindful-spending fields, as set_confirm.lua, set_cooldown.lua and gift.lua
    write them."""
    if w.confirm is None:
        pipe.hdel(key, "confirm")
    else:
        pipe.hset(key, "confirm", w.confirm)
    if w.cool_coins is None or w.cool_minutes is None:
        pipe.hdel(key, "cool_coins", "cool_minutes", "cool_log")
        return
    pipe.hset(key, mapping={"cool_coins": w.cool_coins, "cool_minutes": w.cool_minutes})
    if w.cool_log:
        pipe.hset(key, "cool_log", rules.format_cool_log(w.cool_log))
    else:
        pipe.hdel(key, "cool_log")


async def _advance_ledger(redis: Redis, stored_last: str, stream: str = keys.LEDGER) -> str:
    """Move ``stream``'s last id past the newest stored event of it, so the ids Redis hands
    out next are new to the store and reconcile sees nothing lost."""
    try:
        await redis.xgroup_create(stream, keys.LEDGER_GROUP, id="$", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    info = await redis.xinfo_stream(stream)
    current = text(info["last-generated-id"])
    if parse_offset(stored_last) > parse_offset(current):
        await redis.execute_command("XSETID", stream, stored_last)  # type: ignore[no-untyped-call]
        return stored_last
    return current
