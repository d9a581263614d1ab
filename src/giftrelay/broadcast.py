"""One WebSocket message to many connections, with the frame built once.

``websockets.broadcast`` builds the frame again for every connection (a ``Frame``,
its header, a copy of the payload, a pass through the protocol's write queue) before
writing it. A server's frames are not masked and, without extensions (the relay turns
compression off), they are the same bytes for every connection. So the frame is
serialized once and those bytes are written to each transport: per viewer, what is
left is little more than the kernel's write. A connection with an extension goes
through ``websockets.broadcast`` instead, and so does one with a fragmented message
in progress, which websockets skips with a warning (the relay never fragments).

Writing to the transport directly is safe: websockets writes each frame to its
transport in one synchronous step, so a frame written here can never land inside
another one.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from websockets.asyncio.server import ServerConnection, broadcast
from websockets.frames import Frame, Opcode
from websockets.protocol import State

log = structlog.get_logger(__name__)

OPEN = State.OPEN


def send_all(
    connections: Iterable[ServerConnection], message: bytes, *, text: bool, buffer_limit: int
) -> list[ServerConnection]:
    """Send ``message`` to every open connection; return those now buffering more than
    ``buffer_limit`` bytes (readers that cannot keep up)."""
    frame = Frame(Opcode.TEXT if text else Opcode.BINARY, message).serialize(mask=False)
    slow: list[ServerConnection] = []
    others: list[ServerConnection] = []
    for conn in connections:
        protocol = conn.protocol
        if protocol.state is not OPEN:
            continue
        if protocol.extensions or conn.send_in_progress is not None:
            others.append(conn)
            continue
        transport = conn.transport
        try:
            transport.write(frame)
        except Exception as exc:  # a transport closing under us: its connection ends anyway
            log.debug("broadcast write failed", error=repr(exc))
            continue
        if transport.get_write_buffer_size() > buffer_limit:
            slow.append(conn)
    if others:
        broadcast(others, message, text=text)
        slow.extend(c for c in others if c.transport.get_write_buffer_size() > buffer_limit)
    return slow
