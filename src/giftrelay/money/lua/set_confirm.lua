-- set_confirm.lua: a viewer sets or removes their confirmation threshold: a gift of more
-- coins than it is refused with 'confirm_required' unless sent with confirm (gift.lua).
--
-- KEYS[1] w:{user}   the user's wallet (hash)
-- ARGV[1] user   ARGV[2] threshold in coins, or '' to remove it   ARGV[3] now (ms)
-- ARGV[4] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok'} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [ARGV[4]] = 'stream'})
if bad then return refuse('internal', bad) end

local coins = cjson.null
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'confirm')
else
  coins = int(ARGV[2])
  redis.call('HSET', KEYS[1], 'confirm', coins)
end
ledger(ARGV[4], {kind = 'confirm', ts = int(ARGV[3]), user = ARGV[1], coins = coins})
return {'ok'}
