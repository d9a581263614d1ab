"""The naive relay a team writes first: ``websockets`` + redis-py, a baseline for benchmarks.

    python -m loadtest.peers.naive --port 8090 --redis-url redis://... --secret S

It speaks just enough of giftrelay's protocol for the harness (hello, join, gift,
balance, topup, stream_open, ping) and does each thing the obvious way: each
connection's messages are handled one after another, one awaited Lua script per
gift (idempotency, debit, credit, history, publish: one round trip, so it is not
a straw man), and one ``events`` frame per event per viewer, sent with
``websockets.broadcast`` as the websockets docs recommend. No tick coalescing, no
pipelining, no recovery (``joined`` never has ``missed``), no rate limits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

import jwt
import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from websockets.asyncio.server import ServerConnection, broadcast, serve

GIFT = """
-- KEYS: idem, sender wallet, stream hash, history; ARGV: coins, event JSON (no offset), ttl
local done = redis.call('GET', KEYS[1])
if done then return {'dup', done} end
local coins = tonumber(ARGV[1])
local creator = redis.call('HGET', KEYS[3], 'creator')
if not creator then return {'unknown_stream'} end
local have = tonumber(redis.call('HGET', KEYS[2], 'coins') or '0')
if have < coins then return {'insufficient_coins'} end
local left = redis.call('HINCRBY', KEYS[2], 'coins', -coins)
redis.call('HINCRBY', 'nw:' .. creator, 'diamonds', coins)
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', 1000, '*', 'e', ARGV[2])
local event = '{"offset":"' .. id .. '",' .. string.sub(ARGV[2], 2)
redis.call('PUBLISH', 'nev:' .. string.sub(KEYS[3], 4), event)
local answer = id .. '|' .. left
redis.call('SET', KEYS[1], answer, 'EX', tonumber(ARGV[3]))
return {'ok', answer}
"""

PRICES = {"rose": 1, "gg": 1, "heart": 5, "donut": 30, "confetti": 100}
enc = msgspec.json.Encoder()


class NaiveRelay:
    def __init__(self, redis: Redis, secret: str) -> None:
        self.redis = redis
        self.secret = secret
        self.rooms: dict[str, set[ServerConnection]] = {}
        self.pubsub = redis.pubsub()
        self.gift = redis.register_script(GIFT)
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe("nev:__none__")
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            stream = message["channel"].decode()[4:]
            viewers = self.rooms.get(stream)
            if viewers:
                frame = b'{"type":"events","stream":"%s","events":[%s]}' % (
                    stream.encode(),
                    message["data"],
                )
                broadcast(viewers, frame.decode())

    async def handler(self, ws: ServerConnection) -> None:
        user, role = self.auth(ws)
        await ws.send(enc.encode({"type": "hello", "v": 1, "server": "naive/0", "user": user,
                                  "role": role}).decode())  # fmt: skip
        joined: set[str] = set()
        try:
            async for data in ws:
                m = msgspec.json.decode(data)
                reply = await self.answer(ws, m, user, role, joined)
                reply["ref"] = m.get("ref")
                await ws.send(enc.encode(reply).decode())
        except Exception:
            pass
        finally:
            for stream in joined:
                self.rooms.get(stream, set()).discard(ws)

    def auth(self, ws: ServerConnection) -> tuple[str | None, str]:
        path = ws.request.path if ws.request else ""
        if "token=" not in path:
            return None, "anonymous"
        token = path.split("token=", 1)[1].split("&", 1)[0]
        claims = jwt.decode(token, self.secret, algorithms=["HS256"])
        return str(claims["sub"]), str(claims["role"])

    async def answer(
        self, ws: ServerConnection, m: dict[str, Any], user: str | None, role: str,
        joined: set[str],
    ) -> dict[str, Any]:  # fmt: skip
        kind = m.get("type")
        r = self.redis
        if kind == "join":
            stream = m["stream"]
            info = await r.hgetall(f"ns:{stream}")
            if not info:
                return {"type": "error", "code": "unknown_stream", "message": "no such stream"}
            if stream not in self.rooms:
                self.rooms[stream] = set()
                await self.pubsub.subscribe(f"nev:{stream}")
            self.rooms[stream].add(ws)
            joined.add(stream)
            last = await r.xrevrange(f"nh:{stream}", count=1)
            offset = _text(last[0][0]) if last else "0-0"
            snapshot = {"creator": _text(info[b"creator"]), "title": _text(info[b"title"]),
                        "live": True, "viewers": len(self.rooms[stream]), "diamonds": 0,
                        "top": [], "goal": None}  # fmt: skip
            return {"type": "joined", "stream": stream, "offset": offset, "recovered": False,
                    "missed": [], "snapshot": snapshot}  # fmt: skip
        if kind == "gift":
            if user is None:
                return {"type": "error", "code": "unauthorized", "message": "sign in"}
            stream, gift, count, gid = m["stream"], m["gift"], int(m.get("count", 1)), m["id"]
            coins = PRICES.get(gift, 1) * count
            event = enc.encode({"kind": "gift", "ts": int(time.time() * 1000), "id": gid,
                                "from": user, "gift": gift, "name": gift, "count": count,
                                "coins": coins, "diamonds": coins, "combo": 1,
                                "combo_id": gid})  # fmt: skip
            keys = [f"ni:{gid}", f"nw:{user}", f"ns:{stream}", f"nh:{stream}"]
            result = await self.gift(keys=keys, args=[coins, event, 3600])
            status = result[0].decode()
            if status not in ("ok", "dup"):
                return {"type": "error", "code": status, "message": status, "id": gid}
            offset, left = result[1].decode().split("|")
            return {"type": "gift_ok", "id": gid, "stream": stream, "offset": offset,
                    "coins": coins, "balance": int(left), "combo": 1}  # fmt: skip
        if kind == "balance":
            have, diamonds = await r.hmget(f"nw:{user}", ["coins", "diamonds"])
            return {"type": "balance", "coins": int(have or 0), "diamonds": int(diamonds or 0),
                    "spent_today": 0, "daily_cap": None}  # fmt: skip
        if kind == "topup" and role == "admin":
            if await r.set(f"nt:{m['id']}", 1, nx=True):
                await r.hincrby(f"nw:{m['user']}", "coins", int(m["coins"]))
            total = int(await r.hget(f"nw:{m['user']}", "coins") or 0)
            return {"type": "topup_ok", "user": m["user"], "coins": total}
        if kind == "stream_open" and role in ("admin", "creator"):
            creator = str(m.get("creator") or user)
            await r.hset(f"ns:{m['stream']}", mapping={"creator": creator, "title": m["title"]})
            return {"type": "stream_ok", "stream": m["stream"], "live": True}
        if kind == "ping":
            return {"type": "pong"}
        return {"type": "error", "code": "bad_request", "message": f"unsupported {kind!r}"}


def _text(value: bytes | str | None) -> str:
    """A reply from redis-py (bytes: the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    # redis-py's pool refuses the 101st concurrent command ("Too many connections"), which
    # would drop the viewer's connection here: above 100 gifters, wait for a free one.
    pool = BlockingConnectionPool.from_url(args.redis_url, max_connections=100)
    redis = Redis(connection_pool=pool)
    relay = NaiveRelay(redis, args.secret)
    await relay.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(relay.handler, args.host, args.port, compression=None, max_size=65536):
        await stop.wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
