"""Benchmark: the money core on a Redis Cluster against one Redis, in one run (issue 18).

    python -m loadtest.micro.bench_cluster [--gifts 15000] [--callers 64] [--rounds 5]

Every server is started here, on loopback, with AOF on and fsync every second (the
embedded default), and all of them share this machine's cores with this process. In order:

1. **Redis CPU per gift and gifts/s**: ``--callers`` concurrent callers send ``--gifts``
   1-coin gifts through :class:`giftrelay.money.api.Money` to one ``redis-server`` (a gift
   is one ``gift.lua``), a cluster of 1 primary and a cluster of 3 primaries (a gift is
   two scripts on two slots, and an ``XDEL``; the creator's earnings wait on the stream),
   ``--replicas`` (0 or 1) replicas per primary, the single server's included;
   ``--rounds`` rounds, the targets interleaved,
   so that a busy moment of the machine falls on each. Redis CPU is read on every primary
   after ``CONFIG RESETSTAT``: the microseconds of the commands clients sent (``INFO
   commandstats``; the commands a script runs are inside its ``evalsha`` and counted
   once more on their own lines, so they are left out of the sum and shown in the
   profile), and ``used_cpu_sys + used_cpu_user`` (``INFO cpu``) as a cross-check, which
   also holds the sockets, the AOF and the cluster bus. commandstats times are wall
   clock: a command preempted by another process (more processes than cores) counts
   the wait too; ``used_cpu`` does not.
2. **Where it goes**: ``--profile-gifts`` more gifts on the 3-primary cluster with
   viewers, streams and creators chosen so that each step runs on a primary of its own
   (each node's commandstats are then one step's), and the cost of a script's building
   blocks (a call, a ``redis.call``, a ``cjson`` decode and encode of a transfer)
   on the single server and on a cluster node.
3. **Latency** at ``--rate`` gifts/s paced (open loop, timed from each gift's scheduled
   send), ``--seconds`` per round on the single server and the 3-primary cluster: until
   the gift's reply, and until a sharded pub/sub subscriber (``SSUBSCRIBE`` on the node
   owning the stream's channel) has its event; on the cluster also from the viewer's
   debit (step 1's reply) to the event. Redis CPU per gift is read at this rate too.
4. **Failover** on a fresh cluster of 3 primaries with a replica each: gifts paced at
   ``--failover-rate``, each retried with its id on ``unavailable``; after 2 s a primary
   is killed (SIGKILL), its replica promoted, and the killed node started again (it
   comes back as the new primary's replica: with ``GIFTRELAY_ACK_REPLICAS=1`` nothing on
   that shard is acknowledged until it does). Reported: seconds from the kill until gifts
   with a step on that shard are acknowledged again, and acknowledged gifts lost (its
   ledger entry, in the 64 ``keys.LEDGERS`` streams, or a record of one of its two
   steps missing; wallets and stream totals against the acknowledged replies as a
   cross-check). With ``GIFTRELAY_ACK_REPLICAS=1`` (``GIFTRELAY_ACK_TIMEOUT=1``), then
   without, then (unless ``--no-what-if``) with it and :class:`NoBackoffRouter`, a fix
   measured here that giftrelay does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from typing import cast as typing_cast

import msgspec
import structlog
import uvloop
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from giftrelay import logs
from giftrelay.config import Settings
from giftrelay.embedded import LocalCluster, RedisServer, even_slot_ranges
from giftrelay.money import catalog, keys, rules
from giftrelay.money.api import Money
from giftrelay.money.autopipe import AutoPipeline
from giftrelay.money.shards import ClusterRouter
from giftrelay.money.transfers import Steps, Transfer
from giftrelay.redis_client import connect
from giftrelay.wire.errors import Refused, Unavailable

from .bench_money import start_replica, synced

console = Console(width=200)
log = structlog.get_logger("bench_cluster")

HOST = "127.0.0.1"
GIFT = "rose"
FUND = 10**11
"""Coins each viewer gets: no gift is refused for want of coins."""
KILL_AFTER = 2.0
"""Seconds into a failover run when the primary is killed."""
RETRY_PAUSE = 0.1
"""A client's pause before it retries a gift answered ``unavailable``."""
GIVE_UP = 30.0
"""A client gives a gift up this long after its first send."""
OWN = frozenset({"info", "config|resetstat", "config|set", "config|get", "script|load"})
"""The benchmark's own commands, left out of every sum."""


def script_commands() -> frozenset[str]:
    """Every command a money script runs (``redis.call('X'`` in the Lua sources): their
    time in ``INFO commandstats`` is also inside ``evalsha``'s."""
    found: set[str] = set()
    for item in resources.files("giftrelay.money").joinpath("lua").iterdir():
        if item.name.endswith(".lua"):
            found |= set(re.findall(r"redis\.p?call\('([A-Za-z]+)'", item.read_text("utf-8")))
    return frozenset(name.lower() for name in found)


LUA_COMMANDS = script_commands()


def pct(samples: Sequence[float], p: float) -> float:
    """The nearest-rank percentile of ``samples`` (NaN when there are none)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class Cast:
    """Who gives and gets: viewers (one a caller), streams, and each stream's creator."""

    viewers: tuple[str, ...]
    streams: tuple[str, ...]
    creators: tuple[str, ...]

    def creator_of(self, stream: str) -> str:
        return self.creators[self.streams.index(stream) % len(self.creators)]

    def plan(self, i: int) -> tuple[str, str]:
        """Gift ``i``'s viewer and stream: over every viewer, stream and creator."""
        n = len(self.viewers)
        return self.viewers[i % n], self.streams[(i + i // n) % len(self.streams)]


def spread_cast(callers: int) -> Cast:
    """Names as they come: on a cluster, spread over every primary by their hash."""
    return Cast(
        tuple(f"v{c:03d}" for c in range(callers)),
        tuple(f"s{i:02d}" for i in range(16)),
        tuple(f"c{i}" for i in range(8)),
    )


def split_cast(callers: int) -> Cast:
    """On 3 primaries holding the slots as LocalCluster gives them: every viewer on the
    first, every stream on the second, every creator on the third (step 1, 2 and 3)."""
    ranges = even_slot_ranges(3)

    def on(node: int, prefix: str, key: Callable[[str], str], count: int) -> tuple[str, ...]:
        first, last = ranges[node]
        names = (f"{prefix}{n}" for n in range(100_000))
        return tuple(
            next_n(
                (name for name in names if first <= key_slot(key(name).encode()) <= last),
                count,
            )
        )

    return Cast(
        on(0, "pv", keys.wallet, callers),
        on(1, "ps", keys.stream, 16),
        on(2, "pc", keys.wallet, 8),
    )


def next_n(items: Iterator[str], count: int) -> list[str]:
    return [next(items) for _ in range(count)]


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Target:
    """Where gifts go: its URL, its primaries (ports) and how to stop it."""

    name: str
    url: str
    primaries: list[int]
    cluster: LocalCluster | None
    stop: Callable[[], None]

    def owner(self, key: str) -> int:
        """The port of the primary holding ``key``."""
        if self.cluster is None:
            return self.primaries[0]
        return self.cluster.owner_of_slot(key_slot(key.encode()))


def single(directory: Path, replicas: int, aof: bool) -> Target:
    server = RedisServer(directory / "single", appendonly=aof)
    server.start()
    follower = start_replica(server, directory / "single-replica") if replicas else None

    def stop() -> None:
        if follower is not None:
            follower.terminate()
            follower.wait(10)
        server.stop()

    return Target("single redis-server (gift.lua)", server.url, [server.port], None, stop)


def cluster(directory: Path, primaries: int, replicas: int, aof: bool) -> Target:
    node = LocalCluster(
        directory / f"cluster-{primaries}x{replicas}",
        primaries=primaries,
        replicas=replicas,
        appendonly=aof,
    )
    node.start()
    name = f"cluster, {primaries} primar{'y' if primaries == 1 else 'ies'} (2 steps)"
    # In slot order, so that split_cast's first node is the first port.
    ports = [node.owner_of_slot(first) for first, _ in even_slot_ranges(primaries)]
    return Target(name, node.url, ports, node, node.stop)


# -- Redis's own figures -----------------------------------------------------------------------


@dataclass
class Usage:
    """What some primaries did between :func:`reset` and :func:`usage`."""

    usec: Counter[str] = field(default_factory=Counter)
    """usec per command name (INFO commandstats)."""
    calls: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0
    """Seconds of used_cpu_sys + used_cpu_user."""

    @property
    def client_usec(self) -> int:
        """Microseconds of the commands clients sent (a script's own commands are inside
        its ``evalsha``)."""
        return sum(v for k, v in self.usec.items() if k not in LUA_COMMANDS)

    @property
    def inner_usec(self) -> int:
        return sum(v for k, v in self.usec.items() if k in LUA_COMMANDS)


async def _cpu(client: Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def reset(ports: Sequence[int]) -> list[float]:
    """CONFIG RESETSTAT on each primary; their CPU seconds so far."""
    out = []
    for port in ports:
        async with Redis(host=HOST, port=port) as client:
            await client.config_resetstat()
            out.append(await _cpu(client))
    return out


async def usage_by_node(ports: Sequence[int], cpu_before: Sequence[float]) -> list[Usage]:
    out = []
    for port, before in zip(ports, cpu_before, strict=True):
        result = Usage()
        async with Redis(host=HOST, port=port, decode_responses=True) as client:
            stats = await client.info("commandstats")
            result.cpu = await _cpu(client) - before
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in OWN:
                result.usec[name] += int(value["usec"])
                result.calls[name] += int(value["calls"])
        out.append(result)
    return out


async def usage(ports: Sequence[int], cpu_before: Sequence[float]) -> Usage:
    total = Usage()
    for one in await usage_by_node(ports, cpu_before):
        total.usec.update(one.usec)
        total.calls.update(one.calls)
        total.cpu += one.cpu
    return total


async def flush(ports: Sequence[int]) -> None:
    for port in ports:
        async with Redis(host=HOST, port=port) as client:
            await client.flushall()
            replicas = int((await client.info("replication"))["connected_slaves"])
            if replicas:
                await client.wait(replicas, 5000)


# -- the money core ------------------------------------------------------------------------------


class TracedSteps(Steps):
    """Steps that note when each gift's debit (step 1) was answered, by request id."""

    debited: dict[str, float]

    def after_debit(self, debit: asyncio.Future[Any], gift: Transfer) -> asyncio.Future[Any]:
        def noted(step: asyncio.Future[Any]) -> None:
            if not step.cancelled() and step.exception() is None:
                reply = step.result()
                if reply[0] == "ok":
                    self.debited[gift.id] = time.perf_counter()

        debit.add_done_callback(noted)
        return super().after_debit(debit, gift)


class NoBackoffRouter(ClusterRouter):
    """The cluster router with one change, made here and not in src: its per-primary
    clients connect as :func:`giftrelay.redis_client.connect`'s do (one retry at once).
    ``ClusterRouter._pipe`` passes them the cluster client's connection options, which
    lack ``retry`` (RedisCluster keeps it for itself), so they get redis-py's default:
    an exponential backoff from 1 s over 10 tries, which holds a dead primary's pipeline,
    and the gifts queued behind it, for seconds after its replica took over."""

    def _pipe(self, node: ClusterNode) -> AutoPipeline:
        new = node.name not in self._pipes
        pipe = super()._pipe(node)
        if new:  # before its first connection
            pipe.redis.connection_pool.connection_kwargs["retry"] = Retry(
                NoBackoff(), 1, supported_errors=(RedisConnectionError,)
            )
        return pipe


async def open_money(url: str, env: dict[str, str], *, no_backoff: bool = False) -> Money:
    redis = connect(url)
    money = Money(redis, Settings.load(env), catalog.load())
    if no_backoff and money.steps is not None:
        settings = money.settings
        router = NoBackoffRouter(
            typing_cast(RedisCluster, redis),
            ack_replicas=settings.ack_replicas,
            ack_timeout_ms=round(settings.ack_timeout * 1000),
        )
        money.pipe = money.steps.router = router
    await money.start()
    return money


async def traced(money: Money) -> dict[str, float]:
    """From now on, when each gift's debit was answered (on a cluster; else nothing)."""
    if money.steps is None:
        return {}
    await money.steps.aclose()
    steps = TracedSteps(money.pipe, money.redis, money.settings)
    steps.debited = {}
    money.steps = steps
    return steps.debited


async def close_money(money: Money) -> None:
    await money.aclose()
    await money.redis.aclose()


async def set_up(money: Money, people: Cast, ports: Sequence[int], *, flushed: bool = True) -> None:
    if flushed:
        await flush(ports)
    for stream in people.streams:
        await money.stream_open(stream, people.creator_of(stream), "benchmark")
    for v in people.viewers:
        await money.topup(v, FUND, f"fund-{v}-0001")


async def closed_loop(money: Money, people: Cast, gifts: int, tag: str) -> int:
    """Each viewer a caller, one gift after another; the gifts sent."""
    per = gifts // len(people.viewers)

    async def caller(c: int) -> None:
        viewer = people.viewers[c]
        for i in range(per):
            stream = people.streams[(c + i) % len(people.streams)]
            await money.gift(viewer, stream, GIFT, 1, f"{tag}-{c:03d}-{i:07d}")

    await asyncio.gather(*(caller(c) for c in range(len(people.viewers))))
    return per * len(people.viewers)


async def gifts_applied(money: Money, people: Cast) -> int:
    return sum([(await money.stream_info(s)).gifts for s in people.streams])


# -- 1 and 2: CPU per gift, gifts/s, where it goes ------------------------------------------------


@dataclass
class Load:
    """One measured stretch of gifts on one target."""

    target: str
    load: str
    """'closed loop' (as fast as the callers go) or 'N/s paced'."""
    primaries: int
    gifts: int
    seconds: float
    client_cpu: float
    redis: Usage
    round: int = 0

    @property
    def rate(self) -> float:
        return self.gifts / self.seconds

    @property
    def usec_per_gift(self) -> float:
        return self.redis.client_usec / self.gifts

    @property
    def cpu_usec_per_gift(self) -> float:
        return self.redis.cpu * 1e6 / self.gifts


async def closed_run(
    target: Target, money: Money, people: Cast, gifts: int, tag: str, round_: int
) -> Load:
    """One closed-loop stretch of ``gifts`` gifts, with Redis's usage over it."""
    before = await reset(target.primaries)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    sent = await closed_loop(money, people, gifts, tag)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await asyncio.sleep(0.1)  # the outboxes' XDEL
    used = await usage(target.primaries, before)
    load = Load(target.name, "closed loop", len(target.primaries), sent, wall, cpu, used)
    load.round = round_
    return load


@dataclass
class Split:
    """The 3-primary cluster with each step on its own primary: per step, its usage."""

    gifts: int
    steps: dict[str, Usage]


async def split(target: Target, money: Money, args: argparse.Namespace) -> Split:
    people = split_cast(args.callers)
    for key, want in (
        (keys.wallet(people.viewers[0]), 0),
        (keys.stream(people.streams[0]), 1),
        (keys.wallet(people.creators[0]), 2),
    ):
        if await asyncio.to_thread(target.owner, key) != target.primaries[want]:
            raise RuntimeError(f"{key} is not where split_cast meant it")
    await set_up(money, people, target.primaries, flushed=False)
    await closed_loop(money, people, args.callers * 8, "pwarm")
    await asyncio.sleep(0.1)
    before = await reset(target.primaries)
    sent = await closed_loop(money, people, args.profile_gifts, "prof")
    await asyncio.sleep(0.1)
    nodes = await usage_by_node(target.primaries, before)
    names = (
        "1 gift_debit (+ XDEL), viewer's node",
        "2 gift_apply, stream's node",
        "creator's node (no step: the diamonds wait on the stream)",
    )
    return Split(sent, dict(zip(names, nodes, strict=True)))


TRANSFER = json.dumps(
    {
        "id": "gift-001-0000001",
        "from": "v001",
        "to": "c1",
        "stream": "s01",
        "gift": "rose",
        "name": "Rose",
        "count": 1,
        "coins": 1,
        "diamonds": 1,
        "ts": 1796542004000,
        "streakable": True,
        "coins_after": 99999999999,
    }
)
BLOCKS = {
    "a script call (`return 1`)": ("return 1", 1),
    "redis.call('TYPE', key), each": ("for i = 1, 20 do redis.call('TYPE', KEYS[1]) end", 20),
    "cjson.decode of a transfer, each": ("for i = 1, 20 do cjson.decode(ARGV[1]) end", 20),
    "cjson.encode of a transfer, each": (
        "local t = cjson.decode(ARGV[1]) for i = 1, 20 do cjson.encode(t) end",
        20,
    ),
}
"""Lua bodies timed by EVALSHA, and how many of the thing each does."""


async def blocks(port: int, key: str, calls: int = 2000) -> dict[str, float]:
    """µs of each building block on the node at ``port`` (``key`` one of its keys):
    the script call alone, and the others' extra per unit over it."""
    out: dict[str, float] = {}
    async with Redis(host=HOST, port=port) as client:
        base = 0.0
        for name, (body, units) in BLOCKS.items():
            sha = await client.script_load(
                body if body.startswith("return") else body + " return 1"
            )
            await client.config_resetstat()
            for first in range(0, calls, 200):
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(first, min(calls, first + 200)):
                        pipe.evalsha(sha, 1, key, TRANSFER)
                    await pipe.execute()
            stats = (await client.info("commandstats"))["cmdstat_evalsha"]
            per_call = int(stats["usec"]) / int(stats["calls"])
            if not out:
                base = per_call
                out[name] = per_call
            else:
                out[name] = (per_call - base) / units
    return out


# -- 3: latency --------------------------------------------------------------------------------


@dataclass
class Latency:
    target: str
    reply: list[float]
    event: list[float]
    debit_to_event: list[float]
    missing_events: int
    load: Load
    """Redis's and the client's CPU over the paced run."""


class Listener:
    """Sharded pub/sub subscribers, one per node owning a stream's channel: when each
    gift's event came, by request id."""

    def __init__(self) -> None:
        self.heard: dict[str, float] = {}
        self._clients: list[Redis] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, target: Target, streams: Sequence[str]) -> None:
        by_port: dict[int, list[str]] = {}
        for stream in streams:
            channel = keys.channel(stream)
            port = await asyncio.to_thread(target.owner, channel)
            by_port.setdefault(port, []).append(channel)
        for port, channels in by_port.items():
            client = Redis(host=HOST, port=port)
            pubsub = client.pubsub()
            for channel in channels:  # one slot per SSUBSCRIBE on a cluster
                await pubsub.ssubscribe(channel)
            self._clients.append(client)
            self._tasks.append(asyncio.create_task(self._read(pubsub)))

    async def _read(self, pubsub: Any) -> None:
        decode = msgspec.json.Decoder(dict[str, Any])
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "smessage":
                continue
            event = decode.decode(message["data"])
            if event.get("kind") == "gift":
                self.heard[str(event["id"])] = time.perf_counter()

    async def stop(self) -> None:
        failed = [t.exception() for t in self._tasks if t.done() and not t.cancelled()]
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients:
            await client.aclose()
        if failed and failed[0] is not None:
            raise RuntimeError(f"a subscriber failed: {failed[0]!r}") from failed[0]


async def paced(
    rate: float, seconds: float, send: Callable[[int, float], Coroutine[Any, Any, None]]
) -> None:
    """Call ``send(i, scheduled)`` for gift ``i`` at its scheduled time (open loop: a slow
    reply delays no later gift); return when every call has ended."""
    count = int(rate * seconds)
    start = time.perf_counter() + 0.05
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while i < count:
        now = time.perf_counter()
        due = start + i / rate
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < count and start + i / rate <= now:
            task = asyncio.create_task(send(i, start + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
    while tasks:
        await asyncio.gather(*list(tasks))


async def latency(target: Target, money: Money, args: argparse.Namespace, round_: int) -> Latency:
    people = spread_cast(args.callers)
    debited = await traced(money)
    listener = Listener()
    await listener.start(target, people.streams)
    sent: dict[str, float] = {}
    replied: dict[str, float] = {}

    async def send(i: int, scheduled: float) -> None:
        viewer, stream = people.plan(i)
        request_id = f"lat{round_}-{i:08d}"
        sent[request_id] = scheduled
        await money.gift(viewer, stream, GIFT, 1, request_id)
        replied[request_id] = time.perf_counter()

    try:
        await paced(args.rate, 0.3, lambda i, at: send(i + 10**7, at))  # warm: caches, links
        sent.clear()
        replied.clear()
        listener.heard.clear()
        before = await reset(target.primaries)
        cpu0 = time.process_time()
        await paced(args.rate, args.seconds, send)
        cpu = time.process_time() - cpu0
        await asyncio.sleep(0.5)  # the last events
        used = await usage(target.primaries, before)
    finally:
        await listener.stop()
    heard, ms = listener.heard, 1000.0
    load = Load(
        target.name, f"{args.rate:,.0f}/s paced", len(target.primaries), len(replied),
        args.seconds, cpu, used, round_,
    )  # fmt: skip
    return Latency(
        target.name,
        reply=[(replied[r] - at) * ms for r, at in sent.items() if r in replied],
        event=[(heard[r] - at) * ms for r, at in sent.items() if r in heard],
        debit_to_event=[(heard[r] - debited[r]) * ms for r in sent if r in heard and r in debited],
        missing_events=sum(1 for r in sent if r not in heard),
        load=load,
    )


# -- 4: failover --------------------------------------------------------------------------------


@dataclass
class Sent:
    viewer: str
    stream: str
    scheduled: float
    touches: bool
    """A step of this gift runs on the killed primary's shard."""
    acked: float | None = None
    attempts: int = 0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Failover:
    ack_replicas: int
    rate: float
    no_backoff: bool = False
    """Run with :class:`NoBackoffRouter` (a fix measured, not giftrelay as it is)."""
    gifts: int = 0
    acked: int = 0
    touching: int = 0
    gave_up: int = 0
    refused: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    promoted_s: float = math.nan
    """From the kill until the replica served the slots (LocalCluster.wait_failover)."""
    restarted_s: float = math.nan
    """From the kill until the killed node was back as a replica and the cluster stable."""
    window_s: float = math.nan
    """From the kill until the first acknowledgement of a gift sent after it with a step
    on the killed shard."""
    others_p99_ms: float = math.nan
    """p99 latency of the gifts with no step there, sent during that window."""
    stall_s: float = math.nan
    """The longest time after the kill in which no gift at all was acknowledged."""
    slowest_s: float = math.nan
    """The longest a gift with a step there took, from its scheduled send to its ack."""
    lost: int = 0
    no_ledger: int = 0
    no_debit_record: int = 0
    no_apply_record: int = 0
    duplicated: int = 0
    coins_off: int = 0
    """Sum over viewers of |coins - (funded - acknowledged gifts' coins)|."""
    diamonds_off: int = 0
    streams_off: int = 0
    outbox_left: int = 0


async def failover(
    directory: Path, args: argparse.Namespace, ack_replicas: int, *, no_backoff: bool = False
) -> Failover:
    result = Failover(ack_replicas, args.failover_rate, no_backoff)
    name = f"failover-ack{ack_replicas}{'-no-backoff' if no_backoff else ''}"
    node = LocalCluster(directory / name, primaries=3, replicas=1, appendonly=args.aof)
    await asyncio.to_thread(node.start)
    env = (
        {"GIFTRELAY_ACK_REPLICAS": str(ack_replicas), "GIFTRELAY_ACK_TIMEOUT": "1"}
        if ack_replicas
        else {}
    )
    money = await open_money(node.url, env, no_backoff=no_backoff)
    people = spread_cast(args.callers)
    try:
        await set_up(money, people, node.primary_ports())
        victim = node.owner_of_slot(key_slot(keys.wallet(people.viewers[0]).encode()))
        on_victim = {
            key
            for key in (
                *(keys.wallet(v) for v in people.viewers),
                *(keys.wallet(c) for c in people.creators),
                *(keys.stream(s) for s in people.streams),
            )
            if node.owner_of_slot(key_slot(key.encode())) == victim
        }
        gifts: dict[str, Sent] = {}
        times: dict[str, float] = {}

        async def send(i: int, scheduled: float) -> None:
            viewer, stream = people.plan(i)
            touches = bool(
                {keys.wallet(viewer), keys.stream(stream), keys.wallet(people.creator_of(stream))}
                & on_victim
            )
            request_id = f"fo{ack_replicas}-{i:07d}"
            gift = gifts[request_id] = Sent(viewer, stream, scheduled, touches)
            while True:
                gift.attempts += 1
                try:
                    await money.gift(viewer, stream, GIFT, 1, request_id)
                except Unavailable:
                    gift.errors["unavailable"] += 1
                except Refused as exc:
                    gift.errors[f"refused {exc.code}"] += 1
                    return
                except RedisError as exc:  # not made `unavailable` by the money core
                    gift.errors[type(exc).__name__] += 1
                else:
                    gift.acked = time.perf_counter()
                    return
                if time.perf_counter() > scheduled + GIVE_UP:
                    return
                await asyncio.sleep(RETRY_PAUSE)

        async def chaos() -> None:
            await asyncio.sleep(KILL_AFTER)
            await asyncio.to_thread(node.kill, victim)
            times["kill"] = time.perf_counter()
            await asyncio.to_thread(node.wait_failover, victim)
            times["promoted"] = time.perf_counter()
            # The promoted replica has none of its own: with ACK_REPLICAS=1 nothing on its
            # shard is acknowledged (WAIT 1) until the killed node is back as its replica.
            await asyncio.to_thread(node.restart, victim)
            times["restarted"] = time.perf_counter()

        killer = asyncio.create_task(chaos())
        await paced(args.failover_rate, args.failover_seconds, send)
        await killer
        assert money.steps is not None
        for _ in range(5):  # what a step left behind, as the mover would
            try:
                if (await money.steps.sweep(grace_ms=0)).moved == 0:
                    break
            except (RedisError, Unavailable) as exc:
                log.warning("sweep failed", error=str(exc))
                await asyncio.sleep(0.5)
        await check_losses(node.url, people, gifts, result, money)
        tally(result, gifts, times)
    finally:
        await close_money(money)
        await asyncio.to_thread(node.stop)
    return result


def tally(result: Failover, gifts: dict[str, Sent], times: dict[str, float]) -> None:
    kill = times["kill"]
    result.promoted_s = times["promoted"] - kill
    result.restarted_s = times["restarted"] - kill
    result.gifts = len(gifts)
    result.acked = sum(1 for g in gifts.values() if g.acked is not None)
    result.touching = sum(1 for g in gifts.values() if g.touches)
    result.refused = sum(1 for g in gifts.values() if any("refused" in e for e in g.errors))
    result.gave_up = result.gifts - result.acked - result.refused
    result.retries = sum(g.attempts - 1 for g in gifts.values())
    for g in gifts.values():
        result.errors.update(g.errors)
    acks = sorted([kill] + [g.acked for g in gifts.values() if g.acked and g.acked >= kill])
    result.stall_s = max((b - a for a, b in itertools.pairwise(acks)), default=math.nan)
    result.slowest_s = max(
        (g.acked - g.scheduled for g in gifts.values() if g.touches and g.acked), default=math.nan
    )
    back = [g.acked for g in gifts.values() if g.touches and g.acked and g.scheduled >= kill]
    if back:
        recovered = min(back)
        result.window_s = recovered - kill
        result.others_p99_ms = pct(
            [
                (g.acked - g.scheduled) * 1000
                for g in gifts.values()
                if not g.touches and g.acked and kill <= g.scheduled <= recovered
            ],
            99,
        )


async def check_losses(
    url: str, people: Cast, gifts: dict[str, Sent], result: Failover, money: Money
) -> None:
    """Every acknowledged gift's ledger entry and two records, with a fresh client;
    wallets and stream totals against the acknowledged replies."""
    redis = connect(url)
    try:
        acked = {rid: g for rid, g in gifts.items() if g.acked is not None}
        ledger: Counter[str] = Counter()
        for stream in keys.LEDGERS:
            entries: list[tuple[str, dict[str, str]]] = await redis.xrange(stream)  # type: ignore[assignment]
            for _, fields in entries:
                entry = json.loads(fields["e"])
                if entry.get("kind") == "gift":
                    ledger[str(entry["id"])] += 1
        result.duplicated = sum(1 for n in ledger.values() if n > 1)
        lost: set[str] = set()
        ids = list(acked)
        for first in range(0, len(ids), 500):
            chunk = ids[first : first + 500]
            pipe = redis.pipeline(transaction=False)
            for rid in chunk:
                g = acked[rid]
                pipe.exists(keys.gift_idem(g.viewer, rid))
                pipe.exists(keys.applied(g.stream, g.viewer, rid))
            found = await pipe.execute()
            for n, rid in enumerate(chunk):
                debit, apply = found[2 * n : 2 * n + 2]
                result.no_debit_record += not debit
                result.no_apply_record += not apply
                if not (debit and apply):
                    lost.add(rid)
        missing = {rid for rid in acked if ledger[rid] == 0}
        result.no_ledger = len(missing)
        result.lost = len(lost | missing)

        item = catalog.load().get(GIFT)
        assert item is not None
        diamonds = rules.diamonds_for(item.coins, money.diamond_rate)
        per_viewer = Counter(g.viewer for g in acked.values())
        per_stream = Counter(g.stream for g in acked.values())
        per_creator = Counter(people.creator_of(g.stream) for g in acked.values())
        for viewer in people.viewers:
            coins = int(await redis.hget(keys.wallet(viewer), "coins") or 0)
            result.coins_off += abs(coins - (FUND - per_viewer[viewer] * item.coins))
        for creator in people.creators:
            got = (await money.balance(creator)).diamonds  # wallet and earnings
            result.diamonds_off += abs(got - per_creator[creator] * diamonds)
        for stream in people.streams:
            count = int(await redis.hget(keys.stream(stream), "gifts") or 0)
            result.streams_off += abs(count - per_stream[stream])
        result.outbox_left = sum([int(await redis.xlen(o)) for o in keys.OUTBOXES])
    finally:
        await redis.aclose()


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    loads: list[Load] = field(default_factory=list)
    split: Split | None = None
    blocks: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: list[Latency] = field(default_factory=list)
    failover: list[Failover] = field(default_factory=list)


@dataclass
class Up:
    """A target running, with its money core and people set up."""

    target: Target
    money: Money
    people: Cast
    sent: int = 0


async def measure(args: argparse.Namespace) -> Run:
    run = Run()
    directory = Path(tempfile.mkdtemp(prefix="giftrelay-bench-cluster-"))
    up: list[Up] = []
    try:
        makers: list[Callable[[], Target]] = [
            lambda: single(directory, args.replicas, args.aof),
            lambda: cluster(directory, 1, args.replicas, args.aof),
            lambda: cluster(directory, 3, args.replicas, args.aof),
        ]
        for make in makers:
            target = await asyncio.to_thread(make)
            up.append(Up(target, await open_money(target.url, {}), spread_cast(args.callers)))
            if args.replicas and target.cluster is None:
                async with Redis.from_url(target.url) as client:
                    await synced(client)
        for u in up:
            await set_up(u.money, u.people, u.target.primaries)
            u.sent += await closed_loop(u.money, u.people, args.callers * 8, "warm")
        for r in range(args.rounds):  # interleaved: a busy moment falls on every target
            for u in up[r % 3 :] + up[: r % 3]:
                console.log(f"round {r + 1}: {u.target.name}, {args.gifts:,} gifts")
                load = await closed_run(u.target, u.money, u.people, args.gifts, f"g{r}", r)
                run.loads.append(load)
                u.sent += load.gifts
        for u in up:
            applied = await gifts_applied(u.money, u.people)
            if applied != u.sent:
                raise RuntimeError(f"{u.target.name}: {applied} gifts applied of {u.sent}")
        await after_rounds(up[0], up[2], run, args)
    finally:
        for u in up:
            await close_money(u.money)
            await asyncio.to_thread(u.target.stop)
    try:
        variants = [(1, False), (0, False)] + ([(1, True)] if args.what_if else [])
        for ack, no_backoff in variants if args.failover_seconds > 0 else ():
            console.log(
                f"failover, ACK_REPLICAS={ack}{', router without backoff' if no_backoff else ''}:"
                f" {args.failover_rate:,.0f} gifts/s paced"
            )
            run.failover.append(await failover(directory, args, ack, no_backoff=no_backoff))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return run


async def after_rounds(one: Up, three: Up, run: Run, args: argparse.Namespace) -> None:
    """The building blocks, the steps apart, and latency, on the single server and the
    3-primary cluster."""
    if args.profile_gifts:
        for u in (one, three):
            key = keys.wallet(u.people.viewers[0])
            port = await asyncio.to_thread(u.target.owner, key)
            run.blocks[u.target.name] = await blocks(port, key)
        console.log(f"{three.target.name}: {args.profile_gifts:,} gifts, a step per primary")
        run.split = await split(three.target, three.money, args)
    for r in range(args.rounds if args.seconds > 0 else 0):
        for u in (one, three) if r % 2 == 0 else (three, one):
            console.log(f"round {r + 1}: {u.target.name}, {args.rate:,.0f} gifts/s paced")
            latency_run = await latency(u.target, u.money, args, r)
            run.latency.append(latency_run)
            run.loads.append(latency_run.load)


# -- the tables -----------------------------------------------------------------------------------


def _f(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def _table(title: str, columns: Sequence[str], left: int = 1) -> Table:
    table = Table(title=title)
    for n, column in enumerate(columns):
        table.add_column(column, justify="left" if n < left else "right")
    return table


def pooled(loads: Sequence[Load]) -> Load:
    """Several stretches of one target and load as one."""
    total = Usage()
    for one in loads:
        total.usec.update(one.redis.usec)
        total.calls.update(one.redis.calls)
        total.cpu += one.redis.cpu
    first = loads[0]
    return Load(
        first.target,
        first.load,
        first.primaries,
        sum(x.gifts for x in loads),
        sum(x.seconds for x in loads),
        sum(x.client_cpu for x in loads),
        total,
    )


def series(run: Run) -> dict[tuple[str, str], list[Load]]:
    out: dict[tuple[str, str], list[Load]] = {}
    for one in run.loads:
        out.setdefault((one.target, one.load), []).append(one)
    return out


def ratios(run: Run, target: str, load: str, of: Callable[[Load], float]) -> list[float]:
    """Per round, ``of`` the target's stretch over the single server's in that round."""
    groups = series(run)
    single = next(t for t, _ in groups if t.startswith("single"))
    base = {x.round: x for x in groups[(single, load)]}
    return [of(x) / of(base[x.round]) for x in groups[(target, load)]]


def _median(values: Sequence[float]) -> float:
    return (
        pct(values, 50) if len(values) % 2 else sum(sorted(values)[len(values) // 2 - 1 :][:2]) / 2
    )


def _spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{_median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def cpu_table(run: Run, args: argparse.Namespace) -> None:
    table = _table(
        f"Redis CPU per gift and gifts/s: {args.callers} callers, 1-coin gifts, {args.replicas}"
        f" replica(s) per primary, AOF {'on' if args.aof else 'off'}; {args.rounds} closed-loop"
        " rounds of each, interleaved",
        (
            "target",
            "load",
            "gifts",
            "gifts/s",
            "client CPU µs/gift",
            "Redis µs/gift",
            "x single: median (range)",
            "Redis used_cpu µs/gift",
            "x single",
            "Redis cores busy",
            "ceiling, 1 core",
            "ceiling, a core per primary",
        ),
        left=2,
    )
    for (target, load), loads in series(run).items():
        t = pooled(loads)
        table.add_row(
            target,
            load,
            f"{t.gifts:,}",
            f"{t.rate:,.0f}",
            _f(t.client_cpu * 1e6 / t.gifts),
            _f(t.usec_per_gift),
            _spread(ratios(run, target, load, lambda x: x.usec_per_gift)),
            _f(t.cpu_usec_per_gift),
            _spread(ratios(run, target, load, lambda x: x.cpu_usec_per_gift)),
            f"{t.redis.cpu / t.seconds:.2f}",
            f"{1e6 / t.usec_per_gift:,.0f}",
            f"{t.primaries * 1e6 / t.usec_per_gift:,.0f}",
        )
    console.print(table)
    console.print(
        "Redis µs/gift: INFO commandstats, every command a client sent, all primaries (a"
        " script's own commands are inside its evalsha); pooled over the rounds. Ceilings: one"
        " core's second over that. This machine's 2 cores run this process and every Redis"
        " node: gifts/s is the Python client's limit (see its CPU per gift), not Redis's."
    )


def profile_tables(run: Run) -> None:
    closed = [pooled(loads) for (_, load), loads in series(run).items() if load == "closed loop"]
    base, wide = closed[0], closed[-1]
    table = _table(
        "Where Redis's time goes: INFO commandstats per gift, all primaries, closed loop",
        ("command", "run by", "single: calls", "µs", "3 primaries: calls", "µs", "µs added"),
    )
    names = sorted(set(base.redis.usec) | set(wide.redis.usec), key=lambda n: -wide.redis.usec[n])
    for name in names:
        b, w = base.redis.usec[name] / base.gifts, wide.redis.usec[name] / wide.gifts
        table.add_row(
            name,
            "a script" if name in LUA_COMMANDS else "the client",
            f"{base.redis.calls[name] / base.gifts:.2f}",
            f"{b:.2f}",
            f"{wide.redis.calls[name] / wide.gifts:.2f}",
            f"{w:.2f}",
            f"{w - b:+.2f}",
        )
    lua = [(t.redis.usec["evalsha"] - t.redis.inner_usec) / t.gifts for t in (base, wide)]
    table.add_row(
        "[b]Lua itself[/] (evalsha - its commands)",
        "",
        "",
        f"{lua[0]:.2f}",
        "",
        f"{lua[1]:.2f}",
        f"{lua[1] - lua[0]:+.2f}",
    )
    table.add_row(
        "[b]total[/] (the client's commands)",
        "",
        "",
        f"{base.usec_per_gift:.2f}",
        "",
        f"{wide.usec_per_gift:.2f}",
        f"{wide.usec_per_gift - base.usec_per_gift:+.2f}",
    )
    console.print(table)

    if run.split is not None:
        s = run.split
        steps = _table(
            f"Each step on a primary of its own: {s.gifts:,} gifts, per gift",
            (
                "step",
                "evalsha µs",
                "its commands µs",
                "Lua itself µs",
                "client cmds µs",
                "used_cpu µs",
                "redis.calls",
            ),
        )
        rows = [("gift.lua, single redis-server (closed loop)", base.redis, base.gifts)]
        rows += [(name, u, s.gifts) for name, u in s.steps.items()]
        for name, u, n in rows:
            inner_calls = sum(v for k, v in u.calls.items() if k in LUA_COMMANDS)
            steps.add_row(
                name,
                f"{u.usec['evalsha'] / n:.2f}",
                f"{u.inner_usec / n:.2f}",
                f"{(u.usec['evalsha'] - u.inner_usec) / n:.2f}",
                f"{u.client_usec / n:.2f}",
                f"{u.cpu * 1e6 / n:.2f}",
                f"{inner_calls / n:.1f}",
            )
        total = Usage()
        for u in s.steps.values():
            total.usec.update(u.usec)
            total.calls.update(u.calls)
            total.cpu += u.cpu
        steps.add_row(
            "[b]2 steps[/]",
            f"{total.usec['evalsha'] / s.gifts:.2f}",
            f"{total.inner_usec / s.gifts:.2f}",
            f"{(total.usec['evalsha'] - total.inner_usec) / s.gifts:.2f}",
            f"{total.client_usec / s.gifts:.2f}",
            f"{total.cpu * 1e6 / s.gifts:.2f}",
            f"{sum(v for k, v in total.calls.items() if k in LUA_COMMANDS) / s.gifts:.1f}",
        )
        console.print(steps)

    if run.blocks:
        names = list(run.blocks)
        table = _table("A script's building blocks, µs (EVALSHA, commandstats)", ["block", *names])
        for block in BLOCKS:
            table.add_row(block, *(f"{run.blocks[n][block]:.2f}" for n in names))
        console.print(table)


def pooled_latency(run: Run) -> list[Latency]:
    """Each target's paced rounds as one (single server first)."""
    out: dict[str, Latency] = {}
    for r in run.latency:
        have = out.get(r.target)
        if have is None:
            out[r.target] = Latency(
                r.target, list(r.reply), list(r.event), list(r.debit_to_event),
                r.missing_events, r.load,
            )  # fmt: skip
        else:
            have.reply += r.reply
            have.event += r.event
            have.debit_to_event += r.debit_to_event
            have.missing_events += r.missing_events
    return list(out.values())


def added_p99(run: Run, what: str) -> list[float]:
    """Per round, the cluster's p99 of ``what`` less the single server's."""
    rounds: dict[int, dict[bool, float]] = {}
    for r in run.latency:
        one = r.target.startswith("single")
        rounds.setdefault(r.load.round, {})[one] = pct(getattr(r, what), 99)
    return [v[False] - v[True] for v in rounds.values() if len(v) == 2]


def latency_table(run: Run, args: argparse.Namespace) -> None:
    table = _table(
        f"Latency at {args.rate:,.0f} gifts/s paced, ms from each gift's scheduled send",
        (
            "target",
            "acked/s",
            "reply p50",
            "p99",
            "max",
            "event p50",
            "p99",
            "max",
            "debit→event p50",
            "p99",
            "events missing",
        ),
    )
    for r in pooled_latency(run):
        table.add_row(
            r.target,
            f"{len(r.reply) / args.seconds / args.rounds:,.0f}",
            *(_f(pct(r.reply, p), 2) for p in (50, 99, 100)),
            *(_f(pct(r.event, p), 2) for p in (50, 99, 100)),
            *(_f(pct(r.debit_to_event, p), 2) for p in (50, 99)),
            str(r.missing_events),
        )
    console.print(table)


def failover_table(run: Run) -> None:
    table = _table(
        "Failover: a primary killed (SIGKILL) under paced gifts, clients retrying with the id",
        (
            "ACK_REPLICAS",
            "gifts",
            "acked",
            "a step there",
            "gave up",
            "retries",
            "promoted s",
            "restarted s",
            "acks there again s",
            "slowest there s",
            "no ack at all, longest s",
            "others p99 ms",
            "acked lost",
            "no ledger entry",
            "no debit/apply record",
            "dup",
            "coins/diamonds/totals off",
            "outbox left",
        ),
    )
    for f in run.failover:
        table.add_row(
            f"{f.ack_replicas}" + (", router without backoff (not in src)" if f.no_backoff else ""),
            f"{f.gifts:,}",
            f"{f.acked:,}",
            f"{f.touching:,}",
            str(f.gave_up),
            f"{f.retries:,}",
            _f(f.promoted_s, 2),
            _f(f.restarted_s, 2),
            _f(f.window_s, 2),
            _f(f.slowest_s, 2),
            _f(f.stall_s, 2),
            _f(f.others_p99_ms, 0),
            f"[b]{f.lost}[/]",
            str(f.no_ledger),
            f"{f.no_debit_record}/{f.no_apply_record}",
            str(f.duplicated),
            f"{f.coins_off}/{f.diamonds_off}/{f.streams_off}",
            str(f.outbox_left),
        )
    console.print(table)
    for f in run.failover:
        if f.errors:
            what = ", router without backoff" if f.no_backoff else ""
            console.print(f"ACK_REPLICAS={f.ack_replicas}{what}, the clients saw: {dict(f.errors)}")


def goals(run: Run) -> dict[str, Any]:
    """Print issue 18's goals as this run met them; the figures, for --json."""
    closed = [pooled(loads) for (_, load), loads in series(run).items() if load == "closed loop"]
    base, wide = closed[0], closed[-1]
    per_round = ratios(run, wide.target, wide.load, lambda x: x.usec_per_gift)
    per_round_cpu = ratios(run, wide.target, wide.load, lambda x: x.cpu_usec_per_gift)
    ratio = _median(per_round)
    figures: dict[str, Any] = {
        "loads": [
            {
                "target": t.target,
                "load": t.load,
                "round": t.round,
                "gifts_per_s": round(t.rate),
                "client_usec_per_gift": round(t.client_cpu * 1e6 / t.gifts, 1),
                "redis_usec_per_gift": round(t.usec_per_gift, 2),
                "redis_used_cpu_usec_per_gift": round(t.cpu_usec_per_gift, 2),
            }
            for t in run.loads
        ],
        "commands_usec_per_gift": {
            t.target: {k: round(v / t.gifts, 2) for k, v in t.redis.usec.items()}
            for t in (base, wide)
        },
        "steps": {
            name: {
                "evalsha_usec": round(u.usec["evalsha"] / run.split.gifts, 2),
                "commands_usec": round(u.inner_usec / run.split.gifts, 2),
                "client_usec": round(u.client_usec / run.split.gifts, 2),
                "used_cpu_usec": round(u.cpu * 1e6 / run.split.gifts, 2),
            }
            for name, u in run.split.steps.items()
        }
        if run.split
        else {},
        "cpu_ratio_median": round(ratio, 3),
        "cpu_ratio_rounds": [round(x, 3) for x in per_round],
        "cpu_ratio_used_cpu_median": round(_median(per_round_cpu), 3),
        "cpu_ratio_used_cpu_rounds": [round(x, 3) for x in per_round_cpu],
        "blocks": run.blocks,
        "failover": [
            {
                "ack_replicas": f.ack_replicas,
                "no_backoff": f.no_backoff,
                "gifts": f.gifts,
                "acked": f.acked,
                "lost": f.lost,
                "window_s": round(f.window_s, 2),
                "stall_s": round(f.stall_s, 2),
                "slowest_s": round(f.slowest_s, 2),
                "promoted_s": round(f.promoted_s, 2),
                "restarted_s": round(f.restarted_s, 2),
            }
            for f in run.failover
        ],
    }
    table = _table("Issue 18's goals, this run", ("goal", "figure", "met?"))
    table.add_row(
        "Redis CPU per gift, 3-primary cluster / single ≤ 1.6x",
        f"{_spread(per_round)}x over {len(per_round)} rounds (pooled {wide.usec_per_gift:.1f} /"
        f" {base.usec_per_gift:.1f} µs, commandstats); used_cpu {_spread(per_round_cpu)}x",
        "met" if ratio <= 1.6 else "NOT met",
    )
    if len(closed) == 3:
        work = ratios(run, closed[1].target, "closed loop", lambda x: x.usec_per_gift)
        work_cpu = ratios(run, closed[1].target, "closed loop", lambda x: x.cpu_usec_per_gift)
        figures["cpu_ratio_one_primary"] = [round(_median(work), 3), round(_median(work_cpu), 3)]
        table.add_row(
            "  the same, 1-primary cluster (the two steps' work, one process as the single's)",
            f"{_spread(work)}x; used_cpu {_spread(work_cpu)}x",
            "met" if _median(work) <= 1.6 else "NOT met",
        )
    paced_runs = pooled_latency(run)
    if len(paced_runs) == 2:
        one, three = paced_runs
        added = {
            what: pct(getattr(three, what), 99) - pct(getattr(one, what), 99)
            for what in ("event", "reply")
        }
        figures["latency"] = [
            {
                "target": r.target,
                **{f"reply_p{p}_ms": round(pct(r.reply, p), 2) for p in (50, 99)},
                **{f"event_p{p}_ms": round(pct(r.event, p), 2) for p in (50, 99)},
                "debit_to_event_p99_ms": round(pct(r.debit_to_event, 99), 2),
            }
            for r in paced_runs
        ]
        figures["added_p99_ms"] = {k: round(v, 2) for k, v in added.items()}
        rounds = {k: [round(x, 2) for x in added_p99(run, k)] for k in ("event", "reply")}
        figures["added_p99_ms_rounds"] = rounds
        table.add_row(
            "the cluster path's added latency, p99 ≤ 20 ms",
            f"to the event {added['event']:+.2f} ms (rounds {rounds['event']}), to the reply"
            f" {added['reply']:+.2f} ms (rounds {rounds['reply']}); debit→event p99"
            f" {pct(three.debit_to_event, 99):.2f} ms",
            "met" if max(added.values()) <= 20 else "NOT met",
        )
    for f in run.failover:
        goal = f.ack_replicas and not f.no_backoff
        table.add_row(
            f"failover, ACK_REPLICAS={f.ack_replicas}"
            + (", router without backoff (not in src)" if f.no_backoff else "")
            + ": acknowledged gifts lost"
            + (" = 0" if goal else ""),
            f"{f.lost} of {f.acked:,}; acknowledged again {_f(f.window_s, 2)} s after the kill"
            f" (replica promoted after {_f(f.promoted_s, 2)} s; slowest gift there"
            f" {_f(f.slowest_s, 2)} s)",
            ("met" if f.lost == 0 else "NOT met") if goal else "measured",
        )
    console.print(table)
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--gifts", type=int, default=15_000, help="gifts per closed-loop run")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (viewers)")
    parser.add_argument(
        "--rounds", type=int, default=5, help="closed-loop and paced runs of each target"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        choices=(0, 1),
        default=0,
        help="replicas per primary in the CPU, gifts/s and latency runs (the single one's too)",
    )
    parser.add_argument(
        "--profile-gifts", type=int, default=5_000, help="gifts with a step per primary; 0: none"
    )
    parser.add_argument("--rate", type=float, default=1_000, help="paced gifts/s for latency")
    parser.add_argument("--seconds", type=float, default=3.0, help="each paced run; 0: none")
    parser.add_argument("--failover-rate", type=float, default=400, help="paced gifts/s")
    parser.add_argument(
        "--failover-seconds", type=float, default=10.0, help="each failover run; 0: none"
    )
    parser.add_argument(
        "--no-what-if", dest="what_if", action="store_false",
        help="skip the third failover run, with NoBackoffRouter (a fix not in src)",
    )  # fmt: skip
    parser.add_argument(
        "--no-aof", dest="aof", action="store_false", help="AOF off on every node (default on)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--log-level", default="error", help="the money core's log lines")
    args = parser.parse_args(argv)
    if args.gifts < args.callers or 0 < args.profile_gifts < args.callers:
        parser.error("--gifts and --profile-gifts must be at least --callers")
    logs.configure("console", args.log_level)
    began = time.perf_counter()
    run = uvloop.run(measure(args))
    cpu_table(run, args)
    profile_tables(run)
    if run.latency:
        latency_table(run, args)
    if run.failover:
        failover_table(run)
    figures = goals(run)
    console.log(f"done in {time.perf_counter() - began:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    if any(f.ack_replicas and f.lost for f in run.failover):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
