-- battle_invite.lua: a battle between two streams, invited: its record on its own slot.
-- The battle's id comes from the inviting stream and the request id, so a retry finds it.
--
-- KEYS[1] bt:{battle}   the battle (hash)
-- ARGV[1] inviting stream   ARGV[2] opponent stream   ARGV[3] inviting creator
-- ARGV[4] opponent creator   ARGV[5] duration (ms)   ARGV[6] now (ms)
-- ARGV[7] the invitation's end (ms)   ARGV[8] how long the record is kept (ms)
-- Returns {'ok', status, new (1/0)} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash'})
if bad then return refuse('internal', bad) end

local held = redis.call('HMGET', KEYS[1], 'a', 'b', 'duration_ms', 'status')
if held[4] then
  if held[1] ~= ARGV[1] or held[2] ~= ARGV[2] or held[3] ~= ARGV[5] then
    return refuse('idempotency_conflict')
  end
  return {'ok', held[4], 0}
end
redis.call('HSET', KEYS[1], 'a', ARGV[1], 'b', ARGV[2], 'creator_a', ARGV[3],
           'creator_b', ARGV[4], 'duration_ms', ARGV[5], 'invited_ms', ARGV[6],
           'expires_ms', ARGV[7], 'status', 'invited')
redis.call('PEXPIRE', KEYS[1], ARGV[8])
return {'ok', 'invited', 1}
