"""The API's Litestar app: its routes, its one error shape, and its OpenAPI document.

Errors are ``{"error": {"code", "message"}}`` with the socket protocol's codes (plus
``unknown_receipt``, ``unknown_user``, ``not_verified``), whatever raised them: a
refusal of the money core, a body that fails validation, a missing token, a body
over the limit, a route that does not exist.
"""

from __future__ import annotations

import http
import time
from typing import Any

import msgspec
import structlog
from litestar import Litestar, Request, Response, Router, get
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from giftrelay import __version__, metrics
from giftrelay.api import creators, packages, statements, topups, wallets
from giftrelay.api.auth import admin_only
from giftrelay.api.errors import ErrorBody, ErrorDetail
from giftrelay.api.services import Services
from giftrelay.ledger.store import StoreUnavailable
from giftrelay.wire.errors import Code, Refused

log = structlog.get_logger(__name__)

PREFIX = "/api/v1"
MAX_BODY = 64 * 1024
"""Bodies over this are refused (413) from their Content-Length, before being read."""


STATUS: dict[Code, int] = {
    Code.BAD_REQUEST: 400,
    Code.TOO_LARGE: 413,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.UNKNOWN_STREAM: 404,
    Code.UNKNOWN_GIFT: 404,
    Code.UNKNOWN_RECEIPT: 404,
    Code.UNKNOWN_USER: 404,
    Code.IDEMPOTENCY_CONFLICT: 409,
    Code.RATE_LIMITED: 429,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}
"""HTTP status per code; the other refusals (insufficient_coins, below_minimum,
not_verified...) are about the state of a wallet: 409."""

HTTP_CODES = {
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    403: Code.FORBIDDEN,
    404: Code.BAD_REQUEST,
    405: Code.BAD_REQUEST,
    413: Code.TOO_LARGE,
    429: Code.RATE_LIMITED,
    503: Code.UNAVAILABLE,
}
"""The code of an error Litestar itself raised, by its status."""


def error(
    status: int, code: Code | str, message: str, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    return Response(ErrorBody(ErrorDetail(str(code), message)), status_code=status, headers=headers)


def _refused(_: Request[Any, Any, Any], exc: Refused) -> Response[ErrorBody]:
    return error(STATUS.get(exc.code, 409), exc.code, exc.message)


def _store_down(_: Request[Any, Any, Any], exc: StoreUnavailable) -> Response[ErrorBody]:
    log.warning("ledger store unavailable for an API request", reason=str(exc))
    return error(503, Code.UNAVAILABLE, "the ledger store is unavailable; retry later")


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    code = HTTP_CODES.get(status, Code.INTERNAL if status >= 500 else Code.BAD_REQUEST)
    message = exc.detail or http.HTTPStatus(status).phrase
    if isinstance(exc, ValidationException) and exc.extra:
        problems = exc.extra if isinstance(exc.extra, list) else [exc.extra]
        message = "; ".join(_problem(p) for p in problems) or message
    elif status == 404:
        message = f"there is no endpoint {request.url.path}: see {PREFIX}/openapi.json"
    elif status == 413:
        message = f"the body is over {MAX_BODY} bytes"
    return error(status, code, message, exc.headers)


def _problem(problem: Any) -> str:
    if isinstance(problem, dict):
        where = problem.get("key") or problem.get("source") or ""
        text = str(problem.get("message", ""))
        return f"{where}: {text}" if where else text
    return str(problem)


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("API request failed", exc_info=exc)
    return error(500, Code.INTERNAL, "internal error")


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="giftrelay backend API",
        version=__version__,
        description=(
            "Protocol v1.1: the HTTP API for the platform's backend (docs/api.md). "
            "Every endpoint but this document needs `Authorization: Bearer JWT` of role admin."
        ),
        # Litestar's own router for the document also answers every other path below it
        # (an HTML 404 page): it lives out of the way, behind the guard; the document is
        # served at PREFIX/openapi.json by ``openapi_document``, without a token.
        openapi_router=Router(
            PREFIX + "/schema", route_handlers=[], include_in_schema=False, guards=[admin_only]
        ),
        render_plugins=[JsonRenderPlugin(path="/openapi.json")],
        components=Components(
            security_schemes={
                "admin": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
            }
        ),
        security=[{"admin": []}],
        use_handler_docstrings=True,
    )


@get(PREFIX + "/openapi.json", include_in_schema=False, media_type="application/json")
async def openapi_document(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The OpenAPI 3.1 document of this API (no token needed)."""
    return Response(msgspec.json.encode(request.app.openapi_schema.to_schema()))


def measured(app: ASGIApp) -> ASGIApp:
    """Count each answered request and time it, by route template (metrics.API_*)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await app(scope, receive, sending)
        finally:
            route = str(scope.get("path_template", "?"))
            metrics.API_REQUESTS.labels(route, str(status)).inc()
            metrics.API_SECONDS.labels(route).observe(time.perf_counter() - started)

    return middleware


def build(services: Services) -> Litestar:
    """The app, serving ``services``."""
    api = Router(
        PREFIX,
        route_handlers=[
            *topups.HANDLERS,
            *wallets.HANDLERS,
            *statements.HANDLERS,
            *packages.HANDLERS,
            *creators.HANDLERS,
        ],
        guards=[admin_only],
        dependencies={"api": Provide(lambda: services, use_cache=True, sync_to_thread=False)},
    )
    app = Litestar(
        route_handlers=[api, openapi_document],
        openapi_config=openapi_config(),
        exception_handlers={
            Refused: _refused,
            StoreUnavailable: _store_down,
            HTTPException: _http,
            404: _http,  # no route: raised before the app's handlers by type are looked up
            405: _http,
            Exception: _unexpected,
        },
        request_max_body_size=MAX_BODY,
        middleware=[measured],
        debug=False,
    )
    app.state.secret = services.secret
    return app
