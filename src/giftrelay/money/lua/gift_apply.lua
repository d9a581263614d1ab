-- gift_apply.lua: on a Redis Cluster, a gift's second step, on the stream's slot: the
-- totals, top gifters, combo, history and event of a transfer (gift_debit.lua), once per
-- gift whoever applies it (the relay at once, the mover for one left behind).
--
-- KEYS[1] st:{stream}                      stream (hash)
-- KEYS[2] top:{stream}                     top gifters (sorted set)
-- KEYS[3] hist:{stream}                    public history (stream)
-- KEYS[4] combo:{stream}:<viewer>:<gift>   running combo (string)
-- KEYS[5] ev:{stream}                      sharded pub/sub channel
-- KEYS[6] xf:{stream}:a:<viewer>:<id>      this gift's application (string)
-- ARGV[1] transfer (JSON)   ARGV[2] combo window (ms)   ARGV[3] retention (ms)
-- ARGV[4] history length
-- Returns {'ok', offset, combo, combo_id, replayed} or {'err', code, detail}.

local bad = wrong_type({[KEYS[2]] = 'zset', [KEYS[3]] = 'stream'})
if bad then return refuse('internal', bad) end

local done = redis.call('GET', KEYS[6])
if done then
  local reply = cjson.decode(done)
  reply[#reply + 1] = 1
  return reply
end

local g = cjson.decode(ARGV[1])
local window = int(ARGV[2])
local totals, problem = stream_totals(KEYS[1], g.coins, g.diamonds, g.count)
if problem then return refuse('internal', problem) end
local combo, combo_id, fresh = combo_of(KEYS[4], g.streakable, g.count, g.ts, window, totals)
local offset = show(
  {stream = KEYS[1], top = KEYS[2], combo = KEYS[4], history = KEYS[3], channel = KEYS[5]},
  g, totals, combo, combo_id, fresh, g.streakable, window, ARGV[4])
local reply = {'ok', offset, combo, combo_id}
redis.call('SET', KEYS[6], cjson.encode(reply), 'PX', int(ARGV[3]))
reply[#reply + 1] = 0
return reply
