-- Drop a thread's hot state (HybridSaver: delete, erasure, a thread written to PostgreSQL while Redis was away).
-- KEYS: 1 the thread's lease, then its hash and each namespace's pending writes. ARGV: 1 this process's token.
local wait = lease(KEYS[1], ARGV[1])
if wait then return {'LEASED', wait} end
return redis.call('DEL', unpack(KEYS, 2))
