"""The worker's event channel on a Redis Cluster: one sharded pub/sub connection per shard.

A stream's channel ``ev:{s}`` is in the slot of ``{s}``, with the stream's keys, so its
events are ``SPUBLISH``\\ ed by the primary that owns that slot and reach only the
subscribers of that shard. :class:`ShardedChannel` keeps one connection (a
:class:`ShardLink`, a :class:`~giftrelay.relay.channel.Channel` to one node: the same
confirmations, liveness PINGs and reconnecting with back-off) per primary that owns a
room's slot, subscribes each channel on its slot's owner, and offers the fan-out the
calls of :class:`~giftrelay.relay.channel.Channel`.

A channel leaves its node in four ways, and each ends the same way:

- Redis pushes ``sunsubscribe`` (the slot was migrated away, or the node turned replica);
- Redis answers a subscription with ``MOVED`` (this worker's slot map was behind);
- the node's connection is lost (a crash: its replica is promoted a second or two later);
- the slot map, read every few seconds, names another owner (a change nobody announced
  to this worker, e.g. a failover on the far side of a network partition).

The slot map is read again (``MOVED`` names the owner itself), the channel is routed to
its owner and, once that owner's connection is up, handed to the fan-out
(``on_connected(channels)``), which subscribes it there and fills the room's gap from the
history, as after any reconnect. A lost node is retried with back-off, the slot map read
again before each try, until its channels have another owner; then its connection is
closed. All the while the rooms' viewers keep their sockets: their events come late,
never twice, never out of order.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any, cast
from urllib.parse import quote

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException, RedisError, ResponseError

from giftrelay import metrics
from giftrelay.redis_client import ClusterURL, connect
from giftrelay.relay.channel import Channel
from giftrelay.wire.errors import Unavailable

log = structlog.get_logger(__name__)

MAP_CHECK = 5.0
"""Seconds between two looks at the slot map for channels whose slot moved unannounced."""

MAP_REFRESH_GAP = 0.1
"""Seconds between two readings of the slot map (a storm of losses reads it once)."""

NEW_LINK_WAIT = 2.0
"""How long a join waits for the first connection to a shard."""

MOVED_WHY = "the stream's slot moved to another Redis node; retry"


def slot_of(channel: str) -> int:
    return key_slot(channel.encode())


class ShardLink(Channel):
    """The sharded pub/sub connection to one cluster node."""

    def __init__(self, owner: ShardedChannel, node: str, url: str) -> None:
        super().__init__(url, owner.on_message, self._up)
        self.owner = owner
        self.node = node
        """The node's name, ``host:port`` (as redis-py's ``ClusterNode.name``)."""
        self.was_up = False
        """Connected once: from then on, not connected means reconnecting."""
        self.log = log.bind(node=node)

    async def _up(self) -> None:
        self.was_up = True
        await self.owner._link_up(self)

    def _refused(self, exc: ResponseError) -> None:
        if not isinstance(exc, MovedError):
            raise exc  # a refusal giftrelay does not expect: reconnect, resubscribe
        self.owner._moved(self, exc)

    def _unsubscribed(self, channel: str) -> None:
        self.owner._pushed_out(self, channel)

    def _confirm(self, channel: str) -> None:
        super()._confirm(channel)
        self.owner._state()

    def _lost(self, exc: BaseException) -> None:
        super()._lost(exc)
        self.owner._state()

    async def _after_loss(self) -> bool:
        return await self.owner._link_down(self)

    def drop(self, channels: Collection[str], why: str) -> None:
        """Forget ``channels``' subscriptions here; whoever waits for one is told why."""
        for channel in channels:
            for future in self.confirms.pop(channel, ()):
                if not future.done():
                    future.set_exception(Unavailable(why))


class ShardedChannel:
    """The event channel on a Redis Cluster: a :class:`ShardLink` per shard in use."""

    def __init__(
        self,
        url: str,
        on_message: Callable[[dict[str, Any]], None],
        on_connected: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self.target = ClusterURL(url)
        # Only for its slot map (nodes_manager): the links are connections of their own.
        self.cluster = cast(
            RedisCluster, connect(url, timeout=2.0, decode=False, name="giftrelay-slots")
        )
        self.on_message = on_message
        self.on_connected = on_connected
        self.links: dict[str, ShardLink] = {}
        self.routes: dict[str, str] = {}
        """Every channel the fan-out holds, and the node it is (to be) subscribed on."""
        self.held: dict[str, int] = {}
        """Per node, how many channels are routed to it."""
        self.connected = asyncio.Event()
        """Set while the slot map is known and every node holding a channel is connected."""
        self._mapped = False
        self._map_read_at = -1.0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._chores: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- what the fan-out calls (as on Channel) -------------------------------------------

    async def run(self) -> None:
        """Read the slot map (until the cluster answers), then look at it every MAP_CHECK
        seconds; the links run by themselves."""
        delay = 0.1
        while not self._mapped:
            try:
                await self.cluster.initialize()
                self._mapped = True
            except (RedisError, RedisClusterException, OSError) as exc:
                log.warning("no Redis Cluster slot map yet; retrying", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._map_read_at = time.monotonic()
        self._state()
        log.info("event channel connected", cluster=True)
        while True:
            await asyncio.sleep(MAP_CHECK)
            await self._check_map()

    async def aclose(self) -> None:
        self._closing = True
        tasks = [*self._tasks.values(), *self._chores]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in list(self.links.values()):
            await link.aclose()
        self.links.clear()
        await self.cluster.aclose()

    async def subscribe(self, channels: list[str]) -> None:
        """Send the subscriptions, each on its node; :meth:`subscribed` waits for them.

        A channel already routed stays where it is (it moves only as the module's
        docstring says, with its room's gap filled); a new one goes to its slot's owner."""
        by_node: dict[str, list[str]] = {}
        for channel in channels:
            node = self.routes.get(channel) or self._owner(channel)
            by_node.setdefault(node, []).append(channel)
        for node, mine in by_node.items():
            link = await self._link(node)
            by_slot: dict[int, list[str]] = {}
            for channel in mine:
                self._route(channel, node)
                by_slot.setdefault(slot_of(channel), []).append(channel)
            for same_slot in by_slot.values():  # one SSUBSCRIBE may name one slot only
                await link.subscribe(same_slot)

    async def subscribed(self, channel: str) -> None:
        """Wait until this worker receives ``channel`` (subscribing if need be)."""
        link = self._link_of(channel)
        if link is None or channel not in link.confirms:
            await self.subscribe([channel])
            link = self._link_of(channel)
            assert link is not None
        await link.subscribed(channel)

    def confirmation(self, channel: str) -> asyncio.Future[None]:
        """The latest subscription of ``channel`` sent, to await its confirmation."""
        link = self._link_of(channel)
        if link is None or not link.confirms.get(channel):
            raise Unavailable("the event channel lost this stream's shard")
        return link.confirmation(channel)

    async def unsubscribe(self, channels: list[str]) -> None:
        groups: dict[tuple[str, int], list[str]] = {}
        for channel in channels:
            node = self._unroute(channel)
            if node is not None:
                groups.setdefault((node, slot_of(channel)), []).append(channel)
        for (node, _), same_slot in groups.items():
            link = self.links.get(node)
            if link is not None:
                await link.unsubscribe(same_slot)
        self._state()

    # -- routing ---------------------------------------------------------------------------

    def _route(self, channel: str, node: str) -> None:
        old = self.routes.get(channel)
        if old == node:
            return
        if old is not None:
            self._unroute(channel)
        self.routes[channel] = node
        self.held[node] = self.held.get(node, 0) + 1

    def _unroute(self, channel: str) -> str | None:
        node = self.routes.pop(channel, None)
        if node is not None:
            self.held[node] -= 1
            if not self.held[node]:
                del self.held[node]
        return node

    def _routed_to(self, node: str) -> list[str]:
        return [c for c, n in self.routes.items() if n == node] if node in self.held else []

    def _owner(self, channel: str) -> str:
        """The name of the primary that owns ``channel``'s slot, in the slot map as read."""
        if not self._mapped:
            raise Unavailable("the event channel has no Redis Cluster slot map yet")
        try:
            node = self.cluster.nodes_manager.get_node_from_slot(slot_of(channel))
        except RedisClusterException as exc:  # the slot is not covered
            raise Unavailable(f"Redis Cluster: {exc}") from exc
        return str(node.name)

    def _link_of(self, channel: str) -> ShardLink | None:
        node = self.routes.get(channel)
        return None if node is None else self.links.get(node)

    async def _link(self, node: str) -> ShardLink:
        """The connected link to ``node``; a new one is given a moment to connect."""
        link = self.links.get(node)
        if link is None:
            link = self._start(node)
        elif link.connected.is_set():
            return link
        elif link.was_up:
            raise Unavailable(f"the event channel is reconnecting to Redis node {node}")
        up = asyncio.ensure_future(link.connected.wait())
        try:
            await asyncio.wait(
                {up, self._tasks[node]}, timeout=NEW_LINK_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            up.cancel()
        if not link.connected.is_set():
            raise Unavailable(f"the event channel cannot reach Redis node {node}")
        return link

    def _start(self, node: str) -> ShardLink:
        host, _, port = node.rpartition(":")
        password = self.target.password
        userinfo = f":{quote(password, safe='')}@" if password else ""
        link = ShardLink(self, node, f"redis://{userinfo}{host}:{port}/0")
        self.links[node] = link
        self._tasks[node] = asyncio.create_task(
            link.run(),
            name=f"fanout-shard-{node}",
            context=contextvars.Context(),  # not the log context of the join that asked
        )
        return link

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, context=contextvars.Context())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _read_map(self) -> None:
        """Read the slot map again (at most every MAP_REFRESH_GAP; failures logged)."""
        if time.monotonic() - self._map_read_at < MAP_REFRESH_GAP:
            return
        try:
            await self.cluster.nodes_manager.initialize()
            self._mapped = True
        except (RedisError, RedisClusterException, OSError) as exc:
            log.info("could not read the Redis Cluster slot map", error=str(exc))
        self._map_read_at = time.monotonic()

    async def _check_map(self) -> None:
        """Channels subscribed on a node the slot map no longer names as their owner."""
        if not self.routes:
            return
        await self._read_map()
        stray = []
        for channel, node in self.routes.items():
            link = self.links.get(node)
            if link is None or not link.connected.is_set():
                continue  # the link's loss moves them
            try:
                if self._owner(channel) != node:
                    stray.append(channel)
            except Unavailable:
                continue
        if stray:
            log.warning("stream channels whose slot moved unannounced", streams=len(stray))
            await self._relocate(stray, leave=True)

    async def _relocate(
        self, channels: Collection[str], to: str | None = None, *, leave: bool = False
    ) -> None:
        """Route ``channels`` to their owner (``to``, or the slot map's, read again) and
        hand them to the fan-out once that owner's link is up, to subscribe them there
        and fill their rooms' gaps. ``leave``: unsubscribe them where they were."""
        if self._closing:
            return
        if to is None:
            await self._read_map()
        moved: dict[str, list[str]] = {}
        left: dict[tuple[str, int], list[str]] = {}
        for channel in channels:
            old = self.routes.get(channel)
            if old is None:  # the fan-out let it go meanwhile
                continue
            try:
                node = to or self._owner(channel)
            except Unavailable:
                continue  # not covered now: stays where it was, looked at again later
            if leave and node != old:
                left.setdefault((old, slot_of(channel)), []).append(channel)
            self._route(channel, node)
            moved.setdefault(node, []).append(channel)
        for (old, _), same_slot in left.items():
            link = self.links.get(old)
            if link is not None and link.connected.is_set():
                link.drop(same_slot, MOVED_WHY)
                try:
                    await link.unsubscribe(same_slot)
                except (RedisError, OSError) as exc:
                    link.log.info("could not unsubscribe moved streams", error=str(exc))
        for node, mine in moved.items():
            link = self.links.get(node)
            if link is None:
                self._start(node)  # its first connection hands them over (_link_up)
            elif link.connected.is_set():
                await self._hand_over(mine)
            # else: reconnecting, and its connection hands them over
        self._state()

    async def _hand_over(self, channels: list[str]) -> None:
        """The fan-out subscribes ``channels`` again and fills their rooms' gaps."""
        try:
            await self.on_connected(channels)
        except (Unavailable, RedisError, OSError) as exc:  # lost again: the loss moves them
            log.info("could not resubscribe moved streams", error=str(exc))

    # -- what the links tell -----------------------------------------------------------------

    async def _link_up(self, link: ShardLink) -> None:
        """A link (re)connected: the channels routed to it are subscribed there, and their
        rooms' gaps filled."""
        self._state()
        channels = self._routed_to(link.node)
        link.log.info("event channel shard connected", streams=len(channels))
        if channels:
            await self.on_connected(channels)

    async def _link_down(self, link: ShardLink) -> bool:
        """A link was lost: its channels follow their slots to a new owner if there is
        one. Whether to try the node again (not when none of the channels is left)."""
        if self._closing:
            return False
        mine = self._routed_to(link.node)
        await self._read_map()
        if mine:
            await self._relocate(mine)
        if link.node in self.held:  # still its slots' owner as far as the map tells
            return True
        if self.links.get(link.node) is link:
            del self.links[link.node]
            self._tasks.pop(link.node, None)
        self._chore(link.aclose())
        self._state()
        link.log.info("event channel shard closed: no stream of this worker there")
        return False

    def _moved(self, link: ShardLink, exc: MovedError) -> None:
        """A subscription went to a node that no longer owns its slot: move the slot's
        channels to the owner it names."""
        channels = [c for c in self._routed_to(link.node) if slot_of(c) == exc.slot_id]
        self._map_read_at = -1.0  # the next look reads the map again
        if not channels:
            return  # an unsubscription's answer: nothing of ours there
        owner = f"{exc.host}:{exc.port}"
        link.log.info("stream channel moved", slot=exc.slot_id, to=owner)
        link.drop(channels, MOVED_WHY)
        self._chore(self._relocate(channels, owner))

    def _pushed_out(self, link: ShardLink, channel: str) -> None:
        """Redis unsubscribed ``channel``: ours to ask for (then it is no longer routed
        here), or its slot left the node (a migration, the node turned replica)."""
        if self.routes.get(channel) != link.node:
            return
        link.log.info("stream channel's slot left its node", channel=channel)
        link.drop([channel], MOVED_WHY)
        self._chore(self._relocate([channel]))

    def _state(self) -> None:
        """``connected``, and the metric, from the links holding channels."""
        up = self._mapped and all(
            node in self.links and self.links[node].connected.is_set() for node in self.held
        )
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        metrics.REDIS_UP.set(1 if up else 0)
