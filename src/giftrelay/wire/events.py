"""The public stream events, as typed messages: THE one schema of a stream event.

Stored events (gift, goal, stream_ended) are written by the money core to the
stream's history (``hist:{stream}``, whose entry ids are their offsets) and published
on ``ev:{stream}``; live events (viewers, top, combo_end) are made by the relay and not
stored. The relay forwards them, clients receive them, exactly as docs/protocol.md
describes them.
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


# -- live events (made by the relay, not stored) -----------------------------------------


class TopEntry(msgspec.Struct, frozen=True):
    user: str
    coins: int


class LiveEvent(msgspec.Struct, tag_field="kind", kw_only=True, frozen=True):
    """Carries the offset of the latest stored event (docs/protocol.md)."""

    offset: str
    ts: int


class ViewersEvent(LiveEvent, tag="viewers", frozen=True):
    count: int


class TopEvent(LiveEvent, tag="top", frozen=True):
    top: list[TopEntry]


class ComboEndEvent(LiveEvent, tag="combo_end", frozen=True, omit_defaults=True):
    combo_id: str
    sender: str = msgspec.field(name="from")
    gift: str
    total: int
    coins: int
    test: bool = False
    """The combo was of test alerts."""
