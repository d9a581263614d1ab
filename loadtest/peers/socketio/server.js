// The Socket.IO peer for giftrelay's benchmarks: what a team on Node would build.
//
//   PORT=8091 REDIS_URL=redis://127.0.0.1:6379 SECRET=... node server.js
//
// Socket.IO 4 with @socket.io/redis-adapter (so it scales out like giftrelay), the
// same minimal exchange the harness speaks: "join", "gift", "balance", "topup",
// "stream_open" as events with acknowledgements, and an "events" event per gift to
// the stream's room. Each gift is one awaited Lua script (the same as the naive
// Python peer's), then one emit to the room: one frame per event per viewer.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = Number(process.env.PORT || 8091);
const SECRET = process.env.SECRET || "";
const PRICES = { rose: 1, gg: 1, heart: 5, donut: 30, confetti: 100 };

const GIFT = `
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
local answer = id .. '|' .. left
redis.call('SET', KEYS[1], answer, 'EX', tonumber(ARGV[3]))
return {'ok', answer}
`;

function verify(token) {
  // HS256 JWT, as giftrelay mints them (no extra dependency for four lines).
  const [head, body, sig] = String(token || "").split(".");
  if (!sig) return null;
  const expected = crypto.createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  if (expected.length !== sig.length || !crypto.timingSafeEqual(Buffer.from(expected), Buffer.from(sig))) return null;
  const claims = JSON.parse(Buffer.from(body, "base64url").toString());
  if (claims.exp && claims.exp < Date.now() / 1000) return null;
  return claims;
}

async function main() {
  const redis = createClient({ url: process.env.REDIS_URL });
  const pub = redis.duplicate();
  const sub = redis.duplicate();
  await Promise.all([redis.connect(), pub.connect(), sub.connect()]);
  const sha = await redis.scriptLoad(GIFT);

  const server = http.createServer();
  const io = new Server(server, { adapter: createAdapter(pub, sub), transports: ["websocket"],
                                  perMessageDeflate: false, maxHttpBufferSize: 65536 });

  io.use((socket, next) => {
    const token = socket.handshake.query.token;
    if (!token) { socket.data.user = null; socket.data.role = "anonymous"; return next(); }
    const claims = verify(token);
    if (!claims) return next(new Error("unauthorized"));
    socket.data.user = claims.sub;
    socket.data.role = claims.role;
    next();
  });

  io.on("connection", (socket) => {
    const { user, role } = socket.data;
    const reply = (ack, value) => { if (typeof ack === "function") ack(value); };
    const error = (ack, code, id) => reply(ack, { type: "error", code, message: code, id });

    socket.on("join", async (m, ack) => {
      const info = await redis.hGetAll(`ns:${m.stream}`);
      if (!info.creator) return error(ack, "unknown_stream");
      socket.join(m.stream);
      const last = await redis.xRevRange(`nh:${m.stream}`, "+", "-", { COUNT: 1 });
      reply(ack, { type: "joined", stream: m.stream, offset: last.length ? last[0].id : "0-0",
        recovered: false, missed: [], snapshot: { creator: info.creator, title: info.title,
        live: true, viewers: 0, diamonds: 0, top: [], goal: null } });
    });

    socket.on("gift", async (m, ack) => {
      if (!user) return error(ack, "unauthorized", m.id);
      const count = m.count || 1;
      const coins = (PRICES[m.gift] || 1) * count;
      const event = { kind: "gift", ts: Date.now(), id: m.id, from: user, gift: m.gift,
        name: m.gift, count, coins, diamonds: coins, combo: 1, combo_id: m.id };
      const keys = [`ni:${m.id}`, `nw:${user}`, `ns:${m.stream}`, `nh:${m.stream}`];
      const [status, answer] = await redis.evalSha(sha,
        { keys, arguments: [String(coins), JSON.stringify(event), "3600"] });
      if (status !== "ok" && status !== "dup") return error(ack, status, m.id);
      const [offset, left] = answer.split("|");
      if (status === "ok") {
        io.to(m.stream).emit("events", { stream: m.stream, events: [{ offset, ...event }] });
      }
      reply(ack, { type: "gift_ok", id: m.id, stream: m.stream, offset, coins,
        balance: Number(left), combo: 1 });
    });

    socket.on("balance", async (m, ack) => {
      const [coins, diamonds] = await redis.hmGet(`nw:${user}`, ["coins", "diamonds"]);
      reply(ack, { type: "balance", coins: Number(coins || 0), diamonds: Number(diamonds || 0),
        spent_today: 0, daily_cap: null });
    });

    socket.on("topup", async (m, ack) => {
      if (role !== "admin") return error(ack, "forbidden");
      if (await redis.set(`nt:${m.id}`, "1", { NX: true })) {
        await redis.hIncrBy(`nw:${m.user}`, "coins", m.coins);
      }
      const coins = Number((await redis.hGet(`nw:${m.user}`, "coins")) || 0);
      reply(ack, { type: "topup_ok", user: m.user, coins });
    });

    socket.on("stream_open", async (m, ack) => {
      if (role !== "admin" && role !== "creator") return error(ack, "forbidden");
      await redis.hSet(`ns:${m.stream}`, { creator: m.creator || user, title: m.title });
      reply(ack, { type: "stream_ok", stream: m.stream, live: true });
    });
  });

  server.listen(PORT, "127.0.0.1", () => console.log(`socket.io peer listening on ${PORT}`));
  const stop = () => { io.close(); process.exit(0); };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => { console.error(err); process.exit(1); });
