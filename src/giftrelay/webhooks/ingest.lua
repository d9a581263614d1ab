-- Queue ledger entries for delivery and acknowledge them, if the caller holds the lease.
-- KEYS[1] wh:lease            string: the lease holder's name
-- KEYS[2] wh:outbox           hash: ledger entry id -> queued event (JSON)
-- KEYS[3] ledger              stream read through the group ARGV[2]
-- ARGV[1] name                the deliverer queueing
-- ARGV[2] group               the webhooks' consumer group
-- ARGV[3..] entry id, event   pairs; an empty event only acknowledges (no movement)
-- Returns the number of entries acknowledged, or -1 when the caller does not hold
-- the lease (nothing written: the entries stay pending for the holder to claim).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
local acked = 0
for i = 3, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then
    redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
  end
  acked = acked + redis.call('XACK', KEYS[3], ARGV[2], ARGV[i])
end
return acked
