-- A checkpoint put (HybridSaver): the thread's hot state and the outbox entry, in one step.
-- KEYS: 1 the thread's checkpoint hash, 2 this namespace's writes hash, 3 the bucket's outbox, 4 the thread's
-- entry set, 5 its lease (keys.py ThreadKeys). ARGV: 1 namespace, 2 checkpoint id, 3 the hot record, 4 TTL
-- (ms), 5 the outbox record, 6 thread id, 7 n blobs, then n (field, value, '1' if a whole value), then m, then m
-- blob fields to delete (blobs the new chain no longer folds), then this process's token.
-- The hash keeps, per namespace, only the newest checkpoint ('i' its id, 'c' its record): ids sort in time
-- order, so an older checkpoint put late (a replay, a copy) never replaces a newer one. Pending writes are
-- named '<checkpoint id> US <task id> US <idx>'; a new latest checkpoint drops those of older ones, and only
-- those (LangGraph sends a step's put and writes concurrently: a later checkpoint's writes may come first).
-- Returns {outbox entry id, the thread's change count, 1 if the checkpoint became the latest, then the pending
-- writes' fields it deleted} (what a process that keeps the namespace's latest checkpoint changes in it).
local wait = lease(KEYS[5], ARGV[#ARGV])
if wait then return {'LEASED', wait} end
local ns = ARGV[1]
local id = ARGV[2]
local n = count(KEYS[1])
local cur = redis.call('HGET', KEYS[1], 'i\31' .. ns)
local latest = 0
local old = {}
if not cur or id >= cur then
  latest = 1
  if cur ~= id then
    for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
      if string.match(f, '^[^\31]*') < id then old[#old + 1] = f end
    end
    if #old > 0 then redis.call('HDEL', KEYS[2], unpack(old)) end
  end
  redis.call('HSET', KEYS[1], 'i\31' .. ns, id, 'c\31' .. ns, ARGV[3])
  local d = 8 + 3 * tonumber(ARGV[7])
  local m = tonumber(ARGV[d])
  if m > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, d + 1, d + m)) end
end
-- Blobs even for a checkpoint that arrives after a newer one: the newer one's delta chain may start there. A
-- delta, once stored, stays (another chain may fold it); a whole value replaces a delta of its version (it is
-- right wherever a chain folds that version, and the new chain starts from it).
for k = 0, tonumber(ARGV[7]) - 1 do
  local f = 8 + 3 * k
  redis.call(ARGV[f + 2] == '1' and 'HSET' or 'HSETNX', KEYS[1], ARGV[f], ARGV[f + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])  -- the namespace's pending writes live as long as its checkpoint
local xid = redis.call('XADD', KEYS[3], '*', 'k', 'c', 't', ARGV[6], 'r', ARGV[5])
redis.call('SADD', KEYS[4], xid)
return {xid, n, latest, unpack(old)}
