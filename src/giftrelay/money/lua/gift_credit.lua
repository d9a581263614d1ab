-- gift_credit.lua: on a Redis Cluster, a gift's last step, on the creator's slot: the
-- diamonds and the gift's ledger entry (the whole gift, as gift.lua writes it on one
-- Redis), once per gift whoever applies it.
--
-- KEYS[1] w:{creator}                      creator's wallet (hash)
-- KEYS[2] xf:{creator}:c:<viewer>:<id>     this gift's credit: the diamonds after it (string)
-- ARGV[1] transfer (JSON)   ARGV[2] offset   ARGV[3] combo   ARGV[4] combo id
-- ARGV[5] retention (ms)    ARGV[6] largest balance a wallet may hold
-- ARGV[7] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', diamonds after, replayed} or {'err', code, detail}.

local bad = wrong_type({[ARGV[7]] = 'stream'})
if bad then return refuse('internal', bad) end

local done = redis.call('GET', KEYS[2])
if done then return {'ok', int(done), 1} end

local g = cjson.decode(ARGV[1])
local c, problem = read_ints(KEYS[1], {'diamonds'})
if problem then return refuse('internal', problem) end
problem = overflows(c, 'diamonds', g.diamonds, int(ARGV[6]))
if problem then return refuse('internal', problem) end

local after = c.diamonds + g.diamonds
redis.call('HSET', KEYS[1], 'diamonds', after)
ledger(ARGV[7], {
  kind = 'gift', id = g.id, ts = g.ts, stream = g.stream, offset = ARGV[2],
  from = g.from, to = g.to, gift = g.gift, count = g.count, coins = g.coins,
  diamonds = g.diamonds, coins_after = g.coins_after, diamonds_after = after,
  combo = int(ARGV[3]), combo_id = ARGV[4], confirmed = g.confirmed,
})
redis.call('SET', KEYS[2], after, 'PX', int(ARGV[5]))
return {'ok', after, 0}
