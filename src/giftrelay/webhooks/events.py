"""What a webhook carries: a ledger entry turned into an event, pure (no I/O).

The body is ``{"id", "type", "created", "data"}``:

- ``id``: the movement's **business key** (``topup:<receipt>``, ``gift:<sender>:<id>``,
  ``payout:<creator>:<id>``, and whatever key the ledger gives a later kind), the
  same on every retry and on a movement Redis ran twice after losing its
  idempotency record, so a receiver deduplicates by it. An entry without a business
  key (a setting such as ``cap``) is ``ledger:<stream entry id>``.
- ``type``: the entry's ``kind``, whatever it is: kinds added later need no change here.
- ``created``: the movement's time (its ``ts``) in whole Unix seconds.
- ``data``: the ledger entry exactly as the money core wrote it (docs/ledger.md).

The body is encoded once, when the entry is queued, and sent byte for byte the same
on every attempt; only the signature's timestamp changes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from giftrelay.ledger.entries import ledger_decoder
from giftrelay.ledger.postings import identity_of
from giftrelay.wire.offsets import Offset, parse_offset

WALLET_FIELDS = ("user", "from", "to", "creator")
"""The entry fields that name a wallet: a gift names two (``from`` the sender, ``to``
the creator) and is ordered behind both wallets' earlier movements."""


class WebhookEvent(msgspec.Struct, frozen=True):
    """The JSON body POSTed for one movement."""

    id: str
    type: str
    created: int
    data: msgspec.Raw


class Pending(msgspec.Struct, frozen=True, kw_only=True):
    """An event queued for delivery, with its retry state: what the outbox keeps."""

    entry: str
    """The ledger stream entry id: the queue's order."""
    id: str
    type: str
    ms: int
    """The movement's time, ms since the epoch (delivery lag is measured from it)."""
    wallets: tuple[str, ...]
    body: str
    """The exact JSON body sent on every attempt."""
    attempts: int = 0
    """Failed attempts so far."""
    first_failure_ms: int | None = None
    next_ms: int = 0
    """Not to be sent before this time (ms since the epoch)."""
    error: str = ""
    """Why the last attempt failed."""

    @property
    def order(self) -> Offset:
        return parse_offset(self.entry)


class NotAnEvent(ValueError):
    """A ledger stream entry that is no ledger event: nothing to deliver."""


_body_encoder = msgspec.json.Encoder()
_entry_decoder = msgspec.json.Decoder(dict[str, Any])
pending_encoder = msgspec.json.Encoder()
pending_decoder = msgspec.json.Decoder(Pending)


def from_entry(entry_id: str, fields: dict[str, str]) -> Pending:
    """The event for ledger stream entry ``entry_id``; :class:`NotAnEvent` if it is none."""
    raw = fields.get("e", "")
    try:
        entry = _entry_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise NotAnEvent(f"not a JSON object: {exc}") from None
    kind = entry.get("kind")
    if not isinstance(kind, str) or not kind:
        raise NotAnEvent("no kind")
    ts = entry.get("ts")
    ms = ts if isinstance(ts, int) and not isinstance(ts, bool) else parse_offset(entry_id)[0]
    wallets: list[str] = []
    for field in WALLET_FIELDS:
        value = entry.get(field)
        if isinstance(value, str) and value and value not in wallets:
            wallets.append(value)
    event_id = business_key(raw) or f"ledger:{entry_id}"
    body = _body_encoder.encode(WebhookEvent(event_id, kind, ms // 1000, msgspec.Raw(raw)))
    return Pending(
        entry=entry_id, id=event_id, type=kind, ms=ms, wallets=tuple(wallets), body=body.decode()
    )


def business_key(raw: str) -> str | None:
    """The ledger's business key of the entry, or None: a setting, or a kind the ledger
    does not know yet (its stream entry id stands in)."""
    try:
        entry = ledger_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    return identity_of(entry)[0]
