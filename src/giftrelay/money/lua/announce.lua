-- announce.lua: a stored event the money core made (a battle's invitation or decline) in
-- a stream's history and on its channel. Only the server's own events come here.
--
-- KEYS[1] hist:{stream}   public history (stream)
-- KEYS[2] ev:{stream}     sharded pub/sub channel
-- ARGV[1] the event (JSON object with kind and ts)   ARGV[2] history length
-- Returns {'ok', offset} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'stream'})
if bad then return refuse('internal', bad) end
return {'ok', announce_json(KEYS[1], KEYS[2], ARGV[2], ARGV[1])}
