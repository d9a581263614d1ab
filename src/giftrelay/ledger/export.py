"""Export the ledger for accounting: one row per event, with its postings."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import AsyncIterator
from typing import IO

import msgspec

from giftrelay.ledger.store import ExportRow

CSV_COLUMNS = ["event_id", "time", "kind", "request_id", "actor", "postings", "event"]


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from ``2026-11-01``, ``2026-11-01T12:00:00`` (UTC
    unless an offset is given) or a number of milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO date/time nor milliseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")


def postings_text(row: ExportRow) -> str:
    return "; ".join(f"{p.account} {p.asset} {p.amount:+d}" for p in row.postings)


class JsonRow(msgspec.Struct):
    event_id: str
    time: str
    kind: str
    request_id: str | None
    actor: str
    postings: list[dict[str, object]]
    event: msgspec.Raw


async def write(rows: AsyncIterator[ExportRow], out: IO[str], fmt: str) -> AsyncIterator[int]:
    """Write ``rows`` to ``out`` as ``csv`` or ``jsonl``; yields the count so far, for progress."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        async for row in rows:
            writer.writerow(
                [
                    row.event_id,
                    iso(row.ts),
                    row.kind,
                    row.request_id or "",
                    row.actor,
                    postings_text(row),
                    row.body,
                ]
            )
            n += 1
            yield n
    elif fmt == "jsonl":
        encoder = msgspec.json.Encoder()
        async for row in rows:
            doc = JsonRow(
                event_id=row.event_id,
                time=iso(row.ts),
                kind=row.kind,
                request_id=row.request_id,
                actor=row.actor,
                postings=[
                    {"account": p.account, "asset": p.asset.value, "amount": p.amount}
                    for p in row.postings
                ],
                event=msgspec.Raw(row.body.encode()),
            )
            out.write(encoder.encode(doc).decode() + "\n")
            n += 1
            yield n
    else:
        raise ValueError(f"unknown format {fmt!r}: csv or jsonl")
