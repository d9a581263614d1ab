"""The API's one error shape, and its place in the OpenAPI document of every endpoint."""

from __future__ import annotations

import msgspec
from litestar.openapi.datastructures import ResponseSpec


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error's body."""

    error: ErrorDetail


def _spec(text: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=text, generate_examples=False)


RESPONSES = {
    400: _spec("bad_request: a malformed body, parameter or path"),
    401: _spec("unauthorized: no token, or a bad or expired one"),
    403: _spec("forbidden: a valid token whose role is not admin"),
    404: _spec("unknown_receipt or unknown_user"),
    409: _spec("idempotency_conflict, or a refusal about a wallet's state"),
    413: _spec("too_large: a body over 64 KiB"),
    503: _spec("unavailable: Redis or the ledger store did not answer; retry the same request"),
}
"""Every endpoint's error responses, for the OpenAPI document (``responses=``)."""
