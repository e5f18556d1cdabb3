-- ARGV: 6 idempotency_keep, 7 persist (1/0), 8 user_id ('' = none), 9 has_init (1/0), 10 ceiling (elements
--       kept at most while summarization lags), [fill block if has_init], then n, then n pairs (id, payload).
-- Returns {-1, gen} when the window is not cached and no init data was given (or stale init data: see
-- `stale`), gen being the generation a load from the store then brings, {-2, owner} on an ownership
-- conflict, else {1 or 2 (2: the user was bound now), outbox entry id or '', summary due (1/0),
-- seq_1..seq_n, new_1..new_n}.
local function name_entry(xid)
  local r = redis.pcall('SADD', K_ENTRIES, xid)
  if type(r) == 'table' and r.err then
    redis.call('DEL', K_ENTRIES)
    redis.call('SADD', K_ENTRIES, xid)
  end
end
local i = 11
local fresh = false  -- keys (re)created here get their TTL now, whatever A_TOUCH says
local meta = redis.call('HMGET', K_META, 'seq', 'uid', 'n', 'unsum')
-- Under memory pressure Redis may evict one key of a session and keep the others. The meta hash records the
-- window's length: a session whose id set (here) or window (checked by RPUSH's reply below) no longer
-- matches it is dropped and reloaded, never extended.
local zc = false
if meta[1] then
  zc = redis.call('ZCARD', K_IDS)
  if zc == 0 and tonumber(meta[3] or -1) ~= 0 then
    redis.call('DEL', K_WINDOW, K_META, K_IDS)
    zc = false
  end
end
if not zc then
  if ARGV[9] ~= '1' or stale(11) then return {-1, gen()} end
  i = fill(11)
  meta = redis.call('HMGET', K_META, 'seq', 'uid', 'n', 'unsum')
  zc = redis.call('ZCARD', K_IDS)
  fresh = true
elseif ARGV[9] == '1' then
  i = 11 + 9 + 2 * tonumber(ARGV[19])
end
local status = 1
local owner = meta[2]
if ARGV[8] ~= '' then
  if owner and owner ~= ARGV[8] then return {-2, owner} end
  if not owner then
    redis.call('HSET', K_META, 'uid', ARGV[8])
    status = 2
  end
end
local n = tonumber(ARGV[i])
local ids = {}
for k = 1, n do ids[k] = ARGV[i - 1 + 2 * k] end
-- prepare() refuses an id twice in one call, so one ZMSCORE up front equals a lookup per message
local olds = redis.call('ZMSCORE', K_IDS, unpack(ids))
local last = tonumber(meta[1])
local now = now_us()
local seqs, news, push, zadd, fields = {}, {}, {}, {}, {}
for k = 1, n do
  if olds[k] then
    seqs[k] = olds[k]
    news[k] = '0'
  else
    -- A hybrid logical clock: strictly increasing per session, close to server time, so a session that
    -- lost its cached counter (restart, eviction) never reuses a number.
    local seq = math.max(last + 1, now)
    last = seq
    local s = string.format('%.0f', seq)
    local el = '{"s":' .. s .. ',' .. string.sub(ARGV[i + 2 * k], 2)
    push[#push + 1] = el
    zadd[#zadd + 1] = s
    zadd[#zadd + 1] = ids[k]
    fields[#fields + 1] = ids[k]
    fields[#fields + 1] = el
    seqs[k] = s
    news[k] = '1'
  end
end
local added = #push
local threshold = tonumber(A_THRESHOLD)
local unsum = 0
if added > 0 then
  local cap = tonumber(A_CAPACITY)
  if threshold > 0 then
    -- Keep every message the summary does not cover yet (up to the ceiling): while the summarizer lags, the
    -- context view (summary + all after it) is still served from here instead of from PostgreSQL.
    cap = math.max(cap, math.min(tonumber(meta[4] or 0) + added, tonumber(ARGV[10])))
  end
  local len = redis.call('RPUSH', K_WINDOW, unpack(push))
  if len ~= tonumber(meta[3] or -1) + added then
    redis.call('DEL', K_WINDOW, K_META, K_IDS)
    return {-1, gen()}
  end
  if len == added then fresh = true end
  if len > cap then
    redis.call('LTRIM', K_WINDOW, -cap, -1)
    len = cap
  end
  -- Trim before adding, so the set never holds more than keep + 20 ids: past 128 entries Redis converts a
  -- sorted set to a skiplist (about 150 B per id instead of 50) and never converts it back.
  local keep = tonumber(ARGV[6])
  if zc + added > keep + 20 then
    if added >= keep then
      redis.call('DEL', K_IDS)  -- only this call's newest `keep` ids are remembered
      zadd = {unpack(zadd, 2 * (added - keep) + 1)}
      zc = 0
    else
      redis.call('ZREMRANGEBYRANK', K_IDS, 0, zc + added - keep - 1)
    end
  end
  redis.call('ZADD', K_IDS, unpack(zadd))
  if zc == 0 then fresh = true end  -- (re)created here: it gets its TTL below
  redis.call('HSET', K_META, 'seq', string.format('%.0f', last), 'n', len)
end
if threshold > 0 then unsum = redis.call('HINCRBY', K_META, 'unsum', added) end
if fresh or A_TOUCH == '1' then touch(tonumber(A_TTL_MS), now) end
local xid = ''
if ARGV[7] == '1' and added > 0 then
  xid = redis.call('XADD', K_OUTBOX, '*', 's', A_SESSION, 'u', ARGV[8], unpack(fields))
  name_entry(xid)
end
local due = 0
if threshold > 0 and unsum >= threshold then due = 1 end
local out = {status, xid, due}
for k = 1, n do out[#out + 1] = seqs[k] end
for k = 1, n do out[#out + 1] = news[k] end
return out
