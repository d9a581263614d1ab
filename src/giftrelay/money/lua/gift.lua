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
-- ARGV[1] request id        ARGV[2] viewer      ARGV[3] creator     ARGV[4] stream
-- ARGV[5] gift id           ARGV[6] gift name   ARGV[7] count       ARGV[8] coins (price x count)
-- ARGV[9] diamonds          ARGV[10] streakable (1/0)               ARGV[11] now (ms)
-- ARGV[12] combo window (ms)  ARGV[13] idempotency retention (ms)    ARGV[14] history length
-- ARGV[15] largest balance a wallet may hold           ARGV[16] confirmed by the viewer (1/0)
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

-- The mindful-spending settings are wallet fields: read by the HMGET a gift makes anyway.
local w, problem = read_ints(KEYS[1],
  {'coins', 'spent_day', 'spent', 'cap', 'confirm', 'cool_coins', 'cool_minutes', 'cool_log'},
  {cap = true, confirm = true, cool_coins = true, cool_minutes = true, cool_log = true},
  {cool_log = true})
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

-- Cool-down: once the coins of the last `cool_minutes` reach `cool_coins`, gifts wait
-- until enough of them are older than that. `cool_log` ('<ms>:<coins>,' oldest first)
-- holds the window's gifts, one entry per 60th of the window (gifts in the same 60th
-- share the entry, with the latest one's time): at most 61 entries, and a gift counts
-- at most a 60th of the window too long, never too short.
local cool_log
if w.cool_coins and w.cool_minutes then
  local window = w.cool_minutes * 60000
  local log, total = {}, 0
  if string.gsub(w.cool_log or '', '%d+:%d+,', '') ~= '' then
    return refuse('internal', KEYS[1] .. ' field cool_log is malformed')
  end
  for t, n in string.gmatch(w.cool_log or '', '(%d+):(%d+),') do
    t, n = as_int(t), as_int(n)
    if t == nil or n == nil then
      return refuse('internal', KEYS[1] .. ' field cool_log is malformed')
    end
    if t + window > now then
      log[#log + 1] = {t, n}
      total = total + n
    end
  end
  local left = total
  for _, entry in ipairs(log) do
    if left < w.cool_coins then break end
    left = left - entry[2]
    if left < w.cool_coins then return refuse('cooling_down', tostring(entry[1] + window)) end
  end
  -- An entry's coins stop at MAX_EXACT, which passes any cool-down and still prints
  -- as an integer.
  local newest, slice = log[#log], w.cool_minutes * 1000
  if newest and math.floor(now / slice) <= math.floor(newest[1] / slice) then
    newest[1], newest[2] = math.max(newest[1], now), math.min(newest[2] + coins, MAX_EXACT)
  else
    log[#log + 1] = {now, coins}
  end
  local parts = {}
  for i, entry in ipairs(log) do parts[i] = entry[1] .. ':' .. entry[2] .. ',' end
  cool_log = table.concat(parts)
end

-- Confirmation: a gift above the viewer's threshold needs `confirm`. Checked last, so
-- that a gift refused for any other reason does not ask to be confirmed first.
local confirmed = ARGV[16] == '1'
if w.confirm and coins > w.confirm and not confirmed then
  return refuse('confirm_required', tostring(w.confirm))
end

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

-- Every check passed. The first write may fail alone (a wrong type planted at the
-- spending key, a field that is no integer): then nothing else was written. From it on,
-- only writes that cannot fail. The spending day is the gift's own (the ledger's `ts`).
local spending_day = math.floor(now / 86400000)
if redis.call('HINCRBY', KEYS[10], creator, coins) == coins then
  -- The creator's first gift from this viewer that day (or the day's first): 31 days on.
  redis.call('PEXPIREAT', KEYS[10], (spending_day + 31) * 86400000)
end
local balance = w.coins - coins
-- Each hash is written once, with the values read above (the script runs alone,
-- so they are current): one HSET a hash instead of an HINCRBY a field.
if cool_log then
  redis.call('HSET', KEYS[1], 'coins', balance, 'spent_day', day, 'spent', spent + coins,
    'cool_log', cool_log)
else
  redis.call('HSET', KEYS[1], 'coins', balance, 'spent_day', day, 'spent', spent + coins)
end
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
  confirmed = (w.confirm and coins > w.confirm) or nil,
})
return remember(KEYS[3], fingerprint,
  {'ok', offset, coins, balance, combo, combo_id, diamonds}, int(ARGV[13]))
