"""The PostgreSQL ledger store (asyncpg), for scaled-out deployments.

A batch is one transaction: the events by COPY (if any is already stored, a
redelivery or a replay of a business key, the COPY fails and, from a savepoint,
``ON CONFLICT DO NOTHING RETURNING`` inserts the rest and says which were new),
then the postings of the new ones by COPY. COPY, binary, is ~30% cheaper than
INSERT ... unnest here. Migrations run under an advisory lock, so several consumers
may start at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from giftrelay.ledger.postings import (
    Asset,
    EventKey,
    EventRow,
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
    StoreDenied,
    StoreUnavailable,
    Upto,
    WriteResult,
    migrations,
    pages,
    statements,
)

MIGRATION_LOCK = 0x6C6564676572  # "ledger"
EXPORT_PAGE = 1000
LAST_BUCKET = 1 << 14
"""Above every bucket (a smallint): ``(ms, seq, LAST_BUCKET)`` follows every event (ms, seq)."""

_DATA_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
_DENIED = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)
"""A wrong user, password or database name: not transient."""


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """asyncpg's errors as the store interface's two kinds."""
    try:
        yield
    except _DATA_ERRORS as exc:
        raise StoreDataError(str(exc)) from exc
    except _DENIED as exc:
        raise StoreDenied(f"{type(exc).__name__}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


class PostgresStore:
    parallel_writes = 3
    """A write is mostly the server's work (foreign key checks), so several at once use the
    cores Python leaves idle: measured on 2 cores, 3 beat 2 and 2 beat 1 (docs/ledger.md)."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        with _translated():
            self._pool = await asyncpg.create_pool(
                self.url, min_size=0, max_size=4, command_timeout=self.timeout, timeout=self.timeout
            )
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)"
                )
                done = {
                    r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")
                }
                for migration in migrations("postgresql"):
                    if migration.version in done:
                        continue
                    for statement in statements(migration.sql):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        time.time_ns() // 1_000_000,
                    )

    def _pool_or_fail(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def write(self, records: Sequence[Record]) -> WriteResult:
        if not records:
            return WriteResult(0, 0)
        unique = list({(r.ms, r.seq, r.bucket): r for r in records}.values())
        rows = event_rows(unique)
        with _translated():
            async with self._pool_or_fail().acquire() as conn, conn.transaction():
                fresh, (duplicates, replays, conflicts) = await _insert_events(conn, unique, rows)
                postings = posting_rows(fresh)
                if postings:
                    await conn.copy_records_to_table("postings", records=postings)
        return WriteResult(
            inserted=len(fresh),
            duplicates=duplicates + len(records) - len(unique),
            replays=replays,
            conflicts=conflicts,
        )

    async def balances(self, upto: Upto | None = None) -> dict[tuple[str, str], int]:
        sql = "SELECT account, asset, SUM(amount) AS total FROM postings"
        args: list[Any] = []
        if isinstance(upto, Mapping):
            sql = (
                "SELECT p.account, p.asset, SUM(p.amount) AS total FROM postings p"
                " JOIN unnest($1::smallint[], $2::bigint[], $3::bigint[]) AS b(bucket, ms, seq)"
                " ON p.bucket = b.bucket WHERE (p.ms, p.seq) <= (b.ms, b.seq)"
            )
            args = [list(upto), [at[0] for at in upto.values()], [at[1] for at in upto.values()]]
        elif upto is not None:
            sql += " WHERE ms < $1 OR (ms = $1 AND seq <= $2)"
            args = [upto[0], upto[1]]
        with _translated():
            rows = await self._pool_or_fail().fetch(sql + " GROUP BY account, asset", *args)
        return {(r["account"], r["asset"]): int(r["total"]) for r in rows}

    async def count(self, since_ms: int | None = None, until_ms: int | None = None) -> int:
        with _translated():
            return int(
                await self._pool_or_fail().fetchval(
                    "SELECT COUNT(*) FROM events WHERE ts >= $1 AND ts < $2",
                    since_ms or 0,
                    until_ms or 2**62,
                )
            )

    async def last_position(self) -> Position | None:
        with _translated():
            row = await self._pool_or_fail().fetchrow(
                "SELECT ms, seq FROM events ORDER BY ms DESC, seq DESC LIMIT 1"
            )
        return (int(row["ms"]), int(row["seq"])) if row else None

    async def heads(self) -> dict[int, Position]:
        with _translated():
            rows = await self._pool_or_fail().fetch(
                "SELECT e.bucket, e.ms, MAX(e.seq) AS seq FROM events e"
                " JOIN (SELECT bucket, MAX(ms) AS ms FROM events GROUP BY bucket) m"
                " ON e.bucket = m.bucket AND e.ms = m.ms GROUP BY e.bucket, e.ms"
            )
        return {int(r["bucket"]): (int(r["ms"]), int(r["seq"])) for r in rows}

    async def holders(self, business_keys: Sequence[str]) -> dict[str, tuple[int, Position]]:
        with _translated():
            rows = await self._pool_or_fail().fetch(
                "SELECT business_key, bucket, ms, seq FROM events WHERE business_key = ANY($1)",
                list(business_keys),
            )
        return {r["business_key"]: (int(r["bucket"]), (int(r["ms"]), int(r["seq"]))) for r in rows}

    async def conflicts(self) -> list[Conflict]:
        with _translated():
            rows = await self._pool_or_fail().fetch(
                "SELECT ms, seq, bucket, kind, business_key, stored_ms, stored_seq, stored_bucket,"
                " reason, body FROM conflicts ORDER BY ms, seq, bucket"
            )
        return [
            Conflict(event_ref(r["bucket"], r["ms"], r["seq"]), r["kind"], r["business_key"],
                     event_ref(r["stored_bucket"], r["stored_ms"], r["stored_seq"]), r["reason"],
                     r["body"])
            for r in rows
        ]  # fmt: skip

    async def export(
        self,
        since_ms: int | None,
        until_ms: int | None,
        *,
        after: Position | None = None,
        account: str | None = None,
    ) -> AsyncIterator[ExportRow]:
        async def fetch(key: EventKey) -> list[ExportRow]:
            with _translated():
                return await self._page(key, since_ms, until_ms, account)

        start: EventKey = (after[0], after[1], LAST_BUCKET) if after else (-1, -1, -1)
        async for row in pages(fetch, start, EXPORT_PAGE):
            yield row

    async def between(self, bounds: Bounds) -> AsyncIterator[ExportRow]:
        if not bounds:
            return

        async def fetch(key: EventKey) -> list[ExportRow]:
            with _translated():
                return await self._page(key, None, None, bounds=bounds)

        async for row in pages(fetch, (-1, -1, -1), EXPORT_PAGE):
            yield row

    async def movement(self, business_key: str) -> ExportRow | None:
        with _translated():
            found = await self._pool_or_fail().fetchrow(
                "SELECT ms, seq, bucket FROM events WHERE business_key = $1", business_key
            )
            if found is None:
                return None
            before = (int(found["ms"]), int(found["seq"]), int(found["bucket"]) - 1)
            page = await self._page(before, None, None, limit=1)
        return page[0] if page else None

    async def _page(
        self,
        after: EventKey,
        since_ms: int | None,
        until_ms: int | None,
        account: str | None = None,
        *,
        bounds: Bounds | None = None,
        limit: int = EXPORT_PAGE,
    ) -> list[ExportRow]:
        pool = self._pool_or_fail()
        args: list[Any] = [*after, since_ms or 0, until_ms or 2**62, limit]
        sql = (
            "SELECT e.ms, e.seq, e.bucket, e.ts, e.kind, e.request_id, e.actor, e.body"
            " FROM events e"
        )
        where = " WHERE (e.ms, e.seq, e.bucket) > ($1, $2, $3) AND e.ts >= $4 AND e.ts < $5"
        if bounds is not None:
            spans = list(bounds.items())
            args += [[b for b, _ in spans], *([span[i][j] for _, span in spans]
                                              for i in (0, 1) for j in (0, 1))]  # fmt: skip
            sql += (
                " JOIN unnest($7::smallint[], $8::bigint[], $9::bigint[], $10::bigint[],"
                " $11::bigint[]) AS b(bucket, lo_ms, lo_seq, hi_ms, hi_seq) ON e.bucket = b.bucket"
            )
            where += (
                " AND (e.ms, e.seq) > (b.lo_ms, b.lo_seq) AND (e.ms, e.seq) <= (b.hi_ms, b.hi_seq)"
            )
        if account is not None:
            args.append(account)
            where += (
                " AND EXISTS (SELECT 1 FROM postings p WHERE p.ms = e.ms AND p.seq = e.seq"
                f"  AND p.bucket = e.bucket AND p.account = ${len(args)})"
            )
        sql += where
        rows = await pool.fetch(sql + " ORDER BY e.ms, e.seq, e.bucket LIMIT $6", *args)
        if not rows:
            return []
        postings: dict[EventKey, list[Posting]] = {
            (r["ms"], r["seq"], r["bucket"]): [] for r in rows
        }
        for p in await pool.fetch(
            "SELECT ms, seq, bucket, account, asset, amount FROM postings"
            " WHERE (ms, seq) >= ($1, $2) AND (ms, seq) <= ($3, $4) ORDER BY ms, seq, bucket, n",
            rows[0]["ms"],
            rows[0]["seq"],
            rows[-1]["ms"],
            rows[-1]["seq"],
        ):
            found = postings.get((p["ms"], p["seq"], p["bucket"]))
            if found is not None:
                found.append(Posting(p["account"], Asset(p["asset"]), p["amount"]))
        return [
            ExportRow(
                event_ref(r["bucket"], r["ms"], r["seq"]),
                r["ts"],
                r["kind"],
                r["request_id"],
                r["actor"],
                r["body"],
                postings[(r["ms"], r["seq"], r["bucket"])],
                r["bucket"],
            )
            for r in rows
        ]

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), self.timeout)


Skipped = tuple[int, int, int]
"""Records not inserted: duplicates (event id stored), replays and conflicts (business key)."""


async def _insert_events(
    conn: PoolConnectionProxy[asyncpg.Record], unique: list[Record], rows: list[EventRow]
) -> tuple[list[Record], Skipped]:
    """Insert the events not yet stored; return the records that were new, and why
    the others were not.

    COPY is the fast path and refuses the whole batch if any event is already
    stored (a redelivery) or its business key is: then, back at the savepoint, ON
    CONFLICT DO NOTHING RETURNING says which ones were new. Never trusts that fresh
    reads are new.
    """
    try:
        async with conn.transaction():  # a savepoint
            await conn.copy_records_to_table("events", records=rows)
        return unique, (0, 0, 0)
    except asyncpg.UniqueViolationError:
        pass
    inserted = await conn.fetch(
        "INSERT INTO events"
        " SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],"
        "                      $5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[],"
        "                      $10::smallint[])"
        " ON CONFLICT DO NOTHING RETURNING ms, seq, bucket",
        *(list(column) for column in zip(*rows, strict=True)),
    )
    new = {(row["ms"], row["seq"], row["bucket"]) for row in inserted}
    fresh = [r for r in unique if (r.ms, r.seq, r.bucket) in new]
    rest = [r for r in unique if (r.ms, r.seq, r.bucket) not in new]
    return fresh, await _classify(conn, rest)


async def _classify(conn: PoolConnectionProxy[asyncpg.Record], rest: list[Record]) -> Skipped:
    """Why each record of ``rest`` was not inserted: its event id is stored (a
    redelivery), or its business key is, with the same fingerprint (a replay) or
    another (a conflict, kept aside in ``conflicts``)."""
    if not rest:
        return 0, 0, 0
    stored = {
        (r["ms"], r["seq"], r["bucket"])
        for r in await conn.fetch(
            "SELECT e.ms, e.seq, e.bucket FROM events e"
            " JOIN unnest($1::bigint[], $2::bigint[], $3::smallint[]) AS k(ms, seq, bucket)"
            " USING (ms, seq, bucket)",
            [r.ms for r in rest],
            [r.seq for r in rest],
            [r.bucket for r in rest],
        )
    }
    by_key = [r for r in rest if (r.ms, r.seq, r.bucket) not in stored]
    held = {
        row["business_key"]: row
        for row in await conn.fetch(
            "SELECT business_key, ms, seq, bucket, fingerprint FROM events"
            " WHERE business_key = ANY($1)",
            [r.key for r in by_key],
        )
    }
    replays, conflicts = 0, []
    found = time.time_ns() // 1_000_000
    for r in by_key:
        holder = held.get(r.key)
        if holder is None:
            raise StoreDataError(f"event {r.ref} was refused by no known key")
        if holder["fingerprint"] == r.fingerprint:
            replays += 1
        else:
            conflicts.append((r.ms, r.seq, r.kind, r.key, r.fingerprint, r.body,
                              holder["ms"], holder["seq"], "conflict", found, r.bucket,
                              holder["bucket"]))  # fmt: skip
    if conflicts:
        await conn.executemany(
            "INSERT INTO conflicts VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            " ON CONFLICT (ms, seq, bucket) DO NOTHING",
            conflicts,
        )
    return len(stored), replays, len(conflicts)
