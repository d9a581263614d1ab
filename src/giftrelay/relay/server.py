"""The relay worker: one process serving WebSockets at ``/ws`` and plain HTTP beside it.

HTTP on the same port: ``/healthz`` (the process is up), ``/readyz`` (Redis is
reachable), ``/metrics`` (Prometheus), ``/catalog.json`` and the web pages.
A WebSocket handshake with a bad, expired or revoked token is refused with 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import os
import resource
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

import msgspec
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from redis.exceptions import RedisError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from giftrelay import auth, metrics, web
from giftrelay.auth import Claims, Role
from giftrelay.config import Settings
from giftrelay.money.api import Money
from giftrelay.money.catalog import Catalog
from giftrelay.relay.compression import DeflateFactory
from giftrelay.relay.connection import Connection
from giftrelay.relay.fanout import Fanout
from giftrelay.relay.inbox import DirectConnection
from giftrelay.relay.limits import Buckets
from giftrelay.relay.session import Limits, Session
from giftrelay.wire import protocol
from giftrelay.wire.errors import Refused

log = structlog.get_logger(__name__)

WS_PATH = "/ws"


class TokenRefused(Exception):
    """A token ``/ws`` would not take: the HTTP answer, and the handshake's outcome label
    for ``giftrelay_connections_total`` (None when the token itself was not at fault)."""

    def __init__(self, status: http.HTTPStatus, reason: str, outcome: str | None = None) -> None:
        super().__init__(reason)
        self.response = _text(status, f"{reason}\n")
        self.outcome = outcome


class Relay:
    """One worker: its sessions, its fan-out, and the HTTP routes beside ``/ws``."""

    def __init__(
        self,
        settings: Settings,
        secret: str,
        url: str,
        money: Money,
        catalog: Catalog,
    ) -> None:
        self.settings = settings
        self.secret = secret
        self.money = money
        self.catalog = catalog
        self.catalog_gifts = msgspec.Raw(msgspec.json.encode(list(catalog.gifts)))
        self.fanout = Fanout(
            url,
            money,
            catalog,
            tick=settings.tick_ms / 1000,
            max_tick=settings.max_tick_ms / 1000,
            combo_window_ms=settings.combo_window_ms,
            write_buffer_limit=settings.write_buffer_bytes,
            on_revoke=self._revoked,
        )
        self.gift_buckets = Buckets(settings.gift_rate, settings.gift_burst)
        self.limits = Limits(
            message_rate=settings.message_rate,
            message_burst=settings.message_burst,
            max_message_bytes=settings.max_message_bytes,
            max_streams=settings.max_streams_per_connection,
        )
        self.sessions: set[Connection] = set()
        self.per_ip: Counter[str] = Counter()
        self._claims: weakref.WeakKeyDictionary[ServerConnection, Claims] = (
            weakref.WeakKeyDictionary()
        )
        self.server: Server | None = None
        self.stopping = False
        """Set at shutdown: new requests are answered ``unavailable`` (nothing moves)."""

    # -- serving ----------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listen; returns the port (useful with port 0)."""
        _raise_open_files_limit()
        await self.fanout.start()
        s = self.settings
        self.server = await serve(
            self.handler,
            host,
            port,
            process_request=self.process_request,
            compression=None,
            extensions=[DeflateFactory()] if s.compression else None,
            subprotocols=[Subprotocol(protocol.MSGPACK)],
            select_subprotocol=_select_subprotocol,
            max_size=s.max_frame_bytes,
            ping_interval=s.ping_interval,
            ping_timeout=s.ping_timeout,
            close_timeout=5,
            reuse_port=reuse_port,
            backlog=2048,
            server_header=None,
            create_connection=DirectConnection,
        )
        sockets = list(self.server.sockets)
        bound = int(sockets[0].getsockname()[1]) if sockets else port
        log.info("relay listening", host=host, port=bound, pid=os.getpid())
        return bound

    async def shutdown(self) -> None:
        """In order: stop accepting, let requests in flight finish, close with 1001."""
        timeout = self.settings.shutdown_timeout
        server = self.server
        if server is not None:
            server.server.close()  # no new connections
        self.stopping = True
        started = time.monotonic()
        sessions = list(self.sessions)
        if sessions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout / 2):
                    await asyncio.gather(*(c.finish() for c in sessions))
        if server is not None:
            server.close(close_connections=True)  # 1001 going away
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.5, timeout - (time.monotonic() - started))):
                    await server.wait_closed()
        await self.fanout.aclose()
        log.info("relay stopped", connections=len(sessions))

    # -- HTTP -------------------------------------------------------------------------------

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != WS_PATH:
            return await self.route(url.path, url.query)
        if len(self.sessions) >= self.settings.max_connections:
            metrics.CONNECTIONS_TOTAL.labels("too_many").inc()
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "this worker is full\n")
        ip = _ip(conn)
        if self.per_ip[ip] >= self.settings.max_connections_per_ip:
            metrics.CONNECTIONS_TOTAL.labels("too_many").inc()
            return _text(http.HTTPStatus.TOO_MANY_REQUESTS, "too many connections from you\n")
        token = _token(request, url.query)
        if token is None:
            return None  # anonymous: may watch, never spend
        try:
            self._claims[conn] = await self.accepted_claims(token)
        except TokenRefused as refused:
            if refused.outcome:
                metrics.CONNECTIONS_TOTAL.labels(refused.outcome).inc()
            return refused.response
        return None

    async def accepted_claims(self, token: str) -> Claims:
        """The token's claims if ``/ws`` takes it: signed, unexpired and, for an overlay,
        issued after its stream's last revocation. Raises :class:`TokenRefused`."""
        try:
            claims = auth.verify(self.secret, token)
        except auth.TokenError as exc:
            raise TokenRefused(http.HTTPStatus.UNAUTHORIZED, str(exc), "unauthorized") from None
        if claims.role is Role.OVERLAY and claims.stream is not None:
            try:
                epoch = await self.money.overlay_epoch(claims.stream)
            except Refused:
                raise TokenRefused(
                    http.HTTPStatus.SERVICE_UNAVAILABLE, "Redis is unavailable"
                ) from None
            if epoch is not None and (claims.iat or 0) * 1000 < epoch:
                raise TokenRefused(
                    http.HTTPStatus.UNAUTHORIZED, "this overlay token was revoked", "revoked"
                )
        return claims

    async def route(self, path: str, query: str = "") -> Response:
        if path == "/token-check":
            return await self.token_check(query)
        if path == "/healthz":
            return _text(http.HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if await self.ready():
                return _text(http.HTTPStatus.OK, "ready\n")
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "Redis is unreachable\n")
        if path == "/metrics":
            return _response(http.HTTPStatus.OK, CONTENT_TYPE_LATEST, _metrics())
        if path == "/catalog.json":
            return _response(http.HTTPStatus.OK, "application/json", self.catalog.json)
        page = web.page(path)
        if page is not None:
            return _response(http.HTTPStatus.OK, page.content_type, page.body)
        return _text(http.HTTPStatus.NOT_FOUND, "not found\n")

    async def token_check(self, query: str) -> Response:
        """Would ``/ws`` take this token? For pages, which cannot see a handshake's 401:
        200 with its claims, 401 with the reason, 503 when that cannot be told now."""
        values = parse_qs(query).get("token")
        if not values:
            return _text(http.HTTPStatus.BAD_REQUEST, "give the token as ?token=\n")
        try:
            claims = await self.accepted_claims(values[0])
        except TokenRefused as refused:
            return refused.response
        body = msgspec.json.encode(
            {
                "sub": claims.sub,
                "role": claims.role.value,
                "stream": claims.stream,
                "exp": claims.exp,
            }
        )
        return _response(http.HTTPStatus.OK, "application/json", body)

    async def ready(self) -> bool:
        if not self.fanout.connected.is_set():
            return False
        try:
            async with asyncio.timeout(1.0):
                return bool(await self.money.redis.ping())
        except (TimeoutError, RedisError, OSError):
            return False

    # -- WebSocket ----------------------------------------------------------------------------

    async def handler(self, conn: ServerConnection) -> None:
        claims = self._claims.pop(conn, None)
        # The handshake's response is not needed any more (less memory per connection;
        # the request must stay: websockets reads its absence as "no handshake yet").
        conn.response = None
        session = Session(
            claims,
            protocol.codec_for(conn.subprotocol),
            self.limits,
            self.gift_buckets,
            self.catalog_gifts,
            time.monotonic(),
        )
        ip = _ip(conn)
        # Every line logged for this connection, in its task and the tasks it starts,
        # carries its id and user.
        with structlog.contextvars.bound_contextvars(conn=str(conn.id)[:8], user=session.user):
            await self._serve(Connection(self, conn, session), ip)

    async def _serve(self, connection: Connection, ip: str) -> None:
        session, conn = connection.session, connection.conn
        self.sessions.add(connection)
        self.per_ip[ip] += 1
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_TOTAL.labels("accepted").inc()
        try:
            await connection.run()
        finally:
            self.sessions.discard(connection)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]
            metrics.CONNECTIONS.dec()
            log.info(
                "connection closed",
                role=session.role,
                ip=ip,
                seconds=round(time.monotonic() - session.started, 3),
                messages_in=session.messages_in,
                messages_out=session.messages_out,
                streams=len(session.streams),
                code=conn.close_code,
                reason=conn.close_reason or None,
            )

    def _revoked(self, stream: str, before_ms: int) -> None:
        """Close this worker's overlays of ``stream`` whose tokens were issued before the revoke."""
        for connection in list(self.sessions):
            claims = connection.session.claims
            if (
                claims is not None
                and claims.role is Role.OVERLAY
                and claims.stream == stream
                and (claims.iat or 0) * 1000 < before_ms
            ):
                self.fanout.leave(connection.conn, stream)
                task = asyncio.create_task(connection.conn.close(1008, "overlay token revoked"))
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)


def _select_subprotocol(
    _conn: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """MessagePack when the client asks for it; JSON (no subprotocol) otherwise."""
    return Subprotocol(protocol.MSGPACK) if protocol.MSGPACK in offered else None


def _raise_open_files_limit() -> None:
    """Each connection is a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _ip(conn: ServerConnection) -> str:
    address = conn.remote_address
    return str(address[0]) if address else "?"


def _token(request: Request, query: str) -> str | None:
    header = request.headers.get("Authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    values = parse_qs(query).get("token")
    return values[0] if values else None


def _response(status: http.HTTPStatus, content_type: str, body: bytes) -> Response:
    headers = Headers(
        [
            ("Date", formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            # Pages carry tokens in their URL: never send it on to an image's host.
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _text(status: http.HTTPStatus, text: str) -> Response:
    return _response(status, "text/plain; charset=utf-8", text.encode())


def _metrics() -> bytes:
    """This process's metrics, or every worker's when they share a multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
