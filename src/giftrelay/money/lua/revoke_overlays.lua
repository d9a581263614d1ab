-- revoke_overlays.lua: overlay tokens of the stream issued before now stop working.
-- Workers check the epoch on connect and close the overlays they hold when told. The
-- stored epoch is the record: a worker whose channel was down when this published
-- reads it when the channel is back (fanout.py, _fill_gap) and closes them then.
--
-- KEYS[1] st:{stream}     the stream (hash)
-- KEYS[2] ev:{stream}     pub/sub channel
-- ARGV[1] acting creator, or '' for an admin   ARGV[2] now (ms)
-- Returns {'ok'} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash'})
if bad then return refuse('internal', bad) end

local owner = redis.call('HGET', KEYS[1], 'creator')
if not owner then return refuse('unknown_stream') end
if ARGV[1] ~= '' and ARGV[1] ~= owner then return refuse('forbidden', 'not your stream') end

redis.call('HSET', KEYS[1], 'overlay_epoch', ARGV[2])
redis.call('SPUBLISH', KEYS[2], cjson.encode({kind = 'revoke_overlays', before = int(ARGV[2])}))
return {'ok'}
