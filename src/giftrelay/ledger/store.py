"""The ledger store interface, and the factory that picks one by URL.

A store writes batches of records in one transaction keyed by event id (the stream
entry id and, on a Redis Cluster, its bucket: ``postings.event_ref``), so a batch
delivered twice is written once, and holds one movement per business key,
so a request Redis ran twice (after losing its idempotency record) is counted
once; it applies its versioned schema migrations when opened. ``sqlite:///path``
(the embedded default) and ``postgresql://...`` are the two implementations.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Protocol

import msgspec

from giftrelay.ledger.postings import EventKey, Posting, Record


class StoreUnavailable(Exception):
    """The store cannot be reached or is busy: retry later, nothing was written."""


class StoreDenied(StoreUnavailable):
    """The store refused the connection itself (a wrong user, password or database):
    waiting will not help, though a long-running consumer may still wait for a fix."""


class StoreDataError(Exception):
    """The store refused the data itself: retrying the same records will fail again."""


class WriteResult(msgspec.Struct, frozen=True):
    inserted: int
    duplicates: int
    """Records whose event id was already stored (a redelivery): written nowhere."""
    replays: int = 0
    """Records whose business key was already stored with the same fingerprint under
    another event id (Redis ran the request again): written nowhere."""
    conflicts: int = 0
    """Records whose business key was already stored with another fingerprint: kept
    aside in the store's conflicts, counted in no balance, reported by reconcile."""


class Conflict(msgspec.Struct, frozen=True):
    """A movement the store refused to count: its key was held by ``stored_id`` (both
    ids as ``postings.event_ref`` writes them)."""

    event_id: str
    kind: str
    business_key: str
    stored_id: str
    reason: str
    body: str


class ExportRow(msgspec.Struct, frozen=True):
    event_id: str
    """``postings.event_ref``: the stream entry id, prefixed by its bucket on a cluster."""
    ts: int
    kind: str
    request_id: str | None
    actor: str
    body: str
    postings: list[Posting]
    bucket: int = -1
    """The bucket stream it came from on a Redis Cluster; -1 (``postings.SINGLE``): the
    one ``ledger`` stream of a single Redis."""

    @property
    def position(self) -> Position:
        """Its stream entry id, as (ms, seq)."""
        ms, _, seq = self.event_id.rpartition(":")[2].partition("-")
        return int(ms), int(seq)


Position = tuple[int, int]
"""A ledger stream entry id as (ms, seq)."""

Upto = Position | Mapping[int, Position]
"""Events up to an id: in every bucket, or per bucket (buckets not named: none)."""

Bounds = Mapping[int, tuple[Position, Position]]
"""Per bucket, ids ``(after, upto)``: the events with ``after < id <= upto``."""


class Store(Protocol):
    url: str
    parallel_writes: int
    """How many batches the store usefully writes at once, each in its own transaction."""

    async def open(self) -> None:
        """Connect and apply any migrations not yet applied."""

    async def write(self, records: Sequence[Record]) -> WriteResult:
        """Write the records not already stored, with their postings, in one transaction."""

    async def balances(self, upto: Upto | None = None) -> dict[tuple[str, str], int]:
        """Sum of postings per (account, asset), over events up to ``upto`` inclusive
        (one id for every bucket, or one per bucket: a bucket not named counts nothing)."""

    async def count(self, since_ms: int | None = None, until_ms: int | None = None) -> int:
        """How many events are stored (with ``since_ms <= ts < until_ms``)."""

    async def last_position(self) -> Position | None:
        """The newest stored event's id, or None when the store is empty."""

    async def heads(self) -> dict[int, Position]:
        """Per bucket (-1: the single ``ledger`` stream), the newest stored event's id."""

    def between(self, bounds: Bounds) -> AsyncIterator[ExportRow]:
        """The events of each bucket in ``bounds`` with ``after < id <= upto``, in ledger
        order, with their postings."""

    async def holders(self, business_keys: Sequence[str]) -> dict[str, tuple[int, Position]]:
        """Which of ``business_keys`` are stored: (bucket, id) of the event holding each."""

    async def conflicts(self) -> list[Conflict]:
        """Every movement kept aside because its business key was held by another."""

    def export(
        self,
        since_ms: int | None,
        until_ms: int | None,
        *,
        after: Position | None = None,
        account: str | None = None,
    ) -> AsyncIterator[ExportRow]:
        """Events with ``since_ms <= ts < until_ms`` (and ids after ``after``; with
        ``account``, only those posting to it), in ledger order, with their postings."""

    async def movement(self, business_key: str) -> ExportRow | None:
        """The stored movement holding ``business_key`` (e.g. ``topup:<receipt>``), if any:
        the store remembers every receipt after Redis's idempotency records expire."""

    async def close(self) -> None: ...


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The dialect's ``migrations/<dialect>/NNNN_name.sql`` files, in order."""
    folder = resources.files("giftrelay.ledger").joinpath("migrations", dialect)
    found = []
    for item in folder.iterdir():
        if item.name.endswith(".sql"):
            number, _, rest = item.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), item.read_text()))
    return sorted(found, key=lambda m: m.version)


def statements(sql: str) -> list[str]:
    """A migration file's statements (split on ';' at line ends; no procedural SQL)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.M) if s.strip()]


async def pages(
    fetch: Callable[[EventKey], Awaitable[list[ExportRow]]], start: EventKey, size: int
) -> AsyncIterator[ExportRow]:
    """Every row of a read in ledger order, a page at a time: ``fetch(key)`` gives at
    most ``size`` rows after ``key`` (ms, seq, bucket); the next page starts after the last."""
    key = start
    while True:
        page = await fetch(key)
        for row in page:
            yield row
        if len(page) < size:
            return
        key = (*page[-1].position, page[-1].bucket)
