"""Prometheus metrics, defined once for the whole process (prometheus-client)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LEDGER_EVENTS = Counter(
    "giftrelay_ledger_events_total",
    "Ledger stream entries handled by this consumer, by outcome.",
    ["outcome"],  # written | duplicate | dead_letter
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
