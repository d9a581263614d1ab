"""The webhooks' Redis keys, in one place (beside ``giftrelay.money.keys``, which
names the ``ledger`` stream they read).

They live apart from the money core's keys: no money script touches them. None has a
hash tag; one deliverer at a time uses them all.
"""

from __future__ import annotations

GROUP = "webhooks"
"""The consumer group on the ``ledger`` stream; its entries are acknowledged once queued."""

OUTBOX = "wh:outbox"
"""Hash: ledger entry id -> the event still to deliver, with its retry state (JSON)."""

DEAD = "wh:dead"
"""Stream: events that failed for ``webhook_dead_after_days``, kept until replayed."""

LEASE = "wh:lease"
"""String with a TTL: the name of the one deliverer that sends now."""
