"""What a request raises when it gets no ordinary reply."""

from __future__ import annotations


class RelayError(Exception):
    """The relay answered ``error``: ``code`` is the protocol's error code.

    Every code means nothing moved except ``unavailable``: the request may or may not
    have taken effect, and a retry with the same id returns its one outcome.
    """

    def __init__(
        self, code: str, message: str, id: str | None = None, resume_at: int | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id
        self.resume_at = resume_at
        """With ``cooling_down``: when gifts may resume (ms since the epoch)."""


class Disconnected(Exception):
    """The connection dropped before a reply came; whether it was applied is unknown."""
