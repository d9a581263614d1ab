"""Error codes of the wire protocol and the exceptions that carry them."""

from __future__ import annotations

import enum


class Code(enum.StrEnum):
    """The ``code`` of an ``error`` reply (docs/protocol.md)."""

    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    UNKNOWN_STREAM = "unknown_stream"
    STREAM_NOT_LIVE = "stream_not_live"
    UNKNOWN_GIFT = "unknown_gift"
    SELF_GIFT = "self_gift"
    INSUFFICIENT_COINS = "insufficient_coins"
    INSUFFICIENT_DIAMONDS = "insufficient_diamonds"
    BELOW_MINIMUM = "below_minimum"
    SPEND_LIMIT = "spend_limit"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # v1.1: the HTTP API for the platform's backend (docs/api.md), and payouts that
    # require verification.
    UNKNOWN_RECEIPT = "unknown_receipt"
    UNKNOWN_USER = "unknown_user"
    NOT_VERIFIED = "not_verified"
    # Mindful spending (issue 19): a viewer's own confirmation threshold and cool-down.
    CONFIRM_REQUIRED = "confirm_required"
    COOLING_DOWN = "cooling_down"
    # v1.2: battles (issue 22).
    UNKNOWN_BATTLE = "unknown_battle"
    BATTLE_BUSY = "battle_busy"
    BATTLE_CLOSED = "battle_closed"


_MESSAGES: dict[Code, str] = {
    Code.UNKNOWN_STREAM: "there is no such stream",
    Code.STREAM_NOT_LIVE: "the stream is not live",
    Code.UNKNOWN_GIFT: "there is no such gift in the catalog",
    Code.SELF_GIFT: "you cannot send gifts to your own stream",
    Code.INSUFFICIENT_COINS: "not enough coins",
    Code.INSUFFICIENT_DIAMONDS: "not enough diamonds",
    Code.BELOW_MINIMUM: "below the minimum payout",
    Code.SPEND_LIMIT: "this gift would cross your daily spending limit",
    Code.IDEMPOTENCY_CONFLICT: "this id was already used for a different request",
    Code.UNAVAILABLE: (
        "a backend is unavailable; the request may or may not have taken effect: "
        "retry with the same id to get its one outcome"
    ),
    Code.FORBIDDEN: "not allowed",
    Code.UNKNOWN_RECEIPT: "no top-up was ever made with this receipt",
    Code.UNKNOWN_USER: "there is no such user",
    Code.NOT_VERIFIED: "the creator's verification is not on record: payouts need it",
    Code.CONFIRM_REQUIRED: (
        "this gift is above your confirmation threshold: send it again with confirm true "
        "and the same id"
    ),
    Code.COOLING_DOWN: "you are cooling down: gifts resume at resume_at",
    Code.UNKNOWN_BATTLE: "there is no such battle",
    Code.BATTLE_BUSY: "a stream of this battle is in another battle",
    Code.BATTLE_CLOSED: "this battle invitation is no longer open",
    Code.INTERNAL: "internal error",
}


class Refused(Exception):
    """A request was refused; nothing moved (except perhaps for :class:`Unavailable`).
    ``code`` is the protocol error code."""

    def __init__(
        self, code: Code, message: str | None = None, *, resume_at: int | None = None
    ) -> None:
        self.code = code
        self.message = message or _MESSAGES.get(code, code.value.replace("_", " "))
        self.resume_at = resume_at
        """For ``cooling_down``: when gifts may resume (ms since the epoch)."""
        super().__init__(f"{code}: {self.message}")


class Unavailable(Refused):
    """Redis could not be reached or did not answer in time.

    The request may or may not have taken effect: a script already sent can still run
    once Redis answers again. A retry with the same id is safe, and its reply is the
    request's one outcome (idempotency). Only a refusal made before the request was
    sent anywhere (the relay shutting down) may say that nothing moved.
    """

    def __init__(self, message: str | None = None) -> None:
        super().__init__(Code.UNAVAILABLE, message)
