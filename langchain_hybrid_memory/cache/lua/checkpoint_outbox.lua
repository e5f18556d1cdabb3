-- A thread's entries still in the outbox: {xid, record, ...}. KEYS as checkpoint_put.lua. Names whose entry is
-- gone (acknowledged, or evicted) are dropped from the set as they are found.
local out = {}
for _, xid in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  local e = redis.call('XRANGE', KEYS[3], xid, xid)[1]
  if e then
    out[#out + 1] = xid
    out[#out + 1] = e[2][6]
  else
    redis.call('SREM', KEYS[4], xid)
  end
end
return out
