-- topup_claim.lua: on a Redis Cluster, a top-up's first step, on the receipt's slot: the
-- receipt is claimed for one user and amount; topup.lua then credits it on the user's
-- slot, with a record of its own there. A retry finds its claim and credits once.
--
-- KEYS[1] idem:topup:{receipt}   the receipt's record (string)
-- ARGV[1] user   ARGV[2] coins   ARGV[3] coin package id or ''   ARGV[4] region
-- ARGV[5] retention (ms)
-- Returns {'ok'} (claimed now or before, for the same top-up) or {'err', code, detail}.

local fingerprint = topup_fingerprint(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, '\n', 1, true)
  if not sep or string.sub(stored, 1, sep - 1) ~= fingerprint then
    return refuse('idempotency_conflict')
  end
  return {'ok'}
end
redis.call('SET', KEYS[1], fingerprint .. '\n[]', 'PX', int(ARGV[5]))
return {'ok'}
