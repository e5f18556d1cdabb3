-- Reads run no script: a MULTI of HMGET meta, LLEN and LRANGE (plus the TTL slide when due) costs Redis about
-- a tenth of a script that returns the same window. A Redis Cluster client has no raw connection to send that
-- MULTI on (and its transaction pipeline retries through a failover for seconds), so there the same reply
-- comes from this script. ARGV: 6 LRANGE start, 7... the meta fields.
local meta = redis.call('HMGET', K_META, unpack(ARGV, 7))
local out = {meta, redis.call('LLEN', K_WINDOW), redis.call('LRANGE', K_WINDOW, ARGV[6], -1),
             redis.call('EXISTS', K_ENTRIES), gen()}
if A_TOUCH == '1' then touch(tonumber(A_TTL_MS), now_us()) end
return out
