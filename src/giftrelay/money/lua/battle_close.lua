-- battle_close.lua: a battle's result, once: kept on the battle's record and written to
-- the ledger (kind 'battle': no money moves). A second run returns the first result.
--
-- KEYS[1] bt:{battle}   the battle (hash)
-- ARGV[1] the result (JSON: the ledger entry, kind and version included)
-- ARGV[2] the ledger stream, a shard key (see _prelude.lua)
-- Returns {'ok', result (JSON), replayed} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [ARGV[2]] = 'stream'})
if bad then return refuse('internal', bad) end
local b = redis.call('HMGET', KEYS[1], 'status', 'result')
if not b[1] then return refuse('unknown_battle') end
if b[1] == 'ended' then return {'ok', b[2], 1} end
if b[1] ~= 'running' then return refuse('battle_closed', 'the battle is ' .. b[1]) end
redis.call('HSET', KEYS[1], 'status', 'ended', 'result', ARGV[1])
redis.call('XADD', ARGV[2], '*', 'e', ARGV[1])
return {'ok', ARGV[1], 0}
