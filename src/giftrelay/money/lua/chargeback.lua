-- chargeback.lua: the payment behind a top-up was reversed: take its coins back, even
-- into debt (a wallet below zero sends no gift until top-ups cover it). Idempotent by
-- receipt: a receipt is charged back at most once, whatever the reason given.
--
-- KEYS[1] w:{user}                   the wallet the receipt credited (hash)
-- KEYS[2] idem:topup:{receipt}       the top-up's record (string), while Redis keeps it
-- KEYS[3] idem:chargeback:{receipt}  this chargeback's record (string)
-- ARGV[1] receipt   ARGV[2] user   ARGV[3] coins the ledger store says the receipt
-- credited, or '' when the caller found it in Redis   ARGV[4] reason   ARGV[5] now (ms)
-- ARGV[6] retention (ms)
-- ARGV[7] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', user, coins taken back, balance, replayed} or {'err', code, detail}.

local receipt, user, reason, now = ARGV[1], ARGV[2], ARGV[4], int(ARGV[5])

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'string', [KEYS[3]] = 'string',
                        [ARGV[7]] = 'stream'})
if bad then return refuse('internal', bad) end

local fingerprint = 'chargeback|' .. receipt
local first = replay(KEYS[3], fingerprint)
if first then return first end

-- The top-up's record is 'topup|<user>|<coins>[|<package>...]\n<reply>'. Past its
-- retention only the ledger store knows the receipt; the caller then passes what it holds.
local coins
local topup = redis.call('GET', KEYS[2])
if topup then
  local who, amount = string.match(topup, '^topup|([^|\n]+)|(%d+)')
  if not who then return refuse('internal', KEYS[2] .. ' is no top-up record') end
  if who ~= user then return refuse('stale_user', who) end
  coins = int(amount)
elseif ARGV[3] ~= '' then
  coins = int(ARGV[3])
else
  return refuse('unknown_receipt')
end

local w, problem = read_ints(KEYS[1], {'coins'})
if problem then return refuse('internal', problem) end
if w.coins - coins < -MAX_EXACT then
  return refuse('internal', 'the debt would pass what the ledger records exactly')
end

local balance = redis.call('HINCRBY', KEYS[1], 'coins', -coins)
ledger(ARGV[7], {kind = 'chargeback', id = receipt, ts = now, user = user, coins = coins,
                 coins_after = balance, reason = reason})
return remember(KEYS[3], fingerprint, {'ok', user, coins, balance}, int(ARGV[6]))
