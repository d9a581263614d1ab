"""A bare ``websockets`` echo server: the floor of any Python request/reply over websockets.

    python -m loadtest.peers.echo --port 8091

Every message is answered with itself, as in the websockets docs' example, on uvloop
like the relay. ``giftrelay-loadtest gifts`` sends it the same gift frames as the relay
and counts each echo as the reply, so that the relay's CPU per gift can be given as a
multiple of what one Python request/reply costs at least. Any path is served (``/ws``
included) and the token in the query is ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(echo, args.host, args.port):
        await stop.wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
