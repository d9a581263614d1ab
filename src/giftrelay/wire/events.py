"""The public stream events, as typed messages: THE one schema of a stream event.

The money core writes them (``hist:{stream}`` and ``ev:{stream}``), the relay
forwards them, clients receive them, exactly as PROTOCOL.md describes them.
"""

from __future__ import annotations

import msgspec


class StreamEvent(msgspec.Struct, tag_field="kind", frozen=True, kw_only=True):
    offset: str
    ts: int


class GiftEvent(StreamEvent, tag="gift", frozen=True):
    id: str
    sender: str = msgspec.field(name="from")
    gift: str
    name: str
    count: int
    coins: int
    diamonds: int
    combo: int
    combo_id: str
    test: bool = False


class GoalEvent(StreamEvent, tag="goal", frozen=True):
    title: str
    target: int
    progress: int


class StreamEndedEvent(StreamEvent, tag="stream_ended", frozen=True):
    pass


AnyStoredEvent = GiftEvent | GoalEvent | StreamEndedEvent
"""The events kept in a stream's history and published by the money core."""

stored_event_decoder = msgspec.json.Decoder(AnyStoredEvent)
