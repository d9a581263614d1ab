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
-- ARGV[1] request id        ARGV[2] viewer      ARGV[3] creator     ARGV[4] stream
-- ARGV[5] gift id           ARGV[6] gift name   ARGV[7] count       ARGV[8] coins (price x count)
-- ARGV[9] diamonds          ARGV[10] streakable (1/0)               ARGV[11] now (ms)
-- ARGV[12] combo window (ms)  ARGV[13] idempotency retention (ms)    ARGV[14] history length
-- ARGV[15] largest balance a wallet may hold
-- Returns {'ok', offset, coins, balance, combo, combo_id, diamonds, replayed}
--      or {'err', code, detail}; code 'stale_creator' asks the caller to re-read the creator.

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

local w, problem = read_ints(KEYS[1], {'coins', 'spent_day', 'spent', 'cap'}, {cap = true})
if problem then return refuse('internal', problem) end
local c
c, problem = read_ints(KEYS[2], {'diamonds'})
if problem then return refuse('internal', problem) end
local totals
totals, problem = read_ints(KEYS[4], {'diamonds', 'coins', 'gifts', 'combos'})
if problem then return refuse('internal', problem) end

if w.coins < coins then return refuse('insufficient_coins') end
problem = overflows(c, 'diamonds', diamonds, int(ARGV[15]))
  or overflows(totals, 'diamonds', diamonds, MAX_INT)
  or overflows(totals, 'coins', coins, MAX_INT)
  or overflows(totals, 'gifts', count, MAX_INT)
if problem then return refuse('internal', problem) end

-- The UTC day of the gift. Workers' clocks differ a little: a gift stamped
-- before the day already recorded counts in that day, so a clock behind at
-- midnight cannot reset the spending that the cap counts.
local day = math.floor(now / 86400000)
if w.spent_day > day then day = w.spent_day end
local spent = 0
if w.spent_day == day then spent = w.spent end
if w.cap and spent + coins > w.cap then return refuse('spend_limit') end

-- A combo continues while the same viewer sends the same streakable gift
-- within the window of the last one: '<combo_id>|<gifts>|<last ms>'.
local combo, combo_id, fresh = count, nil, true
if streakable then
  local state = redis.call('GET', KEYS[7])
  if state then
    local cid, n, last = string.match(state, '^([^|]+)|(%d+)|(%d+)$')
    -- A combo that would pass what the ledger can print exactly starts afresh.
    if cid and now - int(last) <= window and int(n) + count <= MAX_EXACT then
      combo_id, combo, fresh = cid, int(n) + count, false
    end
  end
end
if fresh then combo_id = 'c' .. (totals.combos + 1) end

-- Every check passed: from here on, only writes that cannot fail.
local balance = w.coins - coins
-- Each hash is written once, with the values read above (the script runs alone,
-- so they are current): one HSET a hash instead of an HINCRBY a field.
redis.call('HSET', KEYS[1], 'coins', balance, 'spent_day', day, 'spent', spent + coins)
local creator_diamonds = c.diamonds + diamonds
redis.call('HSET', KEYS[2], 'diamonds', creator_diamonds)
local combos = totals.combos
if fresh then combos = combos + 1 end
redis.call('HSET', KEYS[4], 'diamonds', totals.diamonds + diamonds,
  'coins', totals.coins + coins, 'gifts', totals.gifts + count, 'combos', combos)
redis.call('ZINCRBY', KEYS[5], coins, viewer)
if streakable then
  redis.call('SET', KEYS[7], combo_id .. '|' .. combo .. '|' .. now, 'PX', window * 2)
end

local offset = announce(KEYS[6], KEYS[9], ARGV[14], {
  kind = 'gift', ts = now, id = id, from = viewer, gift = gift, name = name,
  count = count, coins = coins, diamonds = diamonds, combo = combo, combo_id = combo_id,
})
ledger(KEYS[8], {
  kind = 'gift', id = id, ts = now, stream = stream, offset = offset,
  from = viewer, to = creator, gift = gift, count = count, coins = coins,
  diamonds = diamonds, coins_after = balance, diamonds_after = creator_diamonds,
  combo = combo, combo_id = combo_id,
})
return remember(KEYS[3], fingerprint,
  {'ok', offset, coins, balance, combo, combo_id, diamonds}, int(ARGV[13]))
