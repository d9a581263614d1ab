"""``python -m loadtest``: the same as ``giftrelay-loadtest`` (:mod:`loadtest.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
