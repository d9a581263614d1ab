"""What the relay sends, typed: its frames decoded into the relay's own Structs, and
events of kinds added after this client kept as :class:`UnknownEvent` rather than
breaking it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from giftrelay.wire import events, protocol
from giftrelay.wire.offsets import parse_offset
from giftrelay.wire.protocol import Joined, Reply


class UnknownEvent(msgspec.Struct, frozen=True):
    """An event of a kind added to the protocol after this client was written."""

    kind: str
    offset: str
    ts: int = 0


Known = (
    events.GiftEvent
    | events.GoalEvent
    | events.StreamEndedEvent
    | events.LevelUpEvent
    | events.BattleInviteEvent
    | events.BattleDeclinedEvent
    | events.BattleStartEvent
    | events.BattleEndEvent
    | events.ViewersEvent
    | events.TopEvent
    | events.ComboEndEvent
    | events.BattleEvent
)
"""The event kinds this client knows."""

Event = Known | UnknownEvent
"""Everything ``on_events`` can receive. The live ones (viewers, top, combo_end, battle)
are not stored: they carry the offset of the latest stored event."""

STORED = (
    events.GiftEvent,
    events.GoalEvent,
    events.StreamEndedEvent,
    events.LevelUpEvent,
    events.BattleInviteEvent,
    events.BattleDeclinedEvent,
    events.BattleStartEvent,
    events.BattleEndEvent,
)

EventsHandler = Callable[[str, list[Event]], Awaitable[None] | None]
"""Called with each batch of a stream's events, in offset order. A coroutine result is
awaited before the next frame is read: a slow handler slows reading (backpressure)."""

JoinedHandler = Callable[[Joined], Awaitable[None] | None]


class AnyReply(msgspec.Struct):
    type: str = ""
    ref: str | None = None


ServerMessage = (
    protocol.Hello
    | protocol.Joined
    | protocol.Left
    | protocol.GiftOk
    | protocol.Balance
    | protocol.Pong
    | protocol.CatalogReply
    | protocol.TopupOk
    | protocol.StreamOk
    | protocol.PayoutOk
    | protocol.CapOk
    | protocol.ConfirmOk
    | protocol.CooldownOk
    | protocol.Spending
    | protocol.GoalOk
    | protocol.TestOk
    | protocol.RevokeOk
    | protocol.BattleOk
    | protocol.Error
    | protocol.Events
)
"""Every server -> client message this client knows, as the relay's own Structs."""
reply_decoder = msgspec.json.Decoder(ServerMessage)


class KnownEvents(msgspec.Struct, tag="events", tag_field="type", kw_only=True, frozen=True):
    """An ``events`` frame whose events are all of kinds this client knows, decoded with
    them in one call (a frame holding any other kind fails, then goes event by event)."""

    stream: str
    events: list[Known]


_frame_decoder = msgspec.json.Decoder(KnownEvents)
EVENTS_HEAD = ('{"type":"events"', b'{"type":"events"')
"""How the relay's ``events`` frames start (msgspec writes the tag first)."""
_any_reply = msgspec.json.Decoder(AnyReply)
_event_decoder = msgspec.json.Decoder(Known)
_unknown_event = msgspec.json.Decoder(UnknownEvent)


def offset_key(offset: str) -> tuple[int, int]:
    """An offset as a pair that sorts like the stream: ``"17-3"`` -> (17, 3)."""
    return parse_offset(offset)


def decode_event(raw: msgspec.Raw | bytes) -> Event:
    """One event, typed; a kind unknown to this client gives :class:`UnknownEvent`."""
    try:
        event: Event = _event_decoder.decode(raw)
    except msgspec.ValidationError:
        return _unknown_event.decode(raw)
    return event


def decode_frame(data: str | bytes) -> KnownEvents | Reply | AnyReply:
    """A server frame: an ``events`` frame of known kinds, a known reply, or the head of
    a reply added after this client. May raise RecursionError (see ``_on_frame``)."""
    if data[:16] in EVENTS_HEAD:  # most frames: decoded typed in one call
        try:
            frame: KnownEvents = _frame_decoder.decode(data)
        except msgspec.ValidationError:
            pass  # it holds an event kind this client does not know: event by event
        else:
            return frame
    try:
        reply: Reply = reply_decoder.decode(data)
    except msgspec.ValidationError:
        head: AnyReply = _any_reply.decode(data)
        return head
    return reply
