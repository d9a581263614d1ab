-- verify.lua: the platform records that a creator's identity was verified (or that the
-- verification was withdrawn); payout runs pay verified creators only.
--
-- KEYS[1] w:{creator}         the creator's wallet (hash): field verified = ms
-- KEYS[2] creators:verified   every verified creator (set), for payout runs to list; not
--                             on a cluster (another slot): the caller updates it after
-- ARGV[1] creator   ARGV[2] '1' verified or '0' withdrawn   ARGV[3] reference (e.g. the
-- verification provider's case id)   ARGV[4] now (ms)
-- ARGV[5] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', verified since (ms) or 0}.

local creator, on, now = ARGV[1], ARGV[2] == '1', int(ARGV[4])

local expected = {[KEYS[1]] = 'hash', [ARGV[5]] = 'stream'}
if KEYS[2] then expected[KEYS[2]] = 'set' end
local bad = wrong_type(expected)
if bad then return refuse('internal', bad) end

local since = 0
if on then
  since = now
  redis.call('HSET', KEYS[1], 'verified', now)
  if KEYS[2] then redis.call('SADD', KEYS[2], creator) end
else
  redis.call('HDEL', KEYS[1], 'verified')
  if KEYS[2] then redis.call('SREM', KEYS[2], creator) end
end
ledger(ARGV[5], {kind = 'verification', ts = now, user = creator, verified = on,
                 reference = ARGV[3]})
return {'ok', since}
