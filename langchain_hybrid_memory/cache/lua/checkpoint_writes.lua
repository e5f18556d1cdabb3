-- A task's pending writes (HybridSaver), beside the outbox entry. KEYS as checkpoint_put.lua. ARGV: 1 namespace,
-- 2 checkpoint id, 3 TTL (ms), 4 the outbox record, 5 thread id, 6 n, then n (field, value, '1' to replace),
-- then this process's token.
-- Kept hot for the namespace's latest checkpoint or a newer one (its put may still be on its way). A regular
-- write keeps what was written first (a retried task must not change it); a special one (error, interrupt)
-- is replaced, as in PostgreSQL. Returns {outbox entry id, the thread's change count, 1 if the writes were kept
-- hot}.
local wait = lease(KEYS[5], ARGV[#ARGV])
if wait then return {'LEASED', wait} end
local n = count(KEYS[1])
local cur = redis.call('HGET', KEYS[1], 'i\31' .. ARGV[1])
local hot = 0
if not cur or ARGV[2] >= cur then
  hot = 1
  for k = 0, tonumber(ARGV[6]) - 1 do
    local f, v = ARGV[7 + 3 * k], ARGV[8 + 3 * k]
    if ARGV[9 + 3 * k] == '1' then redis.call('HSET', KEYS[2], f, v) else redis.call('HSETNX', KEYS[2], f, v) end
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
local xid = redis.call('XADD', KEYS[3], '*', 'k', 'w', 't', ARGV[5], 'r', ARGV[4])
redis.call('SADD', KEYS[4], xid)
return {xid, n, hot}
