"""Benchmark: JSON vs the ``giftrelay.v1.msgpack`` subprotocol, bytes and CPU per event.

    python -m loadtest.micro.bench_codec [--events 25] [--rounds 20000]

A frame of ``--events`` gift events as the relay sends it. For each codec: bytes
per event on the wire, the relay's cost to build the frame (JSON: the stored
events are spliced in as they are; MessagePack: each is converted once per frame),
and a client's cost to decode it. The baseline is JSON, measured in the same run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import msgspec
from rich.console import Console
from rich.table import Table

from giftrelay.wire import protocol

console = Console()


def gift_event(i: int) -> msgspec.Raw:
    """A gift event as the money core publishes it (key order as cjson writes it)."""
    return msgspec.Raw(
        msgspec.json.encode(
            {
                "offset": f"{1_795_438_477_428 + i}-0", "ts": 1_795_438_477_428 + i, "combo": 3,
                "id": f"gift-{i:08d}", "gift": "rose", "coins": 1, "diamonds": 1, "name": "Rose",
                "from": f"viewer{i % 500}", "kind": "gift", "combo_id": f"c{i // 3}", "count": 1,
            }
        )
    )  # fmt: skip


def timed(fn: object, rounds: int) -> float:
    assert callable(fn)
    started = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - started) / rounds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=25, help="events per frame")
    parser.add_argument("--rounds", type=int, default=20_000)
    args = parser.parse_args(argv)
    frame = protocol.Events(stream="bench", events=[gift_event(i) for i in range(args.events)])
    json_bytes = protocol.JSON_CODEC.encode(frame)
    packed_bytes = protocol.MSGPACK_CODEC.encode(frame)
    assert msgspec.msgpack.decode(packed_bytes) == msgspec.json.decode(json_bytes)
    rows = []
    for name, codec, data, decode in (
        ("JSON (baseline)", protocol.JSON_CODEC, json_bytes, msgspec.json.decode),
        ("MessagePack", protocol.MSGPACK_CODEC, packed_bytes, msgspec.msgpack.decode),
    ):
        build = timed(lambda codec=codec: codec.encode(frame), args.rounds)
        read = timed(lambda data=data, decode=decode: decode(data), args.rounds)
        rows.append((name, len(data) / args.events, build / args.events, read / args.events))
    base = rows[0]
    table = Table(title=f"one frame of {args.events} gift events, {args.rounds:,} rounds")
    for col in ("codec", "bytes/event", "x JSON", "relay build µs/event", "x JSON",
                "client decode µs/event", "x JSON"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, size, build, read in rows:
        table.add_row(
            name, f"{size:.0f}", f"{size / base[1]:.2f}", f"{build * 1e6:.3f}",
            f"{build / base[2]:.2f}", f"{read * 1e6:.3f}", f"{read / base[3]:.2f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        "The relay builds a frame once per stream and tick, whoever receives it; bytes are "
        "paid per viewer (socket writes, the network)."
    )


if __name__ == "__main__":
    main()
