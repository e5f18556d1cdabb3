-- A namespace's latest checkpoint (HybridSaver) on Redis Cluster, as Commands.checkpoint_latest_cmds reads it
-- elsewhere in a MULTI: {{its id, its hot record}, its pending writes as a flat list of field, value}.
-- KEYS as checkpoint_put.lua. ARGV: 1 namespace, 2 TTL (ms) to slide, or 0.
local ns = ARGV[1]
local latest = redis.call('HMGET', KEYS[1], 'i\31' .. ns, 'c\31' .. ns)
local writes = redis.call('HGETALL', KEYS[2])
if ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return {latest, writes}
