"""giftrelay.relay.broadcast: one frame built once, written to many real connections."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from giftrelay.relay.broadcast import send_all
from giftrelay.relay.compression import MIN_BYTES, DeflateFactory


@asynccontextmanager
async def server(compression: str | None) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    """A websockets server that keeps every connection open and lists it; ``"relay"``
    compression is the relay's own permessage-deflate."""
    conns: list[ServerConnection] = []

    async def handler(conn: ServerConnection) -> None:
        conns.append(conn)
        await conn.wait_closed()

    ours = compression == "relay"
    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None if ours else compression,
        extensions=[DeflateFactory()] if ours else None,
    ) as srv:
        port = srv.sockets[0].getsockname()[1]
        try:
            yield f"ws://127.0.0.1:{port}", conns
        finally:
            for conn in conns:  # raw clients never close their side: no closing handshake
                conn.transport.abort()


async def connected(
    url: str, n: int, conns: list[ServerConnection], **kw: object
) -> list[ClientConnection]:
    clients = [await connect(url, **kw) for _ in range(n)]  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while len(conns) < n:  # noqa: ASYNC110 - the handler lists it on its next step
            await asyncio.sleep(0)
    return clients


async def test_every_open_connection_gets_the_message_as_sent() -> None:
    async with server(None) as (url, conns):
        clients = await connected(url, 20, conns)
        assert send_all(conns, b'{"type":"events"}', text=True, buffer_limit=1 << 20).slow == []
        assert send_all(conns, b"\x81\xa1k\x01", text=False, buffer_limit=1 << 20).slow == []
        big = b"x" * 70_000  # a 64-bit length header
        assert send_all(conns, big, text=False, buffer_limit=1 << 20).slow == []
        for c in clients:
            assert await c.recv() == '{"type":"events"}'
            assert await c.recv() == b"\x81\xa1k\x01"
            assert await c.recv() == big
            await c.close()


async def test_closed_connections_are_skipped_and_the_rest_still_served() -> None:
    async with server(None) as (url, conns):
        clients = await connected(url, 3, conns)
        await clients[0].close()
        await conns[0].wait_closed()
        assert send_all(conns, b"after", text=True, buffer_limit=1 << 20).slow == []
        assert await clients[1].recv() == "after"
        assert await clients[2].recv() == "after"


async def test_connections_with_an_extension_still_get_the_message() -> None:
    """permessage-deflate frames differ per connection: websockets builds those here."""
    async with server("deflate") as (url, conns):
        plain = await connected(url, 1, conns, compression=None)
        deflated = await connected(url, 2, conns, compression="deflate")
        assert not conns[0].protocol.extensions
        assert conns[1].protocol.extensions
        assert send_all(conns, b"hello " * 100, text=True, buffer_limit=1 << 20).slow == []
        for c in plain + deflated:
            assert await c.recv() == "hello " * 100


async def test_connections_buffering_over_the_limit_are_returned() -> None:
    """A client that never reads: once the kernel's buffers are full, writes queue
    in the transport, and past the limit the connection is reported slow."""
    async with server(None) as (url, conns):
        (client,) = await connected(url, 1, conns, max_size=None)
        client.transport.pause_reading()  # never reads: its socket fills up
        chunk = b"y" * 256_000
        rounds = 0
        while not (slow := send_all(conns, chunk, text=False, buffer_limit=1 << 20).slow):
            rounds += 1
            assert rounds < 1000, "the write buffer never passed the limit"
        assert slow == [conns[0]]
        assert conns[0].transport.get_write_buffer_size() > 1 << 20
        conns[0].transport.abort()  # no closing handshake with a reader that never reads
        client.transport.abort()


# -- the relay's permessage-deflate: compressed once, the same bytes for everyone ---------------

EVENTS = (
    b'{"type":"events","stream":"s1","events":['
    + b",".join(
        b'{"kind":"gift","offset":"%d-0","from":"alice","gift":"rose","count":1}' % i
        for i in range(100)
    )
    + b"]}"
)


WRITERS: list[asyncio.StreamWriter] = []
"""Kept: a writer that is garbage collected closes its connection."""


async def raw_client(url: str, offer: str) -> tuple[asyncio.StreamReader, str]:
    """A client that offers ``offer`` and reads frames off the wire itself; returns its
    reader and the extensions the server agreed."""
    host, port = url.removeprefix("ws://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    WRITERS.append(writer)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: {offer}\r\n\r\n".encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    assert head.startswith("HTTP/1.1 101")
    agreed = [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-extensions:")
    ]
    return reader, agreed[0] if agreed else ""


async def raw_frame(reader: asyncio.StreamReader) -> tuple[bool, bytes]:
    """One unmasked server frame: whether RSV1 (compressed) is set, and its payload."""
    b0, b1 = await reader.readexactly(2)
    assert b0 & 0x80
    assert not b1 & 0x80
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return bool(b0 & 0x40), await reader.readexactly(n)


def inflate(payload: bytes, window_bits: int) -> bytes:
    """RFC 7692's decoding: raw deflate with the final empty block appended."""
    return zlib.decompressobj(wbits=-window_bits).decompress(payload + b"\x00\x00\xff\xff")


async def test_the_relay_agrees_no_context_takeover_both_ways_for_any_offer() -> None:
    async with server("relay") as (url, _conns):
        _, agreed = await raw_client(url, "permessage-deflate; client_max_window_bits")
        params = {p.strip().split("=")[0] for p in agreed.split(";")}
        assert params >= {
            "permessage-deflate",
            "server_no_context_takeover",
            "client_no_context_takeover",
        }


async def test_a_large_frame_is_compressed_once_and_decodes_for_every_window() -> None:
    """Two windows agreed: each gets a frame compressed with its own (a client that
    asked for a 512-byte window must not receive references further back)."""
    async with server("relay") as (url, conns):
        a, _ = await raw_client(url, "permessage-deflate")
        b, agreed = await raw_client(url, "permessage-deflate; server_max_window_bits=9")
        assert "server_max_window_bits=9" in agreed
        async with asyncio.timeout(5):
            while len(conns) < 2:  # noqa: ASYNC110 - the handler lists it on its next step
                await asyncio.sleep(0)
        sent = send_all(conns, EVENTS, text=True, buffer_limit=1 << 20)
        assert sent.slow == []
        payloads = []
        for reader, bits in ((a, 12), (b, 9)):
            compressed, payload = await raw_frame(reader)
            assert compressed
            assert len(payload) < len(EVENTS) / 4
            assert inflate(payload, bits) == EVENTS
            payloads.append(payload)
        # What was written, as written: 2-byte header, 16-bit length, compressed payload.
        assert sent.wire_bytes == sum(4 + len(p) for p in payloads)


async def test_small_messages_go_uncompressed() -> None:
    async with server("relay") as (url, conns):
        reader, _ = await raw_client(url, "permessage-deflate")
        async with asyncio.timeout(5):
            while not conns:  # noqa: ASYNC110 - the handler lists it on its next step
                await asyncio.sleep(0)
        small = b"s" * (MIN_BYTES - 1)
        send_all(conns, small, text=True, buffer_limit=1 << 20)
        await conns[0].send(small.decode())  # a reply, through websockets
        assert await raw_frame(reader) == (False, small)
        assert await raw_frame(reader) == (False, small)


async def test_shared_frames_interleave_with_replies_compressed_per_message() -> None:
    """A websockets client decodes fan-out frames between the connection's own
    replies, large and small, in the order sent: no context is carried across."""
    async with server("relay") as (url, conns):
        plain = await connected(url, 1, conns, compression=None)
        offers = [None, ClientPerMessageDeflateFactory(server_max_window_bits=10)]
        deflated = [
            await connect(url, extensions=[o] if o else None, compression="deflate") for o in offers
        ]
        async with asyncio.timeout(5):
            while len(conns) < 3:  # noqa: ASYNC110 - the handler lists it on its next step
                await asyncio.sleep(0)
        big_reply = "r" * 5000
        for conn in conns:
            await conn.send(big_reply)
        send_all(conns, EVENTS, text=True, buffer_limit=1 << 20)
        for conn in conns:
            await conn.send("ok")
        send_all(conns, EVENTS + b" ", text=True, buffer_limit=1 << 20)
        for c in [*plain, *deflated]:
            assert [await c.recv() for _ in range(4)] == [
                big_reply,
                EVENTS.decode(),
                "ok",
                EVENTS.decode() + " ",
            ]
