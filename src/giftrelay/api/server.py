"""The API inside a ``giftrelay serve`` worker: uvicorn's ``Server.serve()`` in its loop.

Each worker binds its own socket on ``GIFTRELAY_API_PORT``, with ``SO_REUSEPORT`` when
there are several, the way the relay shares its own port (relay/workers.py); the
kernel spreads connections over them. Signals stay the worker's: uvicorn's own
handlers would replace the ones that stop the relay in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Generator

import structlog
import uvicorn

from giftrelay.api.app import PREFIX, build
from giftrelay.api.services import LazyStore, Services
from giftrelay.config import ConfigError, Settings
from giftrelay.money.api import Money

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """The worker handles SIGINT and SIGTERM itself (and stops us in order)."""
        yield


def api_url(settings: Settings, port: int | None = None) -> str:
    """Where a client on this machine reaches the API."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port or settings.api_port}{PREFIX}"


def bind(settings: Settings, *, reuse_port: bool = False) -> socket.socket:
    """The API's listening socket; a busy port or a foreign address names the setting."""
    info = socket.getaddrinfo(settings.host, settings.api_port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], info[1], info[2])
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(info[4])
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"GIFTRELAY_API_PORT: port {settings.api_port} on {settings.host} is already in "
                "use (another giftrelay?): stop what uses it, choose another port with "
                "GIFTRELAY_API_PORT, or 0 to turn the API off"
            ) from None
        raise ConfigError(
            f"GIFTRELAY_HOST: cannot listen on {settings.host!r} for the API "
            f"({exc.strerror or exc}): use an address of this machine"
        ) from None
    sock.setblocking(False)
    return sock


def check_port(settings: Settings) -> None:
    """Bind and release the API's port, so that a busy one stops ``serve`` at once."""
    if settings.api_port:
        bind(settings).close()


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, secret: str, money: Money, *, reuse_port: bool = False
) -> AsyncIterator[str | None]:
    """Serve the API (unless ``GIFTRELAY_API_PORT`` is 0) until the block ends; yields its
    URL, or None when it is off."""
    if not settings.api_port:
        yield None
        return
    sock = bind(settings, reuse_port=reuse_port)
    store = LazyStore(settings.ledger)
    app = build(Services(settings, secret, money, store))
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(settings.shutdown_timeout / 2)),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # startup is a few loop turns; uvicorn sets no event
            if task.done():
                task.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        port = int(sock.getsockname()[1])
        log.info("API listening", host=settings.host, port=port)
        yield api_url(settings, port)
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()
        await store.close()
