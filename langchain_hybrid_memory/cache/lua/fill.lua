-- ARGV: 6 idempotency_keep, 7 expected seq ('' = load only if not cached; else replace a partial window whose
-- last seq is still this one), then the fill block. Returns {1 if loaded or 0 if not (somebody wrote meanwhile:
-- their data is newer and is kept; or the fill is stale), owner, then the cached elements, or none when they are
-- exactly the fill's (loaded, nothing merged from the outbox): the caller has them, and a window back through Lua
-- is a third of the script's cost}.
local loaded, merged = 1, 0
local refused = stale(8)
if refused then
  loaded = 0
elseif redis.call('EXISTS', K_META) == 1 then
  local partial = redis.call('HGET', K_META, 'partial') == '1'
  if ARGV[7] == '' or not partial or redis.call('HGET', K_META, 'seq') ~= ARGV[7] then loaded = 0 end
end
if loaded == 1 then merged = select(2, fill(8)) end
if not refused then touch(tonumber(A_TTL_MS), now_us()) end  -- a refused one must not list a dropped session
local out = {}
if loaded == 0 or merged > 0 then out = redis.call('LRANGE', K_WINDOW, 0, -1) end
table.insert(out, 1, redis.call('HGET', K_META, 'uid') or '')
table.insert(out, 1, loaded == 1 and merged == 0 and 2 or loaded)
return out
