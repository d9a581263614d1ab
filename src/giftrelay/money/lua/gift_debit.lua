-- gift_debit.lua: on a Redis Cluster, a gift's first step, on the viewer's slot: every
-- check of the viewer's side, the debit, and the transfer that carries the rest (the
-- stream's side and the creator's earnings, gift_apply.lua) in the outbox.
-- The stream was found live by the caller: its keys are on another slot.
--
-- KEYS[1] w:{viewer}               viewer's wallet (hash)
-- KEYS[2] idem:{viewer}:g:<id>     idempotency record (string)
-- KEYS[3] sp:{viewer}:<day>        the viewer's spending per creator that day (hash)
-- ARGV[1] request id   ARGV[2] viewer   ARGV[3] creator   ARGV[4] stream   ARGV[5] gift id
-- ARGV[6] gift name    ARGV[7] count    ARGV[8] coins     ARGV[9] diamonds
-- ARGV[10] streakable (1/0)   ARGV[11] now (ms)   ARGV[12] idempotency retention (ms)
-- ARGV[13] confirmed by the viewer (1/0)
-- ARGV[14] '' when the caller found the stream live, else the refusal for a gift that is no
--          retry ('stream_not_live', 'unknown_stream'): a retry still gets its first reply
-- ARGV[15] the gifter levels' thresholds ('100,1000,...')
-- ARGV[16] out:{bucket}, the outbox, a shard key (see _prelude.lua)
-- Returns {'ok', outbox, entry id, coins, balance, now, level, level up (1/0),
--   confirmed (1/0), diamonds, replayed} or {'err', code, detail} ('cooling_down' and
--   'confirm_required' as gift.lua): the caller holds the rest of the transfer (the
--   request's own arguments), so neither the reply nor its record repeats it; the
--   amounts are the first run's (a retry is priced again by its caller).

local id, viewer, creator, stream = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local gift, count, coins = ARGV[5], int(ARGV[7]), int(ARGV[8])
local now, outbox = int(ARGV[11]), ARGV[16]

local bad = wrong_type({[outbox] = 'stream'})
if bad then return refuse('internal', bad) end

local fingerprint = 'gift|' .. stream .. '|' .. gift .. '|' .. count
local first = replay(KEYS[2], fingerprint)
if first then return first end
if viewer == creator then return refuse('self_gift') end
if ARGV[14] ~= '' then return refuse(ARGV[14]) end

local w, problem = payer(KEYS[1])
if problem then return refuse('internal', problem) end
if w.coins < coins then return refuse('insufficient_coins') end
local charge, refusal = limits(KEYS[1], w, coins, now, ARGV[13] == '1')
if refusal then return refusal end

local level, level_up = levels(w, coins, ARGV[15])
local balance = pay(KEYS[1], KEYS[3], w, charge, creator, coins, now)
local transfer = cjson.encode({
  id = id, from = viewer, to = creator, stream = stream, gift = gift, name = ARGV[6],
  count = count, coins = coins, diamonds = int(ARGV[9]), ts = now,
  streakable = ARGV[10] == '1', coins_after = balance, confirmed = charge.confirmed,
  level = level, level_up = level_up or nil,
})
local entry = redis.call('XADD', outbox, '*', 't', transfer)
return remember(KEYS[2], fingerprint,
  {'ok', outbox, entry, coins, balance, now, level, level_up and 1 or 0,
   charge.confirmed and 1 or 0, int(ARGV[9])}, int(ARGV[12]))
