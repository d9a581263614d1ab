-- set_goal.lua: sets the stream's goal; progress counts the diamonds received from now on.
--
-- KEYS[1] st:{stream}     the stream (hash)
-- KEYS[2] hist:{stream}   public history (stream)
-- KEYS[3] ev:{stream}     pub/sub channel (listed for Cluster)
-- ARGV[1] acting creator, or '' for an admin   ARGV[2] title   ARGV[3] target (diamonds)
-- ARGV[4] now (ms)   ARGV[5] history length
-- Returns {'ok', offset} or {'err', code, detail}.

local bad = wrong_type({[KEYS[1]] = 'hash', [KEYS[2]] = 'stream'})
if bad then return refuse('internal', bad) end

local owner = redis.call('HGET', KEYS[1], 'creator')
if not owner then return refuse('unknown_stream') end
if ARGV[1] ~= '' and ARGV[1] ~= owner then return refuse('forbidden', 'not your stream') end
local totals, problem = read_ints(KEYS[1], {'diamonds'})
if problem then return refuse('internal', problem) end

redis.call('HSET', KEYS[1], 'goal_title', ARGV[2], 'goal_target', ARGV[3],
           'goal_base', totals.diamonds)
return {'ok', announce(KEYS[2], KEYS[3], ARGV[5], {
  kind = 'goal', ts = int(ARGV[4]), title = ARGV[2], target = int(ARGV[3]), progress = 0,
  goal = {title = ARGV[2], target = int(ARGV[3]), progress = 0},
})}
