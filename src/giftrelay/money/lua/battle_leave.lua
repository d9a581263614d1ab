-- battle_leave.lua: a stream leaves its battle, once: the battle_end event (none when the
-- battle was cancelled), and the stream is free for the next.
--
-- KEYS[1] st:{stream}     the stream (hash)
-- KEYS[2] hist:{stream}   public history (stream)
-- KEYS[3] ev:{stream}     sharded pub/sub channel
-- KEYS[4] btop:{stream}   its side's points by gifter (read by the referee before: gone)
-- ARGV[1] battle   ARGV[2] the battle_end event (JSON), or ''   ARGV[3] history length
-- Returns {'ok', left now (1/0)}.

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'stream'})
if bad then return refuse('internal', bad) end
if redis.call('HGET', KEYS[1], 'battle') ~= ARGV[1] then return {'ok', 0} end
redis.call('HDEL', KEYS[1], 'battle', 'b_start', 'b_end', 'b_boosts', 'b_score')
redis.call('DEL', KEYS[4])
if ARGV[2] ~= '' then announce_json(KEYS[2], KEYS[3], ARGV[3], ARGV[2]) end
return {'ok', 1}
