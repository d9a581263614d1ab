-- collect.lua: on a Redis Cluster, the first step of moving a creator's earnings on a stream
-- (gift_apply.lua's `earnings`) into their wallet: the earnings leave the stream for a
-- transfer in the outbox, at once; collect_credit.lua credits the wallet, once.
--
-- KEYS[1] st:{stream}   stream (hash)
-- ARGV[1] stream   ARGV[2] now (ms)   ARGV[3] the creator collecting (nothing moves from a
--   stream of another's)   ARGV[4] out:{bucket}, the outbox   ARGV[5] hold:{bucket},
--   the reconciles counting (a set; none: collects go on): shard keys of one bucket
-- Returns {'ok', transfer (JSON) or '' when nothing is held, outbox, entry id}
--      or {'err', 'held'} while a reconcile counts.

local stream, outbox, hold = ARGV[1], ARGV[4], ARGV[5]
local bad = wrong_type({[outbox] = 'stream', [KEYS[1]] = 'hash', [hold] = 'set'})
if bad then return refuse('internal', bad) end
if redis.call('EXISTS', hold) == 1 then return refuse('held') end

local st, problem = read_ints(KEYS[1], {'earnings', 'collects', 'creator'}, nil, {creator = true})
if problem then return refuse('internal', problem) end
if st.earnings == 0 or st.creator ~= ARGV[3] then return {'ok', '', '', ''} end

local n = st.collects + 1
redis.call('HSET', KEYS[1], 'earnings', 0, 'collects', n)
local transfer = cjson.encode({kind = 'collect', id = 'k' .. n, to = st.creator,
  stream = stream, diamonds = st.earnings, ts = int(ARGV[2])})
local entry = redis.call('XADD', outbox, '*', 't', transfer)
return {'ok', transfer, outbox, entry}
