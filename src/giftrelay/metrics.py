"""Prometheus metrics, defined once for the whole process (prometheus-client)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LEDGER_EVENTS = Counter(
    "giftrelay_ledger_events_total",
    "Ledger stream entries handled by this consumer, by outcome.",
    ["outcome"],  # written | duplicate | replay | conflict | dead_letter
)
LEDGER_BATCH_SECONDS = Histogram(
    "giftrelay_ledger_batch_seconds",
    "Time to write one batch to the ledger store and acknowledge it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LEDGER_LAG = Gauge(
    "giftrelay_ledger_lag_entries",
    "Ledger stream entries not yet written to the store (read but unacknowledged, or unread).",
)
LEDGER_STORE_UP = Gauge(
    "giftrelay_ledger_store_up", "1 when the last write to the ledger store succeeded."
)

# -- relay ---------------------------------------------------------------------------------

CONNECTIONS = Gauge(
    "giftrelay_open_connections",
    "Open WebSocket connections.",
    multiprocess_mode="livesum",
)
CONNECTIONS_TOTAL = Counter(
    "giftrelay_connections_total",
    "WebSocket connections accepted or refused, by outcome.",
    ["outcome"],  # accepted | unauthorized | revoked | too_many
)
JOINS = Counter("giftrelay_joins_total", "Streams joined.")
MESSAGES = Counter("giftrelay_messages_total", "Client messages received, by type.", ["type"])
_messages: dict[str, Any] = {}


def message(kind: str) -> None:
    """Count a client message of ``kind`` (children cached: this runs for every message)."""
    child = _messages.get(kind)
    if child is None:
        child = _messages[kind] = MESSAGES.labels(kind)
    child.inc()


GIFTS = Counter(
    "giftrelay_gifts_total",
    "Gift requests, by outcome (ok, replayed, or the error code).",
    ["outcome"],
)
GIFTS_OK = GIFTS.labels("ok")
GIFTS_REPLAYED = GIFTS.labels("replayed")
ERRORS = Counter("giftrelay_errors_total", "Error replies sent, by code.", ["code"])
SCRIPT_SECONDS = Histogram(
    "giftrelay_gift_seconds",
    "Time from a gift request to the money core's answer.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
)
EVENT_LAG = Histogram(
    "giftrelay_fanout_lag_seconds",
    "From a gift's timestamp to its event arriving at this worker's fan-out.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TICK_SECONDS = Gauge(
    "giftrelay_fanout_tick_seconds",
    "The fan-out tick now in use (it grows when flushing is expensive).",
    multiprocess_mode="max",
)
FRAMES_SENT = Counter("giftrelay_frames_sent_total", "Event frames written to viewers.")
BYTES_SENT = Counter(
    "giftrelay_bytes_sent_total", "Bytes of event frames written to viewers (as sent: compressed)."
)
EVENTS_SENT = Counter("giftrelay_events_sent_total", "Events delivered to viewers.")
SLOW_CLOSES = Counter(
    "giftrelay_slow_client_closes_total", "Viewers closed with 1013 for reading too slowly."
)
REDIS_UP = Gauge(
    "giftrelay_redis_up",
    "1 while this worker's event channel is connected to Redis.",
    multiprocess_mode="min",
)

# -- Redis Cluster: the gift's steps and the mover ---------------------------------------

TRANSFERS = Counter(
    "giftrelay_transfers_total",
    "Transfers finished on a Redis Cluster (a gift's stream step, a collect of earnings into "
    "a wallet), by outcome: applied (this process ran the step) or replayed (found run, "
    "e.g. a retry or the mover).",
    ["outcome"],
)
TRANSFERS_MOVED = Counter(
    "giftrelay_transfers_moved_total",
    "Transfers the mover took out of an outbox, left behind by a relay (died, or a shard "
    "failed over between the steps).",
)
OUTBOX_LENGTH = Gauge(
    "giftrelay_outbox_waiting",
    "Transfers past the grace period in each outbox bucket at the mover's last look.",
    ["outbox"],
    multiprocess_mode="max",
)
MOVER_LAG = Gauge(
    "giftrelay_mover_lag_seconds",
    "Age of the oldest transfer the mover found waiting at its last look (0: none).",
    multiprocess_mode="max",
)

# -- webhooks ------------------------------------------------------------------------------

WEBHOOK_ATTEMPTS = Counter(
    "giftrelay_webhook_attempts_total",
    "Webhook POSTs, by outcome.",
    ["outcome"],  # delivered | http_error | timeout | no_answer
)
WEBHOOK_RETRIES = Counter(
    "giftrelay_webhook_retries_total", "Failed webhook attempts scheduled to be sent again."
)
WEBHOOK_DEAD_LETTERS = Counter(
    "giftrelay_webhook_dead_letters_total",
    "Webhook events moved to the dead letters after failing for webhook_dead_after_days.",
)
WEBHOOK_REPLAYED = Counter(
    "giftrelay_webhook_replayed_total",
    "Dead letters sent again by `giftrelay webhooks replay`, by outcome.",
    ["outcome"],  # delivered | failed
)
WEBHOOK_LAG = Histogram(
    "giftrelay_webhook_delivery_lag_seconds",
    "From a movement's time to its webhook's successful delivery.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
WEBHOOK_QUEUED = Gauge(
    "giftrelay_webhook_queued_events", "Webhook events queued for delivery (the outbox)."
)
WEBHOOK_UNREAD = Gauge(
    "giftrelay_webhook_unread_entries",
    "Ledger stream entries the webhooks group has not read yet.",
)
WEBHOOK_OLDEST = Gauge(
    "giftrelay_webhook_oldest_queued_seconds",
    "Age of the oldest movement whose webhook is not delivered yet (0: none).",
)


# -- the HTTP API for the platform's backend -------------------------------------------------

API_REQUESTS = Counter(
    "giftrelay_api_requests_total",
    "HTTP API requests answered, by route and status.",
    ["route", "status"],
)
API_SECONDS = Histogram(
    "giftrelay_api_seconds",
    "Time to answer an HTTP API request, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
