-- topup.lua: the payment backend credits coins; the receipt id is the idempotency key.
--
-- KEYS[1] w:{user}                  the user's wallet (hash)
-- KEYS[2] idem:topup:{receipt}      idempotency record (string)
-- KEYS[3] ledger                    ledger (stream)
-- ARGV[1] receipt id   ARGV[2] user   ARGV[3] coins   ARGV[4] now (ms)
-- ARGV[5] retention (ms)   ARGV[6] largest balance allowed
-- Returns {'ok', balance, replayed} or {'err', code, detail}.

local receipt, user, coins, now = ARGV[1], ARGV[2], int(ARGV[3]), int(ARGV[4])

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'string', [KEYS[3]] = 'stream'})
if bad then return refuse('internal', bad) end

local fingerprint = 'topup|' .. user .. '|' .. coins
local first = replay(KEYS[2], fingerprint)
if first then return first end

local w, problem = read_ints(KEYS[1], {'coins'})
if problem then return refuse('internal', problem) end
if w.coins + coins > int(ARGV[6]) then
  return refuse('bad_request', 'the balance would exceed ' .. ARGV[6] .. ' coins')
end

local balance = redis.call('HINCRBY', KEYS[1], 'coins', coins)
ledger(KEYS[3], {kind = 'topup', id = receipt, ts = now, user = user, coins = coins,
                 coins_after = balance})
return remember(KEYS[2], fingerprint, {'ok', balance}, int(ARGV[5]))
