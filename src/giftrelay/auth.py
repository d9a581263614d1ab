"""Tokens: JWT HS256 with claims ``sub``, ``role``, ``exp`` and, for overlays, ``stream``.

Any JWT library can mint them; :func:`mint` is what ``giftrelay token`` uses.
"""

from __future__ import annotations

import enum
import os
import secrets
import time
from pathlib import Path

import jwt
import msgspec
import structlog

from giftrelay.wire.ids import is_ident

log = structlog.get_logger(__name__)

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32


class Role(enum.StrEnum):
    VIEWER = "viewer"
    CREATOR = "creator"
    OVERLAY = "overlay"
    ADMIN = "admin"


class Claims(msgspec.Struct, frozen=True):
    sub: str
    role: Role
    exp: float
    stream: str | None = None
    iat: float | None = None
    """Issued at: lets a stream revoke the overlay tokens issued before a moment."""


class TokenError(ValueError):
    """A token is missing, malformed, expired or wrongly signed."""


def mint(
    secret: str,
    subject: str,
    role: Role,
    *,
    ttl: int = 3600,
    stream: str | None = None,
    now: float | None = None,
) -> str:
    if not is_ident(subject):
        raise TokenError("the subject must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if role is Role.OVERLAY and stream is None:
        raise TokenError("an overlay token needs the stream it may read (--stream)")
    if stream is not None and not is_ident(stream):
        raise TokenError("the stream must be 1-64 characters of A-Z a-z 0-9 _ . -")
    if ttl <= 0:
        raise TokenError("the lifetime must be positive")
    # iat to the millisecond: a token minted right after ``revoke_overlays`` is not revoked.
    issued = round(time.time() if now is None else now, 3)
    claims: dict[str, object] = {
        "sub": subject,
        "role": role.value,
        "iat": issued,
        "exp": int(issued) + ttl,
    }
    if stream is not None:
        claims["stream"] = stream
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str) -> Claims:
    """The token's claims, or :class:`TokenError` saying what is wrong with it."""
    try:
        raw = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "role", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenError(f"the token is not valid: {exc}") from None
    try:
        claims = msgspec.convert(raw, Claims)
    except msgspec.ValidationError as exc:
        raise TokenError(f"the token's claims are not valid: {exc}") from None
    if not is_ident(claims.sub):
        raise TokenError("the token's subject is not a valid user id")
    if claims.role is Role.OVERLAY and claims.stream is None:
        raise TokenError("an overlay token must name its stream")
    return claims


def load_or_create_secret(var_dir: Path) -> str:
    """The embedded default's secret: read from ``var/secret``, or made and kept there."""
    path = var_dir / "secret"
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(MIN_SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.info("generated a token secret; set GIFTRELAY_SECRET to choose your own", path=str(path))
    return secret
