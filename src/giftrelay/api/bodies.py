"""Request bodies decoded strictly, as the socket decodes its messages.

Litestar converts a body laxly (``"5"`` would pass as the integer 5), which suits query
strings but not money: each handler takes its body again through a strict decoder,
built once per type, so ``"coins": "5"`` is a 400 as it is an error on the socket.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from giftrelay.wire.errors import Code, Refused

T = TypeVar("T")

_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


async def strict(request: Request[Any, Any, Any], data: T) -> T:
    """``data`` (what Litestar decoded) decoded again from the raw body, strictly."""
    kind = type(data)
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        value: T = decoder.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise Refused(Code.BAD_REQUEST, explain(str(exc))) from None
    return value


def explain(message: str) -> str:
    """msgspec's ``... - at `$.coins``` as ``coins: ...``."""
    text, sep, where = message.rpartition(" - at `$.")
    return f"{where.rstrip('`')}: {text}" if sep else message
