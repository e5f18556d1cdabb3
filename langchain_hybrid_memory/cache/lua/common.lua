-- Shared by every script. scripts.py puts a prelude before it that names the KEYS (K_WINDOW, K_META, K_IDS,
-- K_OUTBOX, K_ACTIVE, K_ENTRIES, K_GEN: keys.py's SessionKeys, in its order) and the first five ARGV: A_SESSION (the
-- session id), A_TTL_MS, A_CAPACITY (elements kept), A_THRESHOLD (summary due at this many unsummarized
-- messages; 0 = auto-summarize off), A_TOUCH ('1': slide the TTLs now; the client asks at most every ttl/10
-- per session, see `TouchLog`).
-- The meta hash's presence means "this window is complete". Its fields: seq (last assigned), uid (owner),
-- n (the window's length), partial, sum_upto / sum_text (the latest summary), unsum (messages after it).
--
-- Each redis.call costs about 3 µs inside a script, and a reply passing through Lua about 1 µs per element, so
-- the scripts batch (one RPUSH, one ZADD, one HSET) and reads use no script at all (MULTI, see `Commands` in protocol.py).
--
-- `fill(b)` loads a window from the store; ARGV[6] of a script that fills is idempotency_keep (ids remembered).
-- Its ARGV block starts at index b: base_seq, owner, partial (1/0),
-- sum_upto, sum_text, unsum, floor (a tombstone's seq), gen, n, then n pairs (message id, element). gen is the
-- session's generation (K_GEN, '' for none) read before the store was queried: `stale(b)` says whether a drop
-- came since, and a stale window is never cached (the drop may follow a write the query did not see). It merges in
-- the session's entries still in the bucket's outbox (acknowledged by some process, maybe not yet in
-- PostgreSQL), so a reload never loses a recent write; the entry set (K_ENTRIES) names them, so this costs a lookup per
-- entry of this session, not a scan of the bucket's whole backlog.
--
-- The entry set may name an entry already deleted (an acknowledgement deletes the entry first, then its
-- name): `outbox_entries` drops such names as it finds them.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function touch(ttl, now)
  -- PEXPIRE on a missing key is a no-op: no EXISTS guard needed
  redis.call('PEXPIRE', K_WINDOW, ttl)
  redis.call('PEXPIRE', K_META, ttl)
  redis.call('PEXPIRE', K_IDS, ttl)
  redis.call('ZADD', K_ACTIVE, math.floor(now / 1000), A_SESSION)
end
local function seq_of(el)
  return tonumber(string.match(el, '^{"s":(%d+),'))
end
-- An entry set of the wrong type (written by something else) is replaced, here and in APPEND, as any damaged
-- key is dropped; the entries it named are still committed by their writer or the janitor.
local function outbox_entries()
  local out = {}
  local t = redis.call('TYPE', K_ENTRIES)['ok']
  if t ~= 'set' then
    if t ~= 'none' then redis.call('DEL', K_ENTRIES) end
    return out
  end
  for _, xid in ipairs(redis.call('SMEMBERS', K_ENTRIES)) do
    local e = redis.call('XRANGE', K_OUTBOX, xid, xid)[1]
    if e then out[#out + 1] = e else redis.call('SREM', K_ENTRIES, xid) end
  end
  return out
end
local function gen()
  return redis.call('GET', K_GEN) or ''
end
local function stale(b)
  return gen() ~= ARGV[b + 7]
end
local function fill(b)
  local n = tonumber(ARGV[b + 8])
  local byseq, order = {}, {}
  local base = tonumber(ARGV[b])
  local sum_upto = tonumber(ARGV[b + 3])
  local unsum = tonumber(ARGV[b + 5])
  local floor = tonumber(ARGV[b + 6])
  local ids = {}
  for k = 0, n - 1 do
    local id, el = ARGV[b + 9 + 2 * k], ARGV[b + 10 + 2 * k]
    local s = seq_of(el)
    byseq[s] = {id, el}
    ids[id] = true
    order[#order + 1] = s
  end
  for _, e in ipairs(outbox_entries()) do
    local f = e[2]
    if f[2] == A_SESSION then
      for j = 5, #f, 2 do
        local s = seq_of(f[j + 1])
        -- nil: an undecodable (poison) entry, skipped here and set aside by the janitor; at or below the
        -- floor: deleted (clear_session) while still waiting; a known id: the same message under another seq
        -- (a write whose reply was lost, then retried through PostgreSQL)
        if s and s > floor and not byseq[s] and not ids[f[j]] then
          byseq[s] = {f[j], f[j + 1]}
          order[#order + 1] = s
          if s > sum_upto then unsum = unsum + 1 end
        end
      end
    end
  end
  table.sort(order)
  redis.call('DEL', K_WINDOW, K_IDS)
  local first = math.max(1, #order - tonumber(A_CAPACITY) + 1)
  -- only the newest `keep` ids, as APPEND keeps them: a window longer than that must not turn the id set into
  -- a skiplist (see APPEND)
  local idfrom = math.max(first, #order - tonumber(ARGV[6]) + 1)
  local push, zadd = {}, {}
  for k = first, #order do
    local s = order[k]
    push[#push + 1] = byseq[s][2]
    if k >= idfrom then
      zadd[#zadd + 1] = s
      zadd[#zadd + 1] = byseq[s][1]
    end
  end
  if #push > 0 then
    redis.call('RPUSH', K_WINDOW, unpack(push))
    redis.call('ZADD', K_IDS, unpack(zadd))
  end
  if #order > 0 and order[#order] > base then base = order[#order] end
  redis.call('HSET', K_META, 'seq', string.format('%.0f', base), 'unsum', unsum,
             'sum_upto', ARGV[b + 3], 'sum_text', ARGV[b + 4], 'n', #push)
  if ARGV[b + 1] ~= '' then redis.call('HSET', K_META, 'uid', ARGV[b + 1]) end
  if ARGV[b + 2] == '1' then redis.call('HSET', K_META, 'partial', '1') else redis.call('HDEL', K_META, 'partial') end
  return b + 9 + 2 * n, #order - n  -- the next ARGV index, and how many outbox entries were merged in
end
