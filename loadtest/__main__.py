"""``python -m loadtest`` / ``giftrelay-loadtest``: the load-test harness (see loadtest/README)."""

from __future__ import annotations

import sys


def main() -> None:
    sys.exit("the load-test harness is not built yet")


if __name__ == "__main__":
    main()
