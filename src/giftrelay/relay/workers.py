"""``serve --workers N``: N relay processes on one port (SO_REUSEPORT), supervised.

The kernel spreads new connections over the workers; fan-out between them goes
through Redis pub/sub, so any worker serves any stream. A worker that dies is
started again; its viewers reconnect (to any worker) and recover with ``since``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time

import structlog

from giftrelay.config import Settings

log = structlog.get_logger(__name__)

READY_DIR = "GIFTRELAY_WORKER_READY_DIR"
"""Where a worker started by ``serve --workers N`` says that it listens."""


def mark_ready() -> None:
    """Called by a worker once it listens."""
    folder = os.environ.get(READY_DIR)
    if folder:
        with open(os.path.join(folder, f"ready-{os.getpid()}"), "w"):
            pass


class Workers:
    """Starts, watches and stops the worker processes."""

    def __init__(self, settings: Settings, secret: str, redis_url: str, port: int) -> None:
        self.settings = settings
        self.count = settings.workers
        self.port = port
        self.metrics_dir = tempfile.mkdtemp(prefix="giftrelay-metrics-")
        self.env = {
            READY_DIR: self.metrics_dir,
            **os.environ,
            "GIFTRELAY_REDIS_URL": redis_url,
            "GIFTRELAY_SECRET": secret,
            "GIFTRELAY_PORT": str(port),
            "GIFTRELAY_HOST": settings.host,
            "GIFTRELAY_VAR_DIR": settings.var_dir,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
        }
        if settings.catalog:
            self.env["GIFTRELAY_CATALOG"] = settings.catalog
        self.procs: list[asyncio.subprocess.Process] = []
        self.stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start every worker and wait (up to 30 s) until each one listens."""
        self.procs = [await self._spawn() for _ in range(self.count)]
        async with asyncio.timeout(30):
            while len(self.ready()) < self.count:
                if any(p.returncode is not None for p in self.procs):
                    raise RuntimeError("a relay worker exited while starting; see its log")
                await asyncio.sleep(0.05)  # polling the workers' ready files
        self._watch = asyncio.create_task(self._supervise())

    def ready(self) -> set[str]:
        """Pids of workers that listen (each writes a ready file into the metrics folder)."""
        return {
            name.removeprefix("ready-")
            for name in os.listdir(self.metrics_dir)
            if name.startswith("ready-")
        }

    async def _spawn(self) -> asyncio.subprocess.Process:
        # A session of its own: a Ctrl+C in the terminal reaches the supervisor only,
        # which stops the workers in order (a second signal would make them exit at once).
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "giftrelay", "worker", env=self.env, start_new_session=True
        )
        log.info("worker started", pid=proc.pid)
        return proc

    async def _supervise(self) -> None:
        """Start again any worker that exits while we are not stopping (at most once a second)."""
        while not self.stopping:
            waits = {asyncio.create_task(p.wait()): i for i, p in enumerate(self.procs)}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            if self.stopping:
                return
            for task in done:
                i = waits[task]
                log.error("worker exited; starting another", pid=self.procs[i].pid,
                          status=task.result())  # fmt: skip
                await asyncio.sleep(1.0)
                if self.stopping:
                    return
                self.procs[i] = await self._spawn()

    async def stop(self) -> None:
        """SIGTERM each worker (each shuts down in order), then SIGKILL what is left."""
        self.stopping = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + 2
        for proc in self.procs:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await proc.wait()
            except TimeoutError:
                log.warning("worker did not stop in time; killing it", pid=proc.pid)
                self.kill()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def kill(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
