"""What each request does with the money core and the fan-out, once the session let it run.

One small function per message type, found by type in :data:`HANDLERS`. Each returns
the reply to send, or None when the fan-out wrote it (a join: its reply is written in
the same step as joining, so no event can come between). Refusals are raised as
:class:`~giftrelay.wire.errors.Refused`; the connection turns them into ``error``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from websockets.asyncio.server import ServerConnection

from giftrelay import metrics
from giftrelay.auth import Role
from giftrelay.wire import protocol

if TYPE_CHECKING:
    from giftrelay.config import Settings
    from giftrelay.money.api import Money
    from giftrelay.relay.fanout import Fanout
    from giftrelay.relay.session import Perform, Session


class Relay(Protocol):
    """What requests use of their worker (``giftrelay.relay.server.Relay``): a protocol,
    so that this module does not import the server that uses it."""

    settings: Settings
    money: Money
    fanout: Fanout
    stopping: bool


class Context:
    """One request's surroundings: the worker, the socket, and the session's state."""

    __slots__ = ("conn", "relay", "session")

    def __init__(self, relay: Relay, conn: ServerConnection, session: Session) -> None:
        self.relay = relay
        self.conn = conn
        self.session = session


Handler = Callable[[Context, Any], Awaitable[protocol.Reply | None]]


async def _gift(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.Gift)
    receipt = await c.relay.money.gift(
        w.user, m.stream, m.gift, m.count, m.id, confirm=m.confirm is True
    )
    (metrics.GIFTS_REPLAYED if receipt.replayed else metrics.GIFTS_OK).inc()
    return receipt.reply(m.ref)


async def _balance(c: Context, w: Perform) -> protocol.Reply:
    balance = await c.relay.money.balance(w.user)
    return msgspec.structs.replace(balance, ref=w.message.ref)


async def _set_cap(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.SetCap)
    cap = await c.relay.money.set_cap(w.user, m.daily_coins)
    return protocol.CapOk(ref=m.ref, daily_coins=cap)


async def _set_confirm(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.SetConfirm)
    coins = await c.relay.money.set_confirm(w.user, m.coins)
    return protocol.ConfirmOk(ref=m.ref, coins=coins)


async def _set_cooldown(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.SetCooldown)
    coins, minutes = await c.relay.money.set_cooldown(w.user, m.coins, m.minutes)
    return protocol.CooldownOk(ref=m.ref, coins=coins, minutes=minutes)


async def _spending(c: Context, w: Perform) -> protocol.Reply:
    spending = await c.relay.money.spending(w.user)
    return msgspec.structs.replace(spending, ref=w.message.ref)


async def _topup(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.Topup)
    receipt = await c.relay.money.topup(m.user, m.coins, m.id)
    return receipt.reply(m.ref)


async def _payout(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.Payout)
    receipt = await c.relay.money.payout(w.user, m.diamonds, m.id)
    return receipt.reply(m.ref)


async def _stream_open(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.StreamOpen)
    info = await c.relay.money.stream_open(m.stream, w.user, m.title)
    return protocol.StreamOk(ref=m.ref, stream=m.stream, live=info.live)


async def _stream_close(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.StreamClose)
    info = await c.relay.money.stream_close(m.stream, w.actor)
    return protocol.StreamOk(ref=m.ref, stream=m.stream, live=info.live)


async def _set_goal(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.SetGoal)
    goal = await c.relay.money.set_goal(m.stream, w.actor, m.title, m.target)
    return protocol.GoalOk(ref=m.ref, stream=m.stream, goal=goal)


async def _test_alert(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.TestAlert)
    offset = await c.relay.money.test_alert(m.stream, w.actor, m.gift, m.count)
    return protocol.TestOk(ref=m.ref, stream=m.stream, offset=offset)


async def _revoke_overlays(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.RevokeOverlays)
    await c.relay.money.revoke_overlays(m.stream, w.actor)
    return protocol.RevokeOk(ref=m.ref, stream=m.stream)


async def _battle_invite(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.BattleInvite)
    reply = await c.relay.money.battle_invite(m.stream, m.opponent, m.duration_s, m.id, w.actor)
    return msgspec.structs.replace(reply, ref=m.ref)


async def _battle_accept(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.BattleAccept)
    reply = await c.relay.money.battle_answer(m.battle, True, w.actor)
    return msgspec.structs.replace(reply, ref=m.ref)


async def _battle_decline(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.BattleDecline)
    reply = await c.relay.money.battle_answer(m.battle, False, w.actor)
    return msgspec.structs.replace(reply, ref=m.ref)


async def _join(c: Context, w: Perform) -> None:
    m = w.message
    assert isinstance(m, protocol.Join)
    session, fanout = c.session, c.relay.fanout
    if m.stream in session.streams:  # joining again: from ``since``, as if new
        session.left(m.stream)
        fanout.leave(c.conn, m.stream)
    claims = session.claims
    overlay = claims is not None and claims.role is Role.OVERLAY
    issued_ms = int((claims.iat or 0) * 1000) if overlay and claims is not None else None
    await fanout.join(
        c.conn,
        m.stream,
        m.since,
        m.ref,
        counted=not overlay,
        issued_ms=issued_ms,
        codec=session.codec,
    )
    session.joined(m.stream)
    session.messages_out += 1  # the fan-out wrote the reply


async def _leave(c: Context, w: Perform) -> protocol.Reply:
    m = w.message
    assert isinstance(m, protocol.Leave)
    c.session.left(m.stream)
    c.relay.fanout.leave(c.conn, m.stream)
    return protocol.Left(ref=m.ref, stream=m.stream)


HANDLERS: dict[type[protocol.ClientMessage], Handler] = {
    protocol.Gift: _gift,
    protocol.BalanceRequest: _balance,
    protocol.SetCap: _set_cap,
    protocol.SetConfirm: _set_confirm,
    protocol.SetCooldown: _set_cooldown,
    protocol.SpendingRequest: _spending,
    protocol.Topup: _topup,
    protocol.Payout: _payout,
    protocol.StreamOpen: _stream_open,
    protocol.StreamClose: _stream_close,
    protocol.SetGoal: _set_goal,
    protocol.TestAlert: _test_alert,
    protocol.RevokeOverlays: _revoke_overlays,
    protocol.BattleInvite: _battle_invite,
    protocol.BattleAccept: _battle_accept,
    protocol.BattleDecline: _battle_decline,
    protocol.Join: _join,
    protocol.Leave: _leave,
}
"""Every message the session hands on to be performed (a test checks none is missing)."""
