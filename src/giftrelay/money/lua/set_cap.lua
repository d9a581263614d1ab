-- set_cap.lua: a viewer sets or removes their daily coin limit (UTC days).
--
-- KEYS[1] w:{user}   the user's wallet (hash)
-- ARGV[1] user   ARGV[2] daily coins, or '' to remove the cap   ARGV[3] now (ms)
-- ARGV[4] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok'} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [ARGV[4]] = 'stream'})
if bad then return refuse('internal', bad) end

local cap = cjson.null
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'cap')
else
  cap = int(ARGV[2])
  redis.call('HSET', KEYS[1], 'cap', cap)
end
ledger(ARGV[4], {kind = 'cap', ts = int(ARGV[3]), user = ARGV[1], daily_coins = cap})
return {'ok'}
