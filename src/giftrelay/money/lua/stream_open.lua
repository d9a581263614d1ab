-- stream_open.lua: a creator (or an admin for them) opens or reopens a stream.
--
-- KEYS[1] st:{stream}   the stream (hash)
-- ARGV[1] creator   ARGV[2] title   ARGV[3] now (ms)
-- Returns {'ok'} or {'err', code, detail}: a stream belongs to its first creator.

local bad = wrong_type({[KEYS[1]] = 'hash'})
if bad then return refuse('internal', bad) end

local owner = redis.call('HGET', KEYS[1], 'creator')
if owner and owner ~= ARGV[1] then
  return refuse('forbidden', 'the stream belongs to another creator')
end
redis.call('HSET', KEYS[1], 'creator', ARGV[1], 'title', ARGV[2], 'status', 'live',
           'opened_ms', ARGV[3])
return {'ok'}
