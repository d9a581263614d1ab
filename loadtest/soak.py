"""Old path of ``giftrelay-loadtest soak`` (:mod:`loadtest.scenarios.soak`), kept so that
recorded commands still run: ``python -m loadtest.soak [its options]``."""

import sys

from loadtest.cli import main

if __name__ == "__main__":
    main(["soak", *sys.argv[1:]])
