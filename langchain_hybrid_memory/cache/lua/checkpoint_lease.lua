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

-- The thread's change count ('n' in its hash), one more for each script that changes the thread, which returns
-- it: a process that read the count with a value knows from it whether its own change was the only one since,
-- and so what the value has become. A new hash counts on from Redis's clock (microseconds): a thread deleted
-- and written again does not repeat a count.
local function count(key)
  local n = redis.call('HINCRBY', key, 'n', 1)
  if n == 1 then
    local t = redis.call('TIME')
    n = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('HSET', key, 'n', string.format('%.0f', n))  -- '%d' is a C long: 32 bits on some builds
  end
  return n
end
