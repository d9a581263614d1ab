"""A load test's target: giftrelay or a peer, started as a process and waited for until it listens.

``giftrelay serve`` says when it listens: its banner (the URLs, ending with "press
Ctrl+C") is printed once the port is open, and names its Redis (which may be embedded)
and its ledger. The peers say nothing, so their port is tried until it accepts. The
target's output goes to a log file (or, with ``log=None``, its stderr to ours), and
its stdout is read all along, so that a full pipe never stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

from . import procstats

ROOT = Path(__file__).resolve().parents[2]
"""The checkout (or the installed package's parent)."""
PEERS = ("giftrelay", "naive", "socketio")
SOCKETIO_DIR = ROOT / "loadtest" / "peers" / "socketio"
BANNER_END = "press Ctrl+C"
"""The last line of ``giftrelay serve``'s banner."""


class TargetFailed(RuntimeError):
    """The target exited, or did not listen in time."""


class Target:
    """One started target: its process, port and log; ``banner`` holds serve's ``name: url``."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, port: int, log: Path | None
    ) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log
        self.banner: dict[str, str] = {}
        self.ready = asyncio.Event()
        """Set once serve's banner is complete (at once for a peer, which prints none)."""
        if name != "giftrelay":
            self.ready.set()
        self._reader = asyncio.create_task(self._read())

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return self.banner.get("websocket") or f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        """Pids of the worker processes of ``serve --workers N``."""
        return [p for p in procstats.descendants(self.pid) if b"worker" in procstats.cmdline(p)]

    def usage(self) -> procstats.Sample:
        """CPU seconds and RSS of the target's process tree."""
        sample = procstats.sample([self.pid])
        if sample is None:
            raise TargetFailed(f"{self.name} (pid {self.pid}) is gone")
        return sample

    async def _read(self) -> None:
        """Copy stdout into the log (or drop it), reading serve's banner on the way."""
        stdout = self.proc.stdout
        assert stdout is not None
        out = self.log.open("ab", buffering=0) if self.log is not None else None
        try:
            while not self.ready.is_set() and (line := await stdout.readline()):
                if out is not None:
                    out.write(line)
                text = line.decode(errors="replace").strip()
                name, _, value = text.partition(":")
                if value.strip() and " " not in name:
                    self.banner[name] = value.split()[0]
                if BANNER_END in text:
                    self.ready.set()
            while chunk := await stdout.read(65536):
                if out is not None:
                    out.write(chunk)
        finally:
            if out is not None:
                out.close()

    async def _wait_ready(self) -> None:
        if self.name != "giftrelay":
            await _listening(self.port, self.proc)
            return
        ready = asyncio.create_task(self.ready.wait())
        exited = asyncio.create_task(self.proc.wait())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if not self.ready.is_set():
            raise TargetFailed(self._exited())

    def _exited(self) -> str:
        where = f"; see {self.log}" if self.log is not None else ""
        return f"{self.name} exited with status {self.proc.returncode} at start{where}"

    async def stop(
        self, sig: int = signal.SIGTERM, within: float = 30.0, *, force: bool = True
    ) -> int:
        """Send ``sig`` and wait ``within`` s for the exit status; then SIGKILL (``force``)
        or raise TimeoutError. Its output is read to the end."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(within):
                await self.proc.wait()
        except TimeoutError:
            if not force:
                raise
            self.kill()
        return await self.closed()

    async def closed(self) -> int:
        """The exit status, once its output is read to the end."""
        code = await self.proc.wait()
        with contextlib.suppress(TimeoutError):  # unless something it started holds stdout
            await asyncio.wait_for(asyncio.shield(self._reader), 10)
        return code

    def kill(self) -> None:
        """SIGKILL the target and everything it started, at once (an embedded Redis too,
        which has a session of its own), if it still runs."""
        if self.proc.returncode is not None:
            return
        for pid in [*procstats.descendants(self.pid), self.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def start(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    env: dict[str, str],
    log: Path | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    within: float = 60.0,
) -> Target:
    """Start ``argv`` (in ``cwd``, or here) and wait until it listens on ``port``: giftrelay's
    banner, or for a peer, a connection accepted. ``new_session``: a terminal's Ctrl-C does
    not reach it (its starter stops it)."""
    stderr = log.open("ab") if log is not None else None
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            start_new_session=new_session,
        )  # fmt: skip
    finally:
        if stderr is not None:
            stderr.close()  # the child has its own
    target = Target(name, proc, port, log)
    try:
        try:
            async with asyncio.timeout(within):
                await target._wait_ready()
        except TimeoutError:
            message = f"{name} did not listen on port {port} within {within:g} s"
            raise TargetFailed(message) from None
    except BaseException:
        target.kill()
        await target.closed()
        raise
    return target


@contextlib.asynccontextmanager
async def running(
    name: str,
    argv: Sequence[str],
    *,
    port: int,
    env: dict[str, str],
    log: Path | None = None,
    cwd: Path | None = None,
    new_session: bool = False,
    stop_signal: int = signal.SIGTERM,
    graceful: bool = True,
) -> AsyncIterator[Target]:
    """:func:`start` the target; at the end stop it (``stop_signal``, SIGKILL after 30 s;
    at once if not ``graceful``), and SIGKILL it whatever happens, a cancelled run too."""
    target = await start(name, argv, port=port, env=env, log=log, cwd=cwd, new_session=new_session)
    try:
        yield target
    finally:
        try:
            if graceful:
                await target.stop(stop_signal)
        finally:
            target.kill()  # cancelled while stopping, or not graceful: leave nothing behind
            with contextlib.suppress(asyncio.CancelledError):
                await target.closed()


async def _listening(port: int, proc: asyncio.subprocess.Process) -> None:
    while True:
        if proc.returncode is not None:
            raise TargetFailed(f"the target exited with status {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)  # a start-up poll: the process gives no other signal
            continue
        writer.close()
        return


# -- what to start -----------------------------------------------------------------------------


def serve_command(
    port: int,
    *,
    redis_url: str | None = None,
    ledger: bool | None = None,
    workers: int | None = None,
    extra: Sequence[str] = (),
    python: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> list[str]:
    """``giftrelay serve`` on ``port``; ``python``: interpreter options (``-m cProfile ...``),
    ``wrapper``: a command it runs under (``py-spy record ... --``)."""
    argv = [*wrapper, sys.executable, *python, "-m", "giftrelay", "serve", "--port", str(port)]
    if redis_url is not None:
        argv += ["--redis-url", redis_url]
    if ledger is not None:
        argv.append("--ledger" if ledger else "--no-ledger")
    if workers is not None:
        argv += ["--workers", str(workers)]
    return [*argv, *extra]


def serve_env(
    secret: str,
    settings: Mapping[str, str] | None = None,
    *,
    var: Path | None = None,
    log_level: str = "warning",
) -> dict[str, str]:
    """This process's environment, and the relay's: ``settings`` by their ``GIFTRELAY_*``
    names, ``var`` its data directory."""
    env = {
        **os.environ,
        "GIFTRELAY_SECRET": secret,
        "GIFTRELAY_LOG_LEVEL": log_level,
        "GIFTRELAY_LOG_FORMAT": "json",
        # The backend's HTTP API is no part of what a load test measures, and its port
        # (8081) may be taken by another relay on this machine.
        "GIFTRELAY_API_PORT": "0",
    }
    if var is not None:
        env["GIFTRELAY_VAR_DIR"] = str(var)
    return env | dict(settings or {})


async def peer_command(
    name: str, port: int, redis_url: str, secret: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a peer: ``naive``, ``echo`` (a bare websockets
    echo server, no Redis) or ``socketio`` (whose locked packages are installed with
    ``npm ci`` on first use)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name == "echo":
        return [sys.executable, "-m", "loadtest.peers.echo", "--port", str(port)], env
    if name == "naive":
        argv = [sys.executable, "-m", "loadtest.peers.naive", "--port", str(port),
                "--redis-url", redis_url, "--secret", secret]  # fmt: skip
        return argv, env
    if name == "socketio":
        if not (SOCKETIO_DIR / "node_modules").exists():
            sys.stderr.write("installing the Socket.IO peer's locked packages (npm ci)\n")
            npm = await asyncio.create_subprocess_exec(
                "npm", "ci", "--no-audit", "--no-fund", cwd=SOCKETIO_DIR
            )
            if await npm.wait():
                raise TargetFailed("npm ci failed for the Socket.IO peer")
        env |= {"PORT": str(port), "REDIS_URL": redis_url, "SECRET": secret}
        return ["node", str(SOCKETIO_DIR / "server.js")], env
    raise ValueError(f"unknown peer {name!r}")
