-- stream_close.lua: ends a live stream and tells its viewers; closing twice is a no-op.
--
-- KEYS[1] st:{stream}     the stream (hash)
-- KEYS[2] hist:{stream}   public history (stream)
-- KEYS[3] ev:{stream}     pub/sub channel (listed for Cluster)
-- ARGV[1] acting creator, or '' for an admin   ARGV[2] now (ms)   ARGV[3] history length
-- Returns {'ok', offset} (offset '' when it was not live) or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'stream'})
if bad then return refuse('internal', bad) end

local st = redis.call('HMGET', KEYS[1], 'creator', 'status')
if not st[1] then return refuse('unknown_stream') end
if ARGV[1] ~= '' and ARGV[1] ~= st[1] then return refuse('forbidden', 'not your stream') end
if st[2] ~= 'live' then return {'ok', ''} end

redis.call('HSET', KEYS[1], 'status', 'ended', 'closed_ms', ARGV[2])
return {'ok', announce(KEYS[2], KEYS[3], ARGV[3], {kind = 'stream_ended', ts = int(ARGV[2])})}
