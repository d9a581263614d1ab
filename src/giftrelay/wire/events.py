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
    level: int = 0
    """v1.2: the sender's gifter level after the gift (0 in events stored before it)."""


class GoalEvent(StreamEvent, tag="goal", frozen=True):
    title: str
    target: int
    progress: int


class StreamEndedEvent(StreamEvent, tag="stream_ended", frozen=True):
    pass


# -- v1.2: gifter levels and battles -----------------------------------------------------


class LevelUpEvent(StreamEvent, tag="level_up", frozen=True):
    """A gift to this stream took its sender past one or more levels' thresholds: once per
    such gift, with the level reached."""

    user: str
    level: int


class Contributor(msgspec.Struct, frozen=True):
    """A gifter on one side of a battle: the points their gifts scored, and their level."""

    user: str
    points: int
    level: int = 0


class BattleSide(msgspec.Struct, frozen=True):
    stream: str
    creator: str
    score: int
    top: list[Contributor]
    """The side's top 3 contributors, most points first."""


class Boost(msgspec.Struct, frozen=True):
    """A multiplier window of a battle (server clock, ms since the epoch; end exclusive)."""

    starts_at: int
    ends_at: int
    multiplier: int


class BattleInviteEvent(StreamEvent, tag="battle_invite", frozen=True):
    """On the invited stream: its creator may accept or decline until ``expires_at``."""

    battle: str
    opponent: str
    """The inviting stream."""
    opponent_creator: str
    duration_s: int
    expires_at: int


class BattleDeclinedEvent(StreamEvent, tag="battle_declined", frozen=True):
    """On the inviting stream: the opponent declined."""

    battle: str
    opponent: str


class BattleStartEvent(StreamEvent, tag="battle_start", frozen=True):
    """On both streams, as the battle starts (the server's clock decides)."""

    battle: str
    sides: list[BattleSide]
    starts_at: int
    ends_at: int
    boosts: list[Boost]


class BattleEndEvent(StreamEvent, tag="battle_end", frozen=True):
    """On both streams, once the battle is over: the final scores and the winner's
    stream, or null for a draw."""

    battle: str
    sides: list[BattleSide]
    winner: str | None
    starts_at: int
    ends_at: int
    cancelled: bool = False
    """The battle never got going: the other stream could not join (scores stay 0)."""


AnyStoredEvent = (
    GiftEvent
    | GoalEvent
    | StreamEndedEvent
    | LevelUpEvent
    | BattleInviteEvent
    | BattleDeclinedEvent
    | BattleStartEvent
    | BattleEndEvent
)
"""The events kept in a stream's history and published by the money core."""

stored_event_decoder = msgspec.json.Decoder(AnyStoredEvent)


# -- live events (made by the relay, not stored) -----------------------------------------


class TopEntry(msgspec.Struct, frozen=True):
    user: str
    coins: int
    level: int = 0
    """v1.2: the gifter's level."""


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


class BattleEvent(LiveEvent, tag="battle", frozen=True):
    """v1.2, on both streams while a battle runs, when a score changes: both sides, the
    clock (``ts`` is the server's now), and the multiplier now."""

    battle: str
    sides: list[BattleSide]
    starts_at: int
    ends_at: int
    boosts: list[Boost]
    multiplier: int
