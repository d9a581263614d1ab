"""Messages straight from the frame parser to the session, not through a queue and a task.

websockets puts every data frame in a queue that ``recv()`` awaits: for each message,
a future is resolved and the connection's task woken to take it. For a relay whose
messages are small requests, that hand-over costs more than handling the message.
:class:`DirectConnection` gives each complete message to ``on_message`` in the same
step that parsed it (fragments reassembled; control frames, the handshake and the
close still go through websockets). The callback must not block: the relay's
:class:`~giftrelay.relay.connection.Connection` answers at once, or starts a script
call, or queues the message for its task, and pauses reading while it has its fill.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame
from websockets.protocol import Event


class DirectConnection(ServerConnection):
    """A server connection that calls ``on_message(data)`` for each data message once set
    (``str`` for text, ``bytes`` for binary), as websockets' ``recv()`` would return it."""

    on_message: Callable[[str | bytes], None] | None = None
    _fragments: list[bytes] | None = None
    _text = False

    def process_event(self, event: Event) -> None:
        deliver = self.on_message
        if deliver is None or self.request is None or not isinstance(event, Frame):
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is TEXT or opcode is BINARY:
            if event.fin:
                self._deliver(deliver, bytes(event.data), opcode is TEXT)
            else:
                self._fragments, self._text = [bytes(event.data)], opcode is TEXT
        elif opcode is CONT:
            if self._fragments is None:  # the protocol does not let this happen
                return
            self._fragments.append(bytes(event.data))
            if event.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._deliver(deliver, data, self._text)
        else:
            super().process_event(event)

    def _deliver(self, deliver: Callable[[str | bytes], None], data: bytes, text: bool) -> None:
        if not text:
            deliver(data)
            return
        try:
            message = data.decode()
        except UnicodeDecodeError as exc:  # as websockets' recv() does: 1007
            self.set_connection_exc(exc)
            self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
            self.send_data()
            return
        deliver(message)
