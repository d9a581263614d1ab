-- Helpers shared by every money-core script; prepended to each when loaded.
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
  redis.call('PUBLISH', channel, cjson.encode(event))
  return offset
end
