"""The wire protocol (docs/protocol.md, v1) as typed messages: pure, no I/O.

Every client message is a tagged msgspec Struct; one decoder validates types,
ranges and lengths before anything is touched, and :func:`decode` turns any bad
input into a :class:`~giftrelay.wire.errors.Refused` carrying the ``ref``/``id`` it
could still read. Replies and events are Structs encoded by one encoder.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from giftrelay.wire.errors import Code, Refused
from giftrelay.wire.events import BattleSide, Boost, LiveEvent, TopEntry
from giftrelay.wire.ids import Ident, RequestId
from giftrelay.wire.offsets import parse_offset

VERSION = 1

OFFSET_PATTERN = r"^[0-9]{1,20}-[0-9]{1,20}$"

Offset = Annotated[str, msgspec.Meta(pattern=OFFSET_PATTERN)]
Ref = Annotated[str, msgspec.Meta(max_length=64)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Amount = Annotated[int, msgspec.Meta(ge=1, le=10**13)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Coins = Annotated[int, msgspec.Meta(ge=0, le=10**13)]
Minutes = Annotated[int, msgspec.Meta(ge=1, le=1440)]

# -- client -> server -------------------------------------------------------------------------


class Request(msgspec.Struct, tag_field="type", kw_only=True, frozen=True):
    ref: Ref | None = None


class Join(Request, tag="join", frozen=True):
    stream: Ident
    since: Offset | None = None

    def __post_init__(self) -> None:
        if self.since is not None and max(parse_offset(self.since)) >= 2**64:
            raise ValueError("since: each part of an offset is below 2^64")


class Leave(Request, tag="leave", frozen=True):
    stream: Ident


class Gift(Request, tag="gift", frozen=True):
    stream: Ident
    gift: Ident
    id: RequestId
    count: Count = 1
    confirm: bool | msgspec.UnsetType = msgspec.UNSET
    """The viewer confirms a gift above their confirmation threshold (``set_confirm``).
    Absent means false; unset, it is not encoded, so a v1 gift's frame is unchanged."""


class BalanceRequest(Request, tag="balance", frozen=True):
    pass


class Ping(Request, tag="ping", frozen=True):
    pass


class CatalogRequest(Request, tag="catalog", frozen=True):
    pass


class Topup(Request, tag="topup", frozen=True):
    user: Ident
    coins: Amount
    id: RequestId


class StreamOpen(Request, tag="stream_open", frozen=True):
    stream: Ident
    title: Title
    creator: Ident | None = None


class StreamClose(Request, tag="stream_close", frozen=True):
    stream: Ident


class Payout(Request, tag="payout", frozen=True):
    diamonds: Amount
    id: RequestId


class SetGoal(Request, tag="set_goal", frozen=True):
    stream: Ident
    title: Title
    target: Amount


class TestAlert(Request, tag="test_alert", frozen=True):
    stream: Ident
    gift: Ident
    count: Count = 1


class RevokeOverlays(Request, tag="revoke_overlays", frozen=True):
    stream: Ident


class SetCap(Request, tag="set_cap", frozen=True):
    daily_coins: Coins | None


class SetConfirm(Request, tag="set_confirm", frozen=True):
    """Gifts of more than ``coins`` need ``confirm: true``; null removes the threshold."""

    coins: Coins | None


class SetCooldown(Request, tag="set_cooldown", frozen=True):
    """Once ``coins`` are spent within ``minutes``, gifts wait; null coins removes it."""

    coins: Annotated[int, msgspec.Meta(ge=1, le=10**13)] | None
    minutes: Minutes | None = None

    def __post_init__(self) -> None:
        if (self.coins is None) != (self.minutes is None):
            raise ValueError("coins and minutes go together: both set, or coins null to remove")


class SpendingRequest(Request, tag="spending", frozen=True):
    pass


class BattleInvite(Request, tag="battle_invite", frozen=True):
    """v1.2: the creator of ``stream`` invites the creator of ``opponent`` to a battle."""

    stream: Ident
    opponent: Ident
    id: RequestId
    duration_s: Annotated[int, msgspec.Meta(ge=1, le=86_400)]


class BattleAccept(Request, tag="battle_accept", frozen=True):
    battle: Ident


class BattleDecline(Request, tag="battle_decline", frozen=True):
    battle: Ident


ClientMessage = (
    Join
    | Leave
    | Gift
    | BalanceRequest
    | Ping
    | CatalogRequest
    | Topup
    | StreamOpen
    | StreamClose
    | Payout
    | SetGoal
    | TestAlert
    | RevokeOverlays
    | SetCap
    | SetConfirm
    | SetCooldown
    | SpendingRequest
    | BattleInvite
    | BattleAccept
    | BattleDecline
)

# -- server -> client -------------------------------------------------------------------------


class Reply(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, omit_defaults=True):
    ref: str | None = None


class Hello(Reply, tag="hello", frozen=True):
    v: int
    server: str
    user: str | None
    role: str


class GoalState(msgspec.Struct, frozen=True):
    title: str
    target: int
    progress: int


class BattleState(msgspec.Struct, frozen=True):
    """v1.2: a running battle, as a join's snapshot carries it."""

    battle: str
    sides: list[BattleSide]
    starts_at: int
    ends_at: int
    boosts: list[Boost]


class Snapshot(msgspec.Struct, frozen=True):
    creator: str
    title: str
    live: bool
    viewers: int
    diamonds: int
    top: list[TopEntry]
    goal: GoalState | None
    battle: BattleState | None = None
    """v1.2: the battle the stream is in, if any."""


class Joined(Reply, tag="joined", frozen=True):
    stream: str
    offset: str
    recovered: bool
    missed: list[msgspec.Raw]
    snapshot: Snapshot
    ts: int = 0
    """v1.2: the server's clock when the snapshot was read (ms), e.g. for a battle's
    countdown before its first live event."""


class Left(Reply, tag="left", frozen=True):
    stream: str


class GiftOk(Reply, tag="gift_ok", frozen=True):
    id: str
    stream: str
    offset: str
    coins: int
    balance: int
    combo: int


class Balance(Reply, tag="balance", frozen=True):
    coins: int
    diamonds: int
    spent_today: int
    daily_cap: int | None


class Pong(Reply, tag="pong", frozen=True):
    pass


class CatalogReply(Reply, tag="catalog", frozen=True):
    gifts: msgspec.Raw


class TopupOk(Reply, tag="topup_ok", frozen=True):
    user: str
    coins: int


class StreamOk(Reply, tag="stream_ok", frozen=True):
    stream: str
    live: bool


class PayoutOk(Reply, tag="payout_ok", frozen=True):
    id: str
    diamonds: int
    cash_cents: int
    fee_cents: int
    diamonds_left: int


class CapOk(Reply, tag="cap_ok", frozen=True):
    daily_coins: int | None


class ConfirmOk(Reply, tag="confirm_ok", frozen=True):
    coins: int | None


class CooldownOk(Reply, tag="cooldown_ok", frozen=True):
    coins: int | None
    minutes: int | None


class CreatorSpending(msgspec.Struct, frozen=True):
    creator: str
    coins: int


class CooldownState(msgspec.Struct, frozen=True):
    coins: int
    minutes: int
    spent: int
    """Coins of the gifts that count in the window now."""
    resume_at: int | None
    """While cooling down, when gifts may resume (ms since the epoch); else null."""


class Spending(Reply, tag="spending", frozen=True):
    """Coins spent by UTC day (today, the last 7 and the last 30 days, today included),
    per creator over the 30 days (highest first, at most 100), and the settings."""

    today: int
    last_7_days: int
    last_30_days: int
    per_creator: list[CreatorSpending]
    confirm_coins: int | None
    cooldown: CooldownState | None


class GoalOk(Reply, tag="goal_ok", frozen=True):
    stream: str
    goal: GoalState


class TestOk(Reply, tag="test_ok", frozen=True):
    stream: str
    offset: str


class RevokeOk(Reply, tag="revoke_ok", frozen=True):
    stream: str


class BattleOk(Reply, tag="battle_ok", frozen=True):
    """v1.2: ``status`` is ``invited``, ``running`` or ``declined`` (a repeated request may
    also find it ``ended``, ``expired`` or ``cancelled``); the times once it runs."""

    battle: str
    status: str
    starts_at: int | None = None
    ends_at: int | None = None


class Error(Reply, tag="error", frozen=True):
    code: str
    message: str
    id: str | None = None
    resume_at: int | None = None
    """With ``cooling_down``: when gifts may resume (ms since the epoch)."""


class Events(Reply, tag="events", frozen=True):
    """One frame of a stream's events, in offset order (each event already encoded)."""

    stream: str
    events: list[msgspec.Raw]


# -- events that are not stored in a stream's history -----------------------------------------


# -- codec ------------------------------------------------------------------------------------


class _Envelope(msgspec.Struct):
    """What can still be read of a message that failed validation, to echo it back."""

    type: Any = None
    ref: Any = None
    id: Any = None


_decoder = msgspec.json.Decoder(ClientMessage)
_envelope = msgspec.json.Decoder(_Envelope)
_encoder = msgspec.json.Encoder()

MAX_MESSAGE_BYTES = 4096
"""No valid client message comes near this; larger ones get ``too_large``."""

TOO_DEEP = "the message is nested too deeply"
"""The ``bad_request`` message for arrays or objects nested past what can be decoded."""


class BadMessage(Refused):
    """A message that could not be accepted, with the ``ref``/``id`` it carried if readable."""

    def __init__(
        self, code: Code, message: str, ref: str | None = None, id: str | None = None
    ) -> None:
        super().__init__(code, message)
        self.ref = ref
        self.id = id


def decode(data: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
    """One client message, validated; anything else raises :class:`BadMessage`."""
    if len(data) > max_bytes:
        raise BadMessage(Code.TOO_LARGE, f"messages are limited to {max_bytes} bytes")
    try:
        message: ClientMessage = _decoder.decode(data)
        return message
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        ref, id_ = echo(data)
        raise BadMessage(Code.BAD_REQUEST, _explain(exc), ref, id_) from None


def echo(data: str | bytes) -> tuple[str | None, str | None]:
    """The ``ref`` and ``id`` of a message, where they can be read, to put on its error."""
    try:
        env = _envelope.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None, None
    return _readable(env)


def _readable(env: _Envelope) -> tuple[str | None, str | None]:
    ref = env.ref if isinstance(env.ref, str) and len(env.ref) <= 64 else None
    id_ = env.id if isinstance(env.id, str) and len(env.id) <= 64 else None
    return ref, id_


def _explain(exc: Exception) -> str:
    """msgspec's message, with its ``$.field`` path made readable."""
    if isinstance(exc, RecursionError):
        # msgspec decodes recursively: arrays or objects nested deeper than the
        # interpreter's recursion limit allows (about 1,000 levels, 2 KB) raise this.
        return TOO_DEEP
    detail = str(exc)
    if detail.startswith("Invalid value") and "`$.type`" in detail:
        return "unknown message type"
    if detail.startswith(("Expected `object`", "JSON is malformed", "Input data was truncated")):
        return f"not a JSON object: {detail}"
    return detail.replace("- at `$.", "- field `").replace("`$`", "the message")


def encode(message: Reply) -> bytes:
    return _encoder.encode(message)


# -- MessagePack: the same messages in binary frames ---------------------------------------------

MSGPACK = "giftrelay.v1.msgpack"
"""The WebSocket subprotocol that carries every message as MessagePack in binary frames."""

_mp_decoder = msgspec.msgpack.Decoder(ClientMessage)
_mp_envelope = msgspec.msgpack.Decoder(_Envelope)
_mp_encoder = msgspec.msgpack.Encoder()
_any_json = msgspec.json.Decoder()


class Codec:
    """How one connection's messages are framed: JSON text (default) or MessagePack.

    Events are stored and published as JSON; a MessagePack connection gets each one
    converted (:meth:`event`), which only MessagePack connections pay for.
    """

    def __init__(self, subprotocol: str | None) -> None:
        self.binary = subprotocol == MSGPACK

    def decode(self, data: str | bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> ClientMessage:
        if not self.binary or isinstance(data, str):
            return decode(data, max_bytes)
        if len(data) > max_bytes:
            raise BadMessage(Code.TOO_LARGE, f"messages are limited to {max_bytes} bytes")
        try:
            message: ClientMessage = _mp_decoder.decode(data)
            return message
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            ref, id_ = self.echo(data)
            raise BadMessage(Code.BAD_REQUEST, _explain(exc), ref, id_) from None

    def echo(self, data: str | bytes) -> tuple[str | None, str | None]:
        if not self.binary or isinstance(data, str):
            return echo(data)
        try:
            env = _mp_envelope.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return None, None
        return _readable(env)

    def encode(self, message: Reply) -> bytes:
        """The reply in this codec; JSON ``Raw`` fields (events) are converted."""
        if not self.binary:
            return _encoder.encode(message)
        if isinstance(message, Joined):
            message = msgspec.structs.replace(message, missed=self.events(message.missed))
        elif isinstance(message, Events):
            message = msgspec.structs.replace(message, events=self.events(message.events))
        elif isinstance(message, CatalogReply):
            message = msgspec.structs.replace(message, gifts=self.event(message.gifts))
        return _mp_encoder.encode(message)

    def event(self, raw: msgspec.Raw) -> msgspec.Raw:
        return msgspec.Raw(_mp_encoder.encode(_any_json.decode(raw)))

    def events(self, raws: list[msgspec.Raw]) -> list[msgspec.Raw]:
        return [self.event(raw) for raw in raws]


JSON_CODEC = Codec(None)
MSGPACK_CODEC = Codec(MSGPACK)


def codec_for(subprotocol: str | None) -> Codec:
    return MSGPACK_CODEC if subprotocol == MSGPACK else JSON_CODEC


def encode_event(event: LiveEvent) -> msgspec.Raw:
    return msgspec.Raw(_encoder.encode(event))


def error(exc: Refused, ref: str | None = None, id: str | None = None) -> Error:
    return Error(code=exc.code.value, message=exc.message, ref=ref, id=id, resume_at=exc.resume_at)
