"""Who may call the API: a Bearer JWT of role ``admin``, as the contract says.

No token or a bad one is 401; a valid token of another role is 403. The guard runs
before the body is read, so a refused caller never costs a body's parsing.
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from giftrelay import auth

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="giftrelay"'}


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler) -> None:
    """Refuse the request unless it carries a valid admin token."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NotAuthorizedException("send Authorization: Bearer <admin token>", headers=CHALLENGE)
    try:
        claims = auth.verify(connection.app.state.secret, token.strip())
    except auth.TokenError as exc:
        raise NotAuthorizedException(str(exc), headers=CHALLENGE) from None
    if claims.role is not auth.Role.ADMIN:
        raise PermissionDeniedException(
            f"role {claims.role.value!r} may not use this API: admin only"
        )
