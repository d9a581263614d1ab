"""A small asyncio client for the giftrelay protocol (docs/protocol.md), for apps and load tests.

It keeps the two promises a client has to keep by itself, so apps need not:

* **Recovery.** When the connection drops (a network blip, a relay worker going
  away with 1001, a slow reader closed with 1013), it reconnects with backoff and
  rejoins every stream with ``since`` = the last offset it saw, so missed events
  arrive in order before live ones. ``on_joined`` tells the app when the history
  no longer reached back (``recovered`` false: refresh from the snapshot).
* **Exactly-once gifts.** :meth:`Client.gift` sends an idempotency id and, on
  ``unavailable`` or a lost connection, retries with the *same* id until the relay
  answers: a gift moves money once, however many times it was sent. ``unavailable``
  does not mean the gift did not move (Redis may have run it after the relay stopped
  waiting); the retry's reply is the gift's one outcome.

Example::

    import asyncio
    from giftrelay.client import Client, GiftEvent

    async def main() -> None:
        def show(stream: str, events: list[Event]) -> None:
            for e in events:
                if isinstance(e, GiftEvent):
                    print(f"{e.sender} sent {e.count} x {e.name}")

        async with Client("ws://127.0.0.1:8080/ws", token, on_events=show) as client:
            await client.join("demo")
            ok = await client.gift("demo", "rose", count=3)
            print("coins left:", ok.balance)
            await asyncio.sleep(60)

    asyncio.run(main())

Messages are the relay's own msgspec Structs (:mod:`giftrelay.wire.protocol`,
:mod:`giftrelay.events`); events of a kind this client does not know yet arrive
as :class:`UnknownEvent` rather than breaking it.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable

import msgspec

from giftrelay.client.connection import Connection
from giftrelay.client.errors import Disconnected, RelayError
from giftrelay.client.messages import Event, UnknownEvent, offset_key

# Not in __all__, but imported from here by the load tests' drivers:
from giftrelay.client.messages import EventsHandler as EventsHandler
from giftrelay.client.messages import JoinedHandler as JoinedHandler
from giftrelay.client.messages import ServerMessage as ServerMessage
from giftrelay.client.messages import decode_event as decode_event
from giftrelay.wire import protocol
from giftrelay.wire.events import (
    BattleEndEvent,
    BattleEvent,
    BattleInviteEvent,
    BattleStartEvent,
    ComboEndEvent,
    GiftEvent,
    GoalEvent,
    LevelUpEvent,
    StreamEndedEvent,
    TopEvent,
    ViewersEvent,
)
from giftrelay.wire.protocol import (
    Balance,
    BattleOk,
    GiftOk,
    Hello,
    Joined,
    Spending,
    StreamOk,
    TopupOk,
)

__all__ = [
    "Balance",
    "BattleEndEvent",
    "BattleEvent",
    "BattleInviteEvent",
    "BattleOk",
    "BattleStartEvent",
    "Client",
    "ComboEndEvent",
    "Disconnected",
    "Event",
    "GiftEvent",
    "GiftOk",
    "GoalEvent",
    "Hello",
    "Joined",
    "LevelUpEvent",
    "RelayError",
    "Spending",
    "StreamEndedEvent",
    "StreamOk",
    "TopEvent",
    "TopupOk",
    "UnknownEvent",
    "ViewersEvent",
    "offset_key",
]


def new_id() -> str:
    """A fresh idempotency id (22 URL-safe characters)."""
    return secrets.token_urlsafe(16)


class Client(Connection):
    """One connection to a relay that reconnects, rejoins with ``since`` and retries gifts.

    The typed requests are here; keeping the connection up, and the events in order,
    is :class:`~giftrelay.client.connection.Connection`'s.
    """

    async def join(self, stream: str, since: str | None = None) -> Joined:
        """Join a stream; events missed since ``since`` are delivered first, in order."""
        return await self.request(protocol.Join(stream=stream, since=since), Joined)

    async def leave(self, stream: str) -> None:
        self.streams.pop(stream, None)
        self._last.pop(stream, None)
        await self.request(protocol.Leave(stream=stream), protocol.Left)

    async def gift(
        self,
        stream: str,
        gift: str,
        count: int = 1,
        *,
        id: str | None = None,
        confirm: bool = False,
        retry_for: float = 30.0,
        on_retry: Callable[[Exception], None] | None = None,
    ) -> GiftOk:
        """Send a gift; on ``unavailable`` or a dropped connection, retry with the same id.

        Either may leave the gift applied or not: ``unavailable`` means the relay could
        not learn the outcome in time, not that nothing moved. Retrying is safe because
        the relay applies an id once and answers a repeat with the first ``gift_ok``, so
        the reply that ends the retries is the gift's one outcome. After ``retry_for``
        seconds it gives up, raising the last ``unavailable`` or disconnection: the
        gift's outcome is then still unknown (pass the same ``id`` to learn it later).
        ``on_retry`` is told why before each retry (to show "reconnecting..." say).

        A gift above the viewer's confirmation threshold raises ``confirm_required``
        (nothing moved): ask the person, then send it again with ``confirm=True`` and the
        error's ``id``. ``cooling_down`` carries ``resume_at``.
        """
        message = protocol.Gift(
            stream=stream,
            gift=gift,
            count=count,
            id=id or new_id(),
            confirm=True if confirm else msgspec.UNSET,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        delay = self.backoff[0]
        while True:
            try:
                if not self._connected.is_set():
                    await self.wait_connected(max(0.0, deadline - loop.time()))
                return await self.request(message, GiftOk)
            except RelayError as exc:
                if exc.code != "unavailable" or loop.time() + delay > deadline:
                    raise
                reason: Exception = exc
            except (Disconnected, TimeoutError) as exc:
                if loop.time() + delay > deadline or self._failure is not None:
                    raise
                reason = exc
            self.gift_retries += 1
            if on_retry is not None:
                on_retry(reason)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(self.backoff[1], delay * 2)

    async def balance(self) -> Balance:
        return await self.request(protocol.BalanceRequest(), Balance)

    async def set_confirm(self, coins: int | None) -> int | None:
        """Gifts of more than ``coins`` will need ``confirm=True``; None removes it."""
        reply = await self.request(protocol.SetConfirm(coins=coins), protocol.ConfirmOk)
        return reply.coins

    async def set_cooldown(
        self, coins: int | None, minutes: int | None = None
    ) -> protocol.CooldownOk:
        """Once ``coins`` are spent within ``minutes``, gifts wait; None coins removes it."""
        message = protocol.SetCooldown(coins=coins, minutes=minutes)
        return await self.request(message, protocol.CooldownOk)

    async def spending(self) -> Spending:
        """Coins spent today, over 7 and 30 days and per creator, and the settings."""
        return await self.request(protocol.SpendingRequest(), Spending)

    async def ping(self) -> None:
        await self.request(protocol.Ping(), protocol.Pong)

    async def topup(self, user: str, coins: int, id: str) -> TopupOk:
        """Admin: credit coins; ``id`` is the payment receipt (idempotent)."""
        return await self.request(protocol.Topup(user=user, coins=coins, id=id), TopupOk)

    async def stream_open(self, stream: str, title: str, creator: str | None = None) -> StreamOk:
        """Creator (own stream) or admin (naming the ``creator``): open a live stream."""
        message = protocol.StreamOpen(stream=stream, title=title, creator=creator)
        return await self.request(message, StreamOk)

    async def stream_close(self, stream: str) -> StreamOk:
        return await self.request(protocol.StreamClose(stream=stream), StreamOk)

    async def battle_invite(
        self, stream: str, opponent: str, duration_s: int, id: str | None = None
    ) -> BattleOk:
        """Creator of ``stream``: invite the creator of ``opponent`` (idempotent by ``id``)."""
        message = protocol.BattleInvite(
            stream=stream, opponent=opponent, duration_s=duration_s, id=id or new_id()
        )
        return await self.request(message, BattleOk)

    async def battle_answer(self, battle: str, accept: bool) -> BattleOk:
        """The invited stream's creator: accept (the battle starts now) or decline."""
        message: protocol.ClientMessage = (
            protocol.BattleAccept(battle=battle)
            if accept
            else protocol.BattleDecline(battle=battle)
        )
        return await self.request(message, BattleOk)
