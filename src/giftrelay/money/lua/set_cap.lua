-- set_cap.lua: a viewer sets or removes their daily coin limit (UTC days).
--
-- KEYS[1] w:{user}   the user's wallet (hash)
-- KEYS[2] ledger     ledger (stream): the change is kept for audits
-- ARGV[1] user   ARGV[2] daily coins, or '' to remove the cap   ARGV[3] now (ms)
-- Returns {'ok'} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'stream'})
if bad then return refuse('internal', bad) end

local cap = cjson.null
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'cap')
else
  cap = int(ARGV[2])
  redis.call('HSET', KEYS[1], 'cap', cap)
end
ledger(KEYS[2], {kind = 'cap', ts = int(ARGV[3]), user = ARGV[1], daily_coins = cap})
return {'ok'}
