-- set_confirm.lua: a viewer sets or removes their confirmation threshold: a gift of more
-- coins than it is refused with 'confirm_required' unless sent with confirm (gift.lua).
--
-- KEYS[1] w:{user}   the user's wallet (hash)
-- KEYS[2] ledger     ledger (stream): the change is kept for audits
-- ARGV[1] user   ARGV[2] threshold in coins, or '' to remove it   ARGV[3] now (ms)
-- Returns {'ok'} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'stream'})
if bad then return refuse('internal', bad) end

local coins = cjson.null
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'confirm')
else
  coins = int(ARGV[2])
  redis.call('HSET', KEYS[1], 'confirm', coins)
end
ledger(KEYS[2], {kind = 'confirm', ts = int(ARGV[3]), user = ARGV[1], coins = coins})
return {'ok'}
