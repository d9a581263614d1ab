"""Old path of ``giftrelay-loadtest fanout`` (:mod:`loadtest.scenarios.fanout`), kept so
that recorded commands still run: ``python -m loadtest.bench_relay [its options]``."""

import sys

from loadtest.cli import main

if __name__ == "__main__":
    main(["fanout", *sys.argv[1:]])
