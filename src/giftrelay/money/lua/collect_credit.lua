-- collect_credit.lua: on a Redis Cluster, a collect's second step, on the creator's slot:
-- the earnings a collect took off a stream (collect.lua) into the wallet, once per collect
-- whoever applies it (the payout that collected, or the mover). No ledger entry: the
-- diamonds were the creator's since each gift's entry; only where Redis holds them changes.
--
-- KEYS[1] w:{creator}                      the creator's wallet (hash)
-- KEYS[2] xf:{creator}:k:<stream>:<n>      this collect's credit: the diamonds after it
-- ARGV[1] diamonds   ARGV[2] retention (ms)
-- Returns {'ok', diamonds after, replayed} or {'err', code, detail}. The wallet is bounded
-- by what the ledger holds exactly, not the largest balance: the gifts accepted these
-- diamonds already, and a collect refused would leave them in the outbox for good.

local done = redis.call('GET', KEYS[2])
if done then return {'ok', int(done), 1} end

local w, problem = read_ints(KEYS[1], {'diamonds'})
if problem then return refuse('internal', problem) end
local diamonds = int(ARGV[1])
problem = overflows(w, 'diamonds', diamonds, MAX_EXACT)
if problem then return refuse('internal', problem) end

local after = w.diamonds + diamonds
redis.call('HSET', KEYS[1], 'diamonds', after)
redis.call('SET', KEYS[2], after, 'PX', int(ARGV[2]))
return {'ok', after, 0}
