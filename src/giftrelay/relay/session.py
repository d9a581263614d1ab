"""One connection's protocol, without I/O: who it is, what it may do, what comes next.

A frame goes in (:meth:`Session.receive`, with the time) and a :data:`Step` comes
out: an answer to send now, a close, or a request for the worker to perform with
Redis and the fan-out (:mod:`giftrelay.relay.requests`, driven by
:mod:`giftrelay.relay.connection`). Each message is decoded and validated
(:mod:`giftrelay.wire.protocol`) before anything is touched, and the role and rate
checks come next, so that a request reaching Redis is one that may run. Because no
socket or event loop is involved, all of it is tested by feeding frames in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from giftrelay import __version__, metrics
from giftrelay.auth import Claims, Role
from giftrelay.relay.limits import Buckets, TokenBucket
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable

SHUTTING_DOWN = Unavailable("the relay is shutting down; nothing moved; retry elsewhere")

SPENDERS = (Role.VIEWER, Role.CREATOR, Role.ADMIN)
MANAGERS = (Role.CREATOR, Role.ADMIN)
ANYONE = None

WHO_MAY: dict[type[protocol.ClientMessage], tuple[Role, ...] | None] = {
    protocol.Ping: ANYONE,
    protocol.CatalogRequest: ANYONE,
    protocol.Join: ANYONE,  # an overlay only its own stream: checked on joining
    protocol.Leave: ANYONE,
    protocol.Gift: SPENDERS,
    protocol.BalanceRequest: SPENDERS,
    protocol.SetCap: SPENDERS,
    protocol.SetConfirm: SPENDERS,
    protocol.SetCooldown: SPENDERS,
    protocol.SpendingRequest: SPENDERS,
    protocol.Topup: (Role.ADMIN,),
    protocol.Payout: (Role.CREATOR,),
    protocol.StreamOpen: MANAGERS,  # a creator only their own streams: checked below
    protocol.StreamClose: MANAGERS,  # ... and in the scripts, for the others
    protocol.SetGoal: MANAGERS,
    protocol.TestAlert: MANAGERS,
    protocol.RevokeOverlays: MANAGERS,
    protocol.BattleInvite: MANAGERS,  # a creator only from their own stream: in money.battles
    protocol.BattleAccept: MANAGERS,  # ... and only the invited stream's creator answers
    protocol.BattleDecline: MANAGERS,
}
"""Who may send each message: the roles, or ANYONE (anonymous connections too). Every
message type is listed (a test checks), so a new one must say who may send it."""


class Limits(msgspec.Struct, frozen=True):
    """What a session is allowed, from the settings (the same for every connection)."""

    message_rate: float
    message_burst: int
    max_message_bytes: int
    max_streams: int


class Answer:
    """Send this reply now (a refusal, or a request answered without I/O)."""

    __slots__ = ("reply",)

    def __init__(self, reply: protocol.Reply) -> None:
        self.reply = reply


class Close:
    """Close the connection with this code and reason (it floods)."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class Perform:
    """A valid request that may run: ``user`` is whom it acts for (the creator of a
    stream an admin opens), ``actor`` the creator acting on their own stream (None for
    an admin), both checked here; the worker does the rest with Redis and the fan-out."""

    __slots__ = ("actor", "message", "user")

    def __init__(self, message: protocol.ClientMessage, user: str, actor: str | None) -> None:
        self.message = message
        self.user = user
        self.actor = actor


Step = Answer | Close | Perform | None
"""What to do with a frame; None: nothing (it was answered already)."""

NOBODY: Final = ""


class Session:
    """The protocol state of one connection. Kept small: a relay holds tens of thousands."""

    __slots__ = (
        "bucket",
        "catalog",
        "claims",
        "codec",
        "gift_buckets",
        "limits",
        "messages_in",
        "messages_out",
        "refused_in_row",
        "role",
        "started",
        "streams",
        "user",
    )

    def __init__(
        self,
        claims: Claims | None,
        codec: protocol.Codec,
        limits: Limits,
        gift_buckets: Buckets,
        catalog: msgspec.Raw,
        now: float,
    ) -> None:
        self.claims = claims
        self.codec = codec
        self.limits = limits
        self.gift_buckets = gift_buckets
        """Per user, shared by the worker's sessions: a user's gifts over all connections."""
        self.catalog = catalog
        self.user = claims.sub if claims else None
        self.role = claims.role.value if claims else "anonymous"
        self.streams: set[str] = set()
        self.started = now
        self.messages_in = 0
        self.messages_out = 0
        self.bucket = TokenBucket(limits.message_rate, limits.message_burst, now)
        self.refused_in_row = 0

    def hello(self) -> protocol.Hello:
        return protocol.Hello(
            v=protocol.VERSION, server=f"giftrelay/{__version__}", user=self.user, role=self.role
        )

    # -- frames in ------------------------------------------------------------------------

    def receive(self, data: str | bytes, now: float, *, stopping: bool = False) -> Step:
        """What to do with one frame from the client, received at ``now`` (monotonic)."""
        self.messages_in += 1
        if not self.bucket.take(now):
            self.refused_in_row += 1
            if self.refused_in_row > self.limits.message_burst:
                return Close(1008, "flooding: too many messages")
            return self._refuse(data, Refused(Code.RATE_LIMITED, "too many messages; slow down"))
        self.refused_in_row = 0
        if stopping:
            return self._refuse(data, SHUTTING_DOWN)
        try:
            message = self.codec.decode(data, self.limits.max_message_bytes)
        except protocol.BadMessage as exc:
            metrics.MESSAGES.labels("invalid").inc()
            return Answer(protocol.error(exc, exc.ref, exc.id))
        metrics.message(str(type(message).__struct_config__.tag))
        try:
            return self.step(message, now)
        except Refused as exc:
            return Answer(self.refusal(message, exc))

    def step(self, m: protocol.ClientMessage, now: float) -> Step:
        """A decoded message: answered here when no I/O is needed, else to be performed."""
        roles = WHO_MAY[type(m)]
        user = NOBODY if roles is ANYONE else self._require(roles)
        check = _CHECKS.get(type(m))
        if check is not None:
            return check(self, m, user, now)
        return Perform(m, user, self._actor() if roles is MANAGERS else None)

    def refusal(self, message: protocol.ClientMessage, exc: Refused) -> protocol.Error:
        return protocol.error(exc, message.ref, getattr(message, "id", None))

    def _refuse(self, data: str | bytes, refusal: Refused) -> Answer:
        """An error for a message not handled, with its ``ref``/``id`` where readable."""
        ref, id_ = self.codec.echo(data)
        return Answer(protocol.error(refusal, ref, id_))

    # -- what the worker tells back -------------------------------------------------------

    def joined(self, stream: str) -> None:
        self.streams.add(stream)

    def left(self, stream: str) -> None:
        self.streams.discard(stream)

    # -- checks per message (pure) ---------------------------------------------------------

    def _ping(self, m: protocol.ClientMessage, _user: str, _now: float) -> Step:
        return Answer(protocol.Pong(ref=m.ref))

    def _catalog(self, m: protocol.ClientMessage, _user: str, _now: float) -> Step:
        return Answer(protocol.CatalogReply(ref=m.ref, gifts=self.catalog))

    def _join(self, m: protocol.ClientMessage, user: str, _now: float) -> Step:
        assert isinstance(m, protocol.Join)
        claims = self.claims
        if claims is not None and claims.role is Role.OVERLAY and m.stream != claims.stream:
            raise Refused(Code.FORBIDDEN, "an overlay token reads only its own stream")
        if m.stream not in self.streams and len(self.streams) >= self.limits.max_streams:
            limit = self.limits.max_streams
            raise Refused(Code.RATE_LIMITED, f"at most {limit} streams per connection")
        return Perform(m, user, None)

    def _leave(self, m: protocol.ClientMessage, user: str, _now: float) -> Step:
        assert isinstance(m, protocol.Leave)
        if m.stream not in self.streams:
            raise Refused(Code.BAD_REQUEST, f"not joined to {m.stream!r}")
        return Perform(m, user, None)

    def _gift(self, m: protocol.ClientMessage, user: str, now: float) -> Step:
        if not self.gift_buckets.take(user, now):
            raise Refused(Code.RATE_LIMITED, "too many gifts; slow down")
        return Perform(m, user, None)

    def _stream_open(self, m: protocol.ClientMessage, user: str, _now: float) -> Step:
        assert isinstance(m, protocol.StreamOpen)
        assert self.claims is not None
        if self.claims.role is Role.ADMIN:
            if m.creator is None:
                raise Refused(Code.BAD_REQUEST, "an admin must name the stream's creator")
            return Perform(m, m.creator, None)
        if m.creator not in (None, user):
            raise Refused(Code.FORBIDDEN, "a creator opens only their own streams")
        return Perform(m, user, user)

    def _require(self, roles: tuple[Role, ...]) -> str:
        """The user if its role may do this; ``unauthorized`` if anonymous, else ``forbidden``."""
        if self.claims is None:
            raise Refused(Code.UNAUTHORIZED, "sign in (a token) to do this")
        if self.claims.role not in roles:
            raise Refused(Code.FORBIDDEN, f"a {self.claims.role.value} token cannot do this")
        return self.claims.sub

    def _actor(self) -> str | None:
        """A creator acts on their own streams (checked by the script); None for an admin.
        Only for messages WHO_MAY gives to MANAGERS: the role was checked."""
        assert self.claims is not None
        return None if self.claims.role is Role.ADMIN else self.claims.sub


_Check = Callable[[Session, protocol.ClientMessage, str, float], Step]
_CHECKS: dict[type[protocol.ClientMessage], _Check] = {
    protocol.Ping: Session._ping,
    protocol.CatalogRequest: Session._catalog,
    protocol.Join: Session._join,
    protocol.Leave: Session._leave,
    protocol.Gift: Session._gift,
    protocol.StreamOpen: Session._stream_open,
}
"""The messages that need a check of their own before they may run (or none at all)."""
