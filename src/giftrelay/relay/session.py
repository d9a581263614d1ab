"""One WebSocket connection: who it is, what it may do, and its messages in and out.

Each message is decoded and validated (:mod:`giftrelay.wire.protocol`) before anything
is touched; role checks come next; only then is Redis asked. Every failure is an
``error`` frame with the request's ``ref``/``id`` and the connection stays open.
Gifts run concurrently (bounded) so one connection can keep many in flight;
everything else is answered in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

import msgspec
import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from giftrelay import __version__, metrics
from giftrelay.auth import Claims, Role
from giftrelay.relay.limits import TokenBucket
from giftrelay.wire import protocol
from giftrelay.wire.errors import Code, Refused, Unavailable

if TYPE_CHECKING:
    from giftrelay.config import Settings
    from giftrelay.money.api import Money
    from giftrelay.relay.fanout import Fanout
    from giftrelay.relay.limits import Buckets

log = structlog.get_logger(__name__)

T = TypeVar("T")

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
    protocol.Topup: (Role.ADMIN,),
    protocol.Payout: (Role.CREATOR,),
    protocol.StreamOpen: MANAGERS,  # a creator only their own streams: checked below
    protocol.StreamClose: MANAGERS,  # ... and in the scripts, for the others
    protocol.SetGoal: MANAGERS,
    protocol.TestAlert: MANAGERS,
    protocol.RevokeOverlays: MANAGERS,
}
"""Who may send each message: the roles, or ANYONE (anonymous connections too). Every
message type is listed (a test checks), so a new one must say who may send it."""


class Relay(Protocol):
    """What a session uses of its worker (``giftrelay.relay.server.Relay``): a protocol,
    so that the session does not import the server that creates it."""

    settings: Settings
    money: Money
    fanout: Fanout
    catalog_gifts: msgspec.Raw
    gift_buckets: Buckets
    stopping: bool


class Session:
    """The protocol for one connection. Kept small: a relay holds tens of thousands."""

    __slots__ = (
        "bucket",
        "busy",
        "claims",
        "codec",
        "conn",
        "idle",
        "inflight",
        "messages_in",
        "messages_out",
        "refused_in_row",
        "relay",
        "role",
        "slots",
        "started",
        "streams",
        "user",
    )

    def __init__(self, relay: Relay, conn: ServerConnection, claims: Claims | None) -> None:
        self.relay = relay
        self.conn = conn
        self.claims = claims
        self.codec = protocol.codec_for(conn.subprotocol)
        self.user = claims.sub if claims else None
        self.role = claims.role.value if claims else "anonymous"
        self.streams: set[str] = set()
        self.started = time.monotonic()
        self.messages_in = 0
        self.messages_out = 0
        settings = relay.settings
        self.bucket = TokenBucket(settings.message_rate, settings.message_burst, self.started)
        self.refused_in_row = 0
        self.busy = 0
        """Requests being handled (shutdown waits for them)."""
        self.idle: asyncio.Event | None = None
        # Made on the first gift: most connections only watch.
        self.inflight: set[asyncio.Task[None]] | None = None
        self.slots: asyncio.Semaphore | None = None

    # -- the connection's life ------------------------------------------------------------

    async def run(self) -> None:
        await self.send(
            protocol.Hello(
                v=protocol.VERSION,
                server=f"giftrelay/{__version__}",
                user=self.user,
                role=self.role,
            )
        )
        try:
            async for data in self.conn:
                self.messages_in += 1
                await self.receive(data)
        except ConnectionClosed:
            pass
        finally:
            for stream in self.streams:
                self.relay.fanout.leave(self.conn, stream)
            self.streams.clear()

    async def finish(self) -> None:
        """Let every request in flight get its answer (shutdown: new ones are refused)."""
        while self.busy:
            self.idle = asyncio.Event()
            await self.idle.wait()

    @contextlib.contextmanager
    def _working(self) -> Iterator[None]:
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1
            if not self.busy and self.idle is not None:
                self.idle.set()

    async def send(self, reply: protocol.Reply) -> None:
        self.messages_out += 1
        if isinstance(reply, protocol.Error):
            metrics.ERRORS.labels(reply.code).inc()
        with contextlib.suppress(ConnectionClosed):
            await self.conn.send(self.codec.encode(reply), text=not self.codec.binary)

    async def receive(self, data: str | bytes) -> None:
        now = time.monotonic()
        if not self.bucket.take(now):
            self.refused_in_row += 1
            if self.refused_in_row > self.relay.settings.message_burst:
                await self.conn.close(1008, "flooding: too many messages")
                return
            await self._refuse(data, Refused(Code.RATE_LIMITED, "too many messages; slow down"))
            return
        self.refused_in_row = 0
        if self.relay.stopping:
            await self._refuse(data, SHUTTING_DOWN)
            return
        try:
            message = self.codec.decode(data, self.relay.settings.max_message_bytes)
        except protocol.BadMessage as exc:
            metrics.MESSAGES.labels("invalid").inc()
            await self.send(protocol.error(exc, exc.ref, exc.id))
            return
        kind = type(message).__struct_config__.tag
        metrics.message(str(kind))
        if isinstance(message, protocol.Gift):
            if self.slots is None or self.inflight is None:
                self.slots = asyncio.Semaphore(self.relay.settings.max_inflight_per_connection)
                self.inflight = set()
            with self._working():
                await self.slots.acquire()
                if self.relay.stopping:  # began while this gift waited for a slot
                    self.slots.release()
                    await self.send(protocol.error(SHUTTING_DOWN, message.ref, message.id))
                    return
                task = asyncio.create_task(self._gift_task(message, self.slots))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
                self.busy += 1  # until the task is done
            return
        with self._working():
            await self.answer(message)

    async def _gift_task(self, message: protocol.Gift, slots: asyncio.Semaphore) -> None:
        try:
            await self.answer(message)
        finally:
            slots.release()
            self.busy -= 1
            if not self.busy and self.idle is not None:
                self.idle.set()

    async def _refuse(self, data: str | bytes, refusal: Refused) -> None:
        """An error for a message not handled, with its ``ref``/``id`` where readable."""
        ref, id_ = self.codec.echo(data)
        await self.send(protocol.error(refusal, ref, id_))

    async def answer(self, message: protocol.ClientMessage) -> None:
        """Handle one valid message and send its reply (or its error)."""
        request_id = getattr(message, "id", None)
        try:
            reply = await self.handle(message)
        except Refused as exc:
            if isinstance(message, protocol.Gift):
                metrics.GIFTS.labels(exc.code.value).inc()
            await self.send(protocol.error(exc, message.ref, request_id))
            return
        except Exception:
            log.exception("request failed", type=type(message).__name__)
            await self.send(protocol.error(Refused(Code.INTERNAL), message.ref, request_id))
            return
        if reply is not None:
            await self.send(reply)

    # -- messages -------------------------------------------------------------------------

    async def handle(self, m: protocol.ClientMessage) -> protocol.Reply | None:
        relay = self.relay
        money = relay.money
        roles = WHO_MAY[type(m)]
        user = "" if roles is ANYONE else self._require(roles)
        match m:
            case protocol.Ping():
                return protocol.Pong(ref=m.ref)
            case protocol.CatalogRequest():
                return protocol.CatalogReply(ref=m.ref, gifts=relay.catalog_gifts)
            case protocol.Join():
                await self._join(m)
                return None  # the fan-out wrote the reply, in the same step as joining
            case protocol.Leave():
                if m.stream not in self.streams:
                    raise Refused(Code.BAD_REQUEST, f"not joined to {m.stream!r}")
                self.streams.discard(m.stream)
                relay.fanout.leave(self.conn, m.stream)
                return protocol.Left(ref=m.ref, stream=m.stream)
            case protocol.Gift():
                if not relay.gift_buckets.take(user, time.monotonic()):
                    raise Refused(Code.RATE_LIMITED, "too many gifts; slow down")
                started = time.perf_counter()
                r = await self._timed(money.gift(user, m.stream, m.gift, m.count, m.id))
                metrics.SCRIPT_SECONDS.observe(time.perf_counter() - started)
                (metrics.GIFTS_REPLAYED if r.replayed else metrics.GIFTS_OK).inc()
                return protocol.GiftOk(
                    ref=m.ref,
                    id=r.id,
                    stream=r.stream,
                    offset=r.offset,
                    coins=r.coins,
                    balance=r.balance,
                    combo=r.combo,
                )
            case protocol.BalanceRequest():
                b = await self._timed(money.balance(user))
                return protocol.Balance(
                    ref=m.ref,
                    coins=b.coins,
                    diamonds=b.diamonds,
                    spent_today=b.spent_today,
                    daily_cap=b.daily_cap,
                )
            case protocol.SetCap():
                cap = await self._timed(money.set_cap(user, m.daily_coins))
                return protocol.CapOk(ref=m.ref, daily_coins=cap)
            case protocol.Topup():
                t = await self._timed(money.topup(m.user, m.coins, m.id))
                return protocol.TopupOk(ref=m.ref, user=t.user, coins=t.coins)
            case protocol.StreamOpen():
                if self.claims is not None and self.claims.role is Role.ADMIN:
                    if m.creator is None:
                        raise Refused(Code.BAD_REQUEST, "an admin must name the stream's creator")
                    creator = m.creator
                elif m.creator not in (None, user):
                    raise Refused(Code.FORBIDDEN, "a creator opens only their own streams")
                else:
                    creator = user
                info = await self._timed(money.stream_open(m.stream, creator, m.title))
                return protocol.StreamOk(ref=m.ref, stream=m.stream, live=info.live)
            case protocol.StreamClose():
                info = await self._timed(money.stream_close(m.stream, self._actor()))
                return protocol.StreamOk(ref=m.ref, stream=m.stream, live=info.live)
            case protocol.Payout():
                p = await self._timed(money.payout(user, m.diamonds, m.id))
                return protocol.PayoutOk(
                    ref=m.ref,
                    id=p.id,
                    diamonds=p.diamonds,
                    cash_cents=p.cash_cents,
                    fee_cents=p.fee_cents,
                    diamonds_left=p.diamonds_left,
                )
            case protocol.SetGoal():
                goal = await self._timed(money.set_goal(m.stream, self._actor(), m.title, m.target))
                state = protocol.GoalState(title=goal.title, target=goal.target, progress=0)
                return protocol.GoalOk(ref=m.ref, stream=m.stream, goal=state)
            case protocol.TestAlert():
                actor = self._actor()
                offset = await self._timed(money.test_alert(m.stream, actor, m.gift, m.count))
                return protocol.TestOk(ref=m.ref, stream=m.stream, offset=offset)
            case protocol.RevokeOverlays():
                await self._timed(money.revoke_overlays(m.stream, self._actor()))
                return protocol.RevokeOk(ref=m.ref, stream=m.stream)
        raise Refused(Code.BAD_REQUEST, "unknown message type")  # pragma: no cover

    async def _join(self, m: protocol.Join) -> None:
        claims = self.claims
        if claims is not None and claims.role is Role.OVERLAY and m.stream != claims.stream:
            raise Refused(Code.FORBIDDEN, "an overlay token reads only its own stream")
        if m.stream in self.streams:
            self.streams.discard(m.stream)
            self.relay.fanout.leave(self.conn, m.stream)
        elif len(self.streams) >= self.relay.settings.max_streams_per_connection:
            limit = self.relay.settings.max_streams_per_connection
            raise Refused(Code.RATE_LIMITED, f"at most {limit} streams per connection")
        overlay = claims is not None and claims.role is Role.OVERLAY
        issued_ms = int((claims.iat or 0) * 1000) if overlay and claims is not None else None
        join = self.relay.fanout.join(
            self.conn,
            m.stream,
            m.since,
            m.ref,
            counted=not overlay,
            issued_ms=issued_ms,
            codec=self.codec,
        )
        await self._timed(join)
        self.streams.add(m.stream)
        self.messages_out += 1

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

    async def _timed(self, call: Awaitable[T]) -> T:
        """Redis gets ``request_timeout``; past it the answer is ``unavailable`` (retry is safe)."""
        try:
            async with asyncio.timeout(self.relay.settings.request_timeout):
                return await call
        except TimeoutError:
            raise Unavailable(
                "Redis did not answer in time; the request may or may not have taken effect:"
                " retry with the same id"
            ) from None
