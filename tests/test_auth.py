"""Tokens: HS256 JWTs any library can mint, and clear reasons when one is refused."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import jwt
import pytest

from giftrelay import auth
from giftrelay.auth import Role, TokenError

SECRET = "s" * 32


def test_minted_tokens_verify_with_their_claims() -> None:
    token = auth.mint(SECRET, "studio", Role.OVERLAY, stream="s1", ttl=60)
    claims = auth.verify(SECRET, token)
    assert (claims.sub, claims.role, claims.stream) == ("studio", Role.OVERLAY, "s1")
    assert claims.exp - time.time() == pytest.approx(60, abs=2)


@pytest.mark.parametrize("exp", [int(time.time()) + 60, time.time() + 60.5])
def test_tokens_minted_elsewhere_are_accepted(exp: float) -> None:
    token = jwt.encode({"sub": "alice", "role": "viewer", "exp": exp, "iat": time.time()}, SECRET)
    assert auth.verify(SECRET, token).role is Role.VIEWER


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (auth.mint(SECRET, "a", Role.VIEWER, now=time.time() - 7200), "expired"),
        (auth.mint("x" * 32, "a", Role.VIEWER), "not valid"),
        (jwt.encode({"sub": "a", "role": "king", "exp": 2**40}, SECRET), "claims are not valid"),
        (jwt.encode({"sub": "a", "role": "viewer"}, SECRET), "not valid"),
        (jwt.encode({"sub": "a", "role": "overlay", "exp": 2**40}, SECRET), "must name"),
        (jwt.encode({"sub": "a b", "role": "viewer", "exp": 2**40}, SECRET), "subject"),
        (jwt.encode({"sub": "a", "role": "admin", "exp": 2**40}, SECRET * 2, "HS512"), "not valid"),
        ("not.a.token", "not valid"),
    ],
    ids=["expired", "wrong-secret", "unknown-role", "no-exp", "overlay-no-stream",
         "bad-subject", "other-algorithm", "garbage"],
)  # fmt: skip
def test_bad_tokens_are_refused_with_a_reason(token: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        auth.verify(SECRET, token)


def test_overlay_tokens_need_a_stream() -> None:
    with pytest.raises(TokenError, match="--stream"):
        auth.mint(SECRET, "studio", Role.OVERLAY)


def test_embedded_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    first = auth.load_or_create_secret(tmp_path / "var")
    assert len(first) >= 32
    assert stat.S_IMODE((tmp_path / "var" / "secret").stat().st_mode) == 0o600
    assert auth.load_or_create_secret(tmp_path / "var") == first
