-- Helpers shared by every money-core script; prepended to each when loaded.
--
-- Shard keys: a script writes the ledger stream (and on a cluster the outbox) through a
-- key name in ARGV, not KEYS. On one Redis it is `ledger`. On a Redis Cluster a script
-- may touch one slot's keys only, listed in KEYS; it may also reach keys of other slots
-- that its own node holds, which the caller picks among the buckets (money/keys.py).
-- Each script reads (TYPE) its shard keys before any write: a key its node no longer
-- holds ends the script there, having written nothing, and the caller picks again.
--
-- Redis does not roll a script back when it fails half-way, so every script
-- reads and checks everything first (key types, numbers, rules) and only then
-- writes, with commands that cannot fail on the values already checked.

-- A refusal: nothing was written. {'err', code, detail}
local function refuse(code, detail)
  return {'err', code, detail or ''}
end

-- The first key among `expected` (key -> type) that holds another type, or nil.
local function wrong_type(expected)
  for key, want in pairs(expected) do
    local got = redis.call('TYPE', key)['ok']
    if got ~= 'none' and got ~= want then
      return key .. ' holds a ' .. got .. ', expected a ' .. want
    end
  end
  return nil
end

-- Every integer a script reads or writes stays within MAX_INT, where Lua's
-- doubles are exact. Amounts are further bounded by the caller (max_balance
-- <= 10^13, and the rates checked against it when the settings load), so they
-- also print exactly through cjson and Redis's %.14g: at most MAX_EXACT.
local MAX_INT = 9007199254740991

-- The largest integer cjson prints exactly (14 digits); 10^14 comes out as
-- '1e+14', which the ledger consumer cannot read as an integer.
local MAX_EXACT = 99999999999999

-- The integer in `v`, written as Redis writes integers, or nil. Rejects what
-- HINCRBY would refuse after our first write ('5.0', '1e2', '0x10', ' 5').
local function as_int(v)
  if v ~= '0' and not string.match(v, '^%-?[1-9]%d*$') then
    return nil
  end
  local n = tonumber(v)
  if n > MAX_INT or n < -MAX_INT then
    return nil
  end
  return n
end

-- Reads integer fields of a hash; returns (values, nil) or (nil, problem).
-- Missing fields read as 0, or as nil for those listed in `optional`; fields
-- listed in `texts` are returned as they are (nil when missing), in the same HMGET.
local function read_ints(key, fields, optional, texts)
  local raw = redis.call('HMGET', key, unpack(fields))
  local out = {}
  for i, field in ipairs(fields) do
    local v = raw[i]
    if v and texts and texts[field] then
      out[field] = v
    elseif v then
      local n = as_int(v)
      if n == nil then
        return nil, key .. ' field ' .. field .. ' is not an integer: ' .. tostring(v)
      end
      out[field] = n
    elseif not (optional and optional[field]) then
      out[field] = 0
    end
  end
  return out, nil
end

-- A problem when adding `amount` to field `field` of `values` would pass `limit`.
local function overflows(values, field, amount, limit)
  if values[field] + amount > limit then
    return 'adding ' .. amount .. ' to ' .. field .. ' would pass ' .. limit
  end
  return nil
end

-- An idempotency record is '<fingerprint>\n<reply as JSON>'.
-- Returns the first reply (marked replayed) for the same fingerprint,
-- a refusal for a different one, or nil when the id is new.
local function replay(key, fingerprint)
  local stored = redis.call('GET', key)
  if not stored then
    return nil
  end
  local sep = string.find(stored, '\n', 1, true)
  if not sep or string.sub(stored, 1, sep - 1) ~= fingerprint then
    return refuse('idempotency_conflict')
  end
  local reply = cjson.decode(string.sub(stored, sep + 1))
  reply[#reply + 1] = 1
  return reply
end

-- Remembers the reply under the id for `ttl_ms`, and returns it marked as new.
local function remember(key, fingerprint, reply, ttl_ms)
  redis.call('SET', key, fingerprint .. '\n' .. cjson.encode(reply), 'PX', ttl_ms)
  reply[#reply + 1] = 0
  return reply
end

-- What a top-up's record holds to tell a retry from another top-up under its receipt.
local function topup_fingerprint(user, coins, package, region)
  local fingerprint = 'topup|' .. user .. '|' .. coins
  if package ~= '' then fingerprint = fingerprint .. '|' .. package .. '|' .. region end
  return fingerprint
end

local function int(s)
  return math.floor(tonumber(s))
end

-- Integers as JSON numbers: cjson prints 14 significant digits, and every
-- amount is bounded by the caller to at most MAX_EXACT (see rules.py).
local function ledger(key, event)
  event.v = 1
  redis.call('XADD', key, '*', 'e', cjson.encode(event))
end

-- Appends a public event to the stream's history, then publishes it with its
-- offset (the history entry id). Returns the offset.
local function announce(hist_key, channel, maxlen, event)
  local offset = redis.call('XADD', hist_key, 'MAXLEN', '~', maxlen, '*', 'e', cjson.encode(event))
  event.offset = offset
  redis.call('SPUBLISH', channel, cjson.encode(event))
  return offset
end

-- `announce` for an event the caller encoded (JSON, an object with kind and ts): stored as
-- it is, published with its offset put in front (cjson would turn an empty list into {}).
local function announce_json(hist_key, channel, maxlen, event)
  local offset = redis.call('XADD', hist_key, 'MAXLEN', '~', maxlen, '*', 'e', event)
  redis.call('SPUBLISH', channel, '{"offset":"' .. offset .. '",' .. string.sub(event, 2))
  return offset
end

-- A gift's viewer side ------------------------------------------------------------------

-- The viewer's wallet as a gift reads it: the mindful-spending settings are wallet
-- fields, read by the HMGET a gift makes anyway. Returns (values, nil) or (nil, problem).
local function payer(key)
  return read_ints(key,
    {'coins', 'spent_day', 'spent', 'cap', 'confirm', 'cool_coins', 'cool_minutes', 'cool_log',
     'lifetime'},
    {cap = true, confirm = true, cool_coins = true, cool_minutes = true, cool_log = true},
    {cool_log = true})
end

-- The viewer's limits on a gift of `coins` at `now`: the daily cap, the cool-down, then
-- the confirmation threshold. Returns (charge, nil), charge = {day, spent, cool_log,
-- confirmed}, or (nil, refusal).
local function limits(key, w, coins, now, confirmed)
  -- The UTC day of the gift. Workers' clocks differ a little: a gift stamped
  -- before the day already recorded counts in that day, so a clock behind at
  -- midnight cannot reset the spending that the cap counts.
  local day = math.floor(now / 86400000)
  if w.spent_day > day then day = w.spent_day end
  local spent = 0
  if w.spent_day == day then spent = w.spent end
  if w.cap and spent + coins > w.cap then return nil, refuse('spend_limit') end

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
      return nil, refuse('internal', key .. ' field cool_log is malformed')
    end
    for t, n in string.gmatch(w.cool_log or '', '(%d+):(%d+),') do
      t, n = as_int(t), as_int(n)
      if t == nil or n == nil then
        return nil, refuse('internal', key .. ' field cool_log is malformed')
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
      if left < w.cool_coins then return nil, refuse('cooling_down', tostring(entry[1] + window)) end
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
  local over = w.confirm and coins > w.confirm
  if over and not confirmed then
    return nil, refuse('confirm_required', tostring(w.confirm))
  end
  return {day = day, spent = spent, cool_log = cool_log, confirmed = over or nil}, nil
end

-- Writes the viewer's side of a checked gift; returns the balance left. The first
-- write may fail alone (a wrong type planted at the spending key): then nothing else
-- was written. The spending day is the gift's own (the ledger's `ts`).
local function pay(wallet_key, spending_key, w, charge, creator, coins, now)
  local spending_day = math.floor(now / 86400000)
  if redis.call('HINCRBY', spending_key, creator, coins) == coins then
    -- The creator's first gift from this viewer that day (or the day's first): 31 days on.
    redis.call('PEXPIREAT', spending_key, (spending_day + 31) * 86400000)
  end
  local balance = w.coins - coins
  -- Each hash is written once, with the values read above (the script runs alone,
  -- so they are current): one HSET a hash instead of an HINCRBY a field. `lifetime`
  -- (every coin ever spent: the gifter level) stops at MAX_EXACT.
  local lifetime = math.min(w.lifetime + coins, MAX_EXACT)
  if charge.cool_log then
    redis.call('HSET', wallet_key, 'coins', balance, 'spent_day', charge.day,
      'spent', charge.spent + coins, 'lifetime', lifetime, 'cool_log', charge.cool_log)
  else
    redis.call('HSET', wallet_key, 'coins', balance, 'spent_day', charge.day,
      'spent', charge.spent + coins, 'lifetime', lifetime)
  end
  return balance
end

-- The gifter's level after a gift of `coins` (the wallet as payer read it), and whether
-- the gift took them past a threshold: how many of the thresholds ('100,1000,...', rising;
-- the catalog's [levels]) the coins spent in all reach, after the gift and before it, in
-- one pass over them (this runs for every gift).
local function levels(w, coins, thresholds)
  local after_coins = math.min(w.lifetime + coins, MAX_EXACT)
  local before, after = 0, 0
  for t in string.gmatch(thresholds, '%d+') do
    t = tonumber(t)
    if after_coins < t then break end
    after = after + 1
    if w.lifetime >= t then before = before + 1 end
  end
  return after, after > before
end

-- A gift's stream side --------------------------------------------------------------------

-- The stream's totals a gift adds to; (totals, nil) or (nil, problem) when one is no
-- integer or would overflow.
local function stream_totals(key, coins, diamonds, count, earnings)
  local fields = {'diamonds', 'coins', 'gifts', 'combos', 'battle', 'b_start', 'b_end',
                  'b_boosts', 'b_score'}
  if earnings then fields[#fields + 1] = 'earnings' end
  local totals, problem = read_ints(key, fields, nil, {battle = true, b_boosts = true})
  if problem then return nil, problem end
  problem = overflows(totals, 'diamonds', diamonds, MAX_INT)
    or overflows(totals, 'coins', coins, MAX_INT)
    or overflows(totals, 'gifts', count, MAX_INT)
  return totals, problem
end

-- A gift's points for its stream's side of a running battle: its diamonds times the
-- multiplier of the boost window it falls in ('<ms before the end>:<multiplier>,...'),
-- or nil outside a battle (the stream's fields, as stream_totals read them; the gift's
-- time, the server's clock, decides). (points, nil), or (nil, problem); `top_key`, the
-- side's points by gifter, is checked before any write.
local function battle_points(totals, g, top_key)
  if not totals.battle or g.ts < totals.b_start or g.ts >= totals.b_end then return nil, nil end
  local bad = wrong_type({[top_key] = 'zset'})
  if bad then return nil, bad end
  local multiplier = 1
  for before, m in string.gmatch(totals.b_boosts or '', '(%d+):(%d+)') do
    if totals.b_end - g.ts <= tonumber(before) and tonumber(m) > multiplier then
      multiplier = tonumber(m)
    end
  end
  local points = g.diamonds * multiplier
  return points, overflows(totals, 'b_score', points, MAX_EXACT)
end

-- A combo continues while the same viewer sends the same streakable gift within the
-- window of the last one: '<combo_id>|<gifts>|<last ms>' at `key`. Returns the running
-- count, the combo's id, and whether it starts here.
local function combo_of(key, streakable, count, now, window, totals)
  local combo, combo_id, fresh = count, nil, true
  if streakable then
    local state = redis.call('GET', key)
    if state then
      local cid, n, last = string.match(state, '^([^|]+)|(%d+)|(%d+)$')
      -- A combo that would pass what the ledger can print exactly starts afresh.
      if cid and now - int(last) <= window and int(n) + count <= MAX_EXACT then
        combo_id, combo, fresh = cid, int(n) + count, false
      end
    end
  end
  if fresh then combo_id = 'c' .. (totals.combos + 1) end
  return combo, combo_id, fresh
end

-- Writes a checked gift's stream side: totals, top gifters, the combo, the history and
-- the event, the battle's points (`points`, from battle_points) and a `level_up` event.
-- `g` holds the gift (viewer, id, gift, name, count, coins, diamonds, ts, level,
-- level_up). `earnings`, on a Redis Cluster: the creator's diamonds held on the stream
-- after the gift (gift_apply.lua). Returns the gift event's offset.
local function show(k, g, totals, combo, combo_id, fresh, streakable, window, maxlen,
                    earnings, points)
  local combos = totals.combos
  if fresh then combos = combos + 1 end
  local fields = {'diamonds', totals.diamonds + g.diamonds, 'coins', totals.coins + g.coins,
                  'gifts', totals.gifts + g.count, 'combos', combos}
  if earnings then
    fields[#fields + 1], fields[#fields + 2] = 'earnings', earnings
  end
  if points then
    fields[#fields + 1], fields[#fields + 2] = 'b_score', totals.b_score + points
    redis.call('ZINCRBY', k.battle_top, points, g.from)
  end
  redis.call('HSET', k.stream, unpack(fields))
  redis.call('ZINCRBY', k.top, g.coins, g.from)
  if streakable then
    redis.call('SET', k.combo, combo_id .. '|' .. combo .. '|' .. g.ts, 'PX', window * 2)
  end
  local offset = announce(k.history, k.channel, maxlen, {
    kind = 'gift', ts = g.ts, id = g.id, from = g.from, gift = g.gift, name = g.name,
    count = g.count, coins = g.coins, diamonds = g.diamonds, combo = combo,
    combo_id = combo_id, level = g.level,
  })
  if g.level_up then
    announce(k.history, k.channel, maxlen, {kind = 'level_up', ts = g.ts, user = g.from,
                                            level = g.level})
  end
  return offset
end
