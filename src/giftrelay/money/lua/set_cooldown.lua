-- set_cooldown.lua: a viewer sets or removes their cool-down: once the coins of their
-- gifts within the last `minutes` reach `coins`, gifts wait (gift.lua).
--
-- KEYS[1] w:{user}   the user's wallet (hash)
-- ARGV[1] user   ARGV[2] coins, or '' to remove the cool-down   ARGV[3] minutes
-- ARGV[4] now (ms)
-- ARGV[5] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok'} or {'err', code, detail}.
--
-- Gifts count from the moment a cool-down is set (gift.lua logs them only while one is),
-- and a changed setting keeps the gifts already logged; removing it forgets them.

local bad = wrong_type({[KEYS[1]] = 'hash', [ARGV[5]] = 'stream'})
if bad then return refuse('internal', bad) end

local coins, minutes = cjson.null, cjson.null
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'cool_coins', 'cool_minutes', 'cool_log')
else
  coins, minutes = int(ARGV[2]), int(ARGV[3])
  redis.call('HSET', KEYS[1], 'cool_coins', coins, 'cool_minutes', minutes)
end
ledger(ARGV[5], {kind = 'cooldown', ts = int(ARGV[4]), user = ARGV[1], coins = coins,
  minutes = minutes})
return {'ok'}
