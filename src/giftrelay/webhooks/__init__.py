"""Signed webhooks: every ledger movement POSTed to the platform's backend, at least once.

Beside the relay in the layers: it reads the ``ledger`` stream through a consumer
group of its own (``webhooks``), never disturbing the ledger consumer's. The pure
parts (what an event is, signing, the retry schedule, per-wallet ordering) are apart
from the Redis and HTTP parts; docs/api.md, section Webhooks, is the contract.
"""
