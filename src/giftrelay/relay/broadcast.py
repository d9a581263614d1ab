"""One WebSocket message to many connections, with the frame built once.

``websockets.broadcast`` builds the frame again for every connection (a ``Frame``,
its header, a copy of the payload, a pass through the protocol's write queue) before
writing it. A server's frames are not masked, so the frame is serialized once and
those bytes are written to each transport: per viewer, what is left is little more
than the kernel's write. A connection that negotiated the relay's permessage-deflate
gets the frame compressed, once for all such connections (:mod:`giftrelay.relay.compression`).
A connection with any other extension goes through ``websockets.broadcast`` instead,
and so does one with a fragmented message in progress, which websockets skips with a
warning (the relay never fragments).

Writing to the transport directly is safe: websockets writes each frame to its
transport in one synchronous step, so a frame written here can never land inside
another one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import structlog
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from giftrelay.relay.compression import MIN_BYTES, compressed_frame, shared_window

log = structlog.get_logger(__name__)

OPEN = State.OPEN


class Sent(NamedTuple):
    slow: list[ServerConnection]
    """Connections now buffering more than the limit: readers that cannot keep up."""
    wire_bytes: int
    """Frame bytes written, headers included, after compression."""


def send_all(
    connections: Iterable[ServerConnection], message: bytes, *, text: bool, buffer_limit: int
) -> Sent:
    """Send ``message`` to every open connection."""
    plain = Frame(Opcode.TEXT if text else Opcode.BINARY, message).serialize(mask=False)
    small = len(message) < MIN_BYTES  # sent uncompressed to every connection
    compressed: dict[int, bytes] = {}  # window bits -> the compressed frame
    slow: list[ServerConnection] = []
    others: list[ServerConnection] = []
    written = 0
    for conn in connections:
        protocol = conn.protocol
        if protocol.state is not OPEN:
            continue
        frame = plain
        if protocol.extensions:
            bits = shared_window(protocol.extensions)
            if bits is None:
                others.append(conn)
                continue
            if not small:
                frame = compressed.get(bits) or compressed.setdefault(
                    bits, compressed_frame(message, text=text, window_bits=bits)
                )
        if conn.send_in_progress is not None:
            others.append(conn)
            continue
        transport = conn.transport
        try:
            transport.write(frame)
        except Exception as exc:  # a transport closing under us: its connection ends anyway
            log.debug("broadcast write failed", error=repr(exc))
            continue
        written += len(frame)
        if transport.get_write_buffer_size() > buffer_limit:
            slow.append(conn)
    if others:  # their frames are built by websockets: counted as if plain
        broadcast(others, message, text=text)
        written += len(others) * len(plain)
        slow.extend(c for c in others if c.transport.get_write_buffer_size() > buffer_limit)
    return Sent(slow, written)
