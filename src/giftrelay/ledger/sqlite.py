"""The SQLite ledger store: the embedded default, one file in WAL mode.

sqlite3 is synchronous, so every call runs in a worker thread, one at a time.
``synchronous=FULL``: a commit is on disk before the consumer acknowledges the
entries, so a power cut cannot lose an acknowledged entry.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from giftrelay.ledger.postings import (
    Asset,
    EventKey,
    Posting,
    Record,
    event_ref,
    event_rows,
    posting_rows,
)
from giftrelay.ledger.store import (
    Bounds,
    Conflict,
    ExportRow,
    Position,
    StoreDataError,
    StoreUnavailable,
    Upto,
    WriteResult,
    migrations,
    pages,
    statements,
)

T = TypeVar("T")

EXPORT_PAGE = 1000


class SQLiteStore:
    parallel_writes = 1
    """SQLite has one writer at a time: a second transaction would only wait for the lock."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self.busy_timeout_ms = busy_timeout_ms
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            if self._db is None:
                raise StoreUnavailable("the store is not open")
            db = self._db
            try:
                return await asyncio.to_thread(fn, db)
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(str(exc)) from exc
            except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
                raise StoreDataError(str(exc)) from exc

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_ms / 1000,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            return db

        try:
            self._db = await asyncio.to_thread(connect)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open {self.path}: {exc}") from exc
        await self._run(_migrate)

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult(0, 0)
        return await self._run(lambda db: _write(db, records))

    async def balances(self, upto: Upto | None = None) -> dict[tuple[str, str], int]:
        def query(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
            sql = "SELECT account, asset, SUM(amount) FROM postings"
            args: list[int] = []
            if isinstance(upto, Mapping):
                sql = (
                    _bounds_cte(len(upto))
                    + "SELECT p.account, p.asset, SUM(p.amount) FROM postings p"
                    " JOIN bounds b ON p.bucket = b.bucket"
                    " WHERE p.ms < b.hi_ms OR (p.ms = b.hi_ms AND p.seq <= b.hi_seq)"
                )
                args = [n for bucket, at in upto.items() for n in (bucket, -1, -1, *at)]
            elif upto is not None:
                sql += " WHERE ms < ? OR (ms = ? AND seq <= ?)"
                args = [upto[0], upto[0], upto[1]]
            rows = db.execute(sql + " GROUP BY account, asset", args).fetchall()
            return {(account, asset): int(total) for account, asset, total in rows}

        return await self._run(query)

    async def count(self, since_ms: int | None = None, until_ms: int | None = None) -> int:
        sql = "SELECT COUNT(*) FROM events WHERE ts >= ? AND ts < ?"
        args = (since_ms or 0, until_ms or 2**62)
        return await self._run(lambda db: int(db.execute(sql, args).fetchone()[0]))

    async def last_position(self) -> Position | None:
        def query(db: sqlite3.Connection) -> Position | None:
            row = db.execute("SELECT ms, seq FROM events ORDER BY ms DESC, seq DESC LIMIT 1")
            found = row.fetchone()
            return (int(found[0]), int(found[1])) if found else None

        return await self._run(query)

    async def heads(self) -> dict[int, Position]:
        def query(db: sqlite3.Connection) -> dict[int, Position]:
            rows = db.execute(HEADS).fetchall()
            return {int(bucket): (int(ms), int(seq)) for bucket, ms, seq in rows}

        return await self._run(query)

    async def holders(self, business_keys: Sequence[str]) -> dict[str, tuple[int, Position]]:
        def query(db: sqlite3.Connection) -> dict[str, tuple[int, Position]]:
            found: dict[str, tuple[int, Position]] = {}
            for start in range(0, len(business_keys), 500):
                chunk = business_keys[start : start + 500]
                for key, bucket, ms, seq in db.execute(
                    "SELECT business_key, bucket, ms, seq FROM events"
                    f" WHERE business_key IN ({', '.join('?' * len(chunk))})",
                    chunk,
                ):
                    found[key] = (int(bucket), (int(ms), int(seq)))
            return found

        return await self._run(query)

    async def conflicts(self) -> list[Conflict]:
        def query(db: sqlite3.Connection) -> list[Conflict]:
            rows = db.execute(
                "SELECT ms, seq, bucket, kind, business_key, stored_ms, stored_seq,"
                " stored_bucket, reason, body FROM conflicts ORDER BY ms, seq, bucket"
            ).fetchall()
            return [Conflict(event_ref(b, m, s), k, key, event_ref(sb, sm, ss), why, body)
                    for m, s, b, k, key, sm, ss, sb, why, body in rows]  # fmt: skip

        return await self._run(query)

    async def export(
        self,
        since_ms: int | None,
        until_ms: int | None,
        *,
        after: Position | None = None,
        account: str | None = None,
    ) -> AsyncIterator[ExportRow]:
        def fetch(key: EventKey) -> Awaitable[list[ExportRow]]:
            return self._run(
                functools.partial(
                    _export_page, after=key, since_ms=since_ms, until_ms=until_ms, account=account
                )
            )

        start: EventKey = (after[0], after[1], LAST_BUCKET) if after else (-1, -1, -1)
        async for row in pages(fetch, start, EXPORT_PAGE):
            yield row

    async def between(self, bounds: Bounds) -> AsyncIterator[ExportRow]:
        if not bounds:
            return

        def fetch(key: EventKey) -> Awaitable[list[ExportRow]]:
            return self._run(functools.partial(_export_page, after=key, bounds=bounds))

        async for row in pages(fetch, (-1, -1, -1), EXPORT_PAGE):
            yield row

    async def movement(self, business_key: str) -> ExportRow | None:
        def query(db: sqlite3.Connection) -> ExportRow | None:
            found = db.execute(
                "SELECT ms, seq, bucket FROM events WHERE business_key = ?", (business_key,)
            ).fetchone()
            if found is None:
                return None
            before = (found[0], found[1], found[2] - 1)
            page = _export_page(db, after=before, limit=1)
            return page[0] if page else None

        return await self._run(query)

    async def close(self) -> None:
        async with self._lock:
            if self._db is not None:
                db, self._db = self._db, None
                await asyncio.to_thread(db.close)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
        )
        done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
        for migration in migrations("sqlite"):
            if migration.version in done:
                continue
            for statement in statements(migration.sql):
                db.execute(statement)
            db.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time_ns() // 1_000_000),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


EVENT_WIDTH = 10
POSTING_WIDTH = 7
INSERT_EVENT = f"INSERT INTO events VALUES ({', '.join('?' * EVENT_WIDTH)}) ON CONFLICT DO NOTHING"
INSERT_CONFLICT = (
    "INSERT INTO conflicts (ms, seq, bucket, kind, business_key, fingerprint, body, stored_ms,"
    " stored_seq, stored_bucket, reason, found_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'conflict', ?) ON CONFLICT (ms, seq, bucket) DO NOTHING"
)
LAST_BUCKET = 1 << 30
"""Above every bucket: ``(ms, seq, LAST_BUCKET)`` is after every event with id (ms, seq)."""
HEADS = (
    "SELECT e.bucket, e.ms, MAX(e.seq) FROM events e"
    " JOIN (SELECT bucket, MAX(ms) AS ms FROM events GROUP BY bucket) m"
    " ON e.bucket = m.bucket AND e.ms = m.ms GROUP BY e.bucket, e.ms"
)
"""Per bucket, the newest event: its newest millisecond, then that millisecond's last seq."""


def _bounds_cte(count: int) -> str:
    """``bounds(bucket, lo_ms, lo_seq, hi_ms, hi_seq)`` from ``count`` rows of parameters."""
    rows = ", ".join(["(?, ?, ?, ?, ?)"] * count)
    return f"WITH bounds(bucket, lo_ms, lo_seq, hi_ms, hi_seq) AS (VALUES {rows}) "


CHUNK = 1024
"""Most rows per INSERT statement (9 x 1024 parameters, under SQLite's 32,766)."""


def _insert_many(db: sqlite3.Connection, table: str, width: int, values: list[Any]) -> int:
    """Insert rows given as flat ``values`` (``width`` per row) in few statements; rows added.

    sqlite3 holds the GIL between rows, so executemany hands the GIL back and forth
    with the event loop thousands of times per batch, and each handover can wait for
    the switch interval. A multi-row VALUES statement runs without the GIL. Chunks are
    of power-of-two sizes, so a handful of statements cover any batch and stay cached.
    """
    suffix = " ON CONFLICT DO NOTHING" if table == "events" else ""
    added = 0
    start = 0
    while start < len(values):
        count = min(CHUNK, 1 << (((len(values) - start) // width).bit_length() - 1))
        stop = start + count * width
        added += db.execute(_values_sql(table, width, count, suffix), values[start:stop]).rowcount
        start = stop
    return added


@functools.cache
def _values_sql(table: str, width: int, count: int, suffix: str) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT INTO {table} VALUES {', '.join([row] * count)}{suffix}"


def _write(db: sqlite3.Connection, records: Sequence[Record]) -> WriteResult:
    # The primary key and the business key decide what is new: an event that
    # collides with either is skipped by ON CONFLICT DO NOTHING, and its postings
    # must be skipped too. If every event was inserted (the usual case: entries read
    # once, requests run once), all postings go in; if not, the batch is redone one
    # event at a time, each insert saying whether it added a row and, if not, why
    # (see _classify). BEGIN IMMEDIATE holds the write lock throughout.
    unique = list({(r.ms, r.seq, r.bucket): r for r in records}.values())
    db.execute("BEGIN IMMEDIATE")
    try:
        events = list(itertools.chain.from_iterable(event_rows(unique)))
        fresh = unique
        skipped = [0, 0, 0]  # duplicates, replays, conflicts
        if _insert_many(db, "events", EVENT_WIDTH, events) != len(unique):
            db.execute("ROLLBACK")
            db.execute("BEGIN IMMEDIATE")
            fresh = []
            for r, row in zip(unique, event_rows(unique), strict=True):
                if db.execute(INSERT_EVENT, row).rowcount:
                    fresh.append(r)
                else:
                    skipped[_classify(db, r)] += 1
        postings = list(itertools.chain.from_iterable(posting_rows(fresh)))
        _insert_many(db, "postings", POSTING_WIDTH, postings)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    duplicates, replays, conflicts = skipped
    return WriteResult(
        inserted=len(fresh),
        duplicates=duplicates + len(records) - len(unique),
        replays=replays,
        conflicts=conflicts,
    )


DUPLICATE, REPLAY, CONFLICT = 0, 1, 2


def _classify(db: sqlite3.Connection, r: Record) -> int:
    """Why ``r`` was not inserted: its event id is stored (a redelivery), or its
    business key is, with the same fingerprint (a replay) or another (a conflict,
    which is kept aside in ``conflicts``)."""
    if db.execute(
        "SELECT 1 FROM events WHERE ms = ? AND seq = ? AND bucket = ?", (r.ms, r.seq, r.bucket)
    ).fetchone():
        return DUPLICATE
    held = db.execute(
        "SELECT ms, seq, bucket, fingerprint FROM events WHERE business_key = ?", (r.key,)
    ).fetchone()
    if held is None:
        raise sqlite3.IntegrityError(f"event {r.ref} was refused by no known key")
    if held[3] == r.fingerprint:
        return REPLAY
    found = time.time_ns() // 1_000_000
    row = (r.ms, r.seq, r.bucket, r.kind, r.key, r.fingerprint, r.body, *held[:3], found)
    db.execute(INSERT_CONFLICT, row)
    return CONFLICT


def _export_page(
    db: sqlite3.Connection,
    *,
    after: EventKey,
    since_ms: int | None = None,
    until_ms: int | None = None,
    account: str | None = None,
    bounds: Bounds | None = None,
    limit: int = EXPORT_PAGE,
) -> list[ExportRow]:
    """Events after ``after`` in ledger order: with ``since_ms <= ts < until_ms``, posting to
    ``account`` if given, within ``bounds`` if given; with their postings."""
    sql = "SELECT e.ms, e.seq, e.bucket, e.ts, e.kind, e.request_id, e.actor, e.body FROM events e"
    args: list[Any] = []
    if bounds is not None:
        sql = _bounds_cte(len(bounds)) + sql + " JOIN bounds b ON e.bucket = b.bucket"
        args += [n for bucket, (lo, hi) in bounds.items() for n in (bucket, *lo, *hi)]
    # `e.ms >= ?` bounds the primary key's range; the rest picks within its first ms.
    sql += (
        " WHERE e.ms >= ? AND (e.ms > ? OR e.seq > ? OR (e.seq = ? AND e.bucket > ?))"
        " AND e.ts >= ? AND e.ts < ?"
    )
    args += [after[0], after[0], after[1], after[1], after[2], since_ms or 0, until_ms or 2**62]
    if bounds is not None:
        sql += (
            " AND (e.ms > b.lo_ms OR (e.ms = b.lo_ms AND e.seq > b.lo_seq))"
            " AND (e.ms < b.hi_ms OR (e.ms = b.hi_ms AND e.seq <= b.hi_seq))"
        )
    if account is not None:
        sql += (
            " AND EXISTS (SELECT 1 FROM postings p WHERE p.ms = e.ms AND p.seq = e.seq"
            " AND p.bucket = e.bucket AND p.account = ?)"
        )
        args.append(account)
    rows = db.execute(sql + " ORDER BY e.ms, e.seq, e.bucket LIMIT ?", [*args, limit]).fetchall()
    if not rows:
        return []
    postings: dict[EventKey, list[Posting]] = {(ms, seq, b): [] for ms, seq, b, *_ in rows}
    for ms, seq, bucket, account_, asset, amount in db.execute(
        "SELECT ms, seq, bucket, account, asset, amount FROM postings"
        " WHERE ms >= ? AND ms <= ? ORDER BY ms, seq, bucket, n",
        (rows[0][0], rows[-1][0]),
    ):
        found = postings.get((ms, seq, bucket))
        if found is not None:
            found.append(Posting(account_, Asset(asset), amount))
    return [
        ExportRow(event_ref(b, ms, seq), ts, kind, rid, actor, body, postings[(ms, seq, b)], b)
        for ms, seq, b, ts, kind, rid, actor, body in rows
    ]
