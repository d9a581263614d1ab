"""Offsets: Redis stream entry ids (``"1700000000000-3"``), the one parser.

A stream's history entry ids are its events' offsets, and the ``ledger`` stream's
entry ids are the ledger's event ids; both compare as (milliseconds, sequence).
"""

from __future__ import annotations

Offset = tuple[int, int]
"""An entry id as a comparable pair: ``"1700000000000-3"`` -> (1700000000000, 3)."""


def parse_offset(offset: str) -> Offset:
    """The pair for ``offset``; a bare ``"1700000000000"`` is sequence 0. ValueError if
    it is not one."""
    ms, _, seq = offset.partition("-")
    return int(ms), int(seq or 0)


def format_offset(offset: Offset) -> str:
    return f"{offset[0]}-{offset[1]}"
