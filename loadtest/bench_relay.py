"""Old path of ``giftrelay-loadtest fanout`` (:mod:`loadtest.scenarios.fanout`), kept so
that recorded commands still run: ``python -m loadtest.bench_relay [its options]``."""

import argparse
import sys

from loadtest.scenarios import fanout

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_relay")
    fanout.add_parser(parser.add_subparsers(dest="command", required=True))
    sys.exit(fanout.main(parser.parse_args(["fanout", *sys.argv[1:]])))
