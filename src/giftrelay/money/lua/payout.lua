-- payout.lua: a creator cashes out diamonds, all or nothing; idempotent by request id.
--
-- KEYS[1] w:{creator}               the creator's wallet (hash)
-- KEYS[2] idem:{creator}:p:<id>     idempotency record (string)
-- ARGV[1] request id   ARGV[2] creator   ARGV[3] diamonds   ARGV[4] cash (cents)
-- ARGV[5] fee (cents)  ARGV[6] minimum diamonds   ARGV[7] now (ms)   ARGV[8] retention (ms)
-- ARGV[9] '1' when the creator must be verified (wallet field verified), else '0'
-- ARGV[10] the currency of the cents (ISO 4217), recorded in the ledger
-- ARGV[11] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', diamonds, cash_cents, fee_cents, diamonds_left, replayed}
--      or {'err', code, detail}.

local id, creator, diamonds = ARGV[1], ARGV[2], int(ARGV[3])
local cash, fee, now = int(ARGV[4]), int(ARGV[5]), int(ARGV[7])

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'string', [ARGV[11]] = 'stream'})
if bad then return refuse('internal', bad) end

local fingerprint = 'payout|' .. diamonds
local first = replay(KEYS[2], fingerprint)
if first then return first end

if diamonds < int(ARGV[6]) then return refuse('below_minimum', 'the minimum is ' .. ARGV[6]) end
-- Cash and fee are not bounded by anything in Redis, only by the caller's rates
-- (checked when the settings load): refuse what the ledger could not hold exactly.
if cash < 0 or fee < 0 or cash + fee > MAX_EXACT then
  return refuse('internal', 'cash ' .. ARGV[4] .. ' + fee ' .. ARGV[5] .. ' cents is out of range')
end
local w, problem = read_ints(KEYS[1], {'diamonds', 'verified'}, {verified = true})
if problem then return refuse('internal', problem) end
if ARGV[9] == '1' and not w.verified then return refuse('not_verified') end
if w.diamonds < diamonds then return refuse('insufficient_diamonds') end

local left = redis.call('HINCRBY', KEYS[1], 'diamonds', -diamonds)
ledger(ARGV[11], {kind = 'payout', id = id, ts = now, user = creator, diamonds = diamonds,
                 cash_cents = cash, fee_cents = fee, diamonds_after = left,
                 currency = ARGV[10]})
return remember(KEYS[2], fingerprint, {'ok', diamonds, cash, fee, left}, int(ARGV[8]))
