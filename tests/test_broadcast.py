"""giftrelay.broadcast: one frame built once, written to many real connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from giftrelay.broadcast import send_all


@asynccontextmanager
async def server(compression: str | None) -> AsyncIterator[tuple[str, list[ServerConnection]]]:
    """A websockets server that keeps every connection open and lists it."""
    conns: list[ServerConnection] = []

    async def handler(conn: ServerConnection) -> None:
        conns.append(conn)
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=compression) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}", conns


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
        assert send_all(conns, b'{"type":"events"}', text=True, buffer_limit=1 << 20) == []
        assert send_all(conns, b"\x81\xa1k\x01", text=False, buffer_limit=1 << 20) == []
        big = b"x" * 70_000  # a 64-bit length header
        assert send_all(conns, big, text=False, buffer_limit=1 << 20) == []
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
        assert send_all(conns, b"after", text=True, buffer_limit=1 << 20) == []
        assert await clients[1].recv() == "after"
        assert await clients[2].recv() == "after"


async def test_connections_with_an_extension_still_get_the_message() -> None:
    """permessage-deflate frames differ per connection: websockets builds those here."""
    async with server("deflate") as (url, conns):
        plain = await connected(url, 1, conns, compression=None)
        deflated = await connected(url, 2, conns, compression="deflate")
        assert not conns[0].protocol.extensions
        assert conns[1].protocol.extensions
        assert send_all(conns, b"hello " * 100, text=True, buffer_limit=1 << 20) == []
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
        while not (slow := send_all(conns, chunk, text=False, buffer_limit=1 << 20)):
            rounds += 1
            assert rounds < 1000, "the write buffer never passed the limit"
        assert slow == [conns[0]]
        assert conns[0].transport.get_write_buffer_size() > 1 << 20
        conns[0].transport.abort()  # no closing handshake with a reader that never reads
        client.transport.abort()
