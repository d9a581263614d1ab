-- gift.lua: a viewer sends `count` of one gift to a live stream, all or nothing.
--
-- KEYS[1] w:{viewer}                       viewer's wallet (hash)
-- KEYS[2] w:{creator}                      creator's wallet (hash)
-- KEYS[3] idem:{viewer}:g:<id>             idempotency record (string)
-- KEYS[4] st:{stream}                      stream (hash)
-- KEYS[5] top:{stream}                     top gifters (sorted set)
-- KEYS[6] hist:{stream}                    public history (stream)
-- KEYS[7] combo:{stream}:<viewer>:<gift>   running combo (string)
-- KEYS[8] ledger                           ledger (stream)
-- KEYS[9] ev:{stream}                      pub/sub channel (listed for Cluster)
-- KEYS[10] sp:{viewer}:<day>               the viewer's spending per creator on the
--                                          gift's UTC day (hash, expires after 31 days)
-- KEYS[11] btop:{stream}                   a running battle's points by gifter (sorted set)
-- ARGV[1] request id        ARGV[2] viewer      ARGV[3] creator     ARGV[4] stream
-- ARGV[5] gift id           ARGV[6] gift name   ARGV[7] count       ARGV[8] coins (price x count)
-- ARGV[9] diamonds          ARGV[10] streakable (1/0)               ARGV[11] now (ms)
-- ARGV[12] combo window (ms)  ARGV[13] idempotency retention (ms)    ARGV[14] history length
-- ARGV[15] largest balance a wallet may hold           ARGV[16] confirmed by the viewer (1/0)
-- ARGV[17] the gifter levels' thresholds ('100,1000,...', the catalog's [levels])
-- Returns {'ok', offset, coins, balance, combo, combo_id, diamonds, replayed}
--      or {'err', code, detail}; code 'stale_creator' asks the caller to re-read the creator,
--      'cooling_down' carries when gifts may resume (ms), 'confirm_required' the threshold.

local id, viewer, creator, stream = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gift, name = ARGV[5], ARGV[6]
local count, coins, diamonds = int(ARGV[7]), int(ARGV[8]), int(ARGV[9])
local streakable, now, window = ARGV[10] == '1', int(ARGV[11]), int(ARGV[12])

-- Only the keys written without being read first: a key of another type that is
-- read (the wallets, the stream, the records: GET and HMGET below) fails its read,
-- which ends the script before any write, as a refusal would. A TYPE per key per
-- gift was an eighth of the script's cost.
local bad = wrong_type({[KEYS[5]] = 'zset', [KEYS[6]] = 'stream', [KEYS[8]] = 'stream'})
if bad then return refuse('internal', bad) end

local fingerprint = 'gift|' .. stream .. '|' .. gift .. '|' .. count
local first = replay(KEYS[3], fingerprint)
if first then return first end

if viewer == creator then return refuse('self_gift') end
local st = redis.call('HMGET', KEYS[4], 'creator', 'status')
if not st[1] then return refuse('unknown_stream') end
if st[1] ~= creator then return refuse('stale_creator', st[1]) end
if st[2] ~= 'live' then return refuse('stream_not_live') end

local w, problem = payer(KEYS[1])
if problem then return refuse('internal', problem) end
local c
c, problem = read_ints(KEYS[2], {'diamonds'})
if problem then return refuse('internal', problem) end
local totals
totals, problem = stream_totals(KEYS[4], coins, diamonds, count)
if problem then return refuse('internal', problem) end
local g = {from = viewer, id = id, gift = gift, name = name, count = count, coins = coins,
           diamonds = diamonds, ts = now}
local points
points, problem = battle_points(totals, g, KEYS[11])
if problem then return refuse('internal', problem) end

if w.coins < coins then return refuse('insufficient_coins') end
problem = overflows(c, 'diamonds', diamonds, int(ARGV[15]))
if problem then return refuse('internal', problem) end

local charge, refusal = limits(KEYS[1], w, coins, now, ARGV[16] == '1')
if refusal then return refusal end

local combo, combo_id, fresh = combo_of(KEYS[7], streakable, count, now, window, totals)
g.level, g.level_up = levels(w, coins, ARGV[17])

-- Every check passed: from here on only writes that cannot fail (pay's first may, alone).
local balance = pay(KEYS[1], KEYS[10], w, charge, creator, coins, now)
local creator_diamonds = c.diamonds + diamonds
redis.call('HSET', KEYS[2], 'diamonds', creator_diamonds)
local offset = show(
  {stream = KEYS[4], top = KEYS[5], combo = KEYS[7], history = KEYS[6], channel = KEYS[9],
   battle_top = KEYS[11]},
  g, totals, combo, combo_id, fresh, streakable, window, ARGV[14], nil, points)
ledger(KEYS[8], {
  kind = 'gift', id = id, ts = now, stream = stream, offset = offset,
  from = viewer, to = creator, gift = gift, count = count, coins = coins,
  diamonds = diamonds, coins_after = balance, diamonds_after = creator_diamonds,
  combo = combo, combo_id = combo_id,
  confirmed = charge.confirmed,
})
return remember(KEYS[3], fingerprint,
  {'ok', offset, coins, balance, combo, combo_id, diamonds}, int(ARGV[13]))
