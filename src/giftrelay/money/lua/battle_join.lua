-- battle_join.lua: a stream enters a running battle: gifts to it score for its side from
-- now on (gift.lua, gift_apply.lua); announces the battle_start event.
--
-- KEYS[1] st:{stream}     the stream (hash)
-- KEYS[2] btop:{stream}   its side's points by gifter (sorted set)
-- KEYS[3] hist:{stream}   public history (stream)
-- KEYS[4] ev:{stream}     sharded pub/sub channel
-- ARGV[1] battle   ARGV[2] start (ms)   ARGV[3] end (ms)   ARGV[4] boost windows
--   ('<ms before the end>:<multiplier>,...')   ARGV[5] the battle_start event (JSON)
-- ARGV[6] history length   ARGV[7] now (ms)
-- Returns {'ok', joined now (1/0)} or {'err', code, detail}: 'battle_busy' while the
-- stream is in another battle (one that ended over a minute ago no longer counts).

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'zset', [KEYS[3]] = 'stream'})
if bad then return refuse('internal', bad) end

local st = redis.call('HMGET', KEYS[1], 'creator', 'status', 'battle', 'b_end')
if not st[1] then return refuse('unknown_stream') end
if st[3] == ARGV[1] then return {'ok', 0} end
-- A late retry of the accept, after the referee ended the battle: never again.
if int(ARGV[7]) >= int(ARGV[3]) then return refuse('battle_closed', 'the battle is over') end
if st[3] and tonumber(st[4] or 0) + 60000 > int(ARGV[7]) then
  return refuse('battle_busy', 'the stream is in battle ' .. st[3])
end
if st[2] ~= 'live' then return refuse('stream_not_live') end
redis.call('HSET', KEYS[1], 'battle', ARGV[1], 'b_start', ARGV[2], 'b_end', ARGV[3],
           'b_boosts', ARGV[4], 'b_score', 0)
redis.call('DEL', KEYS[2])
announce_json(KEYS[3], KEYS[4], ARGV[6], ARGV[5])
return {'ok', 1}
