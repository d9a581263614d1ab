-- viewers.lua: one worker's heartbeat of its viewer count for a stream; returns the total.
-- Each worker's count lives until its heartbeat lapses, so a dead worker's viewers
-- stop counting within the TTL.
--
-- KEYS[1] vw:{stream}   counts by worker (hash: worker -> '<count>|<expires ms>')
-- ARGV[1] worker id   ARGV[2] its viewers (0 removes it)   ARGV[3] now (ms)   ARGV[4] TTL (ms)
-- Returns {'ok', total}.

local bad = wrong_type({[KEYS[1]] = 'hash'})
if bad then return refuse('internal', bad) end

local now, ttl = int(ARGV[3]), int(ARGV[4])
if ARGV[2] == '0' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. (now + ttl))
end
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local n, expires = string.match(all[i + 1], '^(%d+)|(%d+)$')
  if n and tonumber(expires) > now then
    total = total + tonumber(n)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
if #all > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return {'ok', total}
