"""permessage-deflate (RFC 7692) that costs the relay one compression per frame.

A fan-out frame goes to thousands of viewers. Compressed per connection, as a
WebSocket server normally does it, that is thousands of compressions; sent plain, it
is thousands of copies of ~20 kB of JSON through the kernel, which is most of what a
flush costs. The relay negotiates *no context takeover* in both directions, so every
message is compressed on its own: the compressed bytes of a message are then the same
for every viewer that agreed the same window, and :func:`giftrelay.relay.broadcast.send_all`
compresses each frame once and writes those bytes to all of them. Event JSON is
repetitive; a frame shrinks several times.

No context takeover also means no compressor or decompressor is kept between messages,
so an idle connection costs no zlib memory. Messages below :data:`MIN_BYTES` (replies
such as ``gift_ok``) are sent uncompressed, which the RFC allows: compressing them
would save a few bytes for a new zlib stream each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CONT, Frame, Opcode
from websockets.typing import ExtensionParameter

MIN_BYTES = 512
"""Messages shorter than this go uncompressed."""
WINDOW_BITS = 12
"""The server's window (4 KiB): events repeat within a few hundred bytes."""
SETTINGS: dict[str, Any] = {"memLevel": 5}
"""As websockets' defaults: a smaller, faster compressor than zlib's own default."""


class Deflate(PerMessageDeflate):
    """permessage-deflate that leaves short messages uncompressed."""

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode is not CONT and frame.fin and len(frame.data) < MIN_BYTES:
            return frame
        return super().encode(frame)


class DeflateFactory(ServerPerMessageDeflateFactory):
    """Accepts a client's permessage-deflate offer with no context takeover both ways."""

    def __init__(self) -> None:
        super().__init__(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            server_max_window_bits=WINDOW_BITS,
            compress_settings=SETTINGS,
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, agreed = super().process_request_params(params, accepted_extensions)
        return response, Deflate(
            agreed.remote_no_context_takeover,
            agreed.local_no_context_takeover,
            agreed.remote_max_window_bits,
            agreed.local_max_window_bits,
            SETTINGS,
        )


def shared_window(extensions: Sequence[Extension]) -> int | None:
    """The window a connection's frames can be compressed with for everyone, or None
    when they cannot (no compression, or another extension, or context takeover)."""
    if len(extensions) != 1:
        return None
    ext = extensions[0]
    if type(ext) is not Deflate or not ext.local_no_context_takeover:
        return None
    return ext.local_max_window_bits


def compressed_frame(message: bytes, *, text: bool, window_bits: int) -> bytes:
    """The serialized frame of ``message``, compressed as every connection that agreed
    ``window_bits`` (and no context takeover) decodes it."""
    deflate = PerMessageDeflate(True, True, window_bits, window_bits, SETTINGS)
    frame = Frame(Opcode.TEXT if text else Opcode.BINARY, message)
    return frame.serialize(mask=False, extensions=[deflate])
