-- Put before the checkpoint scripts that change a thread's keys (scripts.py). The thread's lease (cache/
-- tracking.py) names the process that may answer the thread's reads from what it keeps; `lease(key, token)`
-- is false when this process (`token`) may write: no lease, its own, or its own marked by another writer. Held
-- by another process, it is marked ('!' + holder, keeping its expiry: a change, so the holder hears of it) and
-- its milliseconds left are returned: the caller writes nothing and retries once the holder released it.
local function lease(key, token)
  local holder = redis.call('GET', key)
  if not holder or holder == token or holder == '!' .. token then return false end
  if string.byte(holder) ~= 33 then redis.call('SET', key, '!' .. holder, 'KEEPTTL') end
  return redis.call('PTTL', key)
end
