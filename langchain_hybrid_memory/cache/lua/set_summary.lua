-- ARGV: 6 upto_seq, 7 text, 8 messages covered. Publishes a new summary to a cached window (if any), unless
-- a newer one is there already. Returns 1 if stored.
if redis.call('EXISTS', K_META) == 0 then return 0 end
if tonumber(redis.call('HGET', K_META, 'sum_upto') or '0') >= tonumber(ARGV[6]) then return 0 end
redis.call('HSET', K_META, 'sum_upto', ARGV[6], 'sum_text', ARGV[7])
local left = redis.call('HINCRBY', K_META, 'unsum', -tonumber(ARGV[8]))
if left < 0 then redis.call('HSET', K_META, 'unsum', 0) end
return 1
