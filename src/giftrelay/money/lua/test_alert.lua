-- test_alert.lua: a creator (or an admin) shows a gift on their own stream's overlays.
-- The event is a real `gift` event marked `test`; no wallet, total or ledger is touched.
--
-- KEYS[1] st:{stream}     the stream (hash)
-- KEYS[2] hist:{stream}   public history (stream)
-- KEYS[3] ev:{stream}     pub/sub channel (listed for Cluster)
-- ARGV[1] acting creator, or '' for an admin   ARGV[2] alert id   ARGV[3] gift id
-- ARGV[4] gift name   ARGV[5] count   ARGV[6] coins   ARGV[7] diamonds   ARGV[8] now (ms)
-- ARGV[9] history length
-- Returns {'ok', offset} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'stream'})
if bad then return refuse('internal', bad) end

local owner = redis.call('HGET', KEYS[1], 'creator')
if not owner then return refuse('unknown_stream') end
if ARGV[1] ~= '' and ARGV[1] ~= owner then return refuse('forbidden', 'not your stream') end

return {'ok', announce(KEYS[2], KEYS[3], ARGV[9], {
  kind = 'gift', ts = int(ARGV[8]), id = ARGV[2], from = owner, gift = ARGV[3],
  name = ARGV[4], count = int(ARGV[5]), coins = int(ARGV[6]), diamonds = int(ARGV[7]),
  combo = int(ARGV[5]), combo_id = 't' .. ARGV[2], test = true,
})}
