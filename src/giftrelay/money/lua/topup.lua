-- topup.lua: the payment backend credits coins; the receipt id is the idempotency key.
--
-- KEYS[1] w:{user}                  the user's wallet (hash)
-- KEYS[2] idem:topup:{receipt}      idempotency record (string)
-- ARGV[1] receipt id   ARGV[2] user   ARGV[3] coins   ARGV[4] now (ms)
-- ARGV[5] retention (ms)   ARGV[6] largest balance allowed
-- ARGV[7] coin package id, or '' when the top-up names none; with one, ARGV[8] region,
-- ARGV[9] currency and ARGV[10] price (minor units) as the catalog priced it, for accounting
-- ARGV[11] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', balance, replayed} or {'err', code, detail}.

local receipt, user, coins, now = ARGV[1], ARGV[2], int(ARGV[3]), int(ARGV[4])

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'string', [ARGV[11]] = 'stream'})
if bad then return refuse('internal', bad) end

local package = ARGV[7]
local fingerprint = topup_fingerprint(user, coins, package, ARGV[8])
local first = replay(KEYS[2], fingerprint)
if first then return first end

local w, problem = read_ints(KEYS[1], {'coins'})
if problem then return refuse('internal', problem) end
if w.coins + coins > int(ARGV[6]) then
  return refuse('bad_request', 'the balance would exceed ' .. ARGV[6] .. ' coins')
end

local balance = redis.call('HINCRBY', KEYS[1], 'coins', coins)
local entry = {kind = 'topup', id = receipt, ts = now, user = user, coins = coins,
               coins_after = balance}
if package ~= '' then
  entry.package, entry.region, entry.currency = package, ARGV[8], ARGV[9]
  entry.price_minor = int(ARGV[10])
end
ledger(ARGV[11], entry)
return remember(KEYS[2], fingerprint, {'ok', balance}, int(ARGV[5]))
