-- battle_answer.lua: the opponent's answer to a battle invitation, or its cancellation
-- when a stream could not join: on the battle's slot, once.
--
-- KEYS[1] bt:{battle}   the battle (hash)
-- ARGV[1] 'accept', 'decline' or 'cancel'   ARGV[2] the acting creator ('' for an admin or
--   the server)   ARGV[3] now (ms)   ARGV[4] the battle's end if it starts now (ms)
-- Returns {'ok', status, starts (ms), ends (ms), replayed} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash'})
if bad then return refuse('internal', bad) end

local b = redis.call('HMGET', KEYS[1], 'status', 'creator_b', 'expires_ms', 'start_ms',
                     'end_ms')
local status, answer, now = b[1], ARGV[1], int(ARGV[3])
if not status then return refuse('unknown_battle') end
if answer == 'cancel' then
  if status == 'running' then redis.call('HSET', KEYS[1], 'status', 'cancelled') end
  return {'ok', 'cancelled', b[4] or 0, b[5] or 0, 0}
end
if ARGV[2] ~= '' and ARGV[2] ~= b[2] then
  return refuse('forbidden', 'only the invited stream\'s creator answers')
end
if (answer == 'accept' and (status == 'running' or status == 'ended'))
    or (answer == 'decline' and status == 'declined') then
  return {'ok', status, b[4] or 0, b[5] or 0, 1}
end
if status ~= 'invited' then return refuse('battle_closed', 'the invitation is ' .. status) end
if now >= int(b[3]) then
  redis.call('HSET', KEYS[1], 'status', 'expired')
  return refuse('battle_closed', 'the invitation expired')
end
if answer == 'decline' then
  redis.call('HSET', KEYS[1], 'status', 'declined')
  return {'ok', 'declined', 0, 0, 0}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'start_ms', now, 'end_ms', ARGV[4])
return {'ok', 'running', now, int(ARGV[4]), 0}
