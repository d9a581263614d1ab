"""Identifier formats: users, streams, gifts and request ids (docs/protocol.md)."""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

IDENT_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
"""Users, streams and gifts (docs/protocol.md: 1-64 of ``[A-Za-z0-9_.-]``)."""

REQUEST_ID_PATTERN = r"^[A-Za-z0-9_\-]{8,64}$"
"""Idempotency keys (docs/protocol.md: 8-64 of ``[A-Za-z0-9_-]``)."""

Ident = Annotated[str, msgspec.Meta(pattern=IDENT_PATTERN)]
RequestId = Annotated[str, msgspec.Meta(pattern=REQUEST_ID_PATTERN)]

_ident = re.compile(IDENT_PATTERN)
_request_id = re.compile(REQUEST_ID_PATTERN)


def is_ident(text: str) -> bool:
    return _ident.match(text) is not None


def is_request_id(text: str) -> bool:
    return _request_id.match(text) is not None
