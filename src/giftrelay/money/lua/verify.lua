-- verify.lua: the platform records that a creator's identity was verified (or that the
-- verification was withdrawn); payout runs pay verified creators only.
--
-- KEYS[1] w:{creator}         the creator's wallet (hash): field verified = ms
-- KEYS[2] creators:verified   every verified creator (set), for payout runs to list
-- KEYS[3] ledger              ledger (stream): each change is kept for audits
-- ARGV[1] creator   ARGV[2] '1' verified or '0' withdrawn   ARGV[3] reference (e.g. the
-- verification provider's case id)   ARGV[4] now (ms)
-- Returns {'ok', verified since (ms) or 0}.

local creator, on, now = ARGV[1], ARGV[2] == '1', int(ARGV[4])

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'set', [KEYS[3]] = 'stream'})
if bad then return refuse('internal', bad) end

local since = 0
if on then
  since = now
  redis.call('HSET', KEYS[1], 'verified', now)
  redis.call('SADD', KEYS[2], creator)
else
  redis.call('HDEL', KEYS[1], 'verified')
  redis.call('SREM', KEYS[2], creator)
end
ledger(KEYS[3], {kind = 'verification', ts = now, user = creator, verified = on,
                 reference = ARGV[3]})
return {'ok', since}
