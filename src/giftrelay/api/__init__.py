"""The HTTP API for the platform's backend (protocol v1.1, docs/api.md).

Top-ups by receipt, chargebacks, wallets, statements, coin packages, creator
verification and scheduled payout runs, on ``GIFTRELAY_API_PORT`` beside the relay.
A layer beside ``relay``: it uses ``wire``, ``money``, ``ledger``, ``auth`` and
``config``, and nothing imports it but the command line.

- ``app``: the Litestar app, its error shape and the OpenAPI document;
- ``auth``: the admin-token guard;
- ``services``: what the handlers share (money core, ledger store, packages);
- ``topups``: top-ups and chargebacks; ``wallets``; ``statements``; ``packages``;
- ``creators``: verification and payout runs (``payouts``: the run itself, pure
  where it can be);
- ``server``: uvicorn inside a ``serve`` worker's event loop.
"""
