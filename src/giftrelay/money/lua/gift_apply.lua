-- gift_apply.lua: on a Redis Cluster, a gift's second and last step, on the stream's slot:
-- the totals, top gifters, combo, history and event of a transfer (gift_debit.lua), the
-- creator's diamonds earned on the stream (field `earnings`, collected into the wallet by
-- collect.lua) and the gift's ledger entry, once per gift whoever applies it (the relay at
-- once, the mover for one left behind).
--
-- KEYS[1] st:{stream}                      stream (hash)
-- KEYS[2] top:{stream}                     top gifters (sorted set)
-- KEYS[3] hist:{stream}                    public history (stream)
-- KEYS[4] combo:{stream}:<viewer>:<gift>   running combo (string)
-- KEYS[5] ev:{stream}                      sharded pub/sub channel
-- KEYS[6] xf:{stream}:a:<viewer>:<id>      this gift's application (string)
-- KEYS[7] btop:{stream}                    a running battle's points by gifter (sorted set)
-- ARGV[1..15] the transfer, as arguments (no JSON to decode): request id, viewer, creator,
--   stream, gift id, gift name, count, coins, diamonds, streakable (1/0), ts (ms),
--   the viewer's coins after, confirmed (1/0), the viewer's level after, level up (1/0)
-- ARGV[16] combo window (ms)   ARGV[17] retention (ms)   ARGV[18] history length
-- ARGV[19] largest balance a wallet may hold (earnings too)
-- ARGV[20] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', offset, combo, combo_id, replayed} or {'err', code, detail}.

local bad = wrong_type({[KEYS[2]] = 'zset', [KEYS[3]] = 'stream', [ARGV[20]] = 'stream'})
if bad then return refuse('internal', bad) end

local done = redis.call('GET', KEYS[6])
if done then
  local reply = cjson.decode(done)
  reply[#reply + 1] = 1
  return reply
end

local g = {id = ARGV[1], from = ARGV[2], to = ARGV[3], stream = ARGV[4], gift = ARGV[5],
           name = ARGV[6], count = int(ARGV[7]), coins = int(ARGV[8]),
           diamonds = int(ARGV[9]), ts = int(ARGV[11]), level = int(ARGV[14]),
           level_up = ARGV[15] == '1'}
local streakable, window = ARGV[10] == '1', int(ARGV[16])
local totals, problem = stream_totals(KEYS[1], g.coins, g.diamonds, g.count, true)
if problem then return refuse('internal', problem) end
problem = overflows(totals, 'earnings', g.diamonds, int(ARGV[19]))
if problem then return refuse('internal', problem) end
local points
points, problem = battle_points(totals, g, KEYS[7])
if problem then return refuse('internal', problem) end
local combo, combo_id, fresh = combo_of(KEYS[4], streakable, g.count, g.ts, window, totals)

local earnings = totals.earnings + g.diamonds
local offset = show(
  {stream = KEYS[1], top = KEYS[2], combo = KEYS[4], history = KEYS[3], channel = KEYS[5],
   battle_top = KEYS[7]},
  g, totals, combo, combo_id, fresh, streakable, window, ARGV[18], earnings, points)
-- The whole gift's entry, as gift.lua writes it on one Redis, but for where the diamonds
-- went: `held` 'stream', and diamonds_after the stream's earnings after the gift.
ledger(ARGV[20], {
  kind = 'gift', id = g.id, ts = g.ts, stream = g.stream, offset = offset,
  from = g.from, to = g.to, gift = g.gift, count = g.count, coins = g.coins,
  diamonds = g.diamonds, coins_after = int(ARGV[12]), diamonds_after = earnings,
  held = 'stream', combo = combo, combo_id = combo_id,
  confirmed = ARGV[13] == '1' or nil,
})
local reply = {'ok', offset, combo, combo_id}
redis.call('SET', KEYS[6], cjson.encode(reply), 'PX', int(ARGV[17]))
reply[#reply + 1] = 0
return reply
