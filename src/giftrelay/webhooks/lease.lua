-- The deliverer's lease: one deliverer sends at a time.
-- KEYS[1] wh:lease            string: the holder's name, with a TTL
-- ARGV[1] name                the deliverer asking
-- ARGV[2] ttl_ms              how long to hold it; 0 lets go of it
-- Returns 1 when `name` holds the lease now (taken or renewed; for 0: let go),
-- 0 when another deliverer holds it.
local holder = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if holder and holder ~= ARGV[1] then
  return 0
end
if ttl == 0 then
  if holder then
    redis.call('DEL', KEYS[1])
  end
  return 1
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
return 1
